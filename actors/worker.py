"""The actor process: step K environments with a CPU copy of the policy and write every step to replay.

Algorithm 1's inner loop, one process per actor: a[t] ~ pi(a | x[t-tau+1..t], a[t-tau+1..t-1]) with
the stochastic policy (appendix C), uniform random actions until the learner publishes its first
weights (the initial collection), newer weights pulled every `actors.weight_sync_every` steps. The
policy acts through a `FeatureRing`, which encodes each frame once (and the stored frames again after
a weight refresh) instead of all tau frames at every step. An
environment that raises (MuJoCo instability) is rebuilt and counted; it never kills the process. One that
breaks gymnasium's contract (a TaskError: an old 4-value step, a vector reward) or fails ENV_ERRORS_IN_A_ROW
times in a row, rebuilt each time, ends the actor's run instead: rebuilding it cannot help, and the run
(actors.max_restarts) stops with a paragraph rather than retrying for ever.
deploy/ wraps this class in `ray.remote(max_restarts=..., max_concurrency=2)` so `poll` and `stop`
answer while `run` loops; a restarted process gets `run(life + 1)` and therefore fresh seeds.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import ray
import torch

from actors.history import FeatureRing
from common.config import Config
from common.envs import PixelEnv, make_env
from common.policy import Policy
from common.priority import set_niceness
from common.rendering import rendered_with
from common.run_files import RunFiles
from common.tasks import TaskError
from replay_service import RateLimitTimeout, ReplayWriter

log = logging.getLogger(__name__)

ENV_ERRORS_IN_A_ROW = 20
"""Failures of one env with no successful step between them (each on a rebuilt env) that end the actor's run."""

EnvFactory = Callable[[int], PixelEnv]
"""Builds an environment from a seed; the default is `make_env(cfg.task_spec, seed)`."""


class WeightSource(Protocol):
    """Where published actor weights come from (deploy passes a Ray-backed one)."""

    def latest(self, have_version: int) -> dict[str, Any] | None:
        """The newest weights blob if its version is above `have_version`, else None."""
        ...


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from (run seed, actor index, life, ...): distinct streams for distinct parts."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def default_env_factory(cfg: Config) -> EnvFactory:
    """The run's task as config.json resolved it: the same env in every process, whatever its registry holds."""
    return functools.partial(make_env, cfg.task_spec, image_size=cfg.model.image_size)


class ActorWorker:
    """Owns `actors.envs_per_actor` environments, their histories and replay writers."""

    def __init__(self, cfg: Config, index: int, replay_url: str, weights: WeightSource,
                 env_factory: EnvFactory | None = None, generation: int = 0) -> None:
        torch.set_num_threads(1)  # several actors share the cores; OpenMP stalls otherwise
        set_niceness(cfg.actors.nice)  # the learner's threads come first (common/priority.py)
        self.cfg, self.index, self.replay_url, self.weights = cfg, index, replay_url, weights
        self.env_factory = env_factory or default_env_factory(cfg)
        self.generation = generation  # bumped on each resume, so a resumed run draws new seeds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._policy: Policy | None = None
        # *_s: seconds spent acting (policy and feature ring), stepping and rendering envs, writing replay
        # (including waits on the rate limiter), and in the whole loop: where an actor's time goes.
        self._counters: dict[str, float] = {"steps": 0, "env_steps": 0, "env_errors": 0, "limiter_timeouts": 0,
                                             "version_lag": 0, "policy_version": 0, "policy_s": 0.0, "env_s": 0.0,
                                             "replay_s": 0.0, "loop_s": 0.0}
        self._episodes: list[dict[str, float]] = []
        self._writing_since: float | None = None  # perf_counter() at the start of the replay write under way
        self._rate_mark = (time.monotonic(), 0)
        self._node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""

    # --- called from the driver while `run` loops (max_concurrency=2) -----------------------------
    def poll(self) -> dict[str, Any]:
        """Counters so far and the episodes finished since the last poll (then forgotten)."""
        with self._lock:
            episodes, self._episodes = self._episodes, []
            counters = dict(self._counters)
            # Transitions this life's writers have had acknowledged by the replay (what the run's replay must hold).
            counters["steps_written"] = sum(w.stats()["steps_written"] for w in getattr(self, "_writers", []))
            if self._writing_since is not None:  # a write in progress, perhaps held by the rate limiter
                counters["replay_s"] += time.perf_counter() - self._writing_since
        now, steps = time.monotonic(), counters["steps"]
        mark_time, mark_steps = self._rate_mark
        self._rate_mark = (now, steps)
        counters["steps_per_s"] = (steps - mark_steps) / max(now - mark_time, 1e-6)
        return {"index": self.index, "pid": os.getpid(), "node_id": self._node_id, "counters": counters,
                "episodes": episodes, "renderer": rendered_with()}

    def stop(self) -> None:
        self._stop.set()

    # --- the loop ---------------------------------------------------------------------------------
    def run(self, life: int = 0, max_steps: int | None = None, stop_at_inserted: int | None = None) -> dict[str, float]:
        """Act until `stop()`, or until the replay holds `stop_at_inserted` transitions in all (the run's
        length: every actor sees it at its next flush, so a run ends within a flush per env of its length
        however late the driver polls), or `max_steps` policy steps (benchmarks and tests); returns the
        final counters. `life` counts restarts of this actor."""
        seed = derive_seed(self.cfg.run.seed, self.index, life, self.generation)
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        k_envs = self.cfg.actors.envs_per_actor
        self._envs = [self.env_factory(derive_seed(seed, k)) for k in range(k_envs)]
        action_dim = self._envs[0].action_dim
        self._writers = [ReplayWriter(self.replay_url, self.cfg.replay, self.cfg.run.task, action_dim,
                                      writer_id=f"actor{self.index}-env{k}-life{life}-gen{self.generation}",
                                      audit_dir=RunFiles(Path(self.cfg.run.dir)).audit if self.cfg.replay.audit else None)
                         for k in range(k_envs)]
        self._ring = FeatureRing(k_envs, self.cfg.model.sequence_length, action_dim, self.cfg.model.feature_dim)
        self._returns = [0.0] * k_envs
        self._lengths = [0] * k_envs
        self._failing = [0] * k_envs  # each env's failures since its last successful step
        self._env_steps = [0] * k_envs
        for k in range(k_envs):
            self._begin_episode(k, self._envs[k].reset())
        step, loop_start = 0, time.perf_counter()
        try:
            while not self._stop.is_set() and (max_steps is None or step < max_steps) and not (
                    stop_at_inserted is not None and max(w.inserted for w in self._writers) >= stop_at_inserted):
                if step % self.cfg.actors.weight_sync_every == 0:
                    self._refresh_weights()
                start = time.perf_counter()
                actions = self._act(action_dim)
                self._add_time("policy_s", start)
                for k in range(k_envs):
                    self._step(k, actions[k])
                step += 1
        finally:
            self._add_time("loop_s", loop_start)
            for env in self._envs:
                env.close()
            for writer in self._writers:
                writer.close()
        return dict(self._counters)

    def _refresh_weights(self) -> None:
        have = self._policy.version if self._policy else 0
        blob = self.weights.latest(have)
        if blob is None:
            return
        lag = blob["version"] - have if self._policy else 0
        if self._policy is None:
            self._policy = Policy.from_weights(blob, seed=self._seed)
        else:
            self._policy.load_weights(blob)
        with self._lock:
            self._counters["version_lag"] = lag  # how stale the weights we acted with just were
            self._counters["policy_version"] = blob["version"]

    def _act(self, action_dim: int) -> np.ndarray:
        if self._policy is None:  # initial collection: uniform random actions
            return self._rng.uniform(-1.0, 1.0, size=(len(self._envs), action_dim)).astype(np.float32)
        return self._ring.act(self._policy)

    def _add_time(self, key: str, start: float) -> None:
        elapsed = time.perf_counter() - start
        with self._lock:
            self._counters[key] += elapsed

    def _step(self, k: int, action: np.ndarray) -> None:
        start = time.perf_counter()
        try:
            obs, reward, terminated, truncated, info = self._envs[k].step(action)
        except TaskError:
            raise  # the env breaks gymnasium's contract: a rebuilt one would too
        except Exception as exc:  # noqa: BLE001 - any env failure (e.g. MuJoCo instability) must not kill the actor
            self._recover_env(k, exc)
            return
        self._failing[k] = 0
        self._add_time("env_s", start)
        version = self._policy.version if self._policy else 0
        self._write(k, lambda w: w.add(action, reward, obs, terminated, truncated, version))
        self._ring.push(k, action, obs)
        self._returns[k] += reward
        self._lengths[k] += 1
        self._env_steps[k] += info["env_steps"]
        with self._lock:
            self._counters["steps"] += 1
            self._counters["env_steps"] += info["env_steps"]
        if terminated or truncated:
            with self._lock:
                self._episodes.append({"return": self._returns[k], "length": self._lengths[k],
                                       "env_steps": self._env_steps[k], "terminated": float(terminated)})
            self._begin_episode(k, self._envs[k].reset())

    def _write(self, k: int, op: Callable[[ReplayWriter], None]) -> None:
        """Run a writer operation; while the rate limiter holds us back, keep flushing until it lets go.

        Its time counts as `replay_s`, which `poll` reports live (a write still waiting included), so the
        driver sees the limiter holding the actors while it happens, not when the write finally returns.
        """
        with self._lock:
            self._writing_since = time.perf_counter()
        try:
            try:
                op(self._writers[k])
                return
            except RateLimitTimeout:
                pass
            while not self._stop.is_set():  # the step is buffered; only the flush is pending
                with self._lock:
                    self._counters["limiter_timeouts"] += 1
                try:
                    self._writers[k].flush()
                    return
                except RateLimitTimeout:
                    continue
        finally:
            with self._lock:
                self._counters["replay_s"] += time.perf_counter() - self._writing_since
                self._writing_since = None

    def _begin_episode(self, k: int, first_obs: np.ndarray) -> None:
        self._write(k, lambda w: w.begin_episode(first_obs))
        self._ring.reset(k, first_obs)
        self._returns[k], self._lengths[k], self._env_steps[k] = 0.0, 0, 0

    def _recover_env(self, k: int, exc: Exception) -> None:
        """Rebuild a failed env with a fresh seed and start a new episode; its flushed steps stay usable."""
        with self._lock:
            self._counters["env_errors"] += 1
            errors = int(self._counters["env_errors"])
        self._failing[k] += 1
        if self._failing[k] >= ENV_ERRORS_IN_A_ROW:
            raise RuntimeError(f"actor {self.index} env {k} raised on {self._failing[k]} steps in a row, rebuilt each "
                               f"time (last: {type(exc).__name__}: {exc}); the env cannot step. Fix the env (run it "
                               "alone with random actions) and resume the run.") from exc
        log.warning("actor %d env %d raised %s: %s; rebuilding it (env error #%d)", self.index, k,
                    type(exc).__name__, exc, errors)
        try:
            self._envs[k].close()
        except Exception:  # noqa: BLE001 - a broken env may fail to close; we replace it anyway
            log.debug("closing the failed env raised", exc_info=True)
        self._envs[k] = self.env_factory(derive_seed(int(self._rng.integers(2**31)), k, errors))
        self._begin_episode(k, self._envs[k].reset())
