"""The failures a run knows how to explain: printed as one paragraph by the entry points, never as a traceback."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from common.config import ConfigError, flag_value, resume_dir
from common.rendering import RenderingUnavailableError
from common.run_files import RunFiles
from common.tasks import TaskError
from learner.checkpoint import CheckpointMismatchError


def known_errors() -> tuple[type[Exception], ...]:
    """Failures with a message that says what to do: printed as a paragraph, never as a traceback."""
    from deploy.run.disk import DiskFullError
    from deploy.run.fleet import ActorPollError
    from deploy.run.supervisor import ReplayServerLostError, RestartsExhaustedError
    from replay_service import RedisNotInstalledError, ReplayConnectionError, ReplaySchemaError

    return (ConfigError, TaskError, CheckpointMismatchError, RenderingUnavailableError, RedisNotInstalledError,
            ReplayConnectionError, ReplaySchemaError, RestartsExhaustedError, ReplayServerLostError, DiskFullError,
            ActorPollError)


def log_dir(argv: Sequence[str], exc: BaseException) -> Path:
    """Whose logs/ a failure's traceback goes to: a resumed run's directory, or the one `--run.dir` names, else a temp
    dir. A task that cannot work is refused before its run exists and leaves no directory behind: its traceback goes
    to a named directory only when that already exists."""
    resumed, named = resume_dir(argv), flag_value(argv, "run.dir")
    if resumed and RunFiles(Path(resumed)).is_run():
        return Path(resumed)
    if named and (Path(named).is_dir() or not isinstance(exc, TaskError)):
        return Path(named)
    return Path(tempfile.gettempdir()) / "slac-dist"


def report(exc: BaseException, argv: Sequence[str]) -> None:
    """One paragraph on the terminal; the traceback in a file it names."""
    from deploy.run.run_dir import write_traceback  # imports torch: kept out of the --help path

    cause = getattr(exc, "cause", None) or exc  # a Ray task error: the exception the process raised
    try:
        path = getattr(exc, "log_path", None) or write_traceback(log_dir(argv, exc), exc)
        trace = f" (traceback: {path})"
    except OSError:
        trace = ""
    lines = str(cause).strip().splitlines() or [type(cause).__name__]
    message = " ".join(line.strip() for line in lines[:8])
    print(f"error: {message}{trace}", file=sys.stderr, flush=True)
