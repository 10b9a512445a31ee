"""deploy/experiments/harness.py: the summary row of a seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_a_seed_finished_by_an_earlier_harness_keeps_its_commit_and_date(tmp_path: Path) -> None:
    from deploy.experiments.child_runs import SeedRun
    from deploy.experiments.harness import trained_row

    run = SeedRun(1, tmp_path / "seed1", [], commit="cccc")
    finished = {"seed": 1, "wandb_run_id": "w", "env_steps": 3000, "updates": 90, "pretrain_updates": 10,
                "wall_clock_s": 50.0, "harness_commit": "aaaa-dirty", "harness_finished_at": 1796040000.0}
    (tmp_path / "seed1").mkdir()
    (tmp_path / "seed1" / "done.json").write_text(json.dumps(finished))
    run.start(quiet=True)  # done.json: skipped, its summary taken as it is
    row = trained_row(run, run.finish(), "cccc", {"cores": 2})
    assert row["commit"] == "aaaa-dirty" and row["date"] == "2026-11-30" and row["updates_per_s"] == 2.0
    del finished["harness_commit"]  # a done.json written before harnesses kept their commit
    assert trained_row(run, finished, "cccc", {"cores": 2})["commit"] == "cccc"
