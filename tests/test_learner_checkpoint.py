"""learner/checkpoint.py: checkpoints written atomically, pruned, checked against the config, damage refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import Config, debug
from learner.checkpoint import (
    CheckpointMismatchError,
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
