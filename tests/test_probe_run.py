"""The latent probe and the video cadence on a real debug run of cartpole_swingup, then through `make eval`.

The published weights carry the latent model's filtering networks (`Learner.actor_weights`), so every evaluation of
a published policy probes: probe.csv holds one row per state dimension per such evaluation, each with a finite R^2,
and TensorBoard (read with its own reader) the same figures beside the return, the losses and the videos. `make
eval` probes from the checkpoint's latent model.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard_files import images, read_events, scalars, values

from common.config import parse_cli
from common.probe import has_filter
from learner.learner import Learner

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
STATE = ("slider", "hinge_1_cos", "hinge_1_sin", "slider_vel", "hinge_1_vel")


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_a_debug_run_probes_its_latents_and_records_videos_at_both_ends(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    flags = ["--run.task", "cartpole_swingup", "--run.eval-episodes", "2", "--run.video-every", "5"]
    _run(["deploy.train", "debug", "--run.dir", str(run_dir), *flags], timeout=600)
    evals = list(csv.DictReader((run_dir / "eval.csv").open()))
    scheduled = [int(r["scheduled_env_steps"]) for r in evals]
    assert scheduled[0] == 0 and scheduled[-1] == 2000  # 1000 too unless the step-0 one was still busy there

    # Videos: the step-0 evaluation and the final one (one at 1000 would be the 2nd of every 5), in TensorBoard.
    events = read_events(run_dir)
    assert [v.step for v in images(events, "eval/video")] == [int(evals[0]["env_steps"]), int(evals[-1]["env_steps"])]

    published = [r for r in evals if r["policy_version"] != "0"]
    assert has_filter(Learner(parse_cli(["debug", *flags]), 1).actor_weights(1)) and published
    rows = list(csv.DictReader((run_dir / "probe.csv").open()))
    assert len(rows) == len(STATE) * len(published)
    assert [r["dimension"] for r in rows[:len(STATE)]] == list(STATE)
    assert all(math.isfinite(float(r["r2"])) for r in rows)
    # The same R^2 in TensorBoard at each probed evaluation's step, beside its return and the model's losses.
    probed = [int(r["env_steps"]) for r in published]
    assert [e.step for e in scalars(events, "probe/r2_mean")] == probed
    assert [e.step for e in scalars(events, "probe/r2/slider")] == probed
    assert values(events, "eval/return") and values(events, "model/loss")

    # `make eval` probes from the checkpoint: one R^2 per state dimension and their mean, in its JSON.
    proc = _run(["deploy.evaluation", str(run_dir), "--episodes", "4", "--no-video"], timeout=300)
    report = json.loads(proc.stdout)
    for mode in ("stochastic", "deterministic"):
        probe = report[mode]["probe"]
        assert set(probe) == {f"probe/r2/{n}" for n in STATE} | {"probe/r2_mean"}
        assert all(math.isfinite(v) for v in probe.values()), probe
    assert json.loads(Path(report["report"]).read_text())["stochastic"]["probe"] == report["stochastic"]["probe"]
    assert "latent probe R^2" in proc.stderr
    print(json.dumps({m: report[m]["probe"] for m in ("stochastic", "deterministic")}, indent=1))
