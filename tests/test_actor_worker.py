"""The actor process against a real redis-server: its time accounting (what tells a user the run is
learner-bound), its stop at the run's length, and its acting, which must be the full-history policy's."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from acting_tools import CFG, TAU, A, _FrameEnv, _perturbed_weights

from actors.history import History, stack_histories
from actors.worker import ActorWorker
from common.config import debug
from common.policy import Policy
from learner.learner import Learner
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


class _NewVersionEverySync:
    def __init__(self, blobs: dict[int, dict]) -> None:
        self.blobs = blobs

    def latest(self, have_version: int) -> dict | None:
        return self.blobs.get(have_version + 1)


def test_actor_worker_acts_as_the_full_history_policy(url: str) -> None:
    from dataclasses import replace

    from actors.worker import ActorWorker

    steps, sync = 45, CFG.actors.weight_sync_every
    cfg = replace(CFG, actors=replace(CFG.actors, envs_per_actor=2))
    learner = Learner(cfg, A, seed=5)
    blobs = {v: _perturbed_weights(learner, v, 0.05) for v in range(1, steps // sync + 2)}
    envs: list[_FrameEnv] = []
    factory = lambda seed: envs.append(_FrameEnv(seed, length=(7, 5)[len(envs)])) or envs[-1]  # noqa: E731
    worker = ActorWorker(cfg, 0, url, _NewVersionEverySync(blobs), env_factory=factory)
    counters = worker.run(max_steps=steps)
    assert counters["steps"] == 2 * steps and counters["policy_version"] == steps // sync + 1
    assert min(counters["policy_s"], counters["env_s"], counters["replay_s"]) > 0
    assert counters["loop_s"] >= counters["policy_s"] + counters["env_s"] + counters["replay_s"]

    # Replay the envs' logs through the reference path: full histories, the same weights and noise stream.
    reference = Policy.from_weights(blobs[1], seed=worker._seed)
    histories, logs = [History(TAU, A) for _ in envs], [iter(env.log) for env in envs]
    for history, log in zip(histories, logs, strict=True):
        history.reset(next(log)[1])
    pending: list = [None, None]
    for step in range(steps):
        if step % sync == 0 and step:
            reference.load_weights(blobs[step // sync + 1])
        expected = reference.act(*stack_histories(histories))
        for k, (history, log) in enumerate(zip(histories, logs, strict=True)):
            kind, frame, action = pending[k] or next(log)
            assert kind == "step"
            np.testing.assert_allclose(action, expected[k], rtol=0, atol=1e-5, err_msg=f"step {step} env {k}")
            history.push(action, frame)
            pending[k] = next(log, None)
            if pending[k] is not None and pending[k][0] == "reset":
                history.reset(pending[k][1])
                pending[k] = None


class _FailsFrom(_RandomFrames):
    """Steps well for GOOD steps in all (over every env built), then every step raises."""

    GOOD = 60
    stepped = 0

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if _FailsFrom.stepped >= self.GOOD:
            raise RuntimeError("the simulator diverged")
        _FailsFrom.stepped += 1
        return super().step(action)


def test_an_env_that_fails_every_step_after_its_rebuilds_ends_the_actors_run(url: str) -> None:
    """One failure is rebuilt and counted; ENV_ERRORS_IN_A_ROW of them with no good step between end the run with
    the cause named (the fleet then restarts the actor up to actors.max_restarts and stops the run), instead of
    a warning per step for ever."""
    from actors.worker import ENV_ERRORS_IN_A_ROW

    cfg = debug()
    cfg = replace(cfg, replay=replace(cfg.replay, min_size=1, spi_tolerance=10_000.0),
                  actors=replace(cfg.actors, envs_per_actor=1))
    _FailsFrom.stepped = 0
    worker = ActorWorker(cfg, 0, url, _NoWeights(), env_factory=_FailsFrom)
    with pytest.raises(RuntimeError, match=rf"raised on {ENV_ERRORS_IN_A_ROW} steps in a row.*the simulator diverged"):
        worker.run(max_steps=1_000)
    assert worker.poll()["counters"]["env_errors"] == ENV_ERRORS_IN_A_ROW
    assert worker.poll()["counters"]["steps"] == _FailsFrom.GOOD  # its good steps went through first
