"""Evaluation episodes in their own process, away from the training actors.

Appendix C: SLAC evaluates with the same stochastic policy it behaves with. Before the learner has
published a policy the agent acts uniformly at random (the initial collection), and that is what an
evaluation then measures: the paper's step-0 point, and the random-policy baseline under the same
protocol. The evaluator never writes to replay; it returns the episodes' returns and, when asked, the
frames of the first episode for the W&B video.

Cheap on a small CPU: each episode slot keeps one environment (and its GL context) for the life of the
process, reset with the episode's seed, which starts it where a fresh env built with that seed starts
(common/envs.py); the episodes run in lockstep, one batched policy call per agent step for those still
running. Each episode draws its action noise (or its uniform random actions) from its own generator seeded
from the evaluation seed and its index, so batching changes no draw, and the policy computes each row as a
batch of one (`Policy.row_invariant`), so batching changes no rounding either: the returns are those of playing
the episodes one at a time, bit for bit (tests/test_actor_evaluator.py plays both). An env whose `reset` takes
no seed (a test's or a user's own adapter) is rebuilt for each episode instead, as before. Measured on 2 cores
(10 episodes of cartpole_swingup, cpu preset networks): 8.2 s per evaluation with a new env per episode and
one episode after another, 5.8 s now, of which about 3.5 s rendering and 1.1 s physics.

The latent probe (common/probe.py): when the weights blob carries the latent model's filtering networks and
the env exposes its simulator state (`state_names`), the evaluator also records the true state at every agent
step and returns `probe`: held-out R^2 of a ridge regression from the latent the critic sees to each state
dimension. Otherwise `probe` is None and `probe_note` says why in one line, for the caller to log where its logs
are seen (an evaluator in a Ray process logs below WARNING nowhere); version 0 (random actions, no weights) has
no latent, no probe and no note. The probe reuses the features the policy computed; it adds about 0.05 s to the
evaluation above (1 s with the paper's latents on 10 episodes of 250 steps).
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from actors.history import FeatureRing
from actors.worker import EnvFactory, default_env_factory, derive_seed
from common.config import Config
from common.envs import PixelEnv
from common.latent_model import LatentModel
from common.policy import Policy
from common.priority import set_niceness
from common.probe import critic_latents, filter_model, has_filter, ridge_r2
from common.rendering import rendered_with

log = logging.getLogger(__name__)


def episode_seeds(seed: int, episode: int) -> tuple[int, int]:
    """(env seed, action-noise seed) of evaluation episode `episode`; examples/play_exported.py plays the same
    initial states from the env seed."""
    return derive_seed(seed, episode), derive_seed(seed, episode, 1)


def _takes_seed(env: PixelEnv) -> bool:
    try:
        return "seed" in inspect.signature(env.reset).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class _Episodes:
    """What one evaluation's episodes produced, per episode; the probe's columns only when probing."""

    returns: list[float]
    lengths: list[int]
    env_steps: list[int]
    frames: list[np.ndarray] = field(default_factory=list)
    features: list[list[np.ndarray]] = field(default_factory=list)
    actions: list[list[np.ndarray]] = field(default_factory=list)
    states: list[list[np.ndarray]] = field(default_factory=list)

    def extend(self, other: _Episodes) -> None:
        """Append the next wave's episodes (their indices follow these)."""
        for name in ("returns", "lengths", "env_steps", "frames", "features", "actions", "states"):
            getattr(self, name).extend(getattr(other, name))


MAX_SLOTS = 10
"""Episodes an evaluator plays at once (and envs it keeps): a larger evaluation plays in waves of this many.
Each env holds a GL context and a simulator (about 45 MiB each for cartpole_swingup with EGL here), so 100 at
once would take 4.7 GiB; the paper's protocol is 10, which one wave plays."""


class Evaluator:
    """Runs whole evaluation episodes with a given weights blob, on environments it keeps between calls."""

    def __init__(self, cfg: Config, env_factory: EnvFactory | None = None, max_slots: int = MAX_SLOTS) -> None:
        torch.set_num_threads(1)
        self.max_slots = max_slots
        set_niceness(cfg.actors.nice)  # an evaluation never takes the learner's core (common/priority.py)
        self.cfg = cfg
        self.env_factory = env_factory or default_env_factory(cfg)
        self._envs: list[PixelEnv] = []
        self._seedable: list[bool] = []
        self._unused_seed: list[int | None] = []  # the seed a slot's env was built with, until its first reset
        self._filter: LatentModel | None = None

    def evaluate(self, weights: dict[str, Any] | None, episodes: int, seed: int, record_video: bool = False,
                 deterministic: bool = False, keep_latents: bool = False) -> dict[str, Any]:
        """Play `episodes` episodes; returns returns, lengths, env steps, optionally the first episode's frames
        (`video`), and the latent probe's R^2 (`probe`, None where there is none, with `probe_note` saying why;
        `probe_s` its seconds).

        `weights` None plays uniform random actions in [-1, 1] (policy version 0). `deterministic` acts with
        tanh of the policy's mean instead of sampling (`make eval` reports both). `keep_latents` also returns
        each episode's critic latents and states (`latents`, `states`), for analysis and tests.
        """
        policy = Policy.from_weights(weights) if weights is not None else None
        if policy is not None:
            policy.row_invariant = True  # an episode's actions do not depend on which episodes share its batch
        try:
            played, names, note = _Episodes([], [], []), None, None
            # Waves of at most max_slots episodes; episode k keeps its own seeds whichever wave and slot play it.
            for start in range(0, episodes, self.max_slots):
                indices = list(range(start, min(episodes, start + self.max_slots)))
                firsts = [self._start(slot, episode_seeds(seed, k)[0]) for slot, k in enumerate(indices)]
                if start == 0:
                    names, note = self._probe_names(weights, episodes)
                played.extend(self._play(policy, firsts, indices, seed, record_video and start == 0, deterministic,
                                         probing=names is not None))
        except BaseException:
            self.close()  # an env that raised may be broken: the next evaluation builds fresh ones
            raise
        result: dict[str, Any] = {
            "version": policy.version if policy is not None else 0, "returns": played.returns,
            "lengths": played.lengths, "env_steps": played.env_steps,
            "video": np.stack(played.frames) if played.frames else None, "renderer": rendered_with(),
            "probe": None, "probe_note": note, "probe_s": 0.0}
        if names is not None and weights is not None:
            started = time.perf_counter()
            self._filter = filter_model(weights, self._filter)
            generator = torch.Generator().manual_seed(derive_seed(seed, 0xFFFF))
            latents = critic_latents(self._filter, [np.stack(f) for f in played.features],
                                     [np.stack(a) for a in played.actions], generator)
            states = [np.stack(s) for s in played.states]
            result["probe"] = ridge_r2(latents, states, names)
            result["probe_s"] = time.perf_counter() - started
            if keep_latents:
                result.update(latents=latents, states=states, state_names=names)
        return result

    def close(self) -> None:
        """Close every kept environment (an evaluation after this builds new ones)."""
        for env in self._envs:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - a broken env may fail to close; it is dropped anyway
                log.debug("closing an evaluation env raised", exc_info=True)
        self._envs, self._seedable, self._unused_seed = [], [], []

    def _start(self, k: int, env_seed: int) -> np.ndarray:
        """Slot k's first frame of an episode seeded `env_seed`: its kept env reset with that seed, or a new env."""
        if k == len(self._envs):
            env = self.env_factory(env_seed)
            self._envs.append(env)
            self._seedable.append(_takes_seed(env))
            self._unused_seed.append(env_seed)
        elif not self._seedable[k] and self._unused_seed[k] != env_seed:
            self._envs[k].close()
            self._envs[k], self._unused_seed[k] = self.env_factory(env_seed), env_seed
        self._unused_seed[k] = None
        return self._envs[k].reset(seed=env_seed) if self._seedable[k] else self._envs[k].reset()

    def _probe_names(self, weights: dict[str, Any] | None, episodes: int) -> tuple[tuple[str, ...] | None, str | None]:
        """(the state's names, None) when this evaluation can run the latent probe, else (None, why not)."""
        if weights is None:
            return None, None  # version 0: random actions, no latent model yet
        if not has_filter(weights):
            return None, ("latent probe skipped: the published weights hold the encoder and actor only, not the "
                          "latent model's filtering networks (common/probe.py FILTER_MODULES); `make eval` probes "
                          "from a checkpoint")
        if episodes < 2:
            return None, (f"latent probe skipped: it needs at least 2 episodes per evaluation (it fits on half and "
                          f"scores on the other half), this one has {episodes} (run.eval_episodes)")
        names = getattr(self._envs[0], "state_names", None)
        if names is None:
            return None, (f"latent probe skipped: task {self.cfg.run.task} exposes no simulator state (dm_control "
                          "and gymnasium MuJoCo envs do)")
        return tuple(names), None

    def _play(self, policy: Policy | None, firsts: list[np.ndarray], indices: list[int], seed: int,
              record_video: bool, deterministic: bool, probing: bool) -> _Episodes:
        """Step one wave's episodes (evaluation episodes `indices`, on slots 0..) in lockstep until each has
        ended; one policy call per agent step for those running."""
        n, envs = len(firsts), self._envs[:len(firsts)]
        out = _Episodes([0.0] * n, [0] * n, [0] * n)
        if n == 0:
            return out
        action_dim = envs[0].action_dim
        if probing:
            out.features, out.actions, out.states = [[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)]
        ring = FeatureRing(n, self.cfg.model.sequence_length, action_dim, self.cfg.model.feature_dim)
        for k, obs in enumerate(firsts):
            ring.reset(k, obs)
        if record_video and n:
            out.frames.append(firsts[0])
        noise_seeds = [episode_seeds(seed, k)[1] for k in indices]
        generators = [torch.Generator().manual_seed(s) for s in noise_seeds]
        uniforms = [np.random.default_rng(s) for s in noise_seeds]
        running = list(range(n))
        while running:
            if policy is None:
                actions = np.stack([uniforms[k].uniform(-1.0, 1.0, action_dim).astype(np.float32) for k in running])
            else:
                ring.encode(policy)
                rows = np.asarray(running)
                features, history = (ring.features, ring.actions) if len(rows) == n else (
                    ring.features[rows], ring.actions[rows])
                eps = None if deterministic else torch.cat(
                    [torch.randn((1, action_dim), generator=generators[k]) for k in running])
                actions = policy.act_encoded(features, history, deterministic=deterministic, eps=eps)
            still = []
            for i, k in enumerate(running):
                if probing:  # the frame the agent acts at: its features (the ring's newest), action and true state
                    out.features[k].append(features[i, -1].copy())
                    out.actions[k].append(actions[i])
                    out.states[k].append(envs[k].state())  # type: ignore[attr-defined]
                obs, reward, terminated, truncated, info = envs[k].step(actions[i])
                out.returns[k] += reward
                out.lengths[k] += 1
                out.env_steps[k] += info["env_steps"]
                if record_video and k == 0:
                    out.frames.append(obs)
                if not (terminated or truncated):
                    ring.push(k, actions[i], obs)
                    still.append(k)
            running = still
        return out
