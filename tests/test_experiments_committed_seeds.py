"""deploy/experiments/committed_seeds.py: which seeds of a fresh clone come from the committed results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_csv import _eval_csv

from common.config import parse_cli

pytestmark = pytest.mark.unit


def test_a_fresh_clone_takes_committed_seeds_of_the_same_config_and_trains_the_rest(tmp_path: Path) -> None:
    from deploy.experiments.committed_seeds import committed_seeds

    base = parse_cli(["debug", "--run.task", "finger_spin", "--run.env-steps", "3000"])
    out = tmp_path / "results" / "finger_spin" / "debug"
    for seed in (0, 1):
        (out / f"seed{seed}").mkdir(parents=True)
        _eval_csv(out / f"seed{seed}" / "eval.csv", [(0, 0, 0, [1.0]), (3000, 3000, 4, [9.0])])
    rows = [{"seed": 0, "run_dir": "/elsewhere/seed0", "commit": "aaaa"}, {"seed": 1, "run_dir": "/elsewhere/seed1"}]
    (out / "summary.json").write_text(json.dumps({"commit": "bbbb", "machine": {"cores": 2}, "date": "2026-12-03",
                                                  "config": base.to_dict(), "seeds": rows}))
    runs = tmp_path / "runs"
    run_dirs = {s: runs / f"seed{s}" for s in range(3)}
    reused = committed_seeds(out, base, [0, 1, 2], run_dirs)
    assert sorted(reused) == [0, 1]  # seed 2 was never committed: it is trained
    assert reused[0]["commit"] == "aaaa" and reused[1]["commit"] == "bbbb"  # each keeps the commit that trained it
    assert reused[1]["machine"] == {"cores": 2} and reused[1]["date"] == "2026-12-03"

    run_dirs[1].mkdir(parents=True)  # this machine has seed 1's run (done or interrupted): the harness owns it
    assert sorted(committed_seeds(out, base, [0, 1, 2], run_dirs)) == [0]
    other = parse_cli(["debug", "--run.task", "finger_spin", "--run.env-steps", "4000"])
    assert committed_seeds(out, other, [0, 1, 2], run_dirs) == {}  # another config: every seed trains again
    (out / "seed0" / "eval.csv").unlink()
    assert committed_seeds(out, base, [0, 1, 2], run_dirs) == {}
    (out / "summary.json").write_text("{not json")
    assert committed_seeds(out, base, [0, 1, 2], run_dirs) == {}
