"""Reverb's SampleToInsertRatio rate limiter over counters that live in Redis.

With inserted transitions I, recorded samples S, ratio spi, min size m and tolerance tol (in
transitions), the distance from the target line is d = I * spi - S, and
    inserts are allowed while  d <= m * spi + spi * tol,
    samples are allowed while  I >= m  and  d >= m * spi - spi * tol.
So writers block once they are `tol` transitions ahead of the learner's pace, and the learner may run
`tol` transitions' worth of samples ahead before it waits. The flush script (writer.py) evaluates the
insert rule in Lua with the same formula, atomically with the write, so every writer on every node
sees one limiter. A flush is admitted or refused whole, so inserts may overshoot by one flush.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from common.config import ReplayConfig


@dataclass(frozen=True)
class RateLimit:
    """The limiter's three numbers (ReplayConfig.min_size, samples_per_insert, spi_tolerance)."""

    min_size: int
    samples_per_insert: float
    tolerance: float

    @classmethod
    def from_config(cls, cfg: ReplayConfig) -> RateLimit:
        return cls(cfg.min_size, float(cfg.samples_per_insert), float(cfg.spi_tolerance))

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> RateLimit:
        """Read the settings the learner recorded in the replay's metadata hash."""
        return cls(int(meta["min_size"]), float(meta["samples_per_insert"]), float(meta["spi_tolerance"]))

    def can_insert(self, inserted: int, sampled: int) -> bool:
        spi = self.samples_per_insert
        return inserted * spi - sampled <= self.min_size * spi + spi * self.tolerance

    def can_sample(self, inserted: int, sampled: int) -> bool:
        spi = self.samples_per_insert
        return inserted >= self.min_size and inserted * spi - sampled >= self.min_size * spi - spi * self.tolerance


def poll_until(condition: Callable[[], bool], timeout_s: float, first_delay_s: float = 0.001,
               max_delay_s: float = 0.05) -> bool:
    """Evaluate `condition` with exponential backoff until it holds (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    delay = first_delay_s
    while True:
        if condition():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(2 * delay, max_delay_s)
