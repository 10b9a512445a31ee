"""`make reproduce`: the merge and figure of learning curves (unit), and the harness end to end (e2e)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.config import parse_cli
from deploy.experiments.child_runs import default_parallel
from deploy.experiments.results_table import write_table
from deploy.experiments.returns_plot import (
    RETURNS_COLUMNS,
    curve,
    plot_returns,
    random_baseline,
    read_evaluations,
    write_returns,
)
from deploy.run.logger import EVAL_COLUMNS
from deploy.tools.wandb_reader import find_offline_runs, read_history, read_run_info

REPO = Path(__file__).resolve().parents[1]


def _eval_csv(path: Path, rows: list[tuple[int, int, int, list[float]]]) -> Path:
    """eval.csv rows (env_steps, scheduled, policy_version, returns) in the run logger's format."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(EVAL_COLUMNS)
        for env_steps, scheduled, version, returns in rows:
            writer.writerow([env_steps, scheduled, 0, version, np.mean(returns), np.std(returns),
                             " ".join(str(r) for r in returns)])
    return path


def test_curves_align_on_the_grid_and_the_baseline_is_the_random_policy(tmp_path: Path) -> None:
    a = read_evaluations(_eval_csv(tmp_path / "a.csv", [(0, 0, 0, [1.0, 3.0]), (10_040, 10_000, 0, [0.0, 2.0]),
                                                         (20_100, 20_000, 5, [10.0, 20.0]),
                                                         (20_300, 20_000, 6, [30.0, 30.0])]), seed=0)
    b = read_evaluations(_eval_csv(tmp_path / "b.csv", [(0, 0, 0, [5.0, 5.0]), (10_010, 10_000, 2, [7.0, 9.0]),
                                                         (20_020, 20_000, 7, [50.0, 50.0])]), seed=1)
    assert [e.env_steps for e in a] == [0, 10_000, 20_000]
    assert a[-1].returns == (30.0, 30.0)  # a repeated grid point (a resumed run) keeps its newest row
    # Only the uniform random policy's episodes (version 0) form the baseline: 1, 3, 0, 2 and 5, 5.
    mean, std, episodes = random_baseline(a + b)
    assert episodes == 6 and mean == pytest.approx(16 / 6) and std == pytest.approx(np.std([1, 3, 0, 2, 5, 5]))
    steps, mean, low, high, seeds = curve(a + b)
    assert steps.tolist() == [0, 10_000, 20_000] and seeds.tolist() == [2, 2, 2]
    assert mean.tolist() == [3.5, 4.5, 40.0] and low.tolist() == [2.0, 1.0, 30.0] and high.tolist() == [5.0, 8.0, 50.0]

    write_returns(a + b, tmp_path / "returns.csv")
    rows = list(csv.reader((tmp_path / "returns.csv").open()))
    assert tuple(rows[0]) == RETURNS_COLUMNS
    assert rows[1:3] == [["0", "0", "2.0000", "1.0000"], ["0", "1", "5.0000", "0.0000"]]
    for task in ("finger_spin", "hopper"):  # with and without published points
        plot_returns(a + b, task, "cpu", tmp_path / f"{task}.png", action_repeat=2)  # finger_spin's SLAC: 1
        assert (tmp_path / f"{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_empty_eval_csv_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no evaluation"):
        read_evaluations(_eval_csv(tmp_path / "e.csv", []), seed=0)


def _reproduced(results: Path, task: str, preset: str, seeds: dict[int, list[tuple[int, float]]],
                **recorded: object) -> None:
    """What `make reproduce` leaves for one task: returns.csv and summary.json (with `recorded`'s keys)."""
    out = results / task / preset
    out.mkdir(parents=True)
    with (out / "returns.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RETURNS_COLUMNS)
        for seed, points in seeds.items():
            for steps, ret in points:
                writer.writerow([steps, seed, ret, 1.0])
    (out / "summary.json").write_text(json.dumps({"task": task, "commit": "0123456789abcdef-dirty", **recorded,
                                                  "seeds": [{"seed": s, "wall_clock_s": 1800.0 * (s + 1)} for s in seeds]}))


def test_the_table_puts_each_task_beside_the_published_figures(tmp_path: Path) -> None:
    _reproduced(tmp_path, "finger_spin", "cpu", {0: [(0, 0.0), (100_000, 400.0)], 1: [(0, 1.0), (100_000, 500.0)]})
    _reproduced(tmp_path, "hopper", "cpu", {0: [(0, 10.0), (100_000, 90.0), (500_000, 300.0)]})
    (tmp_path / "cheetah_run" / "cpu").mkdir(parents=True)  # a reproduce that never finished: no row
    table = write_table(tmp_path, "cpu")
    assert table == tmp_path / "cpu" / "table.md"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.read_text().splitlines()
            if line.startswith("| ") and "---" not in line and not line.startswith("| task")}
    assert sorted(rows) == ["finger_spin", "hopper"]
    finger = rows["finger_spin"].split(" | ")
    assert finger[1] == "2" and finger[3:6] == ["450 ± 50 (n=2)", "—", "450 ± 50 (n=2) at 100,000"]
    # SLAC, DrQ, DrQ-v2, DreamerV3, each at its own action repeat
    assert finger[6:10] == ["951 / 983 (AR 1)", "901 / 938 (AR 2)", "325 / 789 (AR 2)", "493 / 573 (AR 2)"]
    assert finger[10] == "45.0 min" and finger[11].startswith("0123456789ab-dirty")
    hopper = rows["hopper"].split(" | ")
    assert hopper[2] == "2 / —"  # no published SLAC run to compare with: nothing to flag
    assert hopper[3:5] == ["90 ± 0 (n=1)", "300 ± 0 (n=1)"] and hopper[6:10] == ["—"] * 4


def test_a_row_whose_action_repeat_differs_from_slacs_is_flagged(tmp_path: Path) -> None:
    points = {0: [(0, 1.0), (100_000, 200.0)]}
    _reproduced(tmp_path, "finger_spin", "cpu", points)  # nothing recorded: the registry's 2 (table 1); SLAC ran 1
    _reproduced(tmp_path, "cartpole_swingup", "cpu", points, action_repeat=4)  # recorded by the harness, as SLAC's
    _reproduced(tmp_path, "ball_in_cup_catch", "cpu", points, config={"task": {"action_repeat": 8}})
    _reproduced(tmp_path, "walker_walk", "cpu", points, config={"task": {"action_repeat": "auto"}})  # registry's 2
    text = write_table(tmp_path, "cpu").read_text()
    assert "action repeat (ours / SLAC's)" in text and "⚠ flags a row" in text
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[2] for line in text.splitlines()
             if line.startswith("| ") and "---" not in line and not line.startswith("| task")}
    assert cells["finger_spin"] == ("2 / 1 ⚠ not like for like: ours 2, SLAC's 1: per environment step SLAC's runs "
                                    "made 2x the agent steps and updates")
    assert cells["cartpole_swingup"] == "4 / 4" and cells["walker_walk"] == "2 / 2"
    assert cells["ball_in_cup_catch"].startswith("8 / 4 ⚠ not like for like: ours 8, SLAC's 4")


def test_parallel_seeds_by_default_fit_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_cli(["cpu"])  # one actor: a run needs 3 cores with its learner and evaluator
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_parallel(cfg, seeds=3) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert default_parallel(cfg, seeds=3) == 3 and default_parallel(cfg, seeds=8) == 5


def test_a_fresh_clone_takes_committed_seeds_of_the_same_config_and_trains_the_rest(tmp_path: Path) -> None:
    from deploy.experiments.committed_seeds import committed_seeds

    base = parse_cli(["debug", "--run.task", "finger_spin", "--run.env-steps", "3000"])
    out = tmp_path / "results" / "finger_spin" / "debug"
    for seed in (0, 1):
        (out / f"seed{seed}").mkdir(parents=True)
        _eval_csv(out / f"seed{seed}" / "eval.csv", [(0, 0, 0, [1.0]), (3000, 3000, 4, [9.0])])
    rows = [{"seed": 0, "run_dir": "/elsewhere/seed0", "commit": "aaaa"}, {"seed": 1, "run_dir": "/elsewhere/seed1"}]
    (out / "summary.json").write_text(json.dumps({"commit": "bbbb", "machine": {"cores": 2}, "date": "2026-12-03",
                                                  "config": base.to_dict(), "seeds": rows}))
    runs = tmp_path / "runs"
    run_dirs = {s: runs / f"seed{s}" for s in range(3)}
    reused = committed_seeds(out, base, [0, 1, 2], run_dirs)
    assert sorted(reused) == [0, 1]  # seed 2 was never committed: it is trained
    assert reused[0]["commit"] == "aaaa" and reused[1]["commit"] == "bbbb"  # each keeps the commit that trained it
    assert reused[1]["machine"] == {"cores": 2} and reused[1]["date"] == "2026-12-03"

    run_dirs[1].mkdir(parents=True)  # this machine has seed 1's run (done or interrupted): the harness owns it
    assert sorted(committed_seeds(out, base, [0, 1, 2], run_dirs)) == [0]
    other = parse_cli(["debug", "--run.task", "finger_spin", "--run.env-steps", "4000"])
    assert committed_seeds(out, other, [0, 1, 2], run_dirs) == {}  # another config: every seed trains again
    (out / "seed0" / "eval.csv").unlink()
    assert committed_seeds(out, base, [0, 1, 2], run_dirs) == {}
    (out / "summary.json").write_text("{not json")
    assert committed_seeds(out, base, [0, 1, 2], run_dirs) == {}


def test_a_seed_finished_by_an_earlier_harness_keeps_its_commit_and_date(tmp_path: Path) -> None:
    from deploy.experiments.child_runs import SeedRun
    from deploy.experiments.harness import trained_row

    run = SeedRun(1, tmp_path / "seed1", [], commit="cccc")
    finished = {"seed": 1, "wandb_run_id": "w", "env_steps": 3000, "updates": 90, "pretrain_updates": 10,
                "wall_clock_s": 50.0, "harness_commit": "aaaa-dirty", "harness_finished_at": 1796040000.0}
    (tmp_path / "seed1").mkdir()
    (tmp_path / "seed1" / "done.json").write_text(json.dumps(finished))
    run.start(quiet=True)  # done.json: skipped, its summary taken as it is
    row = trained_row(run, run.finish(), "cccc", {"cores": 2})
    assert row["commit"] == "aaaa-dirty" and row["date"] == "2026-11-30" and row["updates_per_s"] == 2.0
    del finished["harness_commit"]  # a done.json written before harnesses kept their commit
    assert trained_row(run, finished, "cccc", {"cores": 2})["commit"] == "cccc"


@pytest.mark.e2e
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
    # The figure went to every seed's W&B run, and the seeds are one W&B group with readable names and tags.
    for seed in (0, 1):
        runs = find_offline_runs(tmp_path / "runs" / "cheetah_run" / "debug" / f"seed{seed}")
        history = [row for run in runs for row in read_history(run)]
        assert any(row.get("reproduce/returns/_type") == "image-file" for row in history)
        info = read_run_info(runs[0])
        assert info["group"] == "cheetah_run-debug" and info["job_type"] == "reproduce"
        assert info["name"] == f"cheetah_run-debug-seed{seed}"
        assert info["tags"][:2] == ["cheetah_run", "debug"] and info["tags"][-1] == f"seed{seed}"
        assert info["tags"][2].startswith("commit-" + summary["commit"][:12])
        assert (tmp_path / "runs" / "cheetah_run" / "debug" / f"seed{seed}" / "logs" / "train.log").stat().st_size > 0
    table = (tmp_path / "results" / "debug" / "table.md").read_text()
    assert "| cheetah_run | 2 | — | — |" in table and "413 / 707" in table
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


@pytest.mark.e2e
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
    assert _processes_naming(str(tmp_path)) == [], "a process of the run outlived it"
    if sig != signal.SIGKILL:
        assert "run the same command again to resume it" in log_path.read_text()


@pytest.mark.e2e
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
