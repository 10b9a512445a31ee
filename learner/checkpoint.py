"""Atomic checkpoints in `<run dir>/checkpoints/`: learner state, counters, config, W&B id, replay ref.

A checkpoint is written to a temporary file and renamed into place, so a crash mid-write never leaves
a truncated file where the last good one was. Loading checks the stored config against the current
one and refuses one from an incompatible run with the keys that differ.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from common.config import Config, resume_conflicts

_NAME = re.compile(r"^ckpt_(\d{10})\.pt$")


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a run whose config is incompatible with this one."""


def save_checkpoint(directory: str | Path, updates: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write `state` as ckpt_<updates>.pt atomically; keep the newest `keep` checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt_{updates:010d}.pt"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


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
    """Load a checkpoint on CPU, refusing one whose config conflicts with `cfg`."""
    state = torch.load(Path(path), map_location="cpu", weights_only=False)
    saved = Config.from_dict(state["config"])
    conflicts = resume_conflicts(saved, cfg)
    if conflicts:
        raise CheckpointMismatchError(
            f"checkpoint {path} comes from an incompatible config: " + "; ".join(conflicts)
            + ". Resume with the same preset and overrides as the original run."
        )
    return state
