"""deploy/run/progress.py: the progress line's ETA, and which side of the run is the bound one."""

from __future__ import annotations

import pytest

from common.config import debug
from deploy.run.progress import ActorWaitMeter, bound_scalars, bound_text, format_eta, limiter_position

pytestmark = pytest.mark.unit


def test_eta_is_zero_past_the_run_length_and_counts_whole_hours() -> None:
    assert format_eta(-12.7) == "0:00:00"  # the last polls overshoot run.env_steps; gmtime showed 23:59:59
    assert format_eta(0.0) == "0:00:00"
    assert format_eta(3_725.4) == "1:02:05"
    assert format_eta(30 * 3600 + 61) == "30:01:01"  # gmtime wrapped days: 06:01:01
    assert format_eta(float("nan")) == "--:--:--"


def test_actor_wait_fraction_per_poll_and_across_restarts() -> None:
    meter = ActorWaitMeter()
    assert meter.fraction(0, now=10.0, replay_s=1.0) is None  # nothing to compare with yet
    assert meter.fraction(0, now=12.0, replay_s=2.5) == pytest.approx(0.75)  # 1.5 s of writes in 2 s
    assert meter.fraction(0, now=13.0, replay_s=0.2) is None  # a restarted actor counts from zero again
    assert meter.fraction(0, now=14.0, replay_s=1.4) == 1.0  # clipped
    assert meter.fraction(1, now=14.0, replay_s=0.0) is None  # actors are tracked apart


def test_limiter_position_spans_floor_to_ceiling() -> None:
    # min_size 100, spi 2, tolerance 50: inserts allowed up to 2 * ins - sampled <= 300, samples down to -100.
    assert limiter_position(150, 0, 100, 2.0, 50.0) == 1.0  # writers held: the learner is behind
    assert limiter_position(150, 400, 100, 2.0, 50.0) == -1.0  # learner held: waiting for inserts
    assert limiter_position(150, 100, 100, 2.0, 50.0) == 0.0
    assert limiter_position(1_000, 0, 100, 2.0, 50.0) == 1.0  # clipped (e.g. during pre-training)


def test_progress_line_names_the_bound_side_while_training() -> None:
    cfg = debug().replay
    held = bound_scalars([0.9, 0.8], {"inserted": 10_000.0, "sampled": 0.0}, cfg)
    assert held["bound/actors_wait_fraction"] == pytest.approx(0.85) and held["bound/limiter_position"] == 1.0
    assert bound_text("train", held) == " | learner-bound (actors wait 85%, learner waits -)"
    waiting = {**bound_scalars([0.1], {"inserted": 500.0, "sampled": 450.0}, cfg), "bound/learner_wait_fraction": 0.7}
    assert bound_text("train", waiting) == " | actor-bound (actors wait 10%, learner waits 70%)"
    floor = cfg.min_size * cfg.samples_per_insert - cfg.spi_tolerance * cfg.samples_per_insert
    starved = bound_scalars([0.02], {"inserted": float(cfg.min_size), "sampled": cfg.min_size - floor}, cfg)
    assert bound_text("train", starved) == " | actor-bound (actors wait 2%, learner waits -)"
    assert bound_text("train", bound_scalars([], {"inserted": 500.0, "sampled": 400.0}, cfg)).startswith(
        " | balanced (actors wait -, learner waits -)")
    assert bound_text("pretrain", held) == ""
