"""deploy/run/run_dir.py's refusal to resume a finished run, and the reproduce harness's side of it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from common.config import debug
from common.run_files import RunFiles
from deploy.experiments.child_runs import SeedRun
from deploy.run.run_dir import finished_at

pytestmark = pytest.mark.unit


def _state(env_steps: int, last_eval_scheduled: int) -> dict:
    return {"extra": {"run_state": {"env_steps": env_steps, "last_eval_scheduled": last_eval_scheduled}}}


def test_a_run_is_finished_when_it_reached_its_length_and_made_its_final_evaluation() -> None:
    cfg = debug()  # run.env_steps 2000, evaluating
    length = cfg.run.env_steps
    assert finished_at(_state(length + 8, length), cfg) == length + 8
    assert finished_at(_state(length + 8, length - cfg.run.eval_every), cfg) is None  # a stop cut the final one off
    assert finished_at(_state(length - 8, length - 8), cfg) is None  # not yet at its length
    longer = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, env_steps=2 * length))
    assert finished_at(_state(length + 8, length), longer) is None  # a resume with a longer length trains on
    silent = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, eval_episodes=0))
    assert finished_at(_state(length, -1), silent) == length  # nothing to evaluate: its length is enough
    assert finished_at({"extra": {}}, cfg) is None  # a checkpoint without a run state (an older one)


def test_the_harness_takes_a_finished_childs_summary_instead_of_resuming_it(tmp_path: Path) -> None:
    """A harness that died between its child's end and done.json finds the child's printed summary: the seed is
    taken as finished (a resume would be refused), not started again. An interrupted child's summary is not."""
    files = RunFiles(tmp_path / "seed_0")
    files.logs.mkdir(parents=True)
    files.config.write_text(debug().to_json())
    summary = {"env_steps": 2008, "updates": 40, "pretrain_updates": 10, "interrupted": False, "wall_clock_s": 9.0}
    files.train_stdout.write_text("a progress line\n" + json.dumps({"summary": summary}, indent=2))
    run = SeedRun(0, files.root, ["debug"])
    run.start(quiet=True)
    assert run.process is None and run.finish() == summary
    assert json.loads(files.done.read_text()) == summary
    files.done.unlink()
    files.train_stdout.write_text(json.dumps({"summary": {**summary, "interrupted": True}}, indent=2))
    assert SeedRun(0, files.root, ["debug"])._finished_unrecorded() is None
    files.train_stdout.write_text("killed before its summary\n")
    assert SeedRun(0, files.root, ["debug"])._finished_unrecorded() is None
