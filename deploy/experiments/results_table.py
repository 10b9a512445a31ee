"""`results/<preset>/table.md`: each reproduced task's return at 100k and 500k environment steps over its
seeds, beside the published figures (deploy/experiments/published.py) and the wall clock per run, and the action repeat
of each run beside that of SLAC's published one, flagged where they differ.

Built from what `make reproduce` leaves under `results/<task>/<preset>/` (returns.csv, summary.json), so
the table covers every task reproduced with the preset, whichever invocation ran it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from common.tasks import UnknownTaskError, resolve_task
from deploy.experiments.published import CHECKPOINTS, PUBLISHED, published, published_action_repeat


def _seed_means(returns_csv: Path) -> dict[int, dict[int, float]]:
    """{grid env steps: {seed: mean return}} of a task's returns.csv."""
    table: dict[int, dict[int, float]] = {}
    with returns_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            table.setdefault(int(row["env_steps"]), {})[int(row["seed"])] = float(row["return_mean"])
    return table


def _at(table: dict[int, dict[int, float]], steps: int) -> str:
    """mean ± std over seeds at `steps` (every seed must have that grid point), else a dash."""
    values = list(table.get(steps, {}).values())
    if not values:
        return "—"
    return f"{np.mean(values):.0f} ± {np.std(values):.0f} (n={len(values)})"


def _hours(seconds: list[float]) -> str:
    if not seconds:
        return "—"
    mean = float(np.mean(seconds))
    return f"{mean / 3600:.2f} h" if mean >= 3600 else f"{mean / 60:.1f} min"


def config_action_repeat(config: dict[str, Any], task: str) -> int | None:
    """The action repeat of a run from its config as summary.json holds it: the task section's number where it
    has one; else (`auto`, or a config from before the action repeat could be set per run) the task registry's.
    None for a task the registry does not know."""
    section = config.get("task")
    repeat = section.get("action_repeat") if isinstance(section, dict) else None
    if isinstance(repeat, int) and not isinstance(repeat, bool):
        return repeat
    try:
        return resolve_task(task).action_repeat
    except UnknownTaskError:
        return None


def run_action_repeat(summary: dict[str, Any], task: str) -> int | None:
    """The action repeat a reproduce ran with: summary.json's own record, else its config's (summaries written
    before the harness recorded it)."""
    recorded = summary.get("action_repeat")
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        return recorded
    return config_action_repeat(summary.get("config") or {}, task)


def action_repeat_flag(ours: int | None, slac: int | None, samples_per_insert: float = 1.0) -> str:
    """'' where the run and SLAC's published one used the same action repeat (or either is unknown); else the
    table's warning: how many times our agent steps and updates per environment step SLAC's runs made (SLAC
    makes one update per agent step, slac-dist `samples_per_insert` per agent step)."""
    if ours is None or slac is None or ours == slac:
        return ""
    steps = ours / slac
    updates = steps / samples_per_insert
    made = f"{steps:.3g}x the agent steps" + (" and updates" if updates == steps
                                               else f" and {updates:.3g}x the updates")
    return f"⚠ not like for like: ours {ours}, SLAC's {slac}: per environment step SLAC's runs made {made}"


def action_repeat_cell(ours: int | None, slac: int | None, samples_per_insert: float = 1.0) -> str:
    """The table's `action repeat (ours / SLAC's)` cell: `8 / 4` and the flag where they differ."""
    cell = f"{'?' if ours is None else ours} / {'—' if slac is None else slac}"
    flag = action_repeat_flag(ours, slac, samples_per_insert)
    return f"{cell} {flag}" if flag else cell


def task_row(task_dir: Path) -> dict[str, Any] | None:
    """The table's row for one `results/<task>/<preset>/` folder, or None when it holds no finished reproduce."""
    summary_file, returns_csv = task_dir / "summary.json", task_dir / "returns.csv"
    if not (summary_file.is_file() and returns_csv.is_file()):
        return None
    summary = json.loads(summary_file.read_text())
    table = _seed_means(returns_csv)
    last = max(table)
    seeds = summary.get("seeds", [])
    task = summary.get("task", task_dir.parent.name)
    spi = float((summary.get("config") or {}).get("replay", {}).get("samples_per_insert", 1.0))
    return {"task": task, "seeds": len(seeds),
            "action_repeat": action_repeat_cell(run_action_repeat(summary, task),
                                                published_action_repeat("SLAC", task), spi),
            **{f"at_{k}": _at(table, k) for k in CHECKPOINTS},
            "final": f"{_at(table, last)} at {last:,}",
            "wall_clock": _hours([s["wall_clock_s"] for s in seeds if s.get("wall_clock_s")]),
            "commit": ", ".join(dict.fromkeys(_short(s.get("commit", summary.get("commit", "?"))) for s in seeds))
                      or _short(summary.get("commit", "?"))}


def _short(commit: str) -> str:
    """A commit as the table shows it: 12 hex digits, `-dirty` kept; a note after the hash is dropped."""
    sha = (str(commit).split() or ["?"])[0]
    return sha[:12] + ("-dirty" if sha.endswith("-dirty") else "")


def write_table(results: Path, preset: str) -> Path:
    """Write results/<preset>/table.md from every results/<task>/<preset>/ there is, and every
    results/<task>/<preset>_ar<k>/ (the preset at another action repeat, harness.results_name); returns its path."""
    folders = sorted([*results.glob(f"*/{preset}"), *results.glob(f"*/{preset}_ar*")])
    rows = [row for task_dir in folders if (row := task_row(task_dir))]
    methods = list(PUBLISHED)
    lines = [f"# Preset `{preset}`: return at 100k / 500k environment steps",
             "",
             "slac-dist: mean ± std over seeds of each seed's evaluation (10 episodes of the stochastic policy,",
             "appendix C); `—` where the runs did not reach that point. Published figures (100k / 500k, pixels,",
             "mean over seeds, at the action repeat `AR` each was made with) and their sources:",
             "deploy/experiments/published.py. Wall clock: mean per seed's run. Action repeat: slac-dist's run / SLAC's published",
             "one; SLAC makes one update per agent step, as slac-dist does by default, so the smaller action repeat",
             "makes more agent steps and updates in the same environment steps: ⚠ flags a row where they differ,",
             "whose comparison is not like for like.",
             "",
             "| task | seeds | action repeat (ours / SLAC's) | slac-dist 100k | slac-dist 500k | last point | "
             + " | ".join(methods) + " | wall clock per run | commit |",
             "|---|---|---|---|---|---|" + "---|" * len(methods) + "---|---|"]
    for row in rows:
        theirs = []
        for method in methods:
            figures, repeat = published(method, row["task"]), published_action_repeat(method, row["task"])
            theirs.append(" / ".join(f"{figures[k]:.0f}" for k in CHECKPOINTS) + (f" (AR {repeat})" if repeat else "")
                          if figures else "—")
        lines.append(f"| {row['task']} | {row['seeds']} | {row['action_repeat']} | {row['at_100000']} | "
                     f"{row['at_500000']} | {row['final']} | " + " | ".join(theirs) + f" | {row['wall_clock']} | {row['commit']} |")
    out = results / preset / "table.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out
