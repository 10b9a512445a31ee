"""deploy/experiments/returns_plot.py: learning curves read from eval.csv, merged on a grid, their figure."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from eval_csv import _eval_csv

from deploy.experiments.returns_plot import (
    RETURNS_COLUMNS,
    curve,
    plot_returns,
    random_baseline,
    read_evaluations,
    write_returns,
)

pytestmark = pytest.mark.unit


def test_curves_align_on_the_grid_and_the_baseline_is_the_random_policy(tmp_path: Path) -> None:
    a = read_evaluations(_eval_csv(tmp_path / "a.csv", [(0, 0, 0, [1.0, 3.0]), (10_040, 10_000, 0, [0.0, 2.0]),
                                                         (20_100, 20_000, 5, [10.0, 20.0]),
                                                         (20_300, 20_000, 6, [30.0, 30.0])]), seed=0)
    b = read_evaluations(_eval_csv(tmp_path / "b.csv", [(0, 0, 0, [5.0, 5.0]), (10_010, 10_000, 2, [7.0, 9.0]),
                                                         (20_020, 20_000, 7, [50.0, 50.0])]), seed=1)
    assert [e.env_steps for e in a] == [0, 10_000, 20_000]
    assert a[-1].returns == (30.0, 30.0)  # a repeated grid point (a resumed run) keeps its newest row
    # Only the uniform random policy's episodes (version 0) form the baseline: 1, 3, 0, 2 and 5, 5.
    mean, std, episodes = random_baseline(a + b)
    assert episodes == 6 and mean == pytest.approx(16 / 6) and std == pytest.approx(np.std([1, 3, 0, 2, 5, 5]))
    steps, mean, low, high, seeds = curve(a + b)
    assert steps.tolist() == [0, 10_000, 20_000] and seeds.tolist() == [2, 2, 2]
    assert mean.tolist() == [3.5, 4.5, 40.0] and low.tolist() == [2.0, 1.0, 30.0] and high.tolist() == [5.0, 8.0, 50.0]

    write_returns(a + b, tmp_path / "returns.csv")
    rows = list(csv.reader((tmp_path / "returns.csv").open()))
    assert tuple(rows[0]) == RETURNS_COLUMNS
    assert rows[1:3] == [["0", "0", "2.0000", "1.0000"], ["0", "1", "5.0000", "0.0000"]]
    for task in ("finger_spin", "hopper"):  # with and without published points
        plot_returns(a + b, task, "cpu", tmp_path / f"{task}.png", action_repeat=2)  # finger_spin's SLAC: 1
        assert (tmp_path / f"{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_empty_eval_csv_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no evaluation"):
        read_evaluations(_eval_csv(tmp_path / "e.csv", []), seed=0)
