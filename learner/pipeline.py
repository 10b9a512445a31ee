"""What keeps the learner's device busy between updates: the next batch sampled ahead, metrics summed
on the device.

Neither waits for the device. `BatchPrefetcher` draws batch i + 1 as soon as batch i is handed out (on
CUDA on a side stream, so the replay's gather kernels overlap the update); `MetricSums` adds each
update's metrics into one device tensor that the learner process fetches every `learner.metrics_every`
updates, the only host sync of the loop besides the mirror's once-per-block refresh.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import torch

from common.batch import Batch
from learner.losses import Metrics


class BatchPrefetcher:
    """Hands out batches from `sample()`, one drawn ahead.

    `generator` is the sampler's generator: `generator_state()` is its state before the batch drawn
    ahead, which is what a checkpoint must save so that a resumed run draws that batch again and the
    sequence of batches is the one an uninterrupted run would have seen.
    """

    def __init__(self, sample: Callable[[], Batch], generator: torch.Generator, device: torch.device) -> None:
        self._sample, self._generator = sample, generator
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._pending: Batch | None = None
        self._state_before: torch.Tensor | None = None

    @property
    def pending(self) -> bool:
        """Whether a batch has been drawn ahead."""
        return self._pending is not None

    def next(self) -> Batch:
        """The batch drawn ahead (or a fresh one), after starting to draw the following one."""
        batch = self._pending if self._pending is not None else self._draw()
        if self._stream is not None:
            # The consumer's stream must see the side stream's writes, and the allocator must not reuse
            # the batch's memory while kernels of the consumer's stream still read it.
            current = torch.cuda.current_stream(self._stream.device)
            current.wait_stream(self._stream)
            for tensor in batch:
                tensor.record_stream(current)
        self._state_before = self._generator.get_state()
        self._pending = self._draw()
        return batch

    def fence(self) -> None:
        """Make the consumer's stream wait for the batch being drawn ahead. Call before the replay's mirror
        changes (a sync): the side stream's gathers must not race the mirror's writes (CUDA only)."""
        if self._stream is not None:
            torch.cuda.current_stream(self._stream.device).wait_stream(self._stream)

    def generator_state(self) -> torch.Tensor:
        """The sampler generator's state before the pending batch (the current state when none is pending)."""
        if self._pending is None or self._state_before is None:
            return self._generator.get_state()
        return self._state_before

    def discard(self) -> None:
        """Forget the batch drawn ahead and rewind the generator to before it (the phase that wanted it ended)."""
        if self._pending is not None and self._state_before is not None:
            self._generator.set_state(self._state_before)
        self._pending = self._state_before = None

    def _draw(self) -> Batch:
        if self._stream is None:
            return self._sample()
        # The side stream must see everything the consumer's stream wrote so far (the mirror's last sync).
        self._stream.wait_stream(torch.cuda.current_stream(self._stream.device))
        with torch.cuda.stream(self._stream):
            return self._sample()


class MetricSums:
    """Per-key sums and counts of update metrics, kept on the device until `fetch`."""

    def __init__(self) -> None:
        self._keys: tuple[str, ...] = ()
        self._sum: torch.Tensor | None = None
        self._count = 0

    def add(self, metrics: Metrics) -> None:
        """Add one update's metrics (0-d device tensors; the same keys every time until `fetch`)."""
        keys = tuple(sorted(metrics))
        values = torch.stack([metrics[k].detach().float() for k in keys])
        if self._sum is None:
            self._keys, self._sum, self._count = keys, values, 1
            return
        if keys != self._keys:
            raise KeyError(f"MetricSums: keys {sorted(set(keys) ^ set(self._keys))} differ from the previous "
                           "update's; fetch() before switching phases")
        self._sum += values
        self._count += 1

    def fetch(self) -> dict[str, tuple[float, int]]:
        """{key: (sum, count)} since the last fetch (one device sync), then start over."""
        if self._sum is None:
            return {}
        values = self._sum.tolist()
        out = {k: (v, self._count) for k, v in zip(self._keys, values, strict=True)}
        self._keys, self._sum, self._count = (), None, 0
        return out


class SectionClock:
    """Where the learner's wall clock goes, by section of its loop (sampling, updating, the replay's syncs and
    waits, publication, figures); `fractions()` gives each section's share of the time since its last call, the
    rest under `other` (the loop's own Python). `update` includes the metrics fetches between updates and any wait
    for a checkpoint's snapshot, which holds the update lock. Timing a section costs two clock
    reads, nothing next to an update, and synchronises nothing: on CUDA, where kernels run asynchronously, a
    section's time is what the host spent in it (`update` then includes waits for the device)."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._mark = time.monotonic()
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            with self._guard:
                self._seconds[name] = self._seconds.get(name, 0.0) + time.monotonic() - start

    def fractions(self) -> dict[str, float]:
        """{section: share of the wall clock since the last call} plus `other`, summing to 1; then start over."""
        now = time.monotonic()
        with self._guard:
            seconds, self._seconds, elapsed, self._mark = self._seconds, {}, max(now - self._mark, 1e-6), now
        shares = {name: min(1.0, value / elapsed) for name, value in seconds.items()}
        shares["other"] = max(0.0, 1.0 - sum(shares.values()))
        return shares
