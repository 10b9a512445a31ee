"""Atomic checkpoints in `<run dir>/checkpoints/`: learner state, counters, config, W&B id, replay ref.

A checkpoint is written to a temporary file and renamed into place, so a crash mid-write never leaves
a truncated file where the last good one was. Loading checks the stored config against the current
one and refuses one from an incompatible run with the keys that differ.

Loading runs no code from the file. A checkpoint is a pickle, and unpickling may call anything the file
names, so a shared run directory could otherwise make `make eval`, `make export` or `--run.resume` run
whatever its author wanted; the SHA-256 beside each checkpoint cannot stop that (whoever writes the file
writes its digest too): it only catches damage. `read_checkpoint`, the one loader of every command, uses
`torch.load(weights_only=True)`, which rebuilds tensors and plain containers and refuses every other
global. Nothing is added to its allow-list: every checkpoint slac-dist has written, since its first
version, holds only tensors (module and optimiser states, `log_alpha`, the torch.Generator states, which
are uint8 tensors), OrderedDicts (module state_dicts), dicts, lists, tuples, str, int, float, bool and
None (config and counters: `dataclasses.asdict` of plain fields; the driver's `RunState` counts in Python
ints). Those old checkpoints therefore load unchanged, and one holding anything else (numpy objects, a
dataclass, a class with `__reduce__`) did not come from slac-dist as it is: `UnsafeCheckpointError`.
`save_checkpoint` applies the same rule when writing, so a state that grows a numpy scalar fails in the
tests rather than at a resume days into a run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.serialization import get_unsafe_globals_in_checkpoint

from common.config import Config, ConfigError, resume_conflicts

_NAME = re.compile(r"^ckpt_(\d{10})\.pt$")


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a run whose config is incompatible with this one, or cannot be read."""


class UnsafeCheckpointError(CheckpointMismatchError):
    """The checkpoint holds objects beyond tensors and plain containers: unpickling it could run code, so it is
    refused unread. A CheckpointMismatchError, so every entry point reports it as one paragraph already."""



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
    a flipped bit in a tensor would load silently); keep the newest `keep` checkpoints. TypeError, writing
    nothing, when `state` holds anything but what `read_checkpoint` loads (the module docstring)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt_{updates:010d}.pt"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if unsafe := get_unsafe_globals_in_checkpoint(tmp):
            raise TypeError(f"checkpoint state holds {', '.join(sorted(unsafe))}, which read_checkpoint would refuse "
                            "(weights_only): save only tensors, dicts, lists, tuples, str, int, float, bool and None "
                            "(a numpy value: .item(), .tolist() or torch.from_numpy; a dataclass: dataclasses.asdict)")
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


def _refused(path: Path) -> UnsafeCheckpointError:
    try:
        unsafe = get_unsafe_globals_in_checkpoint(path)  # a static read of the pickle's opcodes: runs nothing
    except Exception:  # it only names what the file asks for; the refusal stands without it
        unsafe = []
    asks = f" (it asks for {', '.join(sorted(unsafe)[:5])})" if unsafe else ""
    return UnsafeCheckpointError(
        f"checkpoint {path} was refused unread: it holds objects other than tensors and plain containers{asks}, and "
        "loading those could run any code. slac-dist writes nothing else into a checkpoint, and every version "
        "since the first has done the same, so an older slac-dist's checkpoint loads as it is: this file was "
        "crafted or written by other code (its .sha256 proves nothing here: whoever writes a file can write its "
        "digest). Do not load checkpoints or run directories from sources you do not trust; get the run directory "
        f"again from its owner, or move this file aside (mv {path} {path}.refused) to use the checkpoint before "
        "it. A file you made yourself with other code: save its state again as tensors, dicts, lists, numbers and "
        "strings only.")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state saved in a checkpoint file, on CPU, loaded with `weights_only=True` (the module docstring says
    why); UnsafeCheckpointError when the file holds anything else, CheckpointMismatchError when it is damaged
    (its SHA-256 differs from the one written with it, or it does not load) or not a slac-dist one. Either
    way the file is left as it is."""
    path = Path(path)
    try:
        digest = _digest_path(path)
        if digest.is_file() and digest.read_text().strip() != _sha256(path):
            raise ValueError("its SHA-256 differs from the one written with it")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # weights_only refused a global, or an opcode it does not allow
            if not str(exc).startswith("Weights only load failed"):
                raise
            raise _refused(path) from exc
        if not isinstance(state, dict) or not {"learner", "counters", "config"} <= set(state):
            raise ValueError("not a slac-dist checkpoint")
    except UnsafeCheckpointError:
        raise
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
    """The newest checkpoint in `directory` (by its update count), or None when there is none."""
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
