"""A resume of a finished run is refused before anything starts (deploy/run/run_dir.py), and `make reproduce`'s
harness collects a seed that finished while the harness was gone instead of resuming it (child_runs.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from common.config import ConfigError, debug
from common.run_files import RunFiles
from deploy.experiments.child_runs import SeedFailed, SeedRun
from deploy.run.run_dir import finished_at, prepare_run_dir
from deploy.run.run_state import RunState
from learner.checkpoint import save_checkpoint

pytestmark = pytest.mark.unit


def _state(env_steps: int, completed_length: int) -> dict:
    run_state = dataclasses.asdict(RunState(env_steps=env_steps, completed_length=completed_length))
    return {"learner": {}, "counters": {"updates": 7}, "config": debug().to_dict(),
            "extra": {"wandb_run_id": "abcd1234", "run_state": run_state}}


def _with(**run: object):
    cfg = debug()
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **run))


def test_a_run_is_finished_at_the_length_its_final_checkpoint_completed() -> None:
    cfg = debug()  # run.env_steps 2000
    assert finished_at(_state(2008, 2000), cfg) == 2000
    assert finished_at(_state(2008, 2000), _with(env_steps=1000)) == 2000  # a shorter length: nothing to train either
    assert finished_at(_state(2008, 2000), _with(env_steps=4000)) is None  # a longer one trains on
    assert finished_at(_state(2008, 0), cfg) is None  # at its length, but no final checkpoint: the resume finishes it
    assert finished_at({"extra": {"run_state": {"env_steps": 2008}}}, cfg) is None  # an older checkpoint


def test_resuming_a_finished_run_is_refused_in_one_paragraph_and_changes_nothing(tmp_path: Path) -> None:
    run = prepare_run_dir(_with(dir=str(tmp_path / "run")))
    run.release()
    files = RunFiles(run.path)
    save_checkpoint(files.checkpoints, 7, _state(2008, 2000))
    config = files.config.read_bytes()
    with pytest.raises(ConfigError) as refused:
        prepare_run_dir(_with(resume=str(run.path)))
    message = str(refused.value)
    assert "this run is finished" in message and "2000 environment steps, its final evaluation included" in message
    assert f"--run.resume {run.path} --run.env-steps 4000" in message and f"make eval RUN={run.path}" in message
    assert files.config.read_bytes() == config
    shorter = pytest.raises(ConfigError, prepare_run_dir, _with(resume=str(run.path), env_steps=1000))
    assert "(you asked for 1000)" in str(shorter.value)
    resumed = prepare_run_dir(_with(resume=str(run.path), env_steps=4000))  # a longer length: reopened
    resumed.release()
    assert resumed.resume_state["extra"]["run_state"]["completed_length"] == 2000


def _finished_seed(tmp_path: Path, printed: dict | None) -> RunFiles:
    files = RunFiles(tmp_path / "seed0")
    files.logs.mkdir(parents=True)
    files.config.write_text(debug().to_json())
    newest = save_checkpoint(files.checkpoints, 7, _state(2008, 2000))
    if printed is not None:
        files.train_stdout.write_text("a progress line\n" + json.dumps(
            {"summary": {"checkpoint": str(newest), **printed}}, indent=2))
    (files.logs / "harness.json").write_text(json.dumps({"harness_commit": "abc1234", "harness_started_at": 100.0}))
    return files


def test_the_harness_collects_a_seed_that_finished_while_it_was_gone(tmp_path: Path) -> None:
    """The harness died between its child's end and done.json: the seed's printed summary is collected, with the
    first harness's commit and start (a resume would be refused), and no child is started."""
    files = _finished_seed(tmp_path, {"env_steps": 2008, "updates": 40, "interrupted": False})
    run = SeedRun(0, files.root, ["debug"], commit="later99")
    run.start(quiet=True)
    assert run.process is None
    summary = run.finish()
    assert summary["updates"] == 40 and summary["harness_commit"] == "abc1234" and summary["harness_started_at"] == 100
    assert json.loads(files.done.read_text()) == summary


def test_a_finished_seed_whose_summary_was_lost_is_named_not_resumed_for_ever(tmp_path: Path) -> None:
    files = _finished_seed(tmp_path, None)
    with pytest.raises(SeedFailed, match="is finished .* but it was stopped before it printed its summary"):
        SeedRun(0, files.root, ["debug"]).start(quiet=True)
    # A summary printed by an earlier, interrupted life is not this run's end either.
    files = _finished_seed(tmp_path / "b", {"env_steps": 1200, "interrupted": True})
    with pytest.raises(SeedFailed, match="make eval RUN="):
        SeedRun(0, files.root, ["debug"]).start(quiet=True)
    assert not files.done.exists()
