"""The actor's view of the past: the last tau frames and the tau - 1 actions between them (eq. 11).

`FeatureRing` is what actor processes act through: it also keeps each frame's encoder features, so a
step encodes one new frame per environment instead of tau (the encoder dominated an actor's step).

At an episode's start every slot holds the first frame and every action is zero: the same padding the
replay service writes into training windows (common/batch.py), so the policy sees at acting time
exactly what it was trained on.
"""

from __future__ import annotations

import numpy as np
import torch

from common.policy import Policy


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


class FeatureRing:
    """K environments' histories plus each frame's encoder features: a step encodes only its new frames.

    Frames live in a per-environment ring (slot `head[k]` is the newest), so a step copies one frame
    and shifts nothing frame-sized; features and actions are small and kept oldest first. The features
    belong to one set of weights: when `act` meets a policy whose version (or object) differs, it
    re-encodes every stored frame once, so the actions always equal `Policy.act` on the full
    histories with the current weights. Buffers are allocated once; frames are gathered into a
    temporary only when some environment did not step since the last action or needs all its frames
    re-encoded (a weight refresh, two pushes without an action), never on the usual step.
    """

    _OK, _NEWEST, _FIRST, _ALL = 0, 1, 2, 3  # what of env k is not encoded: nothing, newest, first frame, all

    def __init__(self, num_envs: int, sequence_length: int, action_dim: int, feature_dim: int,
                 frame_shape: tuple[int, ...] = (3, 64, 64)) -> None:
        k, tau = num_envs, sequence_length
        self.obs = np.zeros((k, tau, *frame_shape), dtype=np.uint8)  # ring slots, not time order
        self.newest = np.zeros((k, *frame_shape), dtype=np.uint8)  # contiguous: one encoder call per step
        self.actions = np.zeros((k, tau - 1, action_dim), dtype=np.float32)
        self.features = np.zeros((k, tau, feature_dim), dtype=np.float32)
        self.head = np.full(k, tau - 1)
        self._pending = np.full(k, self._ALL)
        self._weights: tuple[int, int] | None = None  # (id(policy), version) the features were encoded with

    @property
    def num_envs(self) -> int:
        return self.obs.shape[0]

    def reset(self, k: int, first_obs: np.ndarray) -> None:
        """Start env k's episode: every frame slot holds its first frame, actions are zero (common/batch.py)."""
        self.obs[k] = first_obs
        self.newest[k] = first_obs
        self.actions[k] = 0.0
        self.head[k] = self.obs.shape[1] - 1
        self._pending[k] = self._FIRST

    def push(self, k: int, action: np.ndarray, next_obs: np.ndarray) -> None:
        """Record env k's a[t] and x[t+1], dropping its oldest frame, action and feature."""
        self.head[k] = (self.head[k] + 1) % self.obs.shape[1]
        self.obs[k, self.head[k]] = next_obs
        self.newest[k] = next_obs
        if self.actions.shape[1]:
            self.actions[k, :-1] = self.actions[k, 1:]
            self.actions[k, -1] = action
        self.features[k, :-1] = self.features[k, 1:]
        # A second push before `act` leaves an older frame unencoded too: re-encode them all.
        self._pending[k] = self._NEWEST if self._pending[k] == self._OK else self._ALL

    def ordered_obs(self) -> np.ndarray:
        """uint8 [K, tau, 3, 64, 64] oldest first, as `Policy.act` takes them (a copy; for checks and tests)."""
        return np.stack([np.roll(self.obs[k], -(int(self.head[k]) + 1), axis=0) for k in range(self.num_envs)])

    def act(self, policy: Policy, *, deterministic: bool = False, generator: torch.Generator | None = None
            ) -> np.ndarray:
        """Actions float32 [K, A] for all K environments: `policy.act(ordered_obs(), actions)`, encoding less."""
        self.encode(policy)
        return policy.act_encoded(self.features, self.actions, deterministic=deterministic, generator=generator)

    def encode(self, policy: Policy) -> None:
        """Bring every environment's features up to date with `policy`'s current weights."""
        weights = (id(policy), policy.version)
        if weights != self._weights:  # new weights: the stored features are stale, re-encode every frame once
            self._weights = weights
            self._pending[:] = self._ALL
        one = (self._pending == self._NEWEST) | (self._pending == self._FIRST)
        if one.all():  # the usual step: one batched call on a contiguous buffer, no gather
            rows, fresh = range(self.num_envs), policy.encode(self.newest)
        elif one.any():  # some env did not step, or needs all its frames: gather the others' newest
            rows = np.flatnonzero(one)
            fresh = policy.encode(self.newest[rows])
        else:
            rows, fresh = range(0), None
        for i, k in enumerate(rows):
            if self._pending[k] == self._FIRST:
                self.features[k] = fresh[i]  # every slot holds the episode's first frame
            else:
                self.features[k, -1] = fresh[i]
        full = np.flatnonzero(self._pending == self._ALL)
        if len(full):
            by_slot = policy.encode(self.obs[full])  # [n, tau, F] in ring order
            for i, k in enumerate(full):
                self.features[k] = np.roll(by_slot[i], -(int(self.head[k]) + 1), axis=0)
        self._pending[:] = self._OK
