"""`make train TASK=... PRESET=... ARGS=...`: parse the config, warn where it will be slow, train.

`--run.resume <dir>` alone reopens a run with its saved config.json; other keys on the command line
override it (and `resume_conflicts` refuses those that would change the networks or the data). A known
failure prints one paragraph and writes its traceback to `<run dir>/logs/`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tyro

from common.config import PRESETS, Config, ConfigError, parse_cli
from deploy.run.errors import known_errors
from deploy.run.files import RunFiles
from deploy.run.forecast import CPU_PRESET_HINT
from deploy.run.signals import stop_with_parent


def _slow_on_this_machine(cfg: Config) -> bool:
    import torch

    return cfg.learner.device != "cuda" and not torch.cuda.is_available() and cfg.model.z2_dim >= 256


def _resume_dir(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg in ("--run.resume", "--run-resume") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(("--run.resume=", "--run-resume=")):
            return arg.split("=", 1)[1]
    return None


def parse_args(argv: Sequence[str]) -> Config:
    """The config to run: a preset and overrides, or for a resume the saved config and overrides."""
    resume = _resume_dir(argv)
    if not resume:
        return parse_cli(argv)
    try:
        saved = RunFiles(Path(resume)).read_config()
    except ConfigError as exc:
        raise ConfigError(f"--run.resume {resume}: {exc}") from None
    rest = list(argv[1:] if argv and argv[0] in PRESETS else argv)  # the saved config replaces the preset
    return tyro.cli(Config, default=saved, args=rest)


def _log_dir(argv: Sequence[str]) -> Path:
    """Whose logs/ a failure's traceback goes to: the named run directory when it exists, else a temp dir (a run
    refused before it started leaves no directory behind; once started, the launcher writes into the run's own)."""
    for flag in ("--run.resume", "--run.dir"):
        for i, arg in enumerate(argv):
            value = argv[i + 1] if arg == flag and i + 1 < len(argv) else (
                arg.split("=", 1)[1] if arg.startswith(flag + "=") else None)
            if value and (Path(value).is_dir() if flag == "--run.dir" else RunFiles(Path(value)).is_run()):
                return Path(value)
    return Path(tempfile.gettempdir()) / "slac-dist"


def _report(exc: BaseException, argv: Sequence[str]) -> None:
    """One paragraph on the terminal; the traceback in a file it names."""
    from deploy.run.run_dir import write_traceback  # imports torch: kept out of the --help path

    cause = getattr(exc, "cause", None) or exc  # a Ray task error: the exception the process raised
    try:
        path = getattr(exc, "log_path", None) or write_traceback(_log_dir(argv), exc)
        trace = f" (traceback: {path})"
    except OSError:
        trace = ""
    lines = str(cause).strip().splitlines() or [type(cause).__name__]
    message = " ".join(line.strip() for line in lines[:8])
    print(f"error: {message}{trace}", file=sys.stderr, flush=True)


MAX_ERROR_LINES = 12
"""Lines of a command-line error: tyro repeats its suggestions once per preset (30 lines for one typo)."""


def _parse_quietly(argv: list[str]) -> Config:
    """`parse_args`, with tyro's error box (a typo, a value of the wrong type) cut to its first distinct lines."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parse_args(argv)
    except SystemExit as exc:
        text = captured.getvalue()
        if exc.code not in (0, None):
            seen: list[str] = []
            for line in text.splitlines():
                line = line.strip(" │╭╮╰╯─")  # tyro draws a box around its message
                if line and not line.startswith("in ") and line not in seen:
                    seen.append(line)
            more = len(seen) > MAX_ERROR_LINES
            text = "\n".join(seen[:MAX_ERROR_LINES] + (["... (see --help)"] if more else [])) + "\n"
        sys.stderr.write(text)
        raise


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C must reach the driver as KeyboardInterrupt (it stops the run and checkpoints), even when a
    # parent shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stop_with_parent()  # a seed of `make reproduce`: stop (checkpointing) when the harness dies
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A log handler that cannot write (W&B's debug log on a full disk) stays silent instead of printing a
    # "--- Logging error ---" traceback per record on the terminal.
    logging.raiseExceptions = False
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = _parse_quietly(argv)
    except ConfigError as exc:
        _report(exc, argv)
        return 2
    if _slow_on_this_machine(cfg):
        logging.warning("the paper preset without a GPU is very slow (about a second per update on 2 cores, "
                        "%s model pre-training updates first): the run measures its first updates and then says "
                        "what it will take on this machine. %s", f"{cfg.learner.model_pretrain_steps:,}", CPU_PRESET_HINT)
    from deploy.run.driver import train  # imports Ray; kept out of the CLI's --help path

    try:
        summary = train(cfg)
    except known_errors() as exc:
        _report(exc, argv)
        return 2
    except KeyboardInterrupt:
        print("interrupted before the run started; nothing to checkpoint", file=sys.stderr)
        return 130
    if summary["interrupted"]:  # before the summary, which stays the last thing printed (scripts parse it)
        print(f"stopped by {summary['stopped_by']}; checkpoint {summary['checkpoint']}. Continue the run with:\n"
              f"  python -m deploy.train --run.resume {summary['run_dir']}   "
              f"(or make train ARGS=\"--run.resume {summary['run_dir']}\")", file=sys.stderr, flush=True)
    print(json.dumps({"summary": summary}, indent=2, default=str))
    # A preempted run (SIGTERM) must read as unfinished to whatever scheduled it; Ctrl-C is the user's choice.
    return 143 if summary["stopped_by"] == "SIGTERM" else 0


if __name__ == "__main__":
    sys.exit(main())
