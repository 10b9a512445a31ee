"""deploy/experiments/child_runs.py: how many seeds run side by side."""

from __future__ import annotations

import os

import pytest

from common.config import parse_cli
from deploy.experiments.child_runs import default_parallel

pytestmark = pytest.mark.unit


def test_parallel_seeds_by_default_fit_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_cli(["cpu"])  # one actor: a run needs 3 cores with its learner and evaluator
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_parallel(cfg, seeds=3) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert default_parallel(cfg, seeds=3) == 3 and default_parallel(cfg, seeds=8) == 5
