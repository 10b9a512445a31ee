"""actors/worker.py's seeds: one per actor, life and generation (the worker itself: test_actor_worker.py)."""

from __future__ import annotations

import pytest

from actors.worker import derive_seed

pytestmark = pytest.mark.unit


def test_seeds_are_distinct_per_actor_life_and_generation() -> None:
    seeds = {derive_seed(0, actor, life, gen) for actor in range(8) for life in range(4) for gen in range(3)}
    assert len(seeds) == 8 * 4 * 3
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
