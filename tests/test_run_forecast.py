"""deploy/run/forecast.py: the ETA through pre-training and the one paragraph a slow run gets after measuring."""

from __future__ import annotations

import math

import pytest

from common.config import paper, parse_cli
from deploy.run.forecast import CPU_PRESET_HINT, MEASURE_S, Forecast, eta_seconds, hours, updates_left

pytestmark = pytest.mark.unit


def test_the_eta_counts_the_updates_left_at_the_learners_rate() -> None:
    cfg = parse_cli(["paper", "--run.task", "hopper"])  # action repeat 2: 500 000 agent steps in 1 000 000
    counters = {"updates": 0, "pretrain_updates": 40_000}
    assert updates_left(cfg, counters, 20_000) == (60_000, 490_000.0)
    assert eta_seconds(cfg, "pretrain", counters, 20_000, 0.0, 0.5) == pytest.approx((60_000 + 490_000) / 0.5)
    assert math.isnan(eta_seconds(cfg, "pretrain", counters, 20_000, 0.0, 0.0))  # nothing measured yet
    # Joint training: the updates left (one per agent step, 50 000 at action repeat 2) at the learner's rate, which
    # the rate limiter holds the actors to; the environment's rate of one tick only while no update rate is known.
    joint = {"updates": 400_000, "pretrain_updates": 100_000}
    assert eta_seconds(cfg, "train", joint, 900_000, 1.0, 10.0) == pytest.approx(50_000 / 10.0)
    assert eta_seconds(cfg, "train", joint, 900_000, 50.0, 0.0) == pytest.approx(100_000 / 50.0)
    assert math.isnan(eta_seconds(cfg, "train", joint, 900_000, 0.0, 0.0))
    # Two updates per agent step: twice the updates left. The initial collection's speed (the actors') says nothing
    # of the phases after it: no ETA.
    two = parse_cli(["paper", "--run.task", "hopper", "--replay.samples-per-insert", "2"])
    assert eta_seconds(two, "train", joint, 900_000, 1.0, 10.0) == pytest.approx(100_000 / 10.0)
    assert math.isnan(eta_seconds(cfg, "collect", {"updates": 0, "pretrain_updates": 0}, 5_000, 500.0, 0.0))


def test_a_slow_run_says_once_what_it_will_take_and_names_the_cpu_preset() -> None:
    forecast = Forecast(paper(), learner_on_cpu=True)
    counters = {"updates": 0, "pretrain_updates": 0}
    assert forecast.tick("collect", counters, 40_000, now=0.0) is None
    assert forecast.tick("pretrain", counters, 40_000, now=50.0) is None  # compiling
    assert forecast.tick("pretrain", {**counters, "pretrain_updates": 3}, 40_000, now=100.0) is None  # first update
    assert forecast.tick("pretrain", {**counters, "pretrain_updates": 13}, 40_000, now=100.0 + MEASURE_S / 2) is None
    said = forecast.tick("pretrain", {**counters, "pretrain_updates": 33}, 40_000, now=100.0 + MEASURE_S)
    assert said is not None and "1 updates/s" in said and CPU_PRESET_HINT in said
    # 99 967 pre-training updates at 1/s: 27.8 h; 240 000 joint updates (cheetah_run: action repeat 4) 2.8 days more.
    assert "about 27.8 h" in said and "240,000 joint updates about 2.8 days more" in said
    assert forecast.tick("pretrain", {**counters, "pretrain_updates": 99}, 40_000, now=1000.0) is None  # once


def test_a_fast_run_gets_no_cpu_hint() -> None:
    forecast = Forecast(paper(), learner_on_cpu=False)
    forecast.tick("train", {"updates": 10, "pretrain_updates": 100_000}, 900_000, now=-1.0)
    forecast.tick("train", {"updates": 11, "pretrain_updates": 100_000}, 900_000, now=0.0)
    said = forecast.tick("train", {"updates": 11 + 60 * 40, "pretrain_updates": 100_000}, 900_000, now=MEASURE_S * 2)
    assert said is not None and "40 updates/s" in said and CPU_PRESET_HINT not in said
    assert hours(90) == "2 min" and hours(3 * 3600) == "3.0 h" and hours(3 * 86400) == "3.0 days"


def test_the_eta_uses_the_phases_average_rate_once_known() -> None:
    from deploy.run.progress import progress_line

    cfg = paper()
    forecast = Forecast(cfg, learner_on_cpu=True)
    forecast.tick("pretrain", {"updates": 0, "pretrain_updates": 0}, 40_000, now=0.0)
    forecast.tick("pretrain", {"updates": 0, "pretrain_updates": 1}, 40_000, now=5.0)
    forecast.tick("pretrain", {"updates": 0, "pretrain_updates": 11}, 40_000, now=15.0)
    assert forecast.rate == pytest.approx(1.0)
    info = {"counters": {"updates": 0, "pretrain_updates": 11, "version": 0}, "phase": "pretrain"}
    scalars = {"perf/env_steps_per_s": 0.0, "perf/updates_per_s": 4.0}  # one lucky tick
    left = 100_000 - 11 + 240_000  # pre-training and joint updates (cheetah_run: action repeat 4) at 1 update/s
    line = progress_line(cfg, info, 40_000, 10_000, scalars, None, None, forecast.rate)
    assert line.endswith(f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}")


def test_the_rate_counts_only_this_processs_updates_after_the_first() -> None:
    """A resumed run's counters start at its checkpoint's, and its learner compiles at its first update: neither
    may enter the rate. A learner restarted from its last checkpoint (counts fall) starts the measurement again."""
    forecast = Forecast(paper(), learner_on_cpu=False)
    resumed = {"updates": 200_000, "pretrain_updates": 100_000}
    assert forecast.tick("train", resumed, 500_000, now=0.0) is None
    forecast.tick("train", {**resumed, "updates": 200_001}, 500_000, now=120.0)  # the first update, after compiling
    assert forecast.rate is None
    forecast.tick("train", {**resumed, "updates": 200_201}, 500_000, now=130.0)
    assert forecast.rate == pytest.approx(20.0)
    forecast.tick("train", {**resumed, "updates": 199_000}, 500_000, now=200.0)  # restarted from a checkpoint
    assert forecast.rate is None
    forecast.tick("train", {**resumed, "updates": 199_010}, 500_000, now=260.0)
    forecast.tick("train", {**resumed, "updates": 199_110}, 500_000, now=270.0)
    assert forecast.rate == pytest.approx(10.0)
