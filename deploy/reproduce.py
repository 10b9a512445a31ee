"""`make reproduce TASK=<task> SEEDS=<n> [PRESET=paper] [ARGS=...]`: n seeds, the paper's protocol, one curve.

Appendix C's protocol: evaluate at environment step 0 and every 10 000 environment steps, 10 episodes of
the stochastic policy each (`run.eval_every`, `run.eval_episodes`; the harness sets them, and says so
when ARGS overrides them). Each seed k is one ordinary training run (the launcher behind `make train`,
`run.seed` = base seed + k) in `runs/reproduce/<task>/<preset>/seed<k>`, which keeps its checkpoints,
replay and W&B files. The harness then writes, under `results/<task>/<preset>/`:

    seed<k>/eval.csv   the seed's evaluations (copied from its run directory)
    returns.csv        env_steps, seed, return_mean, return_std (one row per grid point and seed)
    returns.png        mean and min-max band over seeds, published SLAC points, random-policy line
    summary.json       the command, commit, machine, wall clock and updates/s of each seed, the baseline

and logs the figure to every seed's W&B run. Seeds run one after another (each run uses the whole
machine). Running the same command again skips finished seeds and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import imageio.v2 as imageio

from common.config import Config, parse_cli
from deploy.returns_plot import plot_returns, random_baseline, read_evaluations, write_returns
from deploy.train import known_errors

log = logging.getLogger(__name__)


class SeedFailed(RuntimeError):
    """A seed's training run did not finish; the message says how to continue."""


PAPER_EVAL_EVERY = 10_000
PAPER_EVAL_EPISODES = 10


def machine() -> dict[str, Any]:
    """What ran it: CPU model, logical cores, memory, GPU (if torch sees one), OS."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory_gib, "gpu": gpu,
            "os": platform.platform(), "torch": torch.__version__}


def commit() -> str:
    """The git commit of the working tree, with `-dirty` when it has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def protocol_config(cfg: Config, overrides: list[str]) -> Config:
    """The paper's evaluation protocol, unless the user's own overrides name those fields."""
    run = cfg.run
    if not any(a.startswith(("--run.eval-every", "--run.eval_every")) for a in overrides):
        run = dataclasses.replace(run, eval_every=PAPER_EVAL_EVERY)
    elif cfg.run.eval_every != PAPER_EVAL_EVERY:
        log.warning("run.eval_every=%d departs from the paper's protocol (every %d environment steps)",
                    cfg.run.eval_every, PAPER_EVAL_EVERY)
    if not any(a.startswith(("--run.eval-episodes", "--run.eval_episodes")) for a in overrides):
        run = dataclasses.replace(run, eval_episodes=PAPER_EVAL_EPISODES)
    elif cfg.run.eval_episodes != PAPER_EVAL_EPISODES:
        log.warning("run.eval_episodes=%d departs from the paper's protocol (%d episodes)",
                    cfg.run.eval_episodes, PAPER_EVAL_EPISODES)
    return dataclasses.replace(cfg, run=run)


def run_seed(preset_args: list[str], cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train one seed in `run_dir` through `deploy.train` in a child process (a fresh Ray and W&B per
    seed): skip it when finished, resume it when interrupted, else start it. Returns its summary."""
    done = run_dir / "done.json"
    if done.exists():
        log.info("seed %d already finished in %s; skipping it", cfg.run.seed, run_dir)
        return json.loads(done.read_text())
    where = ["--run.resume", str(run_dir)] if (run_dir / "config.json").exists() else ["--run.dir", str(run_dir)]
    if where[0] == "--run.resume":
        log.info("resuming seed %d from %s", cfg.run.seed, run_dir)
    argv = [*preset_args, "--run.seed", str(cfg.run.seed), "--run.eval-every", str(cfg.run.eval_every),
            "--run.eval-episodes", str(cfg.run.eval_episodes), *where]
    # Progress and logs pass through on stderr; stdout carries the run's JSON summary.
    child = subprocess.run([sys.executable, "-m", "deploy.train", *argv], stdout=subprocess.PIPE, text=True)
    if child.returncode != 0:
        raise SeedFailed(f"seed {cfg.run.seed} stopped with exit code {child.returncode} (its messages are above; "
                         f"its run directory is {run_dir}); run the same command again to resume it")
    summary = json.loads(child.stdout[child.stdout.index('{\n  "summary"'):])["summary"]
    if summary["interrupted"]:
        raise SeedFailed(f"seed {cfg.run.seed} was interrupted; run the same command again to resume it")
    done.write_text(json.dumps(summary, indent=2, default=str))
    return summary


def publish(png: Path, caption: str, runs: list[dict[str, Any]]) -> None:
    """Log the figure to every seed's W&B run (reopened by id), at the run's last environment step."""
    from deploy.run_logger import RunLogger

    image = imageio.imread(png)
    for entry in runs:
        run_dir = Path(entry["run_dir"])
        run_cfg = Config.from_json((run_dir / "config.json").read_text())
        logger = RunLogger(run_cfg, run_dir, run_id=entry["wandb_run_id"])
        logger.image(int(entry["env_steps"]), "reproduce/returns", image[..., :3], caption)
        logger.finish({})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Every other argument is a preset and config overrides, exactly as for `python -m deploy.train` "
               "(`python -m deploy.train paper --help` lists them).")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds (run.seed, run.seed + 1, ...)")
    parser.add_argument("--results", default="results", help="where results/<task>/<preset>/ goes")
    parser.add_argument("--runs", default="runs/reproduce", help="where the seeds' run directories go")
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, rest = parser.parse_known_args(argv)
    if ours.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {ours.seeds}")
    preset = rest[0] if rest and not rest[0].startswith("-") else "paper"
    try:
        base = protocol_config(parse_cli(rest), rest)
    except known_errors() as exc:
        log.error("%s", exc)
        return 2
    task = base.run.task
    out = Path(ours.results) / task / preset
    out.mkdir(parents=True, exist_ok=True)
    user_args = [a for i, a in enumerate(rest) if i > 0 and a != "--run.task" and rest[i - 1] != "--run.task"]
    command = "make reproduce " + shlex.join([f"TASK={task}", f"SEEDS={ours.seeds}", f"PRESET={preset}"]
                                              + ([f"ARGS={shlex.join(user_args)}"] if user_args else []))
    code = commit()  # recorded before the seeds run: the code they run is the code at the start
    runs, evaluations = [], []
    for k in range(ours.seeds):
        seed = base.run.seed + k
        cfg = dataclasses.replace(base, run=dataclasses.replace(base.run, seed=seed))
        run_dir = (Path(ours.runs) / task / preset / f"seed{seed}").resolve()
        started = time.monotonic()
        try:
            summary = run_seed(rest, cfg, run_dir)
        except KeyboardInterrupt:  # the child got the same Ctrl-C and checkpoints itself
            log.error("interrupted during seed %d; run the same command again to resume it", seed)
            return 130
        except SeedFailed as exc:
            log.error("%s", exc)
            return 1
        (out / f"seed{seed}").mkdir(exist_ok=True)
        shutil.copyfile(run_dir / "eval.csv", out / f"seed{seed}" / "eval.csv")
        evaluations += read_evaluations(out / f"seed{seed}" / "eval.csv", seed)
        updates = summary["updates"] + summary["pretrain_updates"]
        wall = summary["wall_clock_s"]
        runs.append({"seed": seed, "run_dir": str(run_dir), "wandb_run_id": summary["wandb_run_id"],
                     "env_steps": summary["env_steps"], "updates": summary["updates"],
                     "pretrain_updates": summary["pretrain_updates"], "wall_clock_s": wall,
                     "updates_per_s": round(updates / wall, 2) if wall else None,
                     "harness_wall_clock_s": round(time.monotonic() - started, 1)})
    write_returns(evaluations, out / "returns.csv")
    random_mean, random_std, episodes = random_baseline(evaluations)
    plot_returns(evaluations, task, preset, out / "returns.png", note=f"preset {preset}")
    publish(out / "returns.png", f"{task}, preset {preset}: {len(runs)} seeds", runs)
    summary = {"command": command, "commit": code, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "task": task, "preset": preset, "config": base.to_dict(),
               "random_policy": {"return_mean": random_mean, "return_std": random_std, "episodes": episodes},
               "final_return_mean": {r["seed"]: next(e.mean for e in reversed(evaluations) if e.seed == r["seed"])
                                     for r in runs},
               "seeds": runs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({"results": str(out), "returns_png": str(out / "returns.png"),
                      "random_policy_return": random_mean, "final_return_mean": summary["final_return_mean"]},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
