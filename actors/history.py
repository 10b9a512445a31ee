"""The actor's view of the past: the last tau frames and the tau - 1 actions between them (eq. 11).

At an episode's start every slot holds the first frame and every action is zero: the same padding the
replay service writes into training windows (common/batch.py), so the policy sees at acting time
exactly what it was trained on.
"""

from __future__ import annotations

import numpy as np


class History:
    """Ring of the last tau frames x[t-tau+1..t] and actions a[t-tau+1..t-1] of one environment."""

    def __init__(self, sequence_length: int, action_dim: int, frame_shape: tuple[int, ...] = (3, 64, 64)) -> None:
        self.obs = np.zeros((sequence_length, *frame_shape), dtype=np.uint8)
        self.actions = np.zeros((sequence_length - 1, action_dim), dtype=np.float32)

    def reset(self, first_obs: np.ndarray) -> None:
        """Start an episode: fill every frame slot with the first frame, zero the actions."""
        self.obs[:] = first_obs
        self.actions[:] = 0.0

    def push(self, action: np.ndarray, next_obs: np.ndarray) -> None:
        """Record a[t] and x[t+1], dropping the oldest frame and action."""
        self.obs[:-1] = self.obs[1:]
        self.obs[-1] = next_obs
        if len(self.actions):
            self.actions[:-1] = self.actions[1:]
            self.actions[-1] = action


def stack_histories(histories: list[History]) -> tuple[np.ndarray, np.ndarray]:
    """Batch K histories for one policy forward: uint8 [K, tau, 3, 64, 64], float32 [K, tau - 1, A]."""
    return np.stack([h.obs for h in histories]), np.stack([h.actions for h in histories])
