"""A user's own task through the real entry point: a dm_control task and a gymnasium task outside the registry and
a numpy env from a module on PYTHONPATH (examples/custom_task) each train with the debug preset; the numpy run is
then evaluated, exported and played; task strings that cannot work fail in seconds with one paragraph, leaving no
run directory, Ray or Redis behind."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.evaluator import Evaluator
from actors.worker import derive_seed
from common.envs import make_env
from deploy.run.config import MAX_ERROR_LINES
from deploy.tools.trained import load_trained
from deploy.tools.wandb_reader import find_offline_runs, read_config

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
CUSTOM = REPO / "examples" / "custom_task"
SHORT = ["--actors.num", "1", "--run.env-steps", "1000", "--run.eval-every", "500", "--replay.samples-per-insert", "0.5"]
RUNS = {  # name: (task string, extra arguments, suite, action repeat)
    "dmc": ("dmc:reacher/easy", ["--task.action-repeat", "2"], "dmc", 2),
    "gym": ("gym:InvertedDoublePendulum-v5", [], "gym", 1),
    "own": ("reach:make_env", [], "custom", 1),
}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", **extra)
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def own_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The three forms trained at once (each its own Ray, Redis, W&B); their summaries, run dirs and wall clocks."""
    root = tmp_path_factory.mktemp("own")
    procs, started = {}, time.monotonic()
    for name, (task, extra, _, _) in RUNS.items():
        args = [sys.executable, "-m", "deploy.train", "debug", "--run.task", task, "--run.dir", str(root / name),
                *SHORT, *extra]
        procs[name] = subprocess.Popen(args, cwd=REPO, env=_env(PYTHONPATH=str(CUSTOM)), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name} failed:\n{out[-3000:]}\n{err[-6000:]}"
        results[name] = {"summary": json.loads(out[out.index('{\n  "summary"'):])["summary"], "stderr": err,
                         "dir": root / name, "wall_s": time.monotonic() - started}
    print("\n" + ", ".join(f"{n}: {r['wall_s']:.0f} s" for n, r in results.items()) + " (three at once)")
    return results


@pytest.mark.parametrize("name", sorted(RUNS))
def test_each_form_trains_end_to_end(own_runs: dict[str, dict[str, Any]], name: str) -> None:
    task, _, suite, repeat = RUNS[name]
    run, summary = own_runs[name], own_runs[name]["summary"]
    assert summary["env_steps"] >= 1000 and not summary["interrupted"] and summary["updates"] > 0
    assert Path(summary["checkpoint"]).is_file()
    with (run["dir"] / "eval.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 2 and all(np.isfinite(float(r["return_mean"])) for r in rows)
    saved = json.loads((run["dir"] / "config.json").read_text())
    assert saved["run"]["task"] == task and saved["task"]["suite"] == suite and saved["task"]["action_repeat"] == repeat
    assert saved["task"]["episode_length"] == {"dmc": 1000, "gym": 1000, "custom": 200}[suite]  # reach: its own limit
    # W&B received the resolved task with the config; the run's first lines said which settings it uses.
    (wandb_run,) = find_offline_runs(run["dir"])
    assert read_config(wandb_run)["task"]["env_id"] == saved["task"]["env_id"]
    assert f"task {task} ({suite}" in run["stderr"] and f"action repeat {repeat}," in run["stderr"]
    # The action repeat is the environment steps per agent step (dm_control never ends an episode early).
    if name == "dmc":
        assert summary["env_steps"] == 2 * summary["agent_steps"]


def test_a_resume_with_another_action_repeat_is_refused(own_runs: dict[str, dict[str, Any]]) -> None:
    run_dir = own_runs["dmc"]["dir"]
    before = (run_dir / "config.json").read_text()
    proc = subprocess.run([sys.executable, "-m", "deploy.train", "--run.resume", str(run_dir), "--task.action-repeat",
                           "4"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "task.action_repeat: saved 2, now 4" in proc.stderr, proc.stderr[-3000:]
    assert (run_dir / "config.json").read_text() == before


def test_make_eval_and_export_on_a_numpy_env(own_runs: dict[str, dict[str, Any]]) -> None:
    run_dir = own_runs["own"]["dir"]
    env = _env(PYTHONPATH=str(CUSTOM))
    proc = subprocess.run(["make", "-s", "eval", f"RUN={run_dir}", "EPISODES=2"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["stochastic"]["lengths"] == [200, 200] and Path(report["stochastic"]["video"]).is_file()
    proc = subprocess.run(["make", "-s", "export", f"RUN={run_dir}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    path = Path(json.loads(proc.stdout.strip().splitlines()[-1])["export"])

    sys.path[:0] = [str(REPO / "examples"), str(CUSTOM)]
    try:
        import play_exported

        trained = load_trained(run_dir)
        act, meta = play_exported.load(str(path))
        assert (meta["task"], meta["suite"], meta["env_id"], meta["episode_length"]) == (
            "reach:make_env", "custom", "reach:make_env", 200)
        assert meta["rendering"]["mujoco"] is False and meta["rendering"]["resize"] == "area"
        tau, a = trained.cfg.model.sequence_length, trained.weights["action_dim"]
        task_env = make_env(trained.cfg.task_spec, seed=5)
        frames = [task_env.reset()] + [task_env.step(np.full(a, 0.3))[0] for _ in range(tau + 3)]
        task_env.close()
        obs = np.stack([np.stack(frames[i:i + tau]) for i in range(4)])
        actions = np.random.default_rng(0).uniform(-1, 1, (4, tau - 1, a)).astype(np.float32)
        expected = trained.policy().act(obs, actions, deterministic=True)
        assert np.abs(act(obs, actions) - expected).max() <= 1e-5
        # The example plays the episode `make eval` plays, with the factory's own module and its own resizing.
        returns = play_exported.play(str(path), episodes=1, seed=derive_seed(77, 0))
        reference = Evaluator(trained.cfg).evaluate(trained.weights, 1, 77, deterministic=True)["returns"][0]
        assert returns[0] == pytest.approx(reference, rel=1e-3, abs=1e-3)
    finally:
        del sys.path[:2]


def _marked_processes(marker: str) -> list[str]:
    """Processes alive whose environment carries `marker` (what a driver started with it handed down to anything
    it started: Ray, Redis, W&B), by pid and command. Only these: `make test` runs other tests' Ray and Redis
    beside this one."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes().split(b"\0"):
                found.append(f"{environ.parent.name} {(environ.parent / 'comm').read_text().strip()}")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


BAD = {  # task string: what its one paragraph must say
    "gym:CartPole-v1": "SLAC needs continuous actions",
    "task_factories:no_rgb_array": "render_mode='rgb_array'",
    "task_factories:float_frames": "uint8 array of shape (height, width, 3)",
    "task_factories:old_gym_step": "step() returned 4 values",  # fails in step() alone: the probe steps once
    "gym:InvertedPendulm-v5": "Did you mean",
    "dmc:reacher/impossible": "its tasks are: easy, hard",
    "dmc:reachr/easy": "its domains are:",
    "no_such_module_anywhere:make": "does not import",
    "task_factories:nothing_here": "has no 'nothing_here'",
    "cheeta": "Did you mean 'cheetah'",
}


def test_a_task_that_cannot_work_fails_at_once_with_a_paragraph(tmp_path: Path) -> None:
    """All at once: each must stop before Ray, Redis or W&B start, so nothing of a run is left."""
    mark = os.urandom(8).hex()
    procs = {task: subprocess.Popen([sys.executable, "-m", "deploy.train", "debug", "--run.task", task, "--run.dir",
                                     str(tmp_path / str(i))], cwd=REPO,
                                    env=_env(PYTHONPATH=str(REPO / "tests"), SLAC_TEST_MARK=mark),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, task in enumerate(BAD)}
    for i, (task, proc) in enumerate(procs.items()):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and "Traceback" not in err, f"{task}:\n{err[-3000:]}"
        if task == "cheeta":  # refused while the command line is parsed: tyro's box, cut to its distinct lines
            assert len(err.strip().splitlines()) <= MAX_ERROR_LINES + 2 and BAD[task] in " ".join(err.split()), err
        else:
            errors = [line for line in err.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and task in errors[0] and BAD[task] in errors[0], err[-3000:]
        assert not (tmp_path / str(i)).exists(), f"{task} left a run directory"
        assert "Ray" not in err and "W&B" not in err, f"{task} started something:\n{err[-2000:]}"
    assert not (left := _marked_processes(f"SLAC_TEST_MARK={mark}")), f"started and left behind: {left}"
