"""`make eval RUN=<run dir> [EPISODES=10] [CKPT=<file>]`: play a trained policy, report its return, save a video.

One process, no Ray and no Redis: the checkpoint's encoder and actor (deploy/tools/trained.py) act in the
run's task through the same evaluator the training used (actors/evaluator.py). It plays EPISODES episodes
with the stochastic policy (appendix C's protocol, what eval.csv reports) and EPISODES with the
deterministic one (tanh of the mean), prints mean ± std return and environment steps/s for each, and
writes `<run dir>/eval/<checkpoint>.json` and a GIF of each mode's first episode beside it.

Each mode's entry also holds the latent probe (common/probe.py) where the task exposes its simulator state and
EPISODES is at least 2: `probe` ({"probe/r2/<dimension>": held-out R^2, ..., "probe/r2_mean": ...}) and
`probe_s` (else `probe_note`: why not). Its filtering networks come from the checkpoint's latent model, which the
published actor blob lacks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from actors.evaluator import Evaluator
from common.probe import filter_tensors
from common.rendering import RenderingUnavailableError
from common.run_files import RunFiles
from common.tasks import TaskError
from deploy.run.logger import write_gif
from deploy.tools.trained import TrainedPolicyError, load_trained
from learner.checkpoint import read_checkpoint

EVAL_SEED_OFFSET = 10_000
"""Evaluation episodes use seeds derived from run.seed + this offset: other initial states than the
training's own evaluations (which derive theirs from the run seed and the grid point)."""


def evaluate(run_dir: str | Path, episodes: int = 10, checkpoint: str | None = None, seed: int | None = None,
             video: bool = True) -> dict[str, Any]:
    """Evaluate a run's checkpoint in both modes; writes and returns the report (see the module docstring)."""
    trained = load_trained(run_dir, checkpoint)
    cfg = trained.cfg
    seed = cfg.run.seed + EVAL_SEED_OFFSET if seed is None else seed
    # The latent model's filtering networks beside the actor, for the probe (the checkpoint loaded fine once).
    weights = dict(trained.weights, state_dict={**trained.weights["state_dict"], **filter_tensors(
        read_checkpoint(trained.checkpoint)["learner"]["model"])})
    evaluator = Evaluator(cfg)
    out_dir = RunFiles(trained.run_dir).evaluations
    out_dir.mkdir(exist_ok=True)
    report: dict[str, Any] = {
        "run_dir": str(trained.run_dir), "checkpoint": str(trained.checkpoint), "task": cfg.run.task,
        "policy_version": trained.weights["version"], "counters": trained.counters, "episodes": episodes,
        "seed": seed, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    for mode in ("stochastic", "deterministic"):
        started = time.perf_counter()
        result = evaluator.evaluate(weights, episodes, seed, record_video=video, deterministic=mode == "deterministic")
        seconds = time.perf_counter() - started
        returns = [float(r) for r in result["returns"]]
        entry = {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)), "returns": returns,
                 "lengths": result["lengths"], "env_steps": int(sum(result["env_steps"])), "wall_s": round(seconds, 2),
                 "env_steps_per_s": round(sum(result["env_steps"]) / seconds, 1)}
        if result["probe"] is not None:
            entry.update(probe=result["probe"], probe_s=round(result["probe_s"], 3))
        elif result["probe_note"]:
            entry["probe_note"] = result["probe_note"]
        if video and result["video"] is not None:
            gif = out_dir / f"{trained.checkpoint.stem}-{mode}.gif"
            entry["video"] = str(write_gif(gif, result["video"], fps=15, scale=4))
        report[mode] = entry
    evaluator.close()
    path = out_dir / f"{trained.checkpoint.stem}.json"
    path.write_text(json.dumps(report, indent=2))
    report["report"] = str(path)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory (runs/<task>-<timestamp>)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per mode (default 10, appendix C)")
    parser.add_argument("--ckpt", default="", help="checkpoint file name or path (default: the newest)")
    parser.add_argument("--seed", type=int, default=None, help=f"episode seeds' base (default run.seed + {EVAL_SEED_OFFSET})")
    parser.add_argument("--no-video", action="store_true", help="skip the GIFs")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be at least 1, got {args.episodes}")
    try:
        report = evaluate(args.run_dir, args.episodes, args.ckpt or None, args.seed, video=not args.no_video)
    except (TrainedPolicyError, RenderingUnavailableError, TaskError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = Path(report["checkpoint"]).name
    print(f"{report['task']}, {name} (policy version {report['policy_version']}), {args.episodes} episodes each:",
          file=sys.stderr)
    for mode in ("stochastic", "deterministic"):
        e = report[mode]
        print(f"  {mode:13s} return {e['return_mean']:8.1f} ± {e['return_std']:6.1f}   "
              f"{e['env_steps_per_s']:7.1f} env steps/s" + (f"   video {e['video']}" if "video" in e else ""),
              file=sys.stderr)
        if "probe_note" in e and mode == "stochastic":  # the same reason for both modes
            print(f"  {e['probe_note']}", file=sys.stderr)
        if "probe" in e:
            dims = ", ".join(f"{k.rsplit('/', 1)[1]} {v:.2f}" for k, v in e["probe"].items() if k.startswith("probe/r2/"))
            print(f"  {'':13s} latent probe R^2 {e['probe']['probe/r2_mean']:.2f} on average ({dims})", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0

