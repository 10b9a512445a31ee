"""A whole training run's speed against its learner's alone, for this checkout and a base commit, in one sitting.

    python bench/whole_run.py --base 695f813 --env-steps 80000 --out bench/results/<host>-<date>-whole-run.json

Every committed run is learner-bound, so the learner's updates/s is the run's speed, and whatever else the run
does (evaluations, replay syncs, publications, checkpoints, the actors' bursts) shows as the gap between the two.
For each checkout (the base in a temporary git worktree, then this one) this runs the real entry point (`python
-m deploy.train <preset>`) past the initial collection and the model pre-training into a steady joint phase, reads
its W&B history back, and takes the joint phase's updates/s after its first `--skip-updates`. Then, in a child
process of that checkout, it times the preset's compiled update alone on a random batch at the thread count that
run's learner had (the summary's `learner_threads`; 1 for a checkout that predates it: Ray gave its 1-CPU learner
one thread). Reports per checkout: whole-run and learner-alone updates/s and their ratio, the learner's time by
section (`time/learner_*`, where the checkout records it), the evaluations in the window; and head over base.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import commit, cpu_name, dirty, write_report  # noqa: E402
from deploy.tools.wandb_reader import find_offline_runs, read_history  # noqa: E402

# Run inside a checkout (cwd and PYTHONPATH): only names every version has.
ALONE = """
import dataclasses, json, sys, time
import torch
sys.path.insert(0, ".")
from common.config import PRESETS
from learner.learner import Learner
preset, threads, updates = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
cfg = PRESETS[preset][1]
b, t, a = cfg.sac.batch_size, cfg.model.sequence_length + 1, 1
g = torch.Generator().manual_seed(0)
from common.batch import Batch
batch = Batch(torch.randint(0, 256, (b, t, 3, 64, 64), dtype=torch.uint8, generator=g),
              torch.rand(b, t - 1, a, generator=g) * 2 - 1, torch.randn(b, t - 1, generator=g),
              torch.zeros(b, t - 1), torch.zeros(b, t, dtype=torch.bool))
learner = Learner(cfg, a, device=torch.device("cpu"), seed=0)
for _ in range(3):
    learner.update(batch)
start = time.perf_counter()
for _ in range(updates):
    learner.update(batch)
print(json.dumps({"updates_per_s": updates / (time.perf_counter() - start), "threads": torch.get_num_threads()}))
"""


def _child_env(checkout: Path) -> dict[str, str]:
    """The checkout's modules first (before the editable install of this one), in Ray's workers too."""
    return dict(os.environ, PYTHONPATH=str(checkout), RAY_ADDRESS="local", WANDB_MODE="offline",
                PYTHONUNBUFFERED="1")


def whole_run(checkout: Path, run_dir: Path, preset: str, env_steps: int, skip_updates: int) -> dict[str, Any]:
    """Run the entry point in `checkout`; the joint phase's steady updates/s from its W&B history."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "deploy.train", preset, "--run.dir", str(run_dir),
                           "--run.env-steps", str(env_steps)], cwd=checkout, env=_child_env(checkout),
                          capture_output=True, text=True, timeout=3 * 3600)
    if proc.returncode != 0:
        raise RuntimeError(f"the run in {checkout} failed:\n{proc.stderr[-4000:]}")
    summary = json.loads(proc.stdout[proc.stdout.index('{\n  "summary"'):])["summary"]
    rows = [r for r in read_history(find_offline_runs(run_dir)[0]) if "counters/updates" in r and "_timestamp" in r]
    joint = [r for r in rows if r["counters/updates"] >= skip_updates]
    if len(joint) < 2:
        raise RuntimeError(f"the run in {checkout} made fewer than {skip_updates} joint updates: raise --env-steps")
    first, last = joint[0], joint[-1]
    seconds = last["_timestamp"] - first["_timestamp"]
    window = (first["counters/env_steps"], last["counters/env_steps"])
    evals = [line.split(",") for line in (run_dir / "eval.csv").read_text().splitlines()[1:]]
    sections = sorted({k for r in joint for k in r if k.startswith("time/learner_")})
    return {
        "wall_clock_s": round(time.monotonic() - started, 1),
        "learner_threads": summary.get("learner_threads") or 1,
        "joint_updates_per_s": round((last["counters/updates"] - first["counters/updates"]) / seconds, 2),
        "joint_window": {"updates": [first["counters/updates"], last["counters/updates"]], "env_steps": window,
                         "seconds": round(seconds, 1)},
        "pretrain_plus_collection_s": round(first["_timestamp"] - rows[0]["_timestamp"], 1),
        "first_update_s": max((r["learner/first_update_s"] for r in rows if "learner/first_update_s" in r), default=None),
        "evaluations_in_window": sum(window[0] <= int(e[0]) <= window[1] for e in evals),
        "learner_time_fractions": {k.removeprefix("time/learner_"): round(statistics.fmean(
            r[k] for r in joint if k in r), 3) for k in sections},
        "learner_wait_fraction": round(statistics.fmean(r.get("bound/learner_wait_fraction", 0.0) for r in joint), 3),
        "actors_wait_fraction": round(statistics.fmean(
            r["bound/actors_wait_fraction"] for r in joint if "bound/actors_wait_fraction" in r), 3),
    }


def learner_alone(checkout: Path, preset: str, threads: int, updates: int) -> float:
    """The preset's compiled update alone, at `threads`, in a child process of `checkout`: updates/s."""
    proc = subprocess.run([sys.executable, "-c", ALONE, preset, str(threads), str(updates)], cwd=checkout,
                          env=_child_env(checkout), capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"the learner alone failed in {checkout}:\n{proc.stderr[-3000:]}")
    return round(json.loads(proc.stdout.strip().splitlines()[-1])["updates_per_s"], 2)


def measure(checkout: Path, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    run = whole_run(checkout, run_dir, args.preset, args.env_steps, args.skip_updates)
    run["learner_alone_updates_per_s"] = learner_alone(checkout, args.preset, run["learner_threads"], args.updates)
    run["whole_over_alone"] = round(run["joint_updates_per_s"] / run["learner_alone_updates_per_s"], 3)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the commit to compare against (none: this checkout alone)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--env-steps", type=int, default=80_000,
                        help="run length; the cpu preset's initial collection and pre-training end near 16 000")
    parser.add_argument("--skip-updates", type=int, default=300, help="joint updates left out at the phase's start")
    parser.add_argument("--updates", type=int, default=200, help="timed updates of the learner alone")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base_sha = args.base and subprocess.run(["git", "rev-parse", args.base], cwd=REPO, capture_output=True,
                                            text=True, check=True).stdout.strip()
    started = time.time()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="slac-whole-run-") as tmp:
        if base_sha:
            base = Path(tmp) / "base"
            subprocess.run(["git", "worktree", "add", "--detach", str(base), base_sha], cwd=REPO, check=True,
                           capture_output=True)
            try:
                results["base"] = measure(base, Path(tmp) / "run-base", args)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True)
        results["head"] = measure(REPO, Path(tmp) / "run-head", args)
    report: dict[str, Any] = {
        "bench": "whole_run", "command": " ".join(sys.argv), "commit": commit(), "dirty": dirty(),
        "base_commit": base_sha, "date": time.strftime("%Y-%m-%d"), "device_name": cpu_name(),
        "cores": len(os.sched_getaffinity(0)), "preset": args.preset, "env_steps": args.env_steps,
        "wall_s": round(time.time() - started), **results}
    if "base" in results:
        report["head_over_base_whole_run"] = round(results["head"]["joint_updates_per_s"] /
                                                   results["base"]["joint_updates_per_s"], 3)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
