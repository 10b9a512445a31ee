"""The one logger of a run: W&B and TensorBoard scalars and media, `eval.csv`, and the terminal progress line.

Each call goes to both dashboards at the same x-axis, `env_steps` (the paper's): W&B's step metric and
TensorBoard's global step. W&B stays the default dashboard; it runs offline (files under `<run dir>/wandb/`)
unless the user configured W&B (WANDB_API_KEY or WANDB_MODE set) or asked for a mode with `--run.wandb-mode`,
and an offline W&B run can only be seen after `wandb sync`. TensorBoard's event files (`<run dir>/tensorboard/`,
one more per resume) are readable at once with `make tensorboard`. Either sink failing (W&B's service killed,
a full disk) stops only that sink.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import logging
import numbers
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import imageio
import numpy as np
import wandb
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from common.config import Config, redact
from common.run_files import RunFiles

log = logging.getLogger(__name__)

EVAL_COLUMNS = ("env_steps", "scheduled_env_steps", "updates", "policy_version", "return_mean", "return_std",
                "returns")
"""eval.csv: env_steps when the evaluation started; scheduled_env_steps, its point on the evaluation grid
(0, run.eval_every, ..., run.env_steps), which is what curves over seeds align on."""
EVAL_SCALARS = ("eval/return", "eval/return_std", "eval/policy_version")
"""What `RunLogger.evaluation` logs of each evaluation itself; its `extra` scalars must use other names."""
TENSORBOARD_DIR = "tensorboard"
"""TensorBoard's folder in a run directory: `tensorboard --logdir` on a folder of runs names each run by its path."""
FLUSH_SECS = 5.0
"""The longest an event stays in TensorBoard's file buffer (TensorBoard itself reloads every 5 s)."""


def wandb_mode(requested: str) -> str:
    """Resolve `run.wandb_mode=auto`: online only when the user has configured W&B."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def gif_bytes(frames: np.ndarray, fps: int = 15, scale: int = 1) -> bytes:
    """uint8 frames [T, 3, H, W] as a looping GIF, each pixel `scale` x `scale` (no ffmpeg or moviepy needed)."""
    images = frames.transpose(0, 2, 3, 1)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    # Pillow's GIF writer takes each frame's duration in milliseconds.
    return imageio.v3.imwrite("<bytes>", images, extension=".gif", duration=1000.0 / fps, loop=0)


def write_gif(path: Path, frames: np.ndarray, fps: int = 15, scale: int = 1) -> Path:
    """Write uint8 frames [T, 3, H, W] as a looping GIF (see `gif_bytes`)."""
    path.write_bytes(gif_bytes(frames, fps, scale))
    return path


def scalar_values(values: Mapping[str, Any]) -> list[summary_pb2.Summary.Value]:
    """TensorBoard scalars (float32) of the real numbers in `values`; anything else is W&B's alone."""
    return [summary_pb2.Summary.Value(tag=key, simple_value=float(value)) for key, value in values.items()
            if isinstance(value, numbers.Real)]


def image_value(tag: str, encoded: bytes, height: int, width: int, description: str = "") -> summary_pb2.Summary.Value:
    """An encoded PNG or GIF as a TensorBoard image. TensorBoard's image plugin plays an animated GIF as it is,
    which is what torch's `add_video` writes too (through moviepy, which this spares)."""
    metadata = summary_pb2.SummaryMetadata(summary_description=description)
    image = summary_pb2.Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=encoded)
    return summary_pb2.Summary.Value(tag=tag, image=image, metadata=metadata)


class EventFile:
    """A TensorBoard event file of its own in `folder`: a resumed run adds one beside the earlier ones, and
    TensorBoard reads a folder's files in name order, which starts with the time.

    Written in the caller's thread rather than through torch's SummaryWriter, whose writer thread meets a failed
    write (a full disk) with a traceback on stderr and the error only on a later call; here the call that fails
    raises the OSError, which `RunLogger` turns into one warning. Buffered: flushed when an event comes
    `flush_secs` after the last flush, by `flush()` (each evaluation) and on `close()`."""

    _serial = itertools.count()  # two files opened by one process in one second (the harness reopening seeds)

    def __init__(self, folder: Path, flush_secs: float = FLUSH_SECS) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(self._serial)}"
        self.path, self.flush_secs = folder / name, flush_secs
        self._file = self.path.open("xb")
        self._flushed = time.monotonic()
        self._records = RecordWriter(self._file)
        self._records.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        self.flush()

    def add(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
        """One event at global step `step` holding `values` (one call's scalars share one event)."""
        if not values:
            return
        event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values))
        self._records.write(event.SerializeToString())
        if time.monotonic() - self._flushed >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        self._file.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        """Flush and close; again after a failed flush (a full disk) is a no-op."""
        if self._file.closed:
            return
        try:
            self.flush()
        finally:
            self._file.close()


class RunLogger:
    """W&B + TensorBoard + eval.csv + progress line for one run directory."""

    def __init__(self, cfg: Config, run_dir: Path, run_id: str | None = None) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        mode = wandb_mode(cfg.run.wandb_mode)
        # W&B records the command line (its `args`) as it starts: a --replay.url password there is written as ***.
        argv, sys.argv = sys.argv, [redact(arg) for arg in sys.argv]
        # W&B's service (wandb-core) of a parent process that used W&B (a reproduce harness that logged a figure, a
        # notebook, a test) is named in WANDB_SERVICE, which a child inherits and would attach to: the run's W&B
        # files would then be written by a process that is not the run's and may die before it or outlive it.
        # The run starts a service of its own (found in a clean-clone make test: one service of the test session
        # held the files of five later runs; tests/test_run_logger.py shows it with a parent that has a service).
        os.environ.pop("WANDB_SERVICE", None)
        try:
            self.run = wandb.init(project=cfg.run.wandb_project, dir=str(run_dir), mode=mode, id=run_id,
                                  resume="allow" if run_id else None, config=cfg.to_dict(),
                                  name=cfg.run.name or run_dir.name, group=cfg.run.group or None,
                                  job_type=cfg.run.job_type or None, tags=list(cfg.run.tags) or None,
                                  settings=wandb.Settings(console="off", silent=True))
        finally:
            sys.argv = argv
        self.run.define_metric("env_steps")
        self.run.define_metric("*", step_metric="env_steps")
        self._tensorboard: EventFile | None = EventFile(run_dir / TENSORBOARD_DIR)
        self.eval_path = RunFiles(run_dir).eval_csv
        if not self.eval_path.exists():
            with self.eval_path.open("w", newline="") as f:
                csv.writer(f).writerow(EVAL_COLUMNS)
        # Progress goes to stderr, leaving stdout to results (the JSON summary, bench output).
        self._tty = sys.stderr.isatty()
        self._last_line = 0.0
        self._last_text = ""
        self._wandb_lost = False
        self.renderers: list[dict[str, str]] = []
        url = self.run.url if mode == "online" else None
        log.info("W&B run %s (%s), files in %s%s", self.run.id, mode, RunFiles(run_dir).wandb, f", {url}" if url else "")

    @property
    def run_id(self) -> str:
        return self.run.id

    def _to_wandb(self, send: Callable[[], object]) -> None:
        """Send to W&B unless its service process is gone. A SIGTERM to the driver's whole process tree (`ray
        job stop`, a preempted machine) reaches wandb's service too: the run must still stop cleanly and
        write its checkpoint, so W&B's failure is logged once and the run goes on without it."""
        if self._wandb_lost:
            return
        try:
            send()
        except Exception as exc:  # noqa: BLE001 - wandb raises assorted errors once its service has died
            self._wandb_lost = True
            with contextlib.suppress(Exception):  # so its exit hook does not try the dead service again
                wandb.teardown()
            log.warning("W&B stopped taking data (%s: %s; its service process is gone, e.g. stopped with the "
                        "driver): the run goes on without it; eval.csv, checkpoints and the W&B files written so "
                        "far are kept", type(exc).__name__, exc)

    def _to_tensorboard(self, write: Callable[[EventFile], object]) -> None:
        """Write to the event file unless an earlier write failed: a failed write (a full disk, which the disk
        guard then stops the run for) is logged once, and the run goes on with W&B and eval.csv."""
        if self._tensorboard is None:
            return
        try:
            write(self._tensorboard)
        except OSError as exc:
            events, self._tensorboard = self._tensorboard, None
            with contextlib.suppress(OSError):
                events.close()
            log.warning("TensorBoard stopped taking data (%s: %s): the run goes on without it; the events written "
                        "before are kept in %s", type(exc).__name__, exc, events.path.parent)

    def note(self, key: str, value: Any) -> None:
        """A fact about the run that is not a time series (e.g. the learner's execution mode): W&B config `key`."""
        self._to_wandb(lambda: self.run.config.update({key: value}, allow_val_change=True))

    def note_renderer(self, renderer: dict[str, str] | None) -> None:
        """Each distinct OpenGL renderer the actors and the evaluator draw with goes to W&B's config once."""
        if renderer and renderer not in self.renderers:
            self.renderers.append(renderer)
            self.note("renderers", self.renderers)

    def scalars(self, env_steps: int, values: Mapping[str, float]) -> None:
        """Scalars at environment step `env_steps`: one W&B row, one TensorBoard event."""
        self._to_wandb(lambda: self.run.log({"env_steps": env_steps, **values}))
        self._to_tensorboard(lambda events: events.add(env_steps, scalar_values(values)))

    def image(self, env_steps: int, key: str, image: np.ndarray, caption: str) -> None:
        """A uint8 image [H, W, 3] (the figure-7 grid, the reproduce plot). The caption is the TensorBoard
        summary's description (shown under the card by `tensorboard --load_fast=false`; the fast loader drops it)."""
        self._to_wandb(lambda: self.run.log({"env_steps": env_steps, key: wandb.Image(image, caption=caption)}))
        png = imageio.v3.imwrite("<bytes>", image, extension=".png")
        self._to_tensorboard(lambda events: events.add(env_steps, [image_value(key, png, *image.shape[:2], caption)]))

    def video(self, env_steps: int, key: str, frames: np.ndarray, fps: int = 15) -> None:
        """Log uint8 frames [T, 3, H, W] as one GIF to both (no moviepy needed)."""
        gif = gif_bytes(frames, fps)
        with tempfile.TemporaryDirectory() as tmp:  # wandb.Video takes a file, and copies it when made
            path = Path(tmp) / "episode.gif"
            path.write_bytes(gif)
            self._to_wandb(lambda: self.run.log({"env_steps": env_steps, key: wandb.Video(str(path), format="gif")}))
        self._to_tensorboard(lambda events: events.add(env_steps, [image_value(key, gif, *frames.shape[2:])]))

    def evaluation(self, env_steps: int, scheduled: int, updates: int, version: int, returns: list[float],
                   extra: Mapping[str, float] | None = None) -> None:
        """One row of eval.csv and the eval/ scalars; version 0 is the uniform random policy. `extra`: further
        scalars of the same evaluation (e.g. the latent probe's `probe/r2_mean`), logged at the same step to
        both dashboards but not to eval.csv, whose columns stay fixed."""
        extra = dict(extra or {})
        if clash := sorted(extra.keys() & set(EVAL_SCALARS)):
            raise ValueError(f"evaluation extra scalars {clash} would overwrite the evaluation's own; "
                             f"name them outside {EVAL_SCALARS}")
        mean, std = float(np.mean(returns)), float(np.std(returns))
        with self.eval_path.open("a", newline="") as f:
            csv.writer(f).writerow([env_steps, scheduled, updates, version, f"{mean:.4f}", f"{std:.4f}",
                                    " ".join(f"{r:.4f}" for r in returns)])
        self.scalars(env_steps, {"eval/return": mean, "eval/return_std": std, "eval/policy_version": version, **extra})
        self._to_tensorboard(EventFile.flush)  # a new curve point is worth seeing at once

    def progress(self, line: str, force: bool = False) -> None:
        """Rewrite one terminal line (every second), or print a line every 10 s when not a TTY."""
        now = time.monotonic()
        self._last_text = line
        if self._tty and (force or now - self._last_line >= 1.0):
            sys.stderr.write("\r\x1b[2K" + line)
            sys.stderr.flush()
            self._last_line = now
        elif not self._tty and (force or now - self._last_line >= 10.0):
            print(line, file=sys.stderr, flush=True)
            self._last_line = now

    def finish(self, summary: dict[str, Any]) -> None:
        """End the progress line, close the event file, and give W&B the run's summary."""
        self._to_tensorboard(EventFile.close)
        self._tensorboard = None
        if self._tty:
            sys.stderr.write("\n")
        elif self._last_text:  # a log (a Ray job's, a file) ends with the run's final state
            print(self._last_text, file=sys.stderr, flush=True)
        def send() -> None:
            for key, value in summary.items():
                self.run.summary[key] = value
            self.run.finish()

        self._to_wandb(send)
