"""The CPU Policy an actor runs, loaded from the learner's actor-weights blob."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from common.config import debug
from common.networks import actor_input
from common.policy import Policy, policy_input_shapes
from learner.learner import Learner

pytestmark = pytest.mark.unit

torch.set_num_threads(1)  # tiny networks: a second thread only adds contention on a shared 2-core box
CFG = debug()
TAU = CFG.model.sequence_length
A = 2


def _history(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, TAU, 3, 64, 64), dtype=np.uint8),
            rng.uniform(-1, 1, (n, TAU - 1, A)).astype(np.float32))


def test_policy_matches_the_learners_actor() -> None:
    learner = Learner(CFG, A, seed=1)
    blob = pickle.loads(pickle.dumps(learner.actor_weights(version=4)))
    policy = Policy.from_weights(blob, seed=0)
    assert policy.version == 4
    obs, actions = _history(5)
    assert policy_input_shapes(CFG.model, A) == {"obs_history": obs.shape[1:], "action_history": actions.shape[1:]}
    with torch.no_grad():
        history = actor_input(learner.model.encoder(torch.from_numpy(obs)), torch.from_numpy(actions))
        mean_action, _ = learner.actor.sample(history, deterministic=True)
        sampled, _ = learner.actor.sample(history, torch.Generator().manual_seed(3))
    np.testing.assert_allclose(policy.act(obs, actions, deterministic=True), mean_action.numpy(), atol=1e-6)
    np.testing.assert_allclose(policy.act(obs, actions, seed=3), sampled.numpy(), atol=1e-6)


def test_act_samples_in_bounds_and_reproducibly() -> None:
    policy = Policy.from_weights(Learner(CFG, A).actor_weights(0), seed=0)
    obs, actions = _history(16)
    a = policy.act(obs, actions)
    assert a.dtype == np.float32 and a.shape == (16, A) and np.all(np.abs(a) <= 1)
    assert not np.allclose(a, policy.act(obs, actions))  # stochastic: the policy's own stream moves on
    np.testing.assert_array_equal(policy.act(obs, actions, seed=5), policy.act(obs, actions, seed=5))
    g1, g2 = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    np.testing.assert_array_equal(policy.act(obs, actions, generator=g1), policy.act(obs, actions, generator=g2))


def test_load_weights_refreshes_in_place() -> None:
    learner = Learner(CFG, A)
    policy = Policy.from_weights(learner.actor_weights(1), seed=0)
    obs, actions = _history(3)
    before = policy.act(obs, actions, deterministic=True)
    with torch.no_grad():
        for p in learner.actor.parameters():
            p.add_(0.5)
    policy.load_weights(learner.actor_weights(2))
    assert policy.version == 2
    assert not np.allclose(before, policy.act(obs, actions, deterministic=True))


def test_bad_inputs_are_named() -> None:
    policy = Policy.from_weights(Learner(CFG, A).actor_weights(0))
    obs, actions = _history(2)
    with pytest.raises(ValueError, match="obs_history"):
        policy.act(obs.astype(np.float32), actions)
    with pytest.raises(ValueError, match="action_history"):
        policy.act(obs, actions[:, 1:])
    with pytest.raises(ValueError, match="another architecture"):
        policy.load_weights(Learner(CFG, A + 1).actor_weights(1))
