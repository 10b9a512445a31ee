"""Units of the distributed layer that need no cluster: history padding, seeds, weight board,
checkpoint files and resume checks, the cluster job's command line, the W&B reader, the progress line's ETA and bound."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.history import History, stack_histories
from actors.worker import derive_seed
from common.config import Config, ConfigError, debug, resume_conflicts
from deploy.run.progress import ActorWaitMeter, bound_scalars, bound_text, format_eta, limiter_position
from deploy.run.weight_board import WeightBoard
from learner.checkpoint import (
    CheckpointMismatchError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def _frame(value: int) -> np.ndarray:
    return np.full((3, 64, 64), value, dtype=np.uint8)


def test_history_pads_with_first_frame_and_zero_actions() -> None:
    history = History(sequence_length=4, action_dim=2)
    history.reset(_frame(7))
    assert (history.obs == 7).all() and (history.actions == 0).all()
    history.push(np.array([0.5, -0.5], np.float32), _frame(8))
    assert [int(f[0, 0, 0]) for f in history.obs] == [7, 7, 7, 8]
    np.testing.assert_array_equal(history.actions, [[0, 0], [0, 0], [0.5, -0.5]])
    for t in range(9, 12):
        history.push(np.full(2, t / 10, np.float32), _frame(t))
    assert [int(f[0, 0, 0]) for f in history.obs] == [8, 9, 10, 11]
    np.testing.assert_allclose(history.actions[:, 0], [0.9, 1.0, 1.1])  # a[t] sits between x[t] and x[t+1]
    obs, actions = stack_histories([history, history])
    assert obs.shape == (2, 4, 3, 64, 64) and actions.shape == (2, 3, 2)


def test_seeds_are_distinct_per_actor_life_and_generation() -> None:
    seeds = {derive_seed(0, actor, life, gen) for actor in range(8) for life in range(4) for gen in range(3)}
    assert len(seeds) == 8 * 4 * 3
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)


def test_weight_board_only_moves_forward() -> None:
    board = WeightBoard()
    assert board.latest(0) is None
    board.publish(2, ["ref2"])
    assert board.latest(0) == (2, ["ref2"]) and board.latest(2) is None
    board.publish(1, ["stale"])
    assert board.latest(1) == (2, ["ref2"])


def test_a_restarted_board_does_not_lower_the_version_a_restarted_learner_starts_above(monkeypatch) -> None:
    """The board starts empty when Ray restarts it; the driver's floor (the newest version it saw) still holds."""
    from deploy.run import weight_board as weights

    class Board:
        class version:  # noqa: N801 - mimics an actor handle's method
            @staticmethod
            def remote() -> int:
                return 0

    monkeypatch.setattr(weights, "_board", lambda name: Board)
    monkeypatch.setattr(weights.ray, "get", lambda value: value)
    assert weights.RayWeightPublisher(floor=17).version() == 17 and weights.RayWeightPublisher().version() == 0


def _state(cfg: Config, updates: int) -> dict:
    return {"config": cfg.to_dict(), "learner": {}, "counters": {"updates": updates}, "x": torch.tensor(updates)}


def test_checkpoints_are_atomic_pruned_and_checked(tmp_path: Path) -> None:
    cfg = debug()
    for updates in (10, 20, 30, 40):
        save_checkpoint(tmp_path, updates, _state(cfg, updates), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0000000030.pt", "ckpt_0000000040.pt"]
    assert sorted(p.name for p in tmp_path.glob("*.sha256")) == ["ckpt_0000000030.pt.sha256", "ckpt_0000000040.pt.sha256"]
    assert not list(tmp_path.glob(".tmp-*"))
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and int(load_checkpoint(latest, cfg)["x"]) == 40
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, z2_dim=99))
    with pytest.raises(CheckpointMismatchError, match="model.z2_dim: saved 8, now 99"):
        load_checkpoint(latest, other)


def test_resume_may_change_run_length_but_not_the_task() -> None:
    cfg = debug()
    longer = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, env_steps=10**6),
                                 actors=dataclasses.replace(cfg.actors, num=7))
    assert resume_conflicts(cfg, longer) == []
    other_task = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, task="hopper"))
    assert resume_conflicts(cfg, other_task) == ["run.task: saved 'cheetah_run', now 'hopper'"]


def test_a_cluster_job_runs_the_entry_point_with_a_run_dir_outside_rays_working_dir() -> None:
    from deploy.cluster.jobs import entrypoint

    command = entrypoint("paper", "hopper", "64", ["--run.seed", "3"], "~/slac-runs/hopper-1")
    assert command == "python -m deploy.train paper --run.task hopper --actors.num 64 --run.seed 3 --run.dir ~/slac-runs/hopper-1"
    # A run dir or a resume given by the user wins; odd characters are quoted for the job's shell.
    assert "slac-runs" not in entrypoint("", "", "", ["--run.resume", "/data/run 1"], "~/slac-runs/x")
    assert "'/data/run 1'" in entrypoint("", "", "", ["--run.resume", "/data/run 1"], "~/slac-runs/x")
    assert entrypoint("debug", "", "", ["--run.dir=/tmp/r"], "~/x").endswith("--run.dir=/tmp/r")


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


def test_a_run_that_ends_inside_the_limiters_slack_is_warned_about() -> None:
    from deploy.run.config import short_run_warning

    cfg = debug()  # 100 agent steps of initial collection, 200 of slack: 300 agent steps, 1200 env steps on cheetah
    short = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, task="cheetah_run", env_steps=1200))
    assert "above 1200" in short_run_warning(short)
    assert short_run_warning(dataclasses.replace(short, run=dataclasses.replace(short.run, env_steps=1204))) is None
    assert short_run_warning(cfg) is None  # the debug preset's own length trains a policy


def test_auto_actors_fill_this_machine_and_take_the_clusters_number_on_a_cluster(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from common.config import parse_cli
    from deploy.experiments.child_runs import actors_per_seed
    from deploy.run.progress import progress_line
    from deploy.run.ray_runtime import resolve_actor_count

    paper = parse_cli(["paper"])
    assert paper.actors.num == "auto" and parse_cli(["paper", "--actors.num", "6"]).actors.num == 6
    assert resolve_actor_count(paper, cluster=False, cpus=16).actors.num == 13  # less learner, evaluator, Redis
    assert resolve_actor_count(paper, cluster=False, cpus=2).actors.num == 1  # at least one
    assert resolve_actor_count(paper, cluster=True, cpus=16).actors.num == paper.actors.cluster_num == 2
    assert resolve_actor_count(debug(), cluster=False, cpus=16).actors.num == 2  # a number stays
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_actor_count(paper, cpus=16).actors.num == 2
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert resolve_actor_count(paper, cpus=16).actors.num == 13
    with pytest.raises(ConfigError, match="actors.num must be a positive number or auto"):
        dataclasses.replace(paper.actors, num=0)
    # Seeds side by side share the cores; one at a time resolves auto itself.
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert actors_per_seed(paper, 2) == ["--actors.num", "6"] and actors_per_seed(paper, 1) == []
    assert actors_per_seed(debug(), 2) == []
    # The progress line says how many actors and environments run.
    cfg = resolve_actor_count(paper, cluster=False, cpus=16)
    line = progress_line(cfg, {"counters": {"updates": 0, "pretrain_updates": 0}, "phase": "collect"}, 0, 0,
                         {"perf/env_steps_per_s": 0.0, "perf/updates_per_s": 0.0}, None, None)
    assert "| 13x4 envs |" in line


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.999), flip=st.integers(0, 2**31), truncate=st.booleans())
def test_a_truncated_or_bit_flipped_checkpoint_is_a_short_error_and_nothing_is_touched(
        tmp_path: Path, cut: float, flip: int, truncate: bool) -> None:
    """A damaged newest checkpoint (cut short, or one bit flipped anywhere, tensor data included: torch.load
    alone would load that silently) is refused with one paragraph naming the file and what to do; it and
    the older checkpoint are left byte for byte as they were, and the older one still loads."""
    cfg = debug()
    directory = tmp_path / f"ckpt-{cut}-{flip}-{truncate}"
    older = save_checkpoint(directory, 10, _state(cfg, 10))
    newest = save_checkpoint(directory, 20, {**_state(cfg, 20), "w": torch.randn(4096)})
    data = bytearray(newest.read_bytes())
    if truncate:
        del data[int(cut * len(data)):]
    else:
        data[flip % len(data)] ^= 1 << (flip % 8)
    newest.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(newest, cfg)
    message = str(info.value)
    assert str(newest) in message and "move it aside" in message and len(message.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert int(load_checkpoint(older, cfg)["x"]) == 10
