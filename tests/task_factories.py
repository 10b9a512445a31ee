"""Factories of envs that slac-dist must refuse (or accept), for the task-string tests: imported by name
(`task_factories:<name>`) in the test process and in subprocesses that get tests/ on PYTHONPATH."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class _Drawn(gym.Env):
    """A tiny env that draws a frame of `shape` and `dtype`; its actions are `action_space`."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, action_space: gym.Space, render_mode: str | None = "rgb_array",
                 shape: tuple[int, ...] = (48, 80, 3), dtype: type = np.uint8) -> None:
        self.action_space, self.render_mode, self.shape, self.dtype = action_space, render_mode, shape, dtype
        self.observation_space = gym.spaces.Box(0, 1, (1,))
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = int(self.np_random.integers(0, 100))
        return np.zeros(1), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.zeros(1), float(np.sum(action)), False, False, {}

    def render(self) -> np.ndarray:
        frame = np.zeros(self.shape, self.dtype)
        frame[..., 0] = self.t % 256  # red, moving with time: channel order and motion are visible
        if len(self.shape) == 3 and self.shape[-1] >= 3:
            frame[: self.shape[0] // 2, :, 2] = 200  # blue top half
        return frame


def box() -> gym.Env:
    """Accepted: 2 continuous actions in [-2, 2], 48 x 80 RGB frames."""
    return _Drawn(gym.spaces.Box(-2.0, 2.0, (2,), np.float32))


def discrete() -> gym.Env:
    return _Drawn(gym.spaces.Discrete(3))


def no_rgb_array() -> gym.Env:
    return _Drawn(gym.spaces.Box(-1.0, 1.0, (2,), np.float32), render_mode=None)


def float_frames() -> gym.Env:
    return _Drawn(gym.spaces.Box(-1.0, 1.0, (2,), np.float32), dtype=np.float32)


def gray_frames() -> gym.Env:
    return _Drawn(gym.spaces.Box(-1.0, 1.0, (2,), np.float32), shape=(64, 64))


def unbounded() -> gym.Env:
    return _Drawn(gym.spaces.Box(-np.inf, np.inf, (2,), np.float32))


def raises() -> gym.Env:
    raise RuntimeError("the simulator's licence file is missing")


not_callable = 3
