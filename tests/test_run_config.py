"""deploy/run/config.py: the warnings for a run too short to train a policy and for the paper's sizes on a CPU."""

from __future__ import annotations

import dataclasses

import pytest

from common.config import debug

pytestmark = pytest.mark.unit


def test_a_run_that_ends_inside_the_limiters_slack_is_warned_about() -> None:
    from deploy.run.config import short_run_warning

    cfg = debug()  # 100 agent steps of initial collection, 200 of slack: 300 agent steps, 1200 env steps on cheetah
    short = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, task="cheetah_run", env_steps=1200))
    assert "above 1200" in short_run_warning(short)
    assert short_run_warning(dataclasses.replace(short, run=dataclasses.replace(short.run, env_steps=1204))) is None
    assert short_run_warning(cfg) is None  # the debug preset's own length trains a policy


def test_the_days_long_warning_is_for_the_paper_sizes_not_for_cpu_latent() -> None:
    """`cpu-latent` has the paper's z2 (256) at 0.93x the `cpu` preset's speed: no "very slow" warning for it; the
    paper preset gets one wherever torch sees no GPU."""
    import torch

    from common.config import parse_cli
    from deploy.run.config import slow_on_this_machine

    assert not slow_on_this_machine(parse_cli(["cpu-latent"]))
    assert not slow_on_this_machine(parse_cli(["cpu"]))
    assert slow_on_this_machine(parse_cli(["paper"])) == (not torch.cuda.is_available())
    assert not slow_on_this_machine(parse_cli(["paper", "--learner.device", "cuda"]))
