"""Stand-ins for acting, shared by the feature ring's tests and the actor worker's: the debug preset's
sizes, a cheap pixel env that logs what it saw, and learner weights moved as an update would move them."""

from __future__ import annotations

import numpy as np
import torch

from common.config import debug
from learner.learner import Learner

CFG = debug()
TAU = CFG.model.sequence_length
A = 2


def _perturbed_weights(learner: Learner, version: int, scale: float) -> dict:
    """The learner's actor weights after moving the encoder and the actor head, as a learner update would."""
    with torch.no_grad():
        for p in [*learner.model.encoder.parameters(), *learner.actor.parameters()]:
            p.add_(scale * torch.randn_like(p))
    return learner.actor_weights(version)


class _FrameEnv:
    """A cheap stand-in for a pixel env: random frames, fixed-length episodes, a log of what it saw."""

    def __init__(self, seed: int, length: int) -> None:
        self.action_dim, self.length, self.t = A, length, 0
        self.rng = np.random.default_rng(seed)
        self.log: list[tuple[str, np.ndarray, np.ndarray | None]] = []

    def reset(self) -> np.ndarray:
        self.t, frame = 0, self.rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
        self.log.append(("reset", frame, None))
        return frame

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, int]]:
        self.t, frame = self.t + 1, self.rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
        self.log.append(("step", frame, np.array(action)))
        return frame, 1.0, False, self.t >= self.length, {"env_steps": 4}

    def close(self) -> None:
        pass
