"""The one logger of a run: W&B scalars and media, `eval.csv`, and the terminal progress line.

W&B runs offline (files under `<run dir>/wandb/`) unless the user configured W&B (WANDB_API_KEY or
WANDB_MODE set) or asked for a mode with `--run.wandb-mode`. Every scalar is plotted against
`env_steps`, the paper's x-axis.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imageio
import numpy as np
import wandb

from common.config import Config
from common.run_files import RunFiles

log = logging.getLogger(__name__)

EVAL_COLUMNS = ("env_steps", "scheduled_env_steps", "updates", "policy_version", "return_mean", "return_std",
                "returns")
"""eval.csv: env_steps when the evaluation started; scheduled_env_steps, its point on the evaluation grid
(0, run.eval_every, ..., run.env_steps), which is what curves over seeds align on."""


def wandb_mode(requested: str) -> str:
    """Resolve `run.wandb_mode=auto`: online only when the user has configured W&B."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def write_gif(path: Path, frames: np.ndarray, fps: int = 15, scale: int = 1) -> Path:
    """Write uint8 frames [T, 3, H, W] as a looping GIF, each pixel `scale` x `scale` (no ffmpeg needed)."""
    images = frames.transpose(0, 2, 3, 1)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    imageio.mimsave(path, list(images), duration=1.0 / fps, loop=0)
    return path


class RunLogger:
    """W&B + eval.csv + progress line for one run directory."""

    def __init__(self, cfg: Config, run_dir: Path, run_id: str | None = None) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        mode = wandb_mode(cfg.run.wandb_mode)
        self.run = wandb.init(project=cfg.run.wandb_project, dir=str(run_dir), mode=mode, id=run_id,
                              resume="allow" if run_id else None, config=cfg.to_dict(),
                              name=cfg.run.name or run_dir.name, group=cfg.run.group or None,
                              job_type=cfg.run.job_type or None, tags=list(cfg.run.tags) or None,
                              settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("env_steps")
        self.run.define_metric("*", step_metric="env_steps")
        self.eval_path = RunFiles(run_dir).eval_csv
        if not self.eval_path.exists():
            with self.eval_path.open("w", newline="") as f:
                csv.writer(f).writerow(EVAL_COLUMNS)
        # Progress goes to stderr, leaving stdout to results (the JSON summary, bench output).
        self._tty = sys.stderr.isatty()
        self._last_line = 0.0
        self._last_text = ""
        self._wandb_lost = False
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

    def note(self, key: str, value: Any) -> None:
        """A fact about the run that is not a time series (e.g. the learner's execution mode): W&B config `key`."""
        self._to_wandb(lambda: self.run.config.update({key: value}, allow_val_change=True))

    def scalars(self, env_steps: int, values: dict[str, float]) -> None:
        self._to_wandb(lambda: self.run.log({"env_steps": env_steps, **values}))

    def image(self, env_steps: int, key: str, image: np.ndarray, caption: str) -> None:
        self._to_wandb(lambda: self.run.log({"env_steps": env_steps, key: wandb.Image(image, caption=caption)}))

    def video(self, env_steps: int, key: str, frames: np.ndarray, fps: int = 15) -> None:
        """Log uint8 frames [T, 3, H, W] as a GIF (no moviepy needed)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = write_gif(Path(tmp) / "episode.gif", frames, fps)
            self._to_wandb(lambda: self.run.log({"env_steps": env_steps, key: wandb.Video(str(path), format="gif")}))

    def evaluation(self, env_steps: int, scheduled: int, updates: int, version: int, returns: list[float]) -> None:
        """One row of eval.csv and the eval/ scalars; version 0 is the uniform random policy."""
        mean, std = float(np.mean(returns)), float(np.std(returns))
        with self.eval_path.open("a", newline="") as f:
            csv.writer(f).writerow([env_steps, scheduled, updates, version, f"{mean:.4f}", f"{std:.4f}",
                                    " ".join(f"{r:.4f}" for r in returns)])
        self.scalars(env_steps, {"eval/return": mean, "eval/return_std": std, "eval/policy_version": version})

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
        if self._tty:
            sys.stderr.write("\n")
        elif self._last_text:  # a log (a Ray job's, a file) ends with the run's final state
            print(self._last_text, file=sys.stderr, flush=True)
        def send() -> None:
            for key, value in summary.items():
                self.run.summary[key] = value
            self.run.finish()

        self._to_wandb(send)
