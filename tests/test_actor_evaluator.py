"""The evaluator: episodes in lockstep on kept environments return what one episode at a time on fresh ones does.

The reference is the evaluator as it was (actors/evaluator.py before the lockstep): for each episode a new env
built with its seed, a one-row feature ring, and the policy's actions drawn with that episode's own generator.
A kept env reset with a seed must start where a fresh env built with that seed starts (dm_control keeps its
task's RNG in the task, gymnasium in the env), and batching rows must change neither an episode's random draws
nor its rounding: the returns agree bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from actors.evaluator import Evaluator, episode_seeds
from actors.history import FeatureRing
from common.config import Config, debug, parse_cli
from common.envs import make_env
from common.policy import Policy
from common.probe import has_filter
from learner.learner import Learner

pytestmark = pytest.mark.unit

torch.set_num_threads(1)
A = 2


class _SeededEnv:
    """A cheap pixel env whose episode length, frames and reward depend on its seed and the actions: episodes
    end at different steps, and a return shows every action taken."""

    def __init__(self, seed: int, calls: list[int] | None = None) -> None:
        self.action_dim = A
        if calls is not None:
            calls.append(seed)
        self._seed_with(seed)

    def _seed_with(self, seed: int) -> None:
        self.rng, self.length = np.random.default_rng(seed), 3 + seed % 9

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._seed_with(seed)
        self.t = 0
        return self.rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, int]]:
        self.t += 1
        reward = float(np.dot(action, [1.0, 0.5]))
        return self.rng.integers(0, 256, (3, 64, 64), dtype=np.uint8), reward, False, self.t >= self.length, {
            "env_steps": 2}

    def close(self) -> None:
        pass


class _UnseedableEnv(_SeededEnv):
    """An adapter whose reset takes no seed (as a test's or a user's own may be): rebuilt for every episode."""

    def reset(self) -> np.ndarray:  # type: ignore[override]
        return super().reset()


def one_at_a_time(cfg: Config, factory: Any, weights: dict[str, Any] | None, episodes: int, seed: int,
                  deterministic: bool = False) -> list[float]:
    """The reference: each episode alone on a fresh env, its noise from its own generator, the policy's kernels
    those the evaluator uses (`row_invariant`: PyTorch's conv kernels, also for the ring's first encoding of tau
    copies of the first frame, which would otherwise go to oneDNN and round differently)."""
    policy = Policy.from_weights(weights) if weights is not None else None
    if policy is not None:
        policy.row_invariant = True
    returns = []
    for episode in range(episodes):
        env_seed, noise_seed = episode_seeds(seed, episode)
        env = factory(env_seed)
        ring = FeatureRing(1, cfg.model.sequence_length, env.action_dim, cfg.model.feature_dim)
        ring.reset(0, env.reset())
        generator, uniform = torch.Generator().manual_seed(noise_seed), np.random.default_rng(noise_seed)
        total, done = 0.0, False
        while not done:
            if policy is None:
                action = uniform.uniform(-1.0, 1.0, env.action_dim).astype(np.float32)
            else:
                action = ring.act(policy, deterministic=deterministic, generator=generator)[0]
            obs, reward, terminated, truncated, _ = env.step(action)
            ring.push(0, action, obs)
            total, done = total + reward, terminated or truncated
        env.close()
        returns.append(total)
    return returns


@pytest.mark.parametrize("task", ["cartpole_swingup", "hopper"])
def test_a_kept_env_reset_with_a_seed_plays_as_a_fresh_env_built_with_it(task: str) -> None:
    def play(env: Any, seed: int | None) -> tuple[np.ndarray, ...]:
        frames, rewards, states = [env.reset(seed=seed)], [], [env.state()]
        for action in np.random.default_rng(0).uniform(-1, 1, (15, env.action_dim)):
            obs, reward, *_ = env.step(action)
            frames.append(obs)
            rewards.append(reward)
            states.append(env.state())
        return np.stack(frames), np.array(rewards), np.stack(states)

    fresh = make_env(task, seed=11)
    expected = play(fresh, None)
    fresh.close()
    kept = make_env(task, seed=5)
    play(kept, None)  # an episode of its own first: the task's RNG and the physics have moved on
    got = play(kept, 11)
    assert len(kept.state_names) == got[2].shape[1]
    kept.close()
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(expected[2][0], play(make_env(task, seed=12), None)[2][0])  # seeds matter


def test_lockstep_episodes_return_what_one_at_a_time_returns() -> None:
    cfg = debug()
    blob = Learner(cfg, A, seed=1).actor_weights(4)
    evaluator = Evaluator(cfg, env_factory=_SeededEnv)
    for weights, deterministic in ((blob, False), (blob, True), (None, False)):
        result = evaluator.evaluate(weights, 6, seed=3, deterministic=deterministic)
        assert len(set(result["lengths"])) > 1  # episodes end at different steps and drop out of the batch
        # Bit for bit: the same draws, and each row computed as a batch of one (Policy.row_invariant).
        assert result["returns"] == one_at_a_time(cfg, _SeededEnv, weights, 6, 3, deterministic)
        assert result["env_steps"] == [2 * n for n in result["lengths"]]
    # The noise is the episode's own: the first episodes of a larger evaluation play as they did.
    assert evaluator.evaluate(blob, 3, seed=3)["returns"] == evaluator.evaluate(blob, 6, seed=3)["returns"][:3]
    # More episodes than slots: waves of at most max_slots, on that many kept envs, the same returns.
    waves = Evaluator(cfg, env_factory=_SeededEnv, max_slots=4)
    result = waves.evaluate(blob, 10, seed=3, record_video=True)
    assert result["returns"] == one_at_a_time(cfg, _SeededEnv, blob, 10, 3) and len(waves._envs) == 4
    assert len(result["video"]) == result["lengths"][0] + 1  # the first episode's frames only
    # Stochastic and deterministic differ, and so do evaluation seeds.
    assert evaluator.evaluate(blob, 2, seed=3)["returns"] != evaluator.evaluate(blob, 2, seed=4)["returns"]


def test_lockstep_matches_one_at_a_time_on_dm_control_and_keeps_its_envs() -> None:
    cfg = parse_cli(["debug", "--run.task", "cartpole_swingup", "--task.episode-length", "160"])
    blob = Learner(cfg, 1, seed=2).actor_weights(1)
    built: list[int] = []

    def factory(seed: int) -> Any:
        built.append(seed)
        return make_env(cfg.task_spec, seed)

    evaluator = Evaluator(cfg, env_factory=factory)
    first = evaluator.evaluate(blob, 3, seed=7, record_video=True)
    second = evaluator.evaluate(blob, 3, seed=8)
    assert len(built) == 3, "one env per episode slot, kept for the next evaluation"
    assert first["lengths"] == [20, 20, 20] and first["video"].shape == (21, 3, 64, 64) and second["video"] is None
    assert second["returns"] == one_at_a_time(cfg, lambda s: make_env(cfg.task_spec, s), blob, 3, 8)
    assert first["returns"] != second["returns"]
    evaluator.close()


def test_an_env_without_a_seeded_reset_is_rebuilt_for_each_episode() -> None:
    cfg = debug()
    built: list[int] = []
    evaluator = Evaluator(cfg, env_factory=lambda seed: _UnseedableEnv(seed, built))
    first = evaluator.evaluate(None, 2, seed=1)
    assert built == [episode_seeds(1, k)[0] for k in range(2)]  # the first evaluation uses the envs as built
    second = evaluator.evaluate(None, 2, seed=2)
    assert built[2:] == [episode_seeds(2, k)[0] for k in range(2)]
    assert second["returns"] == one_at_a_time(cfg, _SeededEnv, None, 2, 2)
    assert first["returns"] == one_at_a_time(cfg, _SeededEnv, None, 2, 1)


def test_an_env_that_raises_is_replaced_at_the_next_evaluation() -> None:
    built: list[int] = []

    class Broken(_SeededEnv):
        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, int]]:
            raise RuntimeError("simulated MuJoCo instability")

    evaluator = Evaluator(debug(), env_factory=lambda seed: (Broken if not built else _SeededEnv)(seed, built))
    with pytest.raises(RuntimeError, match="instability"):
        evaluator.evaluate(None, 2, seed=0)
    assert len(evaluator.evaluate(None, 2, seed=0)["returns"]) == 2 and len(built) == 4


def test_the_probe_reads_the_state_from_the_latents_the_blob_can_filter() -> None:
    cfg = parse_cli(["debug", "--run.task", "cartpole_swingup", "--task.episode-length", "160"])
    learner = Learner(cfg, 1, seed=3)
    with_filter = learner.actor_weights(2)  # debug sizes, one action: cartpole's; the learner publishes the filter
    assert has_filter(with_filter)
    blob = dict(with_filter, state_dict={k: v for k, v in with_filter["state_dict"].items()  # an older learner's
                                         if k.split(".", 1)[0] in ("encoder", "actor")})
    evaluator = Evaluator(cfg)
    # No probe, and the reason in one line: the blob lacks the latent model, or one episode cannot be split.
    for weights, episodes, why in ((blob, 2, "encoder and actor only"), (with_filter, 1, "at least 2 episodes")):
        result = evaluator.evaluate(weights, episodes, seed=0)
        assert result["probe"] is None and why in result["probe_note"]
    assert evaluator.evaluate(None, 2, seed=0)["probe_note"] is None  # version 0: no latent model, as expected
    two = Learner(cfg, A, seed=3)
    two_blob = two.actor_weights(1)
    own = Evaluator(cfg, env_factory=_SeededEnv).evaluate(two_blob, 2, seed=0)  # an env without a state
    assert own["probe"] is None and "exposes no simulator state" in own["probe_note"]
    result = evaluator.evaluate(with_filter, 4, seed=0, keep_latents=True)
    names = ("slider", "hinge_1_cos", "hinge_1_sin", "slider_vel", "hinge_1_vel")
    assert result["state_names"] == names
    assert set(result["probe"]) == {f"probe/r2/{n}" for n in names} | {"probe/r2_mean"}
    assert all(np.isfinite(v) for v in result["probe"].values()) and result["probe_s"] > 0
    z_dim = cfg.model.z1_dim + cfg.model.z2_dim
    assert [z.shape for z in result["latents"]] == [(20, z_dim)] * 4
    assert [s.shape for s in result["states"]] == [(20, len(names))] * 4
    # The first state of each episode is its initial state: the pole hangs down (cos near -1).
    assert all(s[0, 1] < -0.9 for s in result["states"])
    # The probe does not change the episodes.
    assert result["returns"] == evaluator.evaluate(blob, 4, seed=0)["returns"]
    evaluator.close()
