"""deploy/run/config.py: the warning for a run too short to train a policy."""

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
