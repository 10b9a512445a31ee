"""deploy/run/logger.py: each call reaches TensorBoard (beside W&B) at its environment step, read back with
TensorBoard's own reader; either dashboard failing leaves the other one taking data."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import imageio
import numpy as np
import pytest
from PIL import Image
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard_files import event_files, images, read_events, scalars, tensorboard_runs, values

from common.config import Config, debug
from deploy.run.logger import EVAL_COLUMNS, RunLogger

pytestmark = pytest.mark.unit


def _config(mode: str = "disabled") -> Config:
    cfg = debug()
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, wandb_mode=mode))


def _frames(t: int = 6, h: int = 8, w: int = 10) -> np.ndarray:
    """uint8 [T, 3, H, W]: each frame one flat colour, which a GIF's palette keeps exactly."""
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]])
    return np.broadcast_to(colours[np.arange(t) % 6, :, None, None], (t, 3, h, w)).astype(np.uint8)


def test_every_call_reaches_tensorboard_at_its_env_step(tmp_path: Path) -> None:
    logger = RunLogger(_config(), tmp_path)
    logger.scalars(100, {"model/loss": 1.5, "counters/updates": 7, "replay/size": np.int64(12), "note": "text"})
    logger.scalars(200, {"model/loss": 0.25, "counters/updates": 9})
    figure = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    logger.image(200, "model/samples", figure, "rows: ground truth, posterior")
    logger.video(300, "eval/video", _frames())
    logger.evaluation(300, 250, 9, 2, [1.0, 3.0], extra={"probe/r2_mean": 0.75, "probe/r2/x": 0.5})
    logger.finish({"env_steps": 300})

    events = read_events(tmp_path)
    assert [(e.step, e.value) for e in scalars(events, "model/loss")] == [(100, 1.5), (200, 0.25)]
    assert [(e.step, e.value) for e in scalars(events, "counters/updates")] == [(100, 7.0), (200, 9.0)]
    assert values(events, "replay/size") == [12.0]
    assert "note" not in events.Tags()["scalars"]  # a string is W&B's alone
    for tag, value in {"eval/return": 2.0, "eval/return_std": 1.0, "eval/policy_version": 2.0,
                       "probe/r2_mean": 0.75, "probe/r2/x": 0.5}.items():
        assert [(e.step, e.value) for e in scalars(events, tag)] == [(300, value)], tag

    (grid,) = images(events, "model/samples")
    assert (grid.step, grid.height, grid.width) == (200, 12, 20)
    assert np.array_equal(imageio.v3.imread(grid.encoded_image_string), figure)  # PNG: lossless
    (video,) = images(events, "eval/video")
    assert (video.step, video.height, video.width) == (300, 8, 10)
    gif = Image.open(io.BytesIO(video.encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames == 6 and gif.info["loop"] == 0
    played = imageio.v3.imread(video.encoded_image_string, index=None)
    assert np.array_equal(played[..., :3], _frames().transpose(0, 2, 3, 1))
    # eval.csv keeps its columns: the extra scalars are the dashboards' only.
    rows = list(csv.reader((tmp_path / "eval.csv").open()))
    assert tuple(rows[0]) == EVAL_COLUMNS and rows[1][:6] == ["300", "250", "9", "2", "2.0000", "1.0000"]


def test_extra_scalars_may_not_overwrite_the_evaluation_return(tmp_path: Path) -> None:
    logger = RunLogger(_config(), tmp_path)
    with pytest.raises(ValueError, match="eval/return"):
        logger.evaluation(0, 0, 0, 0, [1.0], extra={"eval/return": 5.0})
    logger.finish({})


def test_an_evaluation_is_on_disk_before_the_run_finishes(tmp_path: Path) -> None:
    logger = RunLogger(_config(), tmp_path)
    logger.scalars(10, {"model/loss": 1.0})  # buffered: flushed at most every FLUSH_SECS
    logger.evaluation(20, 20, 1, 1, [4.0])
    events = read_events(tmp_path)  # the logger is still open
    assert values(events, "model/loss") == [1.0] and values(events, "eval/return") == [4.0]
    logger.finish({})


def test_a_resumed_run_adds_a_file_and_seeds_are_one_tensorboard_run_each(tmp_path: Path) -> None:
    first = RunLogger(_config(), tmp_path / "seed0")
    first.scalars(100, {"counters/env_steps": 100})
    first.finish({})
    resumed = RunLogger(_config(), tmp_path / "seed0")
    resumed.scalars(200, {"counters/env_steps": 200})
    resumed.finish({})
    other = RunLogger(_config(), tmp_path / "seed1")
    other.scalars(100, {"counters/env_steps": 100})
    other.finish({})

    assert len(event_files(tmp_path / "seed0")) == 2
    assert values(read_events(tmp_path / "seed0"), "counters/env_steps") == [100.0, 200.0]
    assert values(read_events(tmp_path / "seed0", file=-1), "counters/env_steps") == [200.0]
    # `make tensorboard RUN=<a reproduce folder>`: one run per seed, named by its folder.
    assert sorted(tensorboard_runs(tmp_path)) == ["seed0/tensorboard", "seed1/tensorboard"]


def test_tensorboard_goes_on_when_wandbs_service_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logger = RunLogger(_config(), tmp_path)
    logger.scalars(1, {"model/loss": 1.0})

    def gone(*args: object, **kwargs: object) -> None:
        raise BrokenPipeError("the W&B service is gone")

    monkeypatch.setattr(logger.run, "log", gone)
    logger.scalars(2, {"model/loss": 2.0})
    logger.video(2, "eval/video", _frames())
    logger.evaluation(3, 0, 0, 1, [5.0])
    logger.finish({})
    events = read_events(tmp_path)
    assert values(events, "model/loss") == [1.0, 2.0] and values(events, "eval/return") == [5.0]
    assert len(images(events, "eval/video")) == 1


def test_a_failed_tensorboard_write_is_one_warning_and_wandb_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    logger = RunLogger(_config(), tmp_path)
    logger.evaluation(1, 0, 0, 0, [1.0])
    sent: list[dict[str, object]] = []
    monkeypatch.setattr(logger.run, "log", sent.append)

    # A full disk: /dev/full takes writes into the file's buffer and fails each flush with ENOSPC.
    events = logger._tensorboard
    events.close()
    monkeypatch.setattr(events, "_file", open("/dev/full", "wb"))  # closed by the logger
    monkeypatch.setattr(events, "_records", RecordWriter(events._file))
    with caplog.at_level(logging.WARNING, logger="deploy.run.logger"):
        logger.scalars(2, {"model/loss": 2.0})
        logger.scalars(3, {"model/loss": 3.0})
        logger.evaluation(4, 0, 0, 0, [2.0])
        logger.finish({})
    warnings = [r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(warnings) == 1 and "TensorBoard stopped taking data (OSError" in warnings[0], warnings
    assert [row["env_steps"] for row in sent] == [2, 3, 4]
    assert values(read_events(tmp_path), "eval/return") == [1.0]  # what was written before is kept


def test_offline_wandb_and_tensorboard_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default mode here (offline W&B): both dashboards' files in the run directory."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = RunLogger(_config("auto"), tmp_path)
    logger.scalars(5, {"model/loss": 1.0})
    logger.finish({})
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert values(read_events(tmp_path), "model/loss") == [1.0]


_CHILD = """
import sys
from pathlib import Path
from common.config import Config, debug
import dataclasses
from deploy.run.logger import RunLogger
cfg = debug()
cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, wandb_mode="offline"))
logger = RunLogger(cfg, Path(sys.argv[1]))
logger.finish({})
"""


def test_a_run_starts_its_own_wandb_service_even_below_a_process_that_has_one(tmp_path: Path) -> None:
    """A parent that used W&B (a reproduce harness, a notebook, a test) has WANDB_SERVICE in its environment; a
    run below it must not attach to that service, whose wandb-core would then hold the run's files after the run
    (found in a clean-clone make test: one parent's wandb-core held the files of five later runs)."""
    from process_tools import REPO, processes_using

    parent = """
import os, subprocess, sys
import wandb
wandb.init(mode="offline", dir=sys.argv[1], project="parent")
assert "WANDB_SERVICE" in os.environ
subprocess.run([sys.executable, "-c", sys.argv[2], sys.argv[3]], check=True)
import process_tools
print("LEFT", process_tools.processes_using(sys.argv[3]))
wandb.finish()
"""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = subprocess.run([sys.executable, "-c", parent, str(tmp_path), _CHILD, str(run_dir)], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LEFT {}" in out.stdout, out.stdout  # the parent's wandb-core holds none of the run's files
    assert not processes_using(run_dir)
