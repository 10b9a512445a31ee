"""deploy/run/forecast.py: the ETA through pre-training and the one paragraph a slow run gets after measuring."""

from __future__ import annotations

import math

import pytest

from common.config import paper, parse_cli
from deploy.run.forecast import CPU_PRESET_HINT, MEASURE_S, Forecast, eta_seconds, hours, updates_left

pytestmark = pytest.mark.unit


def test_pretraining_eta_counts_the_updates_left_at_the_learners_rate() -> None:
    cfg = parse_cli(["paper", "--run.task", "hopper"])  # action repeat 2: 500 000 agent steps in 1 000 000
    counters = {"updates": 0, "pretrain_updates": 40_000}
    assert updates_left(cfg, counters, 20_000) == (60_000, 490_000.0)
    assert eta_seconds(cfg, "pretrain", counters, 20_000, 0.0, 0.5) == pytest.approx((60_000 + 490_000) / 0.5)
    assert math.isnan(eta_seconds(cfg, "pretrain", counters, 20_000, 0.0, 0.0))  # nothing measured yet
    # Joint training: the environment's rate, as the actors are held to the learner by the rate limiter.
    assert eta_seconds(cfg, "train", counters, 900_000, 50.0, 10.0) == pytest.approx(100_000 / 50.0)


def test_a_slow_run_says_once_what_it_will_take_and_names_the_cpu_preset() -> None:
    forecast = Forecast(paper(), learner_on_cpu=True)
    counters = {"updates": 0, "pretrain_updates": 0}
    assert forecast.tick("collect", counters, 40_000, now=0.0) is None
    assert forecast.tick("pretrain", {**counters, "pretrain_updates": 3}, 40_000, now=100.0) is None  # first update
    assert forecast.tick("pretrain", {**counters, "pretrain_updates": 13}, 40_000, now=100.0 + MEASURE_S / 2) is None
    said = forecast.tick("pretrain", {**counters, "pretrain_updates": 33}, 40_000, now=100.0 + MEASURE_S)
    assert said is not None and "1 updates/s" in said and CPU_PRESET_HINT in said
    # 99 967 pre-training updates at 1/s: 27.8 h; 240 000 joint updates (cheetah_run: action repeat 4) 2.8 days more.
    assert "about 27.8 h" in said and "240,000 joint updates about 2.8 days more" in said
    assert forecast.tick("pretrain", {**counters, "pretrain_updates": 99}, 40_000, now=1000.0) is None  # once


def test_a_fast_run_gets_no_cpu_hint() -> None:
    forecast = Forecast(paper(), learner_on_cpu=False)
    forecast.tick("train", {"updates": 10, "pretrain_updates": 100_000}, 900_000, now=0.0)
    said = forecast.tick("train", {"updates": 10 + 60 * 40, "pretrain_updates": 100_000}, 900_000, now=MEASURE_S * 2)
    assert said is not None and "40 updates/s" in said and CPU_PRESET_HINT not in said
    assert hours(90) == "2 min" and hours(3 * 3600) == "3.0 h" and hours(3 * 86400) == "3.0 days"


def test_the_eta_uses_the_phases_average_rate_once_known() -> None:
    from deploy.run.progress import progress_line

    cfg = paper()
    forecast = Forecast(cfg, learner_on_cpu=True)
    forecast.tick("pretrain", {"updates": 0, "pretrain_updates": 1}, 40_000, now=0.0)
    forecast.tick("pretrain", {"updates": 0, "pretrain_updates": 11}, 40_000, now=10.0)
    assert forecast.rate == pytest.approx(1.0)
    info = {"counters": {"updates": 0, "pretrain_updates": 11, "version": 0}, "phase": "pretrain"}
    scalars = {"perf/env_steps_per_s": 0.0, "perf/updates_per_s": 4.0}  # one lucky tick
    left = 100_000 - 11 + 240_000  # pre-training and joint updates (cheetah_run: action repeat 4) at 1 update/s
    line = progress_line(cfg, info, 40_000, 10_000, scalars, None, None, forecast.rate)
    assert line.endswith(f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}")
