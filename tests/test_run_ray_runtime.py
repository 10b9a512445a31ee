"""deploy/run/ray_runtime.py: the actors an `auto` count resolves to, on this machine and on a cluster."""

from __future__ import annotations

import dataclasses
import os

import pytest

from common.config import ConfigError, debug

pytestmark = pytest.mark.unit


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
