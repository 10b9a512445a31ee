"""Whole-system scaling: short trainings through the real launcher for 1, 2, 4, ... actors.

For each actor count it reports the wall clock, environment steps per second over the joint training
phase, updates per second, the bound side's waiting fractions and how often the rate limiter held the
actors back. Run once at the paper's ratio (one update per agent step: the learner sets the pace) and
once with a tiny ratio (the actors run free: rendering and the policy forward set the pace). Prints
JSON; `--out x.json` also writes it and the scaling curve as x.png.

Usage: python bench/system.py [--task cheetah_run] [--preset debug] [--actors 1,2,4] [--env-steps 3000]
       [--out bench/results/<host>-<date>-system.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run as `python bench/system.py`, this folder comes first on sys.path and bench/learner.py would
# shadow the learner package: put the repository root first.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import commit, cpu_name, dirty, write_report  # noqa: E402
from deploy.tools.wandb_reader import find_offline_runs, read_history  # noqa: E402


def run_once(preset: str, task: str, actors: int, env_steps: int, spi: float) -> dict[str, float]:
    """One training through the real entry point in a child process (a fresh Ray per run, as a user gets)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        argv = [preset, "--run.task", task, "--actors.num", str(actors), "--run.env-steps", str(env_steps),
                "--run.eval-episodes", "0", "--replay.samples-per-insert", str(spi), "--run.dir", run_dir,
                "--run.wandb-mode", "offline"]
        child = subprocess.run([sys.executable, "-m", "deploy.train", *argv], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "RAY_ADDRESS": "local"}, cwd=ROOT)
        if child.returncode != 0:
            raise SystemExit(f"bench/system.py: the run with {actors} actors failed (exit {child.returncode}); "
                             "its messages are above")
        summary = json.loads(child.stdout[child.stdout.index('{\n  "summary"'):])["summary"]
        rows = [r for run in find_offline_runs(run_dir) for r in read_history(run)]
    joint = [r for r in rows if r.get("counters/updates", 0) > 0]
    return {
        "wall_clock_s": summary["wall_clock_s"],
        "env_steps": summary["env_steps"],
        "updates": summary["updates"],
        "env_steps_per_s": round(float(np.mean([r["perf/env_steps_per_s"] for r in joint])), 1) if joint else None,
        "updates_per_s": round(float(np.mean([r["perf/updates_per_s"] for r in joint])), 1) if joint else None,
        "limiter_timeouts": max((r.get("actors/limiter_timeouts", 0) for r in rows), default=0),
        **{key.split("/")[1]: _mean(joint, key) for key in ("bound/actors_wait_fraction", "bound/learner_wait_fraction")},
    }


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return round(float(np.mean(values)), 3) if values else None


def default_actor_counts() -> str:
    """1, 2, 4, ... up to the machine's cores."""
    counts, n = [], 1
    while n <= (os.cpu_count() or 1):
        counts.append(n)
        n *= 2
    return ",".join(map(str, counts))


def plot(results: dict[str, dict[str, dict]], path: Path, title: str) -> None:
    """Env steps/s and updates/s against the actor count, at the paper's ratio and with the actors free."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "env_steps_per_s", "environment steps / s"), (axes[1], "updates_per_s", "updates / s")):
        for regime, runs in results.items():
            xs = [int(name.split("_")[1]) for name in runs]
            ax.plot(xs, [runs[name][key] or 0.0 for name in runs], marker="o", label=regime.replace("_", " "))
        ax.set_xlabel("actors")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    os.environ.setdefault("RAY_ADDRESS", "local")  # measure this machine, never a cluster that happens to run
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="cheetah_run")
    parser.add_argument("--preset", default="debug", help="network sizes and counts (common.config presets)")
    parser.add_argument("--actors", default=default_actor_counts(), help="comma list of actor counts")
    parser.add_argument("--env-steps", type=int, default=3000)
    parser.add_argument("--out", type=Path, help="also write the JSON here and the plot beside it (.png)")
    args = parser.parse_args()
    source = {"commit": commit(), "dirty": dirty()}
    results: dict[str, dict[str, dict]] = {}
    # The free-running actors are ~8x faster; give them 4x the steps for a steadier mean.
    for spi, steps, label in ((1.0, args.env_steps, "paper_ratio"), (0.02, 4 * args.env_steps, "actors_free")):
        results[label] = {f"actors_{n}": run_once(args.preset, args.task, int(n), steps, spi)
                          for n in args.actors.split(",")}
    report = {"bench": "system", "task": args.task, "preset": args.preset, "host": platform.node(),
              "cpu": cpu_name(), "cpus": os.cpu_count(), **source,
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}
    write_report(report, args.out)
    if args.out:
        plot(results, args.out.with_suffix(".png"),
             f"{args.task}, {args.preset} preset, {report['cpus']} cores ({report['cpu']})")


if __name__ == "__main__":
    main()
