"""The chaos test (marker `faults`): tests/chaos.py's seeded kills during a real debug run, and its checks.

A fresh seed each run (printed, with the command that replays it) unless SLAC_CHAOS_SEED is set.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from chaos import run_chaos

pytestmark = pytest.mark.faults


def test_chaos(tmp_path: Path) -> None:
    seed = int(os.environ.get("SLAC_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\nchaos seed {seed} (replay: .venv/bin/python -m tests.chaos --seed {seed})")
    result = run_chaos(seed, tmp_path / "run")
    print(json.dumps({k: result[k] for k in ("seed", "wall_s", "events", "landed", "evaluations_targeted",
                                             "evaluations_cut_off", "summary", "audit")}))

