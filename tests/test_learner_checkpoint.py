"""learner/checkpoint.py: checkpoints written atomically, pruned, checked against the config, damage refused,
and anything beyond tensors and plain containers refused unread, on load and on save."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import Config, debug
from learner.checkpoint import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

pytestmark = pytest.mark.unit


def _state(cfg: Config, updates: int) -> dict:
    return {"config": cfg.to_dict(), "learner": {}, "counters": {"updates": updates}, "x": torch.tensor(updates)}


def test_checkpoints_are_atomic_pruned_and_checked(tmp_path: Path) -> None:
    cfg = debug()
    for updates in (10, 20, 30, 40):
        save_checkpoint(tmp_path, updates, _state(cfg, updates), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0000000030.pt", "ckpt_0000000040.pt"]
    assert sorted(p.name for p in tmp_path.glob("*.sha256")) == ["ckpt_0000000030.pt.sha256", "ckpt_0000000040.pt.sha256"]
    assert not list(tmp_path.glob(".tmp-*"))
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and int(load_checkpoint(latest, cfg)["x"]) == 40
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, z2_dim=99))
    with pytest.raises(CheckpointMismatchError, match="model.z2_dim: saved 8, now 99"):
        load_checkpoint(latest, other)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.999), flip=st.integers(0, 2**31), truncate=st.booleans())
def test_a_truncated_or_bit_flipped_checkpoint_is_a_short_error_and_nothing_is_touched(
        tmp_path: Path, cut: float, flip: int, truncate: bool) -> None:
    """A damaged newest checkpoint (cut short, or one bit flipped anywhere, tensor data included: torch.load
    alone would load that silently) is refused with one paragraph naming the file and what to do; it and
    the older checkpoint are left byte for byte as they were, and the older one still loads."""
    cfg = debug()
    directory = tmp_path / f"ckpt-{cut}-{flip}-{truncate}"
    older = save_checkpoint(directory, 10, _state(cfg, 10))
    newest = save_checkpoint(directory, 20, {**_state(cfg, 20), "w": torch.randn(4096)})
    data = bytearray(newest.read_bytes())
    if truncate:
        del data[int(cut * len(data)):]
    else:
        data[flip % len(data)] ^= 1 << (flip % 8)
    newest.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(newest, cfg)
    message = str(info.value)
    assert str(newest) in message and "move it aside" in message and len(message.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert int(load_checkpoint(older, cfg)["x"]) == 10


class _CreatesFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return open, (str(self.path), "w")


def test_a_checkpoint_that_would_run_code_is_refused_unread(tmp_path: Path) -> None:
    """A crafted newest checkpoint with a matching SHA-256 (whoever writes the file writes its digest) is an
    UnsafeCheckpointError, a CheckpointMismatchError (one paragraph at every entry point): its pickle never
    runs, and it and the older checkpoint stay as they were."""
    cfg = debug()
    older = save_checkpoint(tmp_path, 10, _state(cfg, 10))
    created = tmp_path / "created"
    crafted = tmp_path / "ckpt_0000000020.pt"
    torch.save({**_state(cfg, 20), "x": _CreatesFile(created)}, crafted)
    Path(f"{crafted}.sha256").write_text(hashlib.sha256(crafted.read_bytes()).hexdigest() + "\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(crafted, cfg)
    assert isinstance(info.value, CheckpointMismatchError) and not created.exists()
    message = str(info.value)
    assert f"checkpoint {crafted} was refused unread" in message and "(it asks for io.open)" in message
    assert "sources you do not trust" in message and len(message.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert int(load_checkpoint(older, cfg)["x"]) == 10


@pytest.mark.parametrize("value", [np.int64(3), np.zeros(2), dataclasses.replace(debug().run)],
                         ids=["numpy scalar", "numpy array", "dataclass"])
def test_a_state_the_loader_would_refuse_is_never_written(tmp_path: Path, value: object) -> None:
    """Caught when written, in the tests, rather than when a run days old is resumed."""
    with pytest.raises(TypeError, match="which read_checkpoint would refuse"):
        save_checkpoint(tmp_path, 10, {**_state(debug(), 10), "extra": {"value": value}})
    assert list(tmp_path.iterdir()) == []
