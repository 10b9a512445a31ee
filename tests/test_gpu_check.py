"""bench/gpu_check.sh, the script prepared for the GPU machine, run the way it runs on a CPU (tiny sizes), so it
cannot rot between the rare sessions that are lent a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_step_on_cpu(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu", "--out", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 0 and summary["failed"] == [], proc.stderr[-4000:]
    steps = {s["step"]: s for s in summary["steps"]}
    assert {"hardware", "unit_tests", "learner_default", "sustained", "render"} <= set(steps)
    assert summary["hardware"]["cuda_available"] is False and summary["device"] == "cpu"
    # The unit tests ran on the learner's device (a selection on CPU: the suite runs them all anyway).
    junit = (tmp_path / "unit_tests.xml").read_text()
    assert 'failures="0"' in junit and 'errors="0"' in junit and "test_a_failing_cuda_graph_mode_falls_back" in junit
    learner = json.loads((tmp_path / "learner-default.json").read_text())
    assert learner["variants"]["optimised_fp32"]["profile"]["top_level_operator_calls"] > 0
    sustained = json.loads((tmp_path / "sustained.json").read_text())
    assert sustained["updates"] > 0 and sustained["updates_per_s"] > 0 and sustained["execution"]["compile"] == "none"
    if not steps["render"]["skipped"]:  # mujoco and PyOpenGL are installed here: a renderer string, a rate
        render = json.loads((tmp_path / "render.json").read_text())
        working = [b for b in ("egl", "osmesa") if "renderer" in render[b]]
        assert working and all(render[b]["renders_per_s"] > 0 for b in working)
