"""deploy/experiments/results_table.py: the results table beside the published figures, and its flags."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from deploy.experiments.results_table import write_table
from deploy.experiments.returns_plot import RETURNS_COLUMNS

pytestmark = pytest.mark.unit


def _reproduced(results: Path, task: str, preset: str, seeds: dict[int, list[tuple[int, float]]],
                **recorded: object) -> None:
    """What `make reproduce` leaves for one task: returns.csv and summary.json (with `recorded`'s keys)."""
    out = results / task / preset
    out.mkdir(parents=True)
    with (out / "returns.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RETURNS_COLUMNS)
        for seed, points in seeds.items():
            for steps, ret in points:
                writer.writerow([steps, seed, ret, 1.0])
    (out / "summary.json").write_text(json.dumps({"task": task, "commit": "0123456789abcdef-dirty", **recorded,
                                                  "seeds": [{"seed": s, "wall_clock_s": 1800.0 * (s + 1)} for s in seeds]}))


def test_the_table_puts_each_task_beside_the_published_figures(tmp_path: Path) -> None:
    _reproduced(tmp_path, "finger_spin", "cpu", {0: [(0, 0.0), (100_000, 400.0)], 1: [(0, 1.0), (100_000, 500.0)]})
    _reproduced(tmp_path, "hopper", "cpu", {0: [(0, 10.0), (100_000, 90.0), (500_000, 300.0)]})
    (tmp_path / "cheetah_run" / "cpu").mkdir(parents=True)  # a reproduce that never finished: no row
    table = write_table(tmp_path, "cpu")
    assert table == tmp_path / "cpu" / "table.md"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.read_text().splitlines()
            if line.startswith("| ") and "---" not in line and not line.startswith("| task")}
    assert sorted(rows) == ["finger_spin", "hopper"]
    finger = rows["finger_spin"].split(" | ")
    assert finger[1] == "2" and finger[3:6] == ["450 ± 50 (n=2)", "—", "450 ± 50 (n=2) at 100,000"]
    # SLAC, DrQ, DrQ-v2, DreamerV3, each at its own action repeat
    assert finger[6:10] == ["951 / 983 (AR 1)", "901 / 938 (AR 2)", "325 / 789 (AR 2)", "493 / 573 (AR 2)"]
    assert finger[10] == "45.0 min" and finger[11].startswith("0123456789ab-dirty")
    hopper = rows["hopper"].split(" | ")
    assert hopper[2] == "2 / —"  # no published SLAC run to compare with: nothing to flag
    assert hopper[3:5] == ["90 ± 0 (n=1)", "300 ± 0 (n=1)"] and hopper[6:10] == ["—"] * 4


def test_a_row_whose_action_repeat_differs_from_slacs_is_flagged(tmp_path: Path) -> None:
    points = {0: [(0, 1.0), (100_000, 200.0)]}
    _reproduced(tmp_path, "finger_spin", "cpu", points)  # nothing recorded: the registry's 2 (table 1); SLAC ran 1
    _reproduced(tmp_path, "cartpole_swingup", "cpu", points, action_repeat=4)  # recorded by the harness, as SLAC's
    _reproduced(tmp_path, "ball_in_cup_catch", "cpu", points, config={"task": {"action_repeat": 8}})
    _reproduced(tmp_path, "walker_walk", "cpu", points, config={"task": {"action_repeat": "auto"}})  # registry's 2
    text = write_table(tmp_path, "cpu").read_text()
    assert "action repeat (ours / SLAC's)" in text and "⚠ flags a row" in text
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[2] for line in text.splitlines()
             if line.startswith("| ") and "---" not in line and not line.startswith("| task")}
    assert cells["finger_spin"] == ("2 / 1 ⚠ not like for like: ours 2, SLAC's 1: per environment step SLAC's runs "
                                    "made 2x the agent steps and updates")
    assert cells["cartpole_swingup"] == "4 / 4" and cells["walker_walk"] == "2 / 2"
    assert cells["ball_in_cup_catch"].startswith("8 / 4 ⚠ not like for like: ours 8, SLAC's 4")


def test_the_preset_at_another_action_repeat_is_its_own_row_beside_the_preset(tmp_path: Path) -> None:
    from common.config import parse_cli
    from deploy.experiments.harness import results_name

    assert results_name("cpu", parse_cli(["cpu", "--run.task", "cartpole_swingup"])) == "cpu"
    assert results_name("cpu", parse_cli(["cpu", "--run.task", "cartpole", "--task.action-repeat", "4"])) == "cpu_ar4"
    assert results_name("cpu-wide", parse_cli(["cpu-wide", "--task.action-repeat", "8"])) == "cpu-wide"  # the registry's
    points = {0: [(0, 1.0), (100_000, 200.0)]}
    _reproduced(tmp_path, "cartpole_swingup", "cpu", points, action_repeat=8)
    _reproduced(tmp_path, "cartpole_swingup", "cpu_ar4", points, action_repeat=4)
    _reproduced(tmp_path, "cartpole_swingup", "cpu-wide", points, action_repeat=8)  # another preset: not in cpu's table
    rows = [line.split(" | ")[2] for line in write_table(tmp_path, "cpu").read_text().splitlines()
            if line.startswith("| cartpole_swingup")]
    assert len(rows) == 2 and rows[0].startswith("8 / 4 ⚠") and rows[1] == "4 / 4"
