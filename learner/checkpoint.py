"""Atomic checkpoints in `<run dir>/checkpoints/`: learner state, counters, config, W&B id, replay ref.

A checkpoint is written to a temporary file and renamed into place, so a crash mid-write never leaves
a truncated file where the last good one was. Loading checks the stored config against the current
one and refuses one from an incompatible run with the keys that differ.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from common.config import Config, ConfigError, resume_conflicts

_NAME = re.compile(r"^ckpt_(\d{10})\.pt$")


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a run whose config is incompatible with this one, or cannot be read."""


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(directory: str | Path, updates: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write `state` as ckpt_<updates>.pt atomically, with its SHA-256 beside it (torch.load checks no checksum:
    a flipped bit in a tensor would load silently); keep the newest `keep` checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt_{updates:010d}.pt"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        digest_tmp = Path(tmp).with_suffix(".sha256")
        digest_tmp.write_text(_sha256(Path(tmp)) + "\n")
        os.replace(digest_tmp, _digest_path(path))  # first: a checkpoint in place always has its digest
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        Path(tmp).with_suffix(".sha256").unlink(missing_ok=True)
        raise
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
        _digest_path(old).unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state saved in a checkpoint file, on CPU; CheckpointMismatchError, leaving the file as it is, when it is
    damaged (its SHA-256 differs from the one written with it, or it does not load) or not a slac-dist one."""
    path = Path(path)
    try:
        digest = _digest_path(path)
        if digest.is_file() and digest.read_text().strip() != _sha256(path):
            raise ValueError("its SHA-256 differs from the one written with it")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or not {"learner", "counters", "config"} <= set(state):
            raise ValueError("not a slac-dist checkpoint")
    except Exception as exc:  # truncated, bit-flipped, another file: the same to the user, and never repaired here
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointMismatchError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {first}): it is damaged (a disk fault or a copy "
            f"cut short) or not a slac-dist checkpoint. It was left as it is, and so were the older ones in "
            f"{path.parent}: move it aside (mv {path} {path}.damaged) and resume again to continue from the one "
            "before it.") from exc
    return state


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, cfg: Config) -> dict[str, Any]:
    """Load a checkpoint on CPU, refusing one whose config conflicts with `cfg` or that cannot be read."""
    state = read_checkpoint(path)
    try:
        saved = Config.from_dict(state["config"])
    except ConfigError as exc:
        raise CheckpointMismatchError(f"checkpoint {path} holds a config this version cannot read ({exc})") from exc
    conflicts = resume_conflicts(saved, cfg)
    if conflicts:
        raise CheckpointMismatchError(
            f"checkpoint {path} comes from an incompatible config: " + "; ".join(conflicts)
            + ". Resume with the same preset and overrides as the original run."
        )
    return state
