"""One directory per run: config.json, checkpoints/, wandb/, eval.csv and the Redis data dir.

`--run.resume <dir>` reopens such a directory: the config given now must agree with the saved one on
everything that shapes networks and data (`common.config.resume_conflicts`), and the newest checkpoint
supplies the learner state, the counters and the W&B run id. A run stopped before its first checkpoint
resumes with a fresh learner on its kept replay data (the driver counts on from the replay's inserts).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import Config, ConfigError, resume_conflicts
from common.run_files import RunFiles
from common.tasks import slug
from learner.checkpoint import CheckpointMismatchError, latest_checkpoint, load_checkpoint
from replay_service.server import AOF_DIR


@dataclass(frozen=True)
class RunDir:
    """An opened run directory: its config, the state a resume continues from, and the lock held meanwhile.
    File names: `files` (common/run_files.py)."""

    path: Path
    cfg: Config
    resume_state: dict[str, Any] | None
    lock_fd: int = -1
    """An flock on <run dir>/.lock held while the run lives (the kernel drops it when the driver dies)."""

    @property
    def files(self) -> RunFiles:
        return RunFiles(self.path)

    def release(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)


def _lock(path: Path) -> int:
    """One driver per run directory: a second one (e.g. a resume while the run still runs) is refused, so a
    resume may take over whatever a dead driver left behind (its orphaned redis-server)."""
    fd = os.open(RunFiles(path).lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"{path} is in use by a training that is still running (driver pid {owner}); stop it "
                          "first (Ctrl-C or SIGTERM checkpoints it), or pick another --run.dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def prepare_run_dir(cfg: Config) -> RunDir:
    """Create (or, for a resume, check and reopen) the run directory; write the resolved config.json.
    The returned RunDir holds the directory's lock until `release()`."""
    if cfg.run.resume:
        return _reopen(cfg)
    path = Path(cfg.run.dir).resolve() if cfg.run.dir else _new_default_dir(cfg)
    if RunFiles(path).config.exists():
        raise ConfigError(f"{path} already holds a run; resume it with --run.resume {path} or pick another --run.dir")
    path.mkdir(parents=True, exist_ok=True)
    fd = _lock(path)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(path)))
    RunFiles(path).write_config(cfg)
    return RunDir(path, cfg, None, fd)


def _new_default_dir(cfg: Config) -> Path:
    """runs/<task>-<timestamp>, or with -2, -3, ... when another run took that name in the same second
    (several `make train` started together): mkdir is atomic, so two drivers never share a directory."""
    base = Path("runs").resolve() / f"{slug(cfg.run.task)}-{time.strftime('%Y%m%d-%H%M%S')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"could not pick a new run directory next to {base}; pass --run.dir")


def write_traceback(run_dir: str | Path, exc: BaseException, append_to: str | None = None, header: str = "") -> Path:
    """Save `exc`'s full traceback as <run dir>/logs/error-<time>.log (the terminal gets one paragraph), or append it,
    after a `--- <time> <header>` line, to <run dir>/logs/<append_to> (a log of repeated failures)."""
    logs = RunFiles(Path(run_dir)).logs
    logs.mkdir(parents=True, exist_ok=True)
    text = "".join(traceback.format_exception(exc))
    if append_to is None:
        path = logs / f"error-{time.strftime('%Y%m%d-%H%M%S')}.log"
        path.write_text(text)
        return path
    path = logs / append_to
    with path.open("a") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {header}\n{text}\n")
    return path


def _reopen(cfg: Config) -> RunDir:
    path = Path(cfg.run.resume).resolve()
    files = RunFiles(path)
    try:
        saved = files.read_config()
    except ConfigError as exc:
        raise ConfigError(f"--run.resume {path}: {exc}") from None
    conflicts = resume_conflicts(saved, cfg)
    if conflicts:
        raise CheckpointMismatchError(f"cannot resume {path}: the config differs where it must not: "
                                      + "; ".join(conflicts) + ". Use the original run's preset and overrides.")
    checkpoint = latest_checkpoint(files.checkpoints)
    if checkpoint is None and not (files.redis / AOF_DIR).is_dir() and not cfg.replay.url:
        raise ConfigError(f"--run.resume {path}: neither a checkpoint in {files.checkpoints} nor replay data in "
                          f"{files.redis}; there is nothing to resume, start a new run instead")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(path), resume=str(path)))
    fd = _lock(path)
    try:
        # No checkpoint yet (stopped during the initial collection): a fresh learner on the kept replay.
        state = load_checkpoint(checkpoint, cfg) if checkpoint is not None else None
        if state is not None and (finished := finished_at(state, cfg)) is not None:
            raise ConfigError(finished_message(path, finished, cfg))
        files.write_config(cfg)
    except BaseException:
        os.close(fd)
        raise
    return RunDir(path, cfg, state, fd)


def finished_at(state: dict[str, Any], cfg: Config) -> int | None:
    """The length a checkpoint's run completed (its final evaluation included) when that leaves nothing to train at
    `cfg`'s `run.env_steps`; None when a resume has work left: a longer length, or a life that ended before its final
    checkpoint (a stop, a crash: that resume makes the final evaluation). Only a finished run's final checkpoint
    holds `completed_length` (deploy/run/driver.Driver._finish); older checkpoints never count as finished."""
    completed = int((state.get("extra", {}).get("run_state") or {}).get("completed_length", 0))
    return completed if completed and completed >= cfg.run.env_steps else None


def finished_message(path: Path, completed: int, cfg: Config) -> str:
    """The paragraph refusing a resume of a run that completed `completed` environment steps."""
    every = cfg.run.eval_every if cfg.run.eval_episodes > 0 and cfg.run.eval_every > 0 else 1
    longer = -(-2 * completed // every) * every  # twice as long, on the evaluation grid
    evaluated = ", its final evaluation included" if cfg.run.eval_episodes > 0 else ""
    asked = "" if cfg.run.env_steps == completed else f" (you asked for {cfg.run.env_steps})"
    return (f"--run.resume {path}: this run is finished: it ran its whole length, {completed} environment steps"
            f"{evaluated}, so there is nothing to train{asked}. To train it further, give it a longer length: "
            f"--run.resume {path} --run.env-steps {longer}. To evaluate or ship it: make eval RUN={path}, "
            f"make export RUN={path}.")
