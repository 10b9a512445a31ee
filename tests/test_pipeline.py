"""The learner loop's helpers: batches drawn ahead (and their checkpoint semantics), device-side metric sums."""

from __future__ import annotations

import pytest
import torch

from common.batch import Batch
from learner.pipeline import BatchPrefetcher, MetricSums

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


def _sampler(generator: torch.Generator):  # noqa: ANN202 - a closure over the generator
    def sample() -> Batch:
        obs = torch.randint(0, 256, (2, 3, 3, 64, 64), dtype=torch.uint8, generator=generator)
        return Batch(obs, torch.rand(2, 2, 1, generator=generator), torch.zeros(2, 2), torch.zeros(2, 2),
                     torch.zeros(2, 3, dtype=torch.bool))
    return sample


def _direct(seed: int, n: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [_sampler(g)() for _ in range(n)]


def test_prefetched_batches_are_the_direct_sequence() -> None:
    g = torch.Generator().manual_seed(1)
    prefetch = BatchPrefetcher(_sampler(g), g, CPU)
    assert not prefetch.pending
    got = [prefetch.next() for _ in range(4)]
    assert prefetch.pending
    for a, b in zip(got, _direct(1, 4), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_generator_state_resumes_at_the_batch_drawn_ahead() -> None:
    """A checkpoint saves `generator_state()`: a resumed sampler draws the pending batch again, so the
    run sees the batches an uninterrupted run would have."""
    g = torch.Generator().manual_seed(2)
    prefetch = BatchPrefetcher(_sampler(g), g, CPU)
    for _ in range(3):
        prefetch.next()
    saved = prefetch.generator_state()
    resumed_g = torch.Generator()
    resumed_g.set_state(saved)
    resumed = BatchPrefetcher(_sampler(resumed_g), resumed_g, CPU)
    direct = _direct(2, 5)
    for expected in direct[3:]:
        assert torch.equal(resumed.next().obs, expected.obs)
    # discard() rewinds to before the pending batch: the next draw is that batch again.
    prefetch.discard()
    assert not prefetch.pending
    assert torch.equal(prefetch.next().obs, direct[3].obs)


def test_metric_sums_fetch_once_and_refuse_mixed_keys() -> None:
    sums = MetricSums()
    assert sums.fetch() == {}
    for value in (1.0, 2.0, 6.0):
        sums.add({"a/x": torch.tensor(value), "b/y": torch.tensor(-value)})
    assert sums.fetch() == {"a/x": (9.0, 3), "b/y": (-9.0, 3)}
    assert sums.fetch() == {}
    sums.add({"a/x": torch.tensor(1.0)})
    with pytest.raises(KeyError, match="fetch"):
        sums.add({"c/z": torch.tensor(1.0)})
