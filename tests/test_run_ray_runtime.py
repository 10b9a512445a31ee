"""deploy/run/ray_runtime.py: the actors an `auto` count resolves to, on this machine and on a cluster."""

from __future__ import annotations

import dataclasses
import os

import pytest

from common.config import ConfigError, debug

pytestmark = pytest.mark.unit


def test_auto_processes_follow_the_machine_the_learner_and_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.config import parse_cli
    from deploy.experiments.child_runs import per_seed_overrides
    from deploy.run.progress import progress_line
    from deploy.run.ray_runtime import describe_processes, resolve_processes

    paper = parse_cli(["paper"])
    assert paper.actors.num == "auto" and parse_cli(["paper", "--actors.num", "6"]).actors.num == 6
    assert paper.learner.cpus == "auto" and parse_cli(["paper", "--learner.cpus", "3"]).learner.cpus == 3

    def resolved(cfg, **where):  # (actors, learner threads)
        out = resolve_processes(cfg, **where)
        return out.actors.num, out.learner.cpus

    # A GPU learner: one core for its kernel launches, the rest step environments (less evaluator and Redis).
    assert resolved(paper, cluster=False, cpus=16, gpu=True) == (13, 1)
    assert resolved(paper, cluster=False, cpus=2, gpu=True) == (1, 1)  # at least one actor
    # A CPU learner: one actor per 8 cores (at least one), its threads every core but the actors' and one.
    assert resolved(paper, cluster=False, cpus=16, gpu=False) == (2, 13)
    assert resolved(paper, cluster=False, cpus=2, gpu=False) == (1, 1)
    assert resolved(paper, cluster=False, cpus=4, gpu=False) == (1, 2)
    assert resolved(paper, cluster=True, cpus=16, gpu=False) == (paper.actors.cluster_num, 1)
    assert resolved(debug(), cluster=False, cpus=16, gpu=False) == (2, 13)  # a number stays
    assert resolved(parse_cli(["paper", "--learner.cpus", "3"]), cluster=False, cpus=16, gpu=False) == (2, 3)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolved(paper, cpus=16, gpu=True) == (2, 1)
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert resolved(paper, cpus=16, gpu=True) == (13, 1)
    with pytest.raises(ConfigError, match="actors.num must be a positive number or auto"):
        dataclasses.replace(paper.actors, num=0)
    with pytest.raises(ConfigError, match="learner.cpus must be a positive number or auto"):
        dataclasses.replace(paper.learner, cpus=0)
    with pytest.raises(ConfigError, match="actors.nice must be a niceness from 0 to 19"):
        dataclasses.replace(paper.actors, nice=20)
    # Seeds side by side share the cores; one at a time resolves auto itself.
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr("deploy.experiments.child_runs.learner_on_gpu", lambda cfg: False)
    assert per_seed_overrides(paper, 2) == ["--actors.num", "1", "--learner.cpus", "6"]
    assert per_seed_overrides(paper, 1) == [] and per_seed_overrides(debug(), 2) == ["--learner.cpus", "5"]
    monkeypatch.setattr("deploy.experiments.child_runs.learner_on_gpu", lambda cfg: True)
    assert per_seed_overrides(paper, 2) == ["--actors.num", "5", "--learner.cpus", "1"]
    # The run's first lines and the progress line say how many threads, actors and environments run.
    cfg = resolve_processes(paper, cluster=False, cpus=16, gpu=True)
    assert describe_processes(cfg, cores=16, nice=0).startswith("learner: 1 thread(s) and Ray CPU(s), niceness 0; 13 actor(s)")
    line = progress_line(cfg, {"counters": {"updates": 0, "pretrain_updates": 0}, "phase": "collect"}, 0, 0,
                         {"perf/env_steps_per_s": 0.0, "perf/updates_per_s": 0.0}, None, None)
    assert "| 13x4 envs |" in line
