"""The actor process's time accounting, against a real redis-server: what tells a user the run is learner-bound."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from actors.worker import ActorWorker
from common.config import debug
from replay_service import RateLimitTimeout
from replay_service.limiter import poll_until

pytestmark = pytest.mark.integration


class _RandomFrames:
    """A cheap stand-in for a pixel env: random frames, episodes of 50 steps."""

    action_dim = 2

    def __init__(self, seed: int) -> None:
        self.rng, self.t = np.random.default_rng(seed), 0

    def reset(self) -> np.ndarray:
        self.t = 0
        return self.rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        frame = self.rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
        return frame, 0.0, False, self.t >= 50, {"env_steps": 1}

    def close(self) -> None:
        pass


class _NoWeights:
    """No policy is ever published: the actor stays in the initial collection (uniform actions)."""

    def latest(self, have_version: int) -> None:
        return None


def test_poll_counts_a_write_held_by_the_rate_limiter_while_it_waits(url: str) -> None:
    cfg = debug()
    # Inserts may run 2 transitions ahead of a learner that never samples: the third flush is held.
    cfg = replace(cfg, replay=replace(cfg.replay, min_size=1, spi_tolerance=1.0, flush_every=1, writer_timeout_s=0.2),
                  actors=replace(cfg.actors, envs_per_actor=1))
    worker = ActorWorker(cfg, 0, url, _NoWeights(), env_factory=_RandomFrames)

    def run() -> None:
        try:
            worker.run()
        except RateLimitTimeout:
            pass  # stopped while held: closing the writer cannot flush its last step either

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        def timeouts() -> float:
            return worker.poll()["counters"]["limiter_timeouts"]

        assert poll_until(lambda: timeouts() >= 1, 30), "the rate limiter never held the writer"
        first = worker.poll()["counters"]
        assert poll_until(lambda: timeouts() >= first["limiter_timeouts"] + 2, 30)
        second = worker.poll()["counters"]
        assert second["steps"] == first["steps"]  # held: no step went through
        # Two more writer timeouts of 0.2 s passed inside the same, unfinished write: already counted.
        assert second["replay_s"] - first["replay_s"] >= 0.3
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()


def test_two_actors_stop_themselves_at_the_runs_length_within_a_flush_each(url: str) -> None:
    """The run's length as a replay total: each actor sees it at its next flush and stops, however late the
    driver would have polled; together they overshoot by at most one flush per env."""
    cfg = debug()
    cfg = replace(cfg, replay=replace(cfg.replay, min_size=1, spi_tolerance=10_000.0, flush_every=7),
                  actors=replace(cfg.actors, envs_per_actor=2))
    workers = [ActorWorker(cfg, i, url, _NoWeights(), env_factory=_RandomFrames) for i in range(2)]
    target = 300
    results: list[dict[str, float]] = []
    threads = [threading.Thread(target=lambda w=w: results.append(w.run(stop_at_inserted=target)), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2, "an actor did not stop at the run's length"
    steps = sum(r["steps"] for r in results)  # one transition per env step, each stored at close
    assert target <= steps <= target + 2 * 2 * cfg.replay.flush_every, steps
