"""When the driver asks the learner for a checkpoint, and which one is in flight.

By updates (`learner.checkpoint_every`), by time (`learner.checkpoint_every_s`, so that a learner that dies
loses at most that much work however slow its updates), and once as soon as the first policy is out, so the
model pre-training is never redone. One checkpoint is in flight at a time; the learner writes it on a
thread of its own while it goes on updating and answering polls (learner/process.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import ray

from common.config import LearnerConfig

log = logging.getLogger(__name__)


def _total(counters: dict[str, int]) -> int:
    return int(counters["updates"]) + int(counters["pretrain_updates"])


class CheckpointSchedule:
    """The driver's side of checkpointing: `tick(counters, start)` starts one when it is due."""

    def __init__(self, cfg: LearnerConfig, counters: dict[str, int]) -> None:
        self.cfg = cfg
        self.pending: Any = None
        """The ObjectRef of the checkpoint being written, if any."""
        self.restart_from(counters)

    def restart_from(self, counters: dict[str, int]) -> None:
        """Count from these counters (a resumed run's, or a restarted learner's checkpoint); forget any in flight."""
        self.pending = None
        self.last_updates, self.last_version = _total(counters), int(counters["version"])
        self.last_time = time.monotonic()

    def due(self, counters: dict[str, int]) -> bool:
        new = _total(counters) - self.last_updates
        return new >= self.cfg.checkpoint_every or (
            new > 0 and time.monotonic() - self.last_time >= self.cfg.checkpoint_every_s) or (
            new > 0 and counters["version"] > 0 and self.last_version == 0)

    def tick(self, counters: dict[str, int], start: Callable[[], Any]) -> None:
        """Log the checkpoint in flight once written; call `start()` (it returns the write's ObjectRef) when due."""
        if self.pending is not None:
            ready, _ = ray.wait([self.pending], timeout=0)
            if not ready:
                return
            try:
                log.info("checkpoint written: %s", ray.get(self.pending))
            except ray.exceptions.RayError as exc:  # the learner died writing it; the supervisor restarts it
                log.warning("checkpoint failed: %s", type(exc).__name__)
            self.pending = None
        if self.due(counters):
            self.pending = start()
            self.last_updates, self.last_version = _total(counters), int(counters["version"])
            self.last_time = time.monotonic()

    def wait(self) -> None:
        """Let the checkpoint in flight finish (the final one comes after it)."""
        if self.pending is not None:
            try:
                ray.get(self.pending)
            except ray.exceptions.RayError:
                log.warning("the checkpoint in flight failed; writing the final one")
            self.pending = None
