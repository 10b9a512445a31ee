"""tests/chaos.py's schedule: every fault in every seed's schedule, 5-12 s apart; a seed replays exactly."""

from __future__ import annotations

import pytest
from chaos import COMPONENTS, COMPOUND, schedule

pytestmark = pytest.mark.unit


def test_every_schedule_holds_every_fault() -> None:
    for seed in range(200):
        events = schedule(seed, 60.0)
        kinds = {e.what for e in events}
        assert kinds >= set(COMPONENTS) | set(COMPOUND), (seed, kinds)
        gaps = [b.at_s - a.at_s for a, b in zip(events, events[1:], strict=False)]
        assert all(4.9 <= g <= 12.1 for g in gaps), (seed, gaps)
        assert events[-1].at_s >= 60 or len(events) == len(COMPONENTS) + len(COMPOUND), (seed, events)
    assert schedule(7, 60.0) == schedule(7, 60.0)  # a seed replays exactly
