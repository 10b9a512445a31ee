"""Learning curves over seeds: merge each seed's eval.csv, measure the random-policy baseline, draw the figure.

The figure is the paper's figure 5 for one task: the mean return over seeds against environment steps
with the min-max band, the published SLAC returns at 100k and 500k environment steps, and the uniform
random policy's return measured with the same protocol (the evaluations made before the first policy
was published, policy version 0). The legend gives each curve's action repeat, and the title warns where
the run's differs from SLAC's. Used by `make reproduce` (deploy/experiments/harness.py).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.experiments.published import published as published_returns
from deploy.experiments.published import published_action_repeat

RETURNS_COLUMNS = ("env_steps", "seed", "return_mean", "return_std")


@dataclass(frozen=True)
class Evaluation:
    """One row of a seed's eval.csv, aligned on its point of the evaluation grid."""

    env_steps: int
    seed: int
    policy_version: int
    returns: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def read_evaluations(eval_csv: Path, seed: int) -> list[Evaluation]:
    """The evaluations of one run, on the grid (`scheduled_env_steps`); a repeated grid point keeps its last row."""
    rows: dict[int, Evaluation] = {}
    with eval_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["scheduled_env_steps"])
            rows[step] = Evaluation(step, seed, int(row["policy_version"]),
                                    tuple(float(r) for r in row["returns"].split()))
    if not rows:
        raise ValueError(f"{eval_csv} holds no evaluation: did the run reach its first one?")
    return [rows[k] for k in sorted(rows)]


def write_returns(evaluations: list[Evaluation], path: Path) -> None:
    """returns.csv: one row per (grid point, seed)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RETURNS_COLUMNS)
        for e in sorted(evaluations, key=lambda e: (e.env_steps, e.seed)):
            writer.writerow([e.env_steps, e.seed, f"{e.mean:.4f}", f"{e.std:.4f}"])


def random_baseline(evaluations: list[Evaluation]) -> tuple[float, float, int]:
    """(mean, std, episodes) of every episode played by the uniform random policy (policy version 0)."""
    returns = [r for e in evaluations if e.policy_version == 0 for r in e.returns]
    if not returns:
        return float("nan"), float("nan"), 0
    return float(np.mean(returns)), float(np.std(returns)), len(returns)


def curve(evaluations: list[Evaluation]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(env steps, mean, min, max over seeds, number of seeds) at each grid point."""
    steps = sorted({e.env_steps for e in evaluations})
    by_step = [[e.mean for e in evaluations if e.env_steps == s] for s in steps]
    return (np.array(steps), np.array([np.mean(v) for v in by_step]), np.array([np.min(v) for v in by_step]),
            np.array([np.max(v) for v in by_step]), np.array([len(v) for v in by_step]))


def plot_returns(evaluations: list[Evaluation], task: str, preset: str, path: Path, note: str = "",
                 action_repeat: int | None = None) -> None:
    """returns.png: mean over seeds with the min-max band, published SLAC points, random-policy line; each with
    its action repeat where known (`action_repeat`: the run's)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt  # imported here: only the harness needs it, and after the backend is set

    steps, mean, low, high, _ = curve(evaluations)
    seeds = len({e.seed for e in evaluations})
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.fill_between(steps, low, high, alpha=0.25, color="tab:blue", linewidth=0)
    ours = f", action repeat {action_repeat}" if action_repeat else ""
    ax.plot(steps, mean, color="tab:blue", marker="o", markersize=3,
            label=f"slac-dist, preset {preset}{ours} (mean, min-max over {seeds} seed{'s' * (seeds != 1)})")
    random_mean, _, episodes = random_baseline(evaluations)
    if episodes:
        ax.axhline(random_mean, color="gray", linestyle="--",
                   label=f"uniform random policy ({random_mean:.1f}, {episodes} episodes)")
    published = published_returns("SLAC", task)
    # Points far beyond the curve would squash it into the left edge: draw those within reach, name the rest.
    shown = {k: v for k, v in published.items() if k <= 1.25 * max(steps.max(), 1)}
    beyond = ", ".join(f"{k // 1000}k: {v:.0f}" for k, v in published.items() if k not in shown)
    slac_repeat = published_action_repeat("SLAC", task)
    theirs = f", action repeat {slac_repeat}" if slac_repeat else ""
    if published:
        ax.scatter(list(shown), list(shown.values()), color="tab:red", marker="*", s=120, zorder=3,
                   label=f"SLAC, published{theirs} (official results, 10 seeds)"
                   + (f"; beyond this axis {beyond}" if beyond else ""))
    episodes_per_eval = int(np.median([len(e.returns) for e in evaluations]))
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"average return ({episodes_per_eval} episodes, stochastic policy)")
    title = f"{task}: {note}" if note else task
    if published and action_repeat and slac_repeat and action_repeat != slac_repeat:
        title += (f"\n⚠ not like for like: SLAC's runs used action repeat {slac_repeat}, "
                  f"{action_repeat / slac_repeat:.3g}x our agent steps per environment step")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
