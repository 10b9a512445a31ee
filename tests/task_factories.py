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


def integer_actions() -> gym.Env:
    """Refused: a Box of ints would truncate the policy's actions (0.99 of the range acts as one step less)."""
    return _Drawn(gym.spaces.Box(0, 4, (2,), np.int64))


class _Rewarded(_Drawn):
    """Steps with `reward` as the reward, and as an old gym env (4 values) when `old_api`."""

    def __init__(self, reward: object, old_api: bool = False) -> None:
        super().__init__(gym.spaces.Box(-1.0, 1.0, (2,), np.float32))
        self.reward, self.old_api = reward, old_api

    def step(self, action: np.ndarray) -> tuple:
        self.t += 1
        return (np.zeros(1), self.reward, False, {}) if self.old_api else (np.zeros(1), self.reward, False, False, {})


def old_gym_step() -> gym.Env:
    """Refused at the run's start: step() returns (obs, reward, done, info), as gym before 0.26 did."""
    return _Rewarded(1.0, old_api=True)


def one_element_reward() -> gym.Env:
    """Accepted: a reward of shape (1,) (a keepdims norm) is one number."""
    return _Rewarded(np.array([1.5], np.float32))


def vector_reward() -> gym.Env:
    """Refused at the run's start: two rewards per step."""
    return _Rewarded(np.array([1.0, 2.0]))


def nested_time_limit() -> gym.Env:
    """Its own time limit, 37 steps, under another wrapper (gymnasium passes no attribute up through wrappers)."""
    return gym.wrappers.RecordEpisodeStatistics(gym.wrappers.TimeLimit(box(), 37))


def hopper() -> gym.Env:
    """A MuJoCo env built as users bring a modified one: its renderer's default size is 480 x 480."""
    return gym.make("Hopper-v5", render_mode="rgb_array")


def raises() -> gym.Env:
    raise RuntimeError("the simulator's licence file is missing")


not_callable = 3
