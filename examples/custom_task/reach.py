"""A continuous-control task of your own, drawn with numpy: a point mass pushed toward a target.

Nothing here imports slac-dist: a gymnasium.Env with a continuous Box action space and `rgb_array` frames
is all slac-dist needs. The point (red) has a position and a velocity; each action is a force in [-1, 1]^2;
the reward is exp(-5 * distance to the target (green)), so a policy must read both where the point is and
how fast it moves from the frames. Frames are 96 x 96 (slac-dist resizes them to its 64 x 64 by area).

    PYTHONPATH=examples/custom_task make train TASK=reach:make_env PRESET=debug
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

SIZE = 96
"""Frame height and width in pixels."""
DT, DAMPING, MAX_SPEED = 0.1, 0.9, 1.0


class PointReach(gym.Env):
    """Push a point mass to a target in the square [-1, 1]^2; an episode never terminates, time limits end it."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = "rgb_array", size: int = SIZE) -> None:
        self.render_mode, self.size = render_mode, size
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (6,), np.float64)  # the true state, for debugging
        coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
        self._y, self._x = np.meshgrid(-coords, coords, indexing="ij")  # row 0 at the top: y = +1
        self.pos = self.vel = self.target = np.zeros(2)

    def _state(self) -> np.ndarray:
        return np.concatenate([self.pos, self.vel, self.target])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.8, 0.8, 2)
        self.vel = np.zeros(2)
        self.target = self.np_random.uniform(-0.8, 0.8, 2)
        return self._state(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        force = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.vel = np.clip(DAMPING * self.vel + DT * force * 2.0, -MAX_SPEED, MAX_SPEED)
        self.pos = np.clip(self.pos + DT * self.vel, -1.0, 1.0)
        distance = float(np.linalg.norm(self.pos - self.target))
        return self._state(), float(np.exp(-5.0 * distance)), False, False, {"distance": distance}

    def render(self) -> np.ndarray:
        frame = np.full((self.size, self.size, 3), 30, np.uint8)
        for center, radius, color in ((self.target, 0.12, (40, 200, 60)), (self.pos, 0.08, (230, 50, 40))):
            inside = (self._x - center[0]) ** 2 + (self._y - center[1]) ** 2 <= radius**2
            frame[inside] = color
        return frame


def make_env() -> gym.Env:
    """The factory slac-dist calls in every process that builds envs: 200-step episodes (the env's own limit)."""
    return gym.wrappers.TimeLimit(PointReach(), max_episode_steps=200)
