"""`make reproduce TASK=<task> SEEDS=<n> [PARALLEL=k] [PRESET=paper] [ARGS=...]`: n seeds, the paper's protocol.

Appendix C's protocol: evaluate at environment step 0 and every 10 000 environment steps, 10 episodes of
the stochastic policy each (`run.eval_every`, `run.eval_episodes`; the harness sets them, and says so
when ARGS overrides them). Each seed k is one ordinary training run (the launcher behind `make train`,
`run.seed` = base seed + k) in `runs/reproduce/<task>/<preset>/seed<k>`, which keeps its checkpoints,
replay and W&B files; k of them run at once (deploy/experiments/child_runs.py; by default as many as the machine's cores
and GPU memory allow, 1 on a 2-core CPU). Every seed's W&B run carries the group `<task>-<preset>`, the job
type `reproduce`, the tags task, preset, seed and commit and the name `<task>-<preset>-seed<k>`, so W&B's
grouping shows the mean and band over seeds. The harness then writes, under `results/<task>/<preset>/`:

    seed<k>/eval.csv   the seed's evaluations (copied from its run directory)
    returns.csv        env_steps, seed, return_mean, return_std (one row per grid point and seed)
    returns.png        mean and min-max band over seeds, published SLAC points, random-policy line
    summary.json       the command, commit, machine, action repeat, wall clock and updates/s of each seed,
                       the baseline

logs the figure to every seed's W&B run, and rewrites `results/<preset>/table.md` (deploy/experiments/results_table.py):
return at 100k and 500k environment steps of every task reproduced with the preset, beside the published
figures. `TASKS=a,b,c` does all this for several tasks, one after another. Running the same command again
skips finished seeds and resumes an interrupted one; on a fresh clone it takes the seeds already committed
under results/ with the same configuration from there (deploy/experiments/committed_seeds.py) and trains the rest.
With an action repeat other than the task's registered one (`--task.action-repeat`), `<preset>` in every name
above is `<preset>_ar<k>` (`results_name`): another curve, beside the preset's in its table, never replacing it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import imageio.v2 as imageio

from common.config import Config, parse_cli, redact
from common.run_files import RunFiles
from common.tasks import parse_task, slug
from deploy.experiments.child_runs import SeedFailed, SeedRun, default_parallel, per_seed_overrides, run_seeds
from deploy.experiments.committed_seeds import committed_seeds
from deploy.experiments.provenance import machine, revision
from deploy.experiments.results_table import config_action_repeat, write_table
from deploy.experiments.returns_plot import plot_returns, random_baseline, read_evaluations, write_returns
from deploy.run.errors import known_errors

log = logging.getLogger(__name__)


PAPER_EVAL_EVERY = 10_000
PAPER_EVAL_EPISODES = 10


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


def publish(png: Path, caption: str, runs: list[dict[str, Any]]) -> None:
    """Log the figure to every seed's W&B run (reopened by id), at the run's last environment step."""
    from deploy.run.logger import RunLogger

    image = imageio.imread(png)
    for entry in runs:
        run_dir = Path(entry["run_dir"])
        run_cfg = RunFiles(run_dir).read_config()
        logger = RunLogger(run_cfg, run_dir, run_id=entry["wandb_run_id"])
        logger.image(int(entry["env_steps"]), "reproduce/returns", image[..., :3], caption)
        logger.finish({})


def trained_row(run: SeedRun, summary: dict[str, Any], code: str, here_machine: dict[str, Any]) -> dict[str, Any]:
    """summary.json's entry for a seed trained on this machine. A seed finished by an earlier harness (its
    done.json) keeps that harness's commit and date, not this one's. `wall_clock_s` is the run's over all its lives
    (a resumed seed's too: deploy/run/run_state.RunState.wall_clock_s); the `harness_*` times are the last harness's
    only."""
    updates = summary["updates"] + summary["pretrain_updates"]
    wall = summary["wall_clock_s"]
    finished = summary.get("harness_finished_at") or time.time()
    return {"seed": run.seed, "run_dir": str(run.run_dir), "wandb_run_id": summary["wandb_run_id"],
            "commit": summary.get("harness_commit") or code, "machine": here_machine,
            "date": time.strftime("%Y-%m-%d", time.localtime(finished)),
            "env_steps": summary["env_steps"], "updates": summary["updates"],
            "pretrain_updates": summary["pretrain_updates"], "wall_clock_s": wall,
            "updates_per_s": round(updates / wall, 2) if wall else None,
            **{k: summary.get(k) for k in ("harness_wall_clock_s", "harness_started_at", "harness_finished_at")}}


def results_name(preset: str, cfg: Config) -> str:
    """The preset's name, or `<preset>_ar<k>` when the run's action repeat is not the task's registered one: the
    results of another action repeat are another curve (not like for like with the preset's), so they get their
    own folder, W&B group and row of the table instead of replacing the committed ones. Presets use hyphens, never
    underscores, so the two cannot meet."""
    ours = cfg.task_spec.action_repeat
    return preset if ours == parse_task(cfg.run.task).action_repeat else f"{preset}_ar{ours}"


def reproduce_task(rest: list[str], base: Config, preset: str, seeds: int, parallel: int | None,
                   results: Path, runs_root: Path, code: str) -> dict[str, Any]:
    """Train `seeds` seeds of one task (`parallel` at a time) and write its results; returns its summary."""
    task = base.run.task
    name = results_name(preset, base)  # the folder, W&B group and run names: an action repeat of its own apart
    out = results / slug(task) / name
    out.mkdir(parents=True, exist_ok=True)
    user_args = [a for i, a in enumerate(rest) if i > 0 and a != "--run.task" and rest[i - 1] != "--run.task"]
    # summary.json is shared with the results: a password in an ARGS URL (--replay.url) is written as ***.
    command = "make reproduce " + shlex.join([f"TASK={task}", f"SEEDS={seeds}", f"PRESET={preset}"]
                                              + ([f"ARGS={shlex.join(map(redact, user_args))}"] if user_args else []))
    tags = [task, name, f"commit-{code[:12]}" + ("-dirty" if code.endswith("-dirty") else "")]
    seed_runs = []
    for k in range(seeds):
        seed = base.run.seed + k
        argv = [*rest, "--run.task", task, "--run.seed", str(seed), "--run.eval-every", str(base.run.eval_every),
                "--run.eval-episodes", str(base.run.eval_episodes), "--run.group", f"{task}-{name}",
                "--run.job-type", "reproduce", "--run.name", f"{task}-{name}-seed{seed}",
                "--run.tags", *tags, f"seed{seed}"]
        seed_runs.append(SeedRun(seed, (runs_root / slug(task) / name / f"seed{seed}").resolve(), argv, commit=code))
    reused = committed_seeds(out, base, [r.seed for r in seed_runs], {r.seed: r.run_dir for r in seed_runs})
    to_train = [r for r in seed_runs if r.seed not in reused]
    k = parallel or default_parallel(base, max(1, len(to_train)))
    for run in to_train:
        run.argv += per_seed_overrides(base, k)
    log.info("%s, preset %s (%s): %d seed%s, %d at a time%s", task, preset, out, seeds, "s" * (seeds != 1), k,
             f" ({len(reused)} from the committed results)" if reused else "")
    trained = dict(zip([r.seed for r in to_train], run_seeds(to_train, k), strict=True))
    runs, evaluations, here_machine = [], [], machine()
    for run in seed_runs:
        if run.seed in reused:
            runs.append(reused[run.seed])
        else:
            summary = trained[run.seed]
            (out / f"seed{run.seed}").mkdir(exist_ok=True)
            shutil.copyfile(RunFiles(run.run_dir).eval_csv, out / f"seed{run.seed}" / "eval.csv")
            runs.append(trained_row(run, summary, code, here_machine))
        evaluations += read_evaluations(out / f"seed{run.seed}" / "eval.csv", run.seed)
    write_returns(evaluations, out / "returns.csv")
    random_mean, random_std, episodes = random_baseline(evaluations)
    action_repeat = config_action_repeat(base.to_dict(), task)  # the table and figure set it beside SLAC's
    plot_returns(evaluations, task, preset, out / "returns.png", note=f"preset {preset}", action_repeat=action_repeat)
    trained_here = [r for r in runs if r["seed"] not in reused]  # committed seeds' W&B runs are on other machines
    publish(out / "returns.png", f"{task}, preset {preset}: {len(runs)} seeds", trained_here)
    summary = {"command": command, "commit": code, "machine": here_machine, "date": time.strftime("%Y-%m-%d"),
               "task": task, "preset": preset, "parallel": k, "action_repeat": action_repeat, "config": base.to_dict(),
               "random_policy": {"return_mean": random_mean, "return_std": random_std, "episodes": episodes},
               "final_return_mean": {r["seed"]: next(e.mean for e in reversed(evaluations) if e.seed == r["seed"])
                                     for r in runs},
               "seeds": runs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return {"results": str(out), "returns_png": str(out / "returns.png"), "random_policy_return": random_mean,
            "final_return_mean": summary["final_return_mean"]}


def _parallel(value: str) -> int | None:
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of seeds at once or `auto`, got {value!r}")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Every other argument is a preset and config overrides, exactly as for `python -m deploy.train` "
               "(`python -m deploy.train paper --help` lists them).")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds (run.seed, run.seed + 1, ...)")
    parser.add_argument("--parallel", type=_parallel, default=None,
                        help="seeds at once (default `auto`: as many as the cores and GPU memory allow)")
    parser.add_argument("--tasks", default="", help="comma-separated tasks, one after another (instead of --run.task)")
    parser.add_argument("--results", default="results", help="where results/<task>/<preset>/ goes")
    parser.add_argument("--runs", default="runs/reproduce", help="where the seeds' run directories go")
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, rest = parser.parse_known_args(argv)
    if ours.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {ours.seeds}")
    preset = rest[0] if rest and not rest[0].startswith("-") else "paper"
    tasks = [t.strip() for t in ours.tasks.split(",") if t.strip()]
    try:
        bases = [protocol_config(parse_cli([*rest, *(["--run.task", t] if t else [])]), rest) for t in tasks or [""]]
    except known_errors() as exc:
        log.error("%s", exc)
        return 2
    code = revision()  # recorded before the seeds run: the code they run is the code at the start
    results = Path(ours.results)
    outcomes = []
    for base in bases:
        try:
            outcomes.append(reproduce_task(rest, base, preset, ours.seeds, ours.parallel, results, Path(ours.runs),
                                           code))
        except KeyboardInterrupt as stop:  # every running seed got the signal and wrote a checkpoint
            log.error("interrupted during %s; run the same command again to resume it", base.run.task)
            return 143 if stop.args[:1] == ("SIGTERM",) else 130
        except SeedFailed as exc:
            log.error("%s", exc)
            return 1
    table = write_table(results, preset)
    report = {**outcomes[0], "table": str(table)} if len(outcomes) == 1 else {"tasks": outcomes, "table": str(table)}
    print(json.dumps(report, indent=2))
    return 0

