"""The training batch: the one format the replay service produces and the learner consumes.

A batch holds B windows of T = tau + 1 consecutive frames of one episode and the tau transitions
between them (frame t, action t, reward t, frame t + 1). Shapes (A = action dim):

    obs        uint8   [B, T, 3, 64, 64]   x[1..T], raw pixels (modules normalise)
    action     float32 [B, T-1, A]         a[t] taken at x[t], in [-1, 1]
    reward     float32 [B, T-1]            r[t] received for a[t]
    terminated float32 [B, T-1]            1 where x[t+1] is a true terminal state (not a time limit)
    first      bool    [B, T]              True at the frame that is the episode's true first frame

Episode starts follow the official SLAC convention: when a window reaches back before its episode's
first frame, those slots hold copies of the first frame with zero actions and zero rewards, and
`first` marks the true start. Slots before the start are padding (`padding_mask`): the model
resets to the first-step prior p(z1[1]) at every `first` frame, and losses ignore padding. The actor
sees the same padding at acting time (a history filled with the first frame), so training and acting
agree on the first tau steps of every episode.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """B windows of T = tau + 1 frames; see the module docstring for shapes and conventions."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    first: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in self))

    def head(self, n: int) -> Batch:
        """The first n windows (the model batch is the head of the SAC batch)."""
        return Batch(*(t[:n] for t in self))

    @property
    def batch_size(self) -> int:
        return self.obs.shape[0]

    def validate(self, sequence_length: int, action_dim: int) -> None:
        """Raise ValueError naming the field whose shape or dtype is off."""
        b, t = self.obs.shape[0], sequence_length + 1
        expected = {
            "obs": ((b, t, 3, 64, 64), torch.uint8),
            "action": ((b, t - 1, action_dim), torch.float32),
            "reward": ((b, t - 1), torch.float32),
            "terminated": ((b, t - 1), torch.float32),
            "first": ((b, t), torch.bool),
        }
        for name, (shape, dtype) in expected.items():
            tensor = getattr(self, name)
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise ValueError(f"batch.{name}: expected {dtype} {shape}, got {tensor.dtype} {tuple(tensor.shape)}")


def padding_mask(first: torch.Tensor) -> torch.Tensor:
    """bool [B, T]: True at slots before the episode's true first frame (padding copies of it)."""
    started = first.long().cumsum(dim=1) > 0
    has_start = first.any(dim=1, keepdim=True)
    return has_start & ~started


def random_batch(batch_size: int, frames: int, action_dim: int, generator: torch.Generator) -> Batch:
    """Random pixels and actions of the replay's shapes and dtypes; every other window padded at its start, as the
    replay samples them. For benchmarks and the learner's warm-up (compiling before the first real batch)."""
    obs = torch.randint(0, 256, (batch_size, frames, 3, 64, 64), dtype=torch.uint8, generator=generator)
    action = torch.rand(batch_size, frames - 1, action_dim, generator=generator) * 2 - 1
    first = torch.zeros(batch_size, frames, dtype=torch.bool)
    first[::2, min(3, frames - 1)] = True
    return Batch(obs, action, torch.randn(batch_size, frames - 1, generator=generator),
                 torch.zeros(batch_size, frames - 1), first)
