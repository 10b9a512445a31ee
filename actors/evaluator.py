"""Evaluation episodes in their own process, away from the training actors.

Appendix C: SLAC evaluates with the same stochastic policy it behaves with. Before the learner has
published a policy the agent acts uniformly at random (the initial collection), and that is what an
evaluation then measures: the paper's step-0 point, and the random-policy baseline under the same
protocol. The evaluator never writes to replay; it returns the episodes' returns and, when asked, the
frames of the first episode for the W&B video.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from actors.history import FeatureRing
from actors.worker import EnvFactory, default_env_factory, derive_seed
from common.config import Config
from common.policy import Policy
from common.rendering import rendered_with


class Evaluator:
    """Runs whole evaluation episodes with a given weights blob."""

    def __init__(self, cfg: Config, env_factory: EnvFactory | None = None) -> None:
        torch.set_num_threads(1)
        self.cfg = cfg
        self.env_factory = env_factory or default_env_factory(cfg)

    def evaluate(self, weights: dict[str, Any] | None, episodes: int, seed: int, record_video: bool = False,
                 deterministic: bool = False) -> dict[str, Any]:
        """Play `episodes` episodes; returns returns, lengths, env steps and optionally video frames.

        `weights` None plays uniform random actions in [-1, 1] (policy version 0), seeded by `seed`.
        `deterministic` acts with tanh of the policy's mean instead of sampling (`make eval` reports both).
        """
        policy = Policy.from_weights(weights, seed=seed) if weights is not None else None
        uniform = np.random.default_rng(seed)
        returns, lengths, env_steps, frames = [], [], [], []
        for episode in range(episodes):
            env = self.env_factory(derive_seed(seed, episode))
            obs = env.reset()
            ring = FeatureRing(1, self.cfg.model.sequence_length, env.action_dim, self.cfg.model.feature_dim)
            ring.reset(0, obs)
            total, length, steps, done = 0.0, 0, 0, False
            if record_video and episode == 0:
                frames.append(obs)
            while not done:
                if policy is None:
                    action = uniform.uniform(-1.0, 1.0, env.action_dim).astype(np.float32)
                else:
                    action = ring.act(policy, deterministic=deterministic)[0]
                obs, reward, terminated, truncated, info = env.step(action)
                ring.push(0, action, obs)
                total, length, steps = total + reward, length + 1, steps + info["env_steps"]
                done = terminated or truncated
                if record_video and episode == 0:
                    frames.append(obs)
            env.close()
            returns.append(total)
            lengths.append(length)
            env_steps.append(steps)
        return {"version": policy.version if policy is not None else 0, "returns": returns, "lengths": lengths,
                "env_steps": env_steps, "video": np.stack(frames) if frames else None, "renderer": rendered_with()}
