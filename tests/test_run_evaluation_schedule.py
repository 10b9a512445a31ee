"""The evaluation schedule's videos and probe rows (deploy/run/evaluation_schedule.py), with stand-ins for Ray.

A video every `run.video_every` evaluations, always at step 0 and at the final one; the latent probe's scalars
go to the logger with the evaluation's and one row per state dimension to probe.csv.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from ray import exceptions as ray_exceptions

import deploy.run.evaluation_schedule as schedule_module
from common.config import debug
from common.run_files import RunFiles
from deploy.run.evaluation_schedule import PROBE_COLUMNS, EvalSchedule, append_probe_rows, records_video
from deploy.run.run_state import RunState

pytestmark = pytest.mark.unit

PROBE = {"probe/r2/slider": 0.91, "probe/r2/hinge_1_cos": float("nan"), "probe/r2_mean": 0.91}


class _Logger:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.evaluations, self.videos = run_dir, [], []

    def evaluation(self, env_steps: int, scheduled: int, updates: int, version: int, returns: list[float],
                   extra: dict[str, float] | None = None) -> None:
        self.evaluations.append((env_steps, scheduled, extra))

    def video(self, env_steps: int, key: str, frames: np.ndarray) -> None:
        self.videos.append(env_steps)


class _Evaluator:
    """Answers `evaluate.remote` at once with a result that has a video exactly when one was asked for."""

    def __init__(self, probe: dict[str, float] | None) -> None:
        self.asked: list[bool] = []
        self.evaluate = SimpleNamespace(remote=self._evaluate)
        self.probe = probe

    def _evaluate(self, weights: Any, episodes: int, seed: int, video: bool) -> dict[str, Any]:
        self.asked.append(video)
        return {"version": 0, "returns": [1.0, 2.0], "renderer": None, "probe": self.probe,
                "video": np.zeros((2, 3, 64, 64), np.uint8) if video else None}


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's wait and get on plain values: a 'reference' is the result itself."""
    monkeypatch.setattr(schedule_module, "ray", SimpleNamespace(wait=lambda refs, timeout=None: (refs, []),
                                                                get=lambda ref: ref))


def test_a_video_every_video_every_evaluations_and_at_both_ends() -> None:
    assert [records_video(1000 * (n - 1), n, 5, False) for n in range(1, 13)] == [
        True, False, False, False, False, True, False, False, False, False, True, False]
    assert records_video(0, 7, 5, False)  # step 0 even as a resumed run's n-th evaluation
    assert records_video(12_345, 3, 5, True)  # the last evaluation
    assert all(records_video(1000 * n, n + 1, 1, False) for n in range(5))  # 1: every evaluation


def test_the_schedule_asks_for_videos_and_logs_the_probe(tmp_path: Path, no_ray: None) -> None:
    base = debug()
    cfg = dataclasses.replace(base, run=dataclasses.replace(base.run, env_steps=10_000, eval_every=1000, video_every=4))
    state, logger, evaluator = RunState(), _Logger(tmp_path), _Evaluator(PROBE)
    board = SimpleNamespace(latest=SimpleNamespace(remote=lambda have: None))
    evals = EvalSchedule(cfg, state, evaluator, board, logger, lambda renderer: None)  # type: ignore[arg-type]
    for env_steps in range(0, 10_000, 250):
        state.env_steps = env_steps
        evals.step({"version": 0, "updates": 0})
    state.env_steps = 10_000
    evals.step({"version": 0, "updates": 0}, wait=True)
    evals.step({"version": 0, "updates": 0}, wait=True, final=True)
    # Grid points 0, 1000, ..., 9000, then the final one at 10 000: videos at evaluations 1, 5, 9 and the last.
    assert [s for _, s, _ in logger.evaluations] == list(range(0, 10_001, 1000))
    assert [i for i, asked in enumerate(evaluator.asked) if asked] == [0, 4, 8, 10]
    assert logger.videos == [0, 4000, 8000, 10_000]
    assert all(extra == PROBE for _, _, extra in logger.evaluations)
    rows = list(csv.reader(RunFiles(tmp_path).probe_csv.open()))
    assert tuple(rows[0]) == PROBE_COLUMNS and len(rows) == 1 + 2 * 11  # two dimensions per evaluation
    assert rows[1] == ["0", "0", "slider", "0.9100"] and rows[2] == ["0", "0", "hinge_1_cos", "nan"]
    assert [r[1] for r in rows[1::2]] == [str(s) for s in range(0, 10_001, 1000)]


def test_a_run_that_reaches_its_length_while_busy_records_its_last_evaluation(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The step-0 evaluation still runs when the run passes its length: the next one, at the length's grid
    point, is the run's last (no `final` one follows it) and records the video."""
    busy = [True]
    monkeypatch.setattr(schedule_module, "ray", SimpleNamespace(
        wait=lambda refs, timeout=None: ([], refs) if busy[0] and timeout == 0 else (refs, []), get=lambda ref: ref))
    base = debug()
    cfg = dataclasses.replace(base, run=dataclasses.replace(base.run, env_steps=2000, eval_every=1000, video_every=5))
    state, logger, evaluator = RunState(), _Logger(tmp_path), _Evaluator(None)
    board = SimpleNamespace(latest=SimpleNamespace(remote=lambda have: None))
    evals = EvalSchedule(cfg, state, evaluator, board, logger, lambda renderer: None)  # type: ignore[arg-type]
    evals.step({"version": 0, "updates": 0})
    state.env_steps = 2200
    evals.step({"version": 0, "updates": 0})  # still busy
    busy[0] = False
    evals.step({"version": 0, "updates": 0}, wait=True)
    evals.step({"version": 0, "updates": 0}, wait=True, final=True)  # nothing left: 2000 was evaluated
    assert [s for _, s, _ in logger.evaluations] == [0, 2000] and evaluator.asked == [True, True]


def test_no_probe_no_probe_csv_and_its_reason_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    logger = _Logger(tmp_path)
    evals = EvalSchedule(debug(), RunState(), None, None, logger, lambda renderer: None)  # type: ignore[arg-type]
    result = {"version": 1, "returns": [3.0], "renderer": None, "probe": None, "video": None,
              "probe_note": "latent probe skipped: because"}
    with caplog.at_level(logging.INFO, logger=schedule_module.__name__):
        evals.record(result, 0, 0, 0)
        evals.record(result, 1000, 1000, 0)
    assert logger.evaluations == [(0, 0, None), (1000, 1000, None)] and evals.last_return == 3.0
    assert not RunFiles(tmp_path).probe_csv.exists()
    assert [r.message for r in caplog.records] == ["latent probe skipped: because"]


def test_probe_rows_append_under_one_header(tmp_path: Path) -> None:
    path = tmp_path / "probe.csv"
    append_probe_rows(path, 10, 0, PROBE)
    append_probe_rows(path, 1010, 1000, {"probe/r2/slider": -0.25, "probe/r2_mean": -0.25})
    rows = list(csv.DictReader(path.open()))
    assert [(r["env_steps"], r["dimension"], r["r2"]) for r in rows] == [
        ("10", "slider", "0.9100"), ("10", "hinge_1_cos", "nan"), ("1010", "slider", "-0.2500")]
    assert math.isnan(float(rows[1]["r2"]))


class _Lost(ray_exceptions.RayActorError):
    """What ray.get raises for a call to an evaluator that died under it or is still being restarted."""

    def __init__(self) -> None:
        Exception.__init__(self, "the evaluator died")


def test_an_evaluation_cut_off_by_a_dead_evaluator_runs_again_at_its_grid_point(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The evaluation at grid point 1000 is lost with its evaluator while the run passes 2000: once the restarted
    evaluator answers (the first question fails: Ray is still restarting it), it runs again labelled 1000 (not
    2000, as a grid point merely passed while busy would be), counted and logged once."""
    base = debug()
    cfg = dataclasses.replace(base, run=dataclasses.replace(base.run, env_steps=3000, eval_every=1000))
    state, logger, evaluator = RunState(), _Logger(tmp_path), _Evaluator(None)
    evaluate, lost = evaluator.evaluate.remote, []

    def remember(*args: Any) -> Any:  # the second evaluation, and the first question after it, fail
        ref = {"result": evaluate(*args)}
        lost.extend([ref] if len(evaluator.asked) == 2 else [])
        return ref

    def question(function: Any) -> Any:
        ref = {"result": function(evaluator)}
        lost.extend([ref] if len(questions) == 0 else [])
        questions.append(ref)
        return ref

    def get(ref: Any) -> Any:
        if any(ref is failed for failed in lost):
            raise _Lost()
        return None if ref is None else ref["result"]  # None: the board's answer, nothing published

    questions: list[Any] = []
    evaluator.evaluate = SimpleNamespace(remote=remember)
    evaluator.__ray_call__ = SimpleNamespace(remote=question)
    monkeypatch.setattr(schedule_module, "ray", SimpleNamespace(
        wait=lambda refs, timeout=None: (refs, []), get=get, exceptions=ray_exceptions))
    board = SimpleNamespace(latest=SimpleNamespace(remote=lambda have: None))
    evals = EvalSchedule(cfg, state, evaluator, board, logger, lambda renderer: None)  # type: ignore[arg-type]
    counters = {"version": 0, "updates": 0}
    with caplog.at_level(logging.INFO, logger=schedule_module.__name__):
        evals.step(counters)  # grid point 0
        state.env_steps = 1100
        evals.step(counters)  # collects 0, starts 1000
        state.env_steps = 2100  # the run passes 2000 while 1000 runs
        evals.step(counters)  # 1000 was cut off; the evaluator does not answer yet
        assert len(evaluator.asked) == 2 and len(questions) == 2
        evals.step(counters)  # it answers: 1000 starts again
        evals.step(counters)  # collects the redone 1000, starts 2000
        state.env_steps = 3000
        evals.step(counters, wait=True)
        evals.step(counters, wait=True, final=True)
    assert [s for _, s, _ in logger.evaluations] == [0, 1000, 2000, 3000]
    assert state.evaluations_redone == 1 and len(evaluator.asked) == 5
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "cut off" in m] == [
        "the evaluation at grid point 1000 was cut off (_Lost); it runs again at that grid point"]
    assert [m.rsplit("(", 1)[1] for m in messages if m.startswith("evaluating")] == [
        "grid point 0)", "grid point 1000)", "grid point 1000)", "grid point 2000)", "grid point 3000)"]
