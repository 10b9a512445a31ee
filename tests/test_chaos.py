"""The chaos test (marker `faults`): tests/chaos.py's seeded kills during a real debug run, and its checks.

A fresh seed each run (printed, with the command that replays it) unless SLAC_CHAOS_SEED is set.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from chaos import COMPONENTS, COMPOUND, run_chaos, schedule


def test_every_schedule_holds_every_fault() -> None:
    for seed in range(200):
        events = schedule(seed, 60.0)
        kinds = {e.what for e in events}
        assert kinds >= set(COMPONENTS) | set(COMPOUND), (seed, kinds)
        gaps = [b.at_s - a.at_s for a, b in zip(events, events[1:], strict=False)]
        assert all(4.9 <= g <= 12.1 for g in gaps), (seed, gaps)
        assert events[-1].at_s >= 60 or len(events) == len(COMPONENTS) + len(COMPOUND), (seed, events)
    assert schedule(7, 60.0) == schedule(7, 60.0)  # a seed replays exactly


@pytest.mark.faults
def test_chaos(tmp_path: Path) -> None:
    seed = int(os.environ.get("SLAC_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\nchaos seed {seed} (replay: .venv/bin/python -m tests.chaos --seed {seed})")
    result = run_chaos(seed, tmp_path / "run")
    print(json.dumps({k: result[k] for k in ("seed", "wall_s", "events", "landed", "summary", "audit")}))
