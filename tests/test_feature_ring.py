"""The actor's feature ring acts exactly as the full-history policy: same actions, same noise, less encoding.

The reference is `Policy.act` on the histories the old per-step path built (`History`, padded as in
common/batch.py: before tau frames, copies of the episode's first frame and zero actions), with the
current weights. The ring must match it across steps, episode starts at different times per
environment, and weight refreshes (which change the encoder, so stale features would show).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from acting_tools import CFG, TAU, A, _FrameEnv, _perturbed_weights

from actors.history import FeatureRing, History, stack_histories
from common.policy import Policy
from learner.learner import Learner

pytestmark = pytest.mark.unit

torch.set_num_threads(1)  # tiny networks: a second thread only adds contention on a shared 2-core box
F, K = CFG.model.feature_dim, 3


class _Frames:
    """Random 64x64 frames, a new one per call, seeded."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:
        return self.rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)


class _CountingPolicy(Policy):
    """A Policy that counts the frames it encodes."""

    frames_encoded = 0

    def encode(self, obs: np.ndarray) -> np.ndarray:
        self.frames_encoded += int(np.prod(obs.shape[:-3]))
        return super().encode(obs)


def test_ring_matches_full_history_across_steps_resets_and_refreshes() -> None:
    learner = Learner(CFG, A, seed=1)
    policy = _CountingPolicy.from_weights(learner.actor_weights(1), seed=0)
    frames = _Frames(0)
    ring = FeatureRing(K, TAU, A, F)
    reference = [History(TAU, A) for _ in range(K)]
    for k in range(K):
        first = frames()
        ring.reset(k, first)
        reference[k].reset(first)
    ring_noise, reference_noise = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    # Episodes end at different steps per env (the first ones before tau frames), refreshes mid-episode.
    ends = {(2, 0), (3, 1), (11, 2), (14, 0), (15, 1), (22, 2)}
    refreshes = {6: 2, 13: 3, 19: 4}
    for step in range(26):
        if step in refreshes:
            policy.load_weights(_perturbed_weights(learner, refreshes[step], 0.05))
        obs, actions = stack_histories(reference)
        np.testing.assert_array_equal(ring.ordered_obs(), obs)
        np.testing.assert_array_equal(ring.actions, actions)
        expected = policy.act(obs, actions, generator=reference_noise)
        before = policy.frames_encoded
        got = ring.act(policy, generator=ring_noise)
        spent = policy.frames_encoded - before
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=f"step {step}")
        np.testing.assert_allclose(ring.act(policy, deterministic=True), policy.act(obs, actions, deterministic=True),
                                   rtol=0, atol=1e-5)
        # Each step encodes one new frame per env; a refresh re-encodes the stored frames once.
        if step in refreshes:
            assert spent == K * TAU, f"refresh at step {step}"
        elif step > 0:
            assert spent == K, f"step {step}"
        for k in range(K):
            if (step, k) in ends:
                first = frames()
                ring.reset(k, first)
                reference[k].reset(first)
            else:
                nxt = frames()
                ring.push(k, got[k], nxt)
                reference[k].push(got[k], nxt)


def test_episode_start_is_the_all_first_frame_history() -> None:
    policy = Policy.from_weights(Learner(CFG, A, seed=2).actor_weights(1))
    ring = FeatureRing(1, TAU, A, F)
    first = _Frames(1)()
    ring.reset(0, first)
    obs = np.broadcast_to(first, (1, TAU, 3, 64, 64)).copy()
    actions = np.zeros((1, TAU - 1, A), np.float32)
    np.testing.assert_allclose(ring.act(policy, generator=torch.Generator().manual_seed(3)),
                               policy.act(obs, actions, seed=3), rtol=0, atol=1e-5)


def test_two_pushes_between_actions_and_a_new_policy_object_still_match() -> None:
    learner = Learner(CFG, A, seed=3)
    policy = Policy.from_weights(learner.actor_weights(1))
    frames = _Frames(2)
    ring, reference = FeatureRing(2, TAU, A, F), [History(TAU, A) for _ in range(2)]
    for k in range(2):
        f = frames()
        ring.reset(k, f)
        reference[k].reset(f)
    ring.act(policy)
    for _ in range(2):  # env 0 steps twice before the next action; env 1 once
        f, a = frames(), np.full(A, 0.5, np.float32)
        ring.push(0, a, f)
        reference[0].push(a, f)
    f = frames()
    ring.push(1, np.zeros(A, np.float32), f)
    reference[1].push(np.zeros(A, np.float32), f)
    # Same version number, different weights (another Policy object): the ring must notice.
    other = Policy.from_weights(_perturbed_weights(learner, 1, 0.1))
    for p in (policy, other):
        np.testing.assert_allclose(ring.act(p, deterministic=True),
                                   p.act(*stack_histories(reference), deterministic=True), rtol=0, atol=1e-5)


def test_acting_allocates_no_frame_sized_arrays() -> None:
    policy = Policy.from_weights(Learner(CFG, A, seed=4).actor_weights(1))
    ring = FeatureRing(K, TAU, A, F)
    pool = np.random.default_rng(0).integers(0, 256, (8, 3, 64, 64), dtype=np.uint8)
    for k in range(K):
        ring.reset(k, pool[k])
    action = ring.act(policy)
    tracemalloc.start()
    try:
        for step in range(10):
            for k in range(K):
                ring.push(k, action[k], pool[(step + k) % len(pool)])
            action = ring.act(policy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < pool[0].nbytes, f"acting allocated {peak} bytes at peak (one frame is {pool[0].nbytes})"


def test_bad_features_are_named() -> None:
    policy = Policy.from_weights(Learner(CFG, A).actor_weights(0))
    with pytest.raises(ValueError, match="features"):
        policy.act_encoded(np.zeros((1, TAU, F + 1), np.float32), np.zeros((1, TAU - 1, A), np.float32))


def test_evaluator_plays_whole_episodes_through_the_ring() -> None:
    from actors.evaluator import Evaluator

    blob = Learner(CFG, A, seed=6).actor_weights(3)
    result = Evaluator(CFG, env_factory=lambda seed: _FrameEnv(seed, length=11)).evaluate(blob, 2, seed=0)
    assert result["version"] == 3 and result["lengths"] == [11, 11] and result["returns"] == [11.0, 11.0]

