"""Several runs on one machine, then what a user does with a trained run: `make eval`, `make export`, the example.

Two debug trainings run at once through the real entry point with no RAY_ADDRESS (what a user's second
`make train` does): each must start its own Ray, Redis and W&B run and finish without seeing the other.
One of them is then evaluated, exported to TorchScript and ONNX, and played by examples/play_exported.py;
broken input (not a run, no checkpoint, a damaged or foreign checkpoint, no renderer) gets one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from actors.evaluator import Evaluator
from actors.worker import derive_seed
from deploy.tools.trained import load_trained
from deploy.tools.wandb_reader import find_offline_runs, read_run_info

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", **extra)
    env.pop("RAY_ADDRESS", None)  # a user's plain `make train`: nothing says to join a cluster
    return env


def _summary(stdout: str) -> dict[str, Any]:
    return json.loads(stdout[stdout.index('{\n  "summary"'):])["summary"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Two debug runs started together on this machine; their summaries."""
    root = tmp_path_factory.mktemp("runs")
    procs = []
    for name, extra in (("a", ["--run.group", "my-sweep", "--run.tags", "baseline", "lr3e-4"]), ("b", [])):
        args = [sys.executable, "-m", "deploy.train", "debug", "--run.dir", str(root / name), "--run.seed", str(len(procs)),
                *extra]
        procs.append(subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, f"a concurrent run failed:\n{out[-3000:]}\n{err[-6000:]}"
        assert "Connecting to existing Ray cluster" not in err
    return [_summary(out) for out, _ in outputs]


def test_two_runs_at_once_each_finish_with_their_own_ray_redis_and_wandb(two_runs: list[dict[str, Any]]) -> None:
    a, b = two_runs
    for s in (a, b):
        assert s["env_steps"] >= 2000 and not s["interrupted"] and s["policy_version"] >= 1
        # No cross-talk: each replay holds exactly the transitions its own actors' writers had acknowledged
        # (steps an actor took after its last flush, when the run stopped, were never written).
        assert s["replay"]["inserted"] == s["actor_steps_written"] > 0
        assert s["actor_steps_written"] <= s["agent_steps"]
    assert a["replay_url"] != b["replay_url"] and a["wandb_run_id"] != b["wandb_run_id"]
    assert set(a["actor_node_ids"]).isdisjoint(b["actor_node_ids"])  # two Ray clusters, not one shared
    assert a["learner_node_id"] != b["learner_node_id"]
    # `--run.group` and tags reach W&B (read back from the offline run file); the name defaults to the directory.
    info_a = read_run_info(find_offline_runs(a["run_dir"])[0])
    assert info_a["group"] == "my-sweep" and info_a["tags"] == ["baseline", "lr3e-4"]
    assert info_a["job_type"] == "train" and info_a["name"] == "a"
    assert read_run_info(find_offline_runs(b["run_dir"])[0])["group"] == ""


def test_make_eval_reports_both_policies_and_writes_json_and_videos(two_runs: list[dict[str, Any]]) -> None:
    run_dir = Path(two_runs[0]["run_dir"])
    proc = subprocess.run(["make", "-s", "eval", f"RUN={run_dir}", "EPISODES=2"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    checkpoint = Path(two_runs[0]["checkpoint"])
    assert Path(report["checkpoint"]) == checkpoint  # the newest: the run's final checkpoint
    assert Path(report["report"]) == run_dir / "eval" / f"{checkpoint.stem}.json"
    assert json.loads(Path(report["report"]).read_text())["stochastic"] == report["stochastic"]
    for mode in ("stochastic", "deterministic"):
        entry = report[mode]
        assert len(entry["returns"]) == 2 and entry["lengths"] == [250, 250]  # cheetah: 1000 env steps / repeat 4
        assert np.isfinite(entry["return_mean"]) and entry["env_steps_per_s"] > 0
        assert Path(entry["video"]).read_bytes()[:6] == b"GIF89a"
        assert f"{mode:13s} return" in proc.stderr
    # The deterministic policy plays the same episode whatever the noise: two calls with one seed agree, and
    # its two episodes (different initial states) need not.
    trained = load_trained(run_dir)
    again = Evaluator(trained.cfg).evaluate(trained.weights, 1, report["seed"], deterministic=True)
    assert again["returns"][0] == pytest.approx(report["deterministic"]["returns"][0], abs=1e-9)


def _histories(trained: Any, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Real frames from an episode of the task, and random actions, as [n, tau, ...] histories."""
    tau, a = trained.cfg.model.sequence_length, trained.weights["action_dim"]
    from common.envs import make_env

    env = make_env(trained.cfg.run.task, seed=5)
    frames = [env.reset()]
    rng = np.random.default_rng(0)
    for _ in range(n + tau):
        frames.append(env.step(rng.uniform(-1, 1, a))[0])
    env.close()
    obs = np.stack([np.stack(frames[i:i + tau]) for i in range(n)])
    return obs, rng.uniform(-1, 1, (n, tau - 1, a)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_the_policy_and_plays_the_task(two_runs: list[dict[str, Any]], fmt: str) -> None:
    run_dir = Path(two_runs[0]["run_dir"])
    proc = subprocess.run(["make", "-s", "export", f"RUN={run_dir}", f"FORMAT={fmt}"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    path = Path(json.loads(proc.stdout.strip().splitlines()[-1])["export"])
    assert path.suffix == (".pt" if fmt == "torchscript" else ".onnx") and path.parent == run_dir / "export"
    trained = load_trained(run_dir)
    obs, actions = _histories(trained)
    expected = trained.policy().act(obs, actions, deterministic=True)

    sys.path.insert(0, str(REPO / "examples"))
    try:
        import play_exported
    finally:
        sys.path.pop(0)
    act, meta = play_exported.load(str(path))
    assert meta["tau"] == trained.cfg.model.sequence_length and meta["action_repeat"] == 4
    assert meta["image_size"] == 64 and meta["action_low"] == [-1.0] * 6 and meta["task"] == "cheetah_run"
    assert meta["policy_version"] == trained.weights["version"]
    got = act(obs, actions)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5
    # A batch of one (what the example feeds) works too: the batch dimension is dynamic.
    assert np.abs(act(obs[:1], actions[:1]) - expected[:1]).max() <= 1e-5

    # The example, with nothing but the file and dm_control, plays the episode `make eval` plays.
    returns = play_exported.play(str(path), episodes=1, seed=derive_seed(77, 0))
    reference = Evaluator(trained.cfg).evaluate(trained.weights, 1, 77, deterministic=True)["returns"][0]
    assert returns[0] == pytest.approx(reference, rel=1e-3, abs=1e-2)


def _one_line_error(args: list[str], **env: str) -> str:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=_env(**env), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, f"expected a refusal, got {proc.returncode}:\n{proc.stderr[-3000:]}"
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING:absl")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_bad_input_to_eval_and_export_gets_one_line(two_runs: list[dict[str, Any]], tmp_path: Path) -> None:
    run_dir = Path(two_runs[1]["run_dir"])
    for command in ("deploy.evaluation", "deploy.export"):
        assert "not a run directory" in _one_line_error([command, str(tmp_path)])
    empty = tmp_path / "fresh"
    (empty / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.json", empty / "config.json")
    assert "no checkpoint yet" in _one_line_error(["deploy.evaluation", str(empty)])
    assert "no checkpoint 'ckpt_9.pt'" in _one_line_error(["deploy.export", str(run_dir), "--ckpt", "ckpt_9.pt"])
    assert "is not one of torchscript, onnx" in _one_line_error(["deploy.export", str(run_dir), "--format", "tflite"])

    newest = Path(two_runs[1]["checkpoint"])
    before = newest.read_bytes()
    damaged = empty / "checkpoints" / "ckpt_0000000001.pt"
    damaged.write_bytes(before[: len(before) // 2])
    assert "cannot be read" in _one_line_error(["deploy.evaluation", str(empty)])
    foreign = torch.load(newest, map_location="cpu", weights_only=True)
    foreign["learner"]["format"] = 99
    torch.save(foreign, damaged)
    assert "another version of slac-dist" in _one_line_error(["deploy.export", str(empty)])
    (empty / "config.json").write_text("{not json")
    assert "not a slac-dist config" in _one_line_error(["deploy.evaluation", str(empty)])

    # No working OpenGL: libraries that cannot load stand first on the loader's path.
    broken = tmp_path / "broken-gl"
    broken.mkdir()
    for name in ("libEGL.so.1", "libEGL.so", "libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so", "libGL.so.1"):
        (broken / name).write_text("not a library")
    env = {"LD_LIBRARY_PATH": str(broken)}
    probe_env = _env(**env)
    probe_env.pop("MUJOCO_GL", None)
    probe_env.pop("PYOPENGL_PLATFORM", None)
    proc = subprocess.run([sys.executable, "-m", "deploy.evaluation", str(run_dir), "--episodes", "1"], cwd=REPO,
                          env=probe_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no headless OpenGL backend works" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert newest.read_bytes() == before  # nothing above touched the run's own checkpoint
