"""Whole-system throughput: short debug-preset trainings through the real launcher, 1 vs N actors.

For each actor count it reports the wall clock, total environment steps per second over the joint
training phase, updates per second, and how often the rate limiter held the actors back. Run once at
the paper's ratio (one update per agent step: the learner sets the pace) and once with a tiny ratio
(the actors run free: rendering and the policy forward set the pace). Prints JSON.

Usage: python bench/system.py [--task cheetah_run] [--actors 1,2] [--env-steps 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

# Run as `python bench/system.py`, this folder comes first on sys.path and bench/learner.py would
# shadow the learner package: put the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import parse_cli  # noqa: E402
from deploy.launcher import train  # noqa: E402
from deploy.wandb_reader import find_offline_runs, read_history  # noqa: E402


def run_once(task: str, actors: int, env_steps: int, spi: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_cli(["debug", "--run.task", task, "--actors.num", str(actors), "--run.env-steps", str(env_steps),
                         "--run.eval-episodes", "0", "--replay.samples-per-insert", str(spi),
                         "--run.dir", os.path.join(tmp, "run"), "--run.wandb-mode", "offline"])
        summary = train(cfg)
        rows = [r for run in find_offline_runs(cfg.run.dir) for r in read_history(run)]
    joint = [r for r in rows if r.get("counters/updates", 0) > 0]
    return {
        "wall_clock_s": summary["wall_clock_s"],
        "env_steps": summary["env_steps"],
        "updates": summary["updates"],
        "env_steps_per_s": round(float(np.mean([r["perf/env_steps_per_s"] for r in joint])), 1) if joint else None,
        "updates_per_s": round(float(np.mean([r["perf/updates_per_s"] for r in joint])), 1) if joint else None,
        "limiter_timeouts": max((r.get("actors/limiter_timeouts", 0) for r in rows), default=0),
    }


def main() -> None:
    os.environ.setdefault("RAY_ADDRESS", "local")  # measure this machine, never a cluster that happens to run
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="cheetah_run")
    parser.add_argument("--actors", default="1,2")
    parser.add_argument("--env-steps", type=int, default=3000)
    args = parser.parse_args()
    results = {}
    # The free-running actors are ~8x faster; give them 4x the steps for a steadier mean.
    for spi, steps, label in ((1.0, args.env_steps, "paper_ratio"), (0.02, 4 * args.env_steps, "actors_free")):
        results[label] = {f"actors_{n}": run_once(args.task, int(n), steps, spi) for n in args.actors.split(",")}
    print(json.dumps({"bench": "system", "task": args.task, "preset": "debug", "cpus": os.cpu_count(),
                      "machine": platform.machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
