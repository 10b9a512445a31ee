"""`make reproduce` end to end (marker `e2e`): seeds in parallel, a stopped harness, several tasks, their table."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_tools import wait_for_no_process_using
from tensorboard_files import images, read_events, tensorboard_runs

from deploy.experiments.returns_plot import RETURNS_COLUMNS
from deploy.tools.wandb_reader import find_offline_runs, read_history, read_run_info

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]


def test_make_reproduce_two_seeds_in_parallel_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)  # each seed starts its own private Ray, beside the other
    args = [sys.executable, "-m", "deploy.reproduce", "debug", "--run.task", "cheetah_run", "--seeds", "2",
            "--parallel", "2",
            # 2000 env steps (500 agent steps) pass the initial collection (100) and the limiter's slack (200):
            # the run reaches joint training, so the evaluation at its length uses a trained policy.
            "--run.env-steps", "2000", "--run.eval-every", "2000", "--run.eval-episodes", "2", "--results", str(tmp_path / "results"),
            "--runs", str(tmp_path / "runs")]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"reproduce failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    out = tmp_path / "results" / "cheetah_run" / "debug"
    # Per seed: an evaluation at step 0 by the uniform random policy, and one at the run's length.
    for seed in (0, 1):
        rows = list(csv.DictReader((out / f"seed{seed}" / "eval.csv").open()))
        assert [int(r["scheduled_env_steps"]) for r in rows] == [0, 2_000]
        assert rows[0]["policy_version"] == "0" and int(rows[1]["policy_version"]) >= 1
        assert int(rows[1]["env_steps"]) >= 2_000 and len(rows[1]["returns"].split()) == 2
    merged = list(csv.reader((out / "returns.csv").open()))
    assert tuple(merged[0]) == RETURNS_COLUMNS
    assert [(r[0], r[1]) for r in merged[1:]] == [("0", "0"), ("0", "1"), ("2000", "0"), ("2000", "1")]
    assert (out / "returns.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["random_policy"]["episodes"] == 4 and summary["machine"]["cores"] == os.cpu_count()
    assert summary["command"].startswith("make reproduce TASK=cheetah_run SEEDS=2 PRESET=debug")
    assert all(s["updates_per_s"] > 0 for s in summary["seeds"])
    assert summary["parallel"] == 2
    # Both ran at once: each started before the other finished.
    starts = [s["harness_started_at"] for s in summary["seeds"]]
    ends = [s["harness_finished_at"] for s in summary["seeds"]]
    assert max(starts) < min(ends)
    assert "2 seeds, 2 at a time" in proc.stderr
    # `make tensorboard RUN=<the seeds' folder>`: one TensorBoard run per seed, named by its folder.
    seeds = tmp_path / "runs" / "cheetah_run" / "debug"
    assert sorted(tensorboard_runs(seeds)) == ["seed0/tensorboard", "seed1/tensorboard"]
    # The figure went to every seed's dashboards at the seed's last environment step: TensorBoard, and the W&B run
    # reopened by its id; the seeds are one W&B group with readable names and tags.
    for seed in (0, 1):
        (figure,) = images(read_events(seeds / f"seed{seed}"), "reproduce/returns")
        assert figure.step == next(s["env_steps"] for s in summary["seeds"] if s["seed"] == seed)
        runs = find_offline_runs(seeds / f"seed{seed}")
        history = [row for run in runs for row in read_history(run)]
        assert any(row.get("reproduce/returns/_type") == "image-file" for row in history)
        info = read_run_info(runs[0])
        assert info["group"] == "cheetah_run-debug" and info["job_type"] == "reproduce"
        assert info["name"] == f"cheetah_run-debug-seed{seed}"
        assert info["tags"][:2] == ["cheetah_run", "debug"] and info["tags"][-1] == f"seed{seed}"
        assert info["tags"][2].startswith("commit-" + summary["commit"][:12])
        assert (tmp_path / "runs" / "cheetah_run" / "debug" / f"seed{seed}" / "logs" / "train.log").stat().st_size > 0
    table = (tmp_path / "results" / "debug" / "table.md").read_text()
    assert "| cheetah_run | 2 | 4 / 4 | — | — |" in table and "413 / 707 (AR 4)" in table  # action repeat: ours / SLAC's
    # Running it again skips the finished seeds and rebuilds the same curve.
    before = (out / "returns.csv").read_text()
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already finished" in again.stderr
    assert (out / "returns.csv").read_text() == before


def _processes_naming(text: str) -> list[int]:
    """Pids whose command line contains `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                pids.append(int(entry.name))
        except OSError:  # it exited meanwhile
            continue
    return pids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "SIGTERM", "SIGKILL"])
def test_a_stopped_harness_stops_its_seed_with_a_checkpoint(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) and SIGTERM to the harness alone (a scheduler, `kill`)
    are passed on to its seed; SIGKILL, which the harness cannot pass on, reaches the seed as SIGTERM from the
    kernel (PR_SET_PDEATHSIG). Each time the seed checkpoints and exits, and nothing of it keeps running.
    Before, a SIGTERM or SIGKILL left the seed training on."""
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", RAY_ADDRESS="local")
    run_dir = tmp_path / "runs" / "cartpole_swingup" / "debug" / "seed0"
    log_path = tmp_path / "harness.log"
    args = [sys.executable, "-m", "deploy.reproduce", "debug", "--run.task", "cartpole_swingup", "--seeds", "1",
            "--run.env-steps", "1000000", "--results", str(tmp_path / "results"), "--runs", str(tmp_path / "runs")]
    with log_path.open("w") as log:
        harness = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its own process group, as a terminal gives it
    try:
        deadline = time.monotonic() + 300
        while "[train]" not in log_path.read_text(errors="replace"):  # the seed makes SAC updates
            assert harness.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
        seed_pids = [p for p in _processes_naming(str(run_dir)) if p != harness.pid]
        assert len(seed_pids) == 1, seed_pids
        if sig == signal.SIGINT:
            os.killpg(harness.pid, sig)
        else:
            harness.send_signal(sig)
        expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}[sig]
        assert harness.wait(timeout=180) == expected
        deadline = time.monotonic() + 180
        while Path(f"/proc/{seed_pids[0]}").exists():
            assert time.monotonic() < deadline, "the seed is still running after its harness stopped"
            time.sleep(0.5)
    finally:
        if harness.poll() is None:
            harness.kill()
    out = (run_dir / "logs" / "train.stdout").read_text()
    summary = json.loads(out[out.index('{\n  "summary"'):])["summary"]
    assert summary["interrupted"] and summary["stopped_by"] == ("SIGINT" if sig == signal.SIGINT else "SIGTERM")
    assert Path(summary["checkpoint"]).is_file() and Path(summary["checkpoint"]).parent == run_dir / "checkpoints"
    # Nothing of the seed outlives it: no process holds a file in the test's directory (the run's, its redis-server's
    # AOF) or in the seed's private Ray directory (every Ray process's log), whatever its command line became.
    left = wait_for_no_process_using(tmp_path, summary["ray_dir"])
    assert not left, f"processes of the run outlived it: {left}"
    if sig != signal.SIGKILL:
        assert "run the same command again to resume it" in log_path.read_text()


def test_make_reproduce_several_tasks_writes_the_table(tmp_path: Path) -> None:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", RAY_ADDRESS="local")
    proc = subprocess.run(["make", "-s", "reproduce", "PRESET=debug", "TASKS=cartpole_swingup,finger_spin", "SEEDS=1",
                           "ARGS=--run.env-steps 1200 --run.eval-every 1200 --run.eval-episodes 1 "
                           f"--results {tmp_path / 'results'} --runs {tmp_path / 'runs'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"reproduce failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert [Path(t["results"]).parent.name for t in report["tasks"]] == ["cartpole_swingup", "finger_spin"]
    for task in ("cartpole_swingup", "finger_spin"):
        assert (tmp_path / "results" / task / "debug" / "returns.png").is_file()
        assert json.loads((tmp_path / "results" / task / "debug" / "summary.json").read_text())["task"] == task
    table = (tmp_path / "results" / "debug" / "table.md").read_text()
    assert "| cartpole_swingup | 1 |" in table and "| finger_spin | 1 |" in table and "951 / 983" in table

