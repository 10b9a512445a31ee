"""Does the latent probe explain the returns? Rank correlation between the probe's R² for the pole and the
evaluation return, over the cartpole_swingup action-repeat-4 runs of issue 30 (results/cartpole_swingup/sweep.md).

Each evaluation from 100 000 environment steps on is one point: x is the mean of the pole's three R² (angle cos,
sin, angular velocity; each clipped at 0, since a negative R² only says how badly a map extrapolates), y the
evaluation's mean return. Prints each run's means, then Spearman's rho over all points and over the runs' means.

    .venv/bin/python scripts/probe_vs_return.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from deploy.experiments.returns_plot import read_evaluations

RESULTS = Path(__file__).resolve().parent.parent / "results" / "cartpole_swingup"
POLE = ("hinge_1_cos", "hinge_1_sin", "hinge_1_vel")
FROM_STEP = 100_000


def runs() -> dict[str, Path]:
    """Every AR-4 run with an eval.csv and a probe.csv: the `cpu` and `cpu-latent` seeds and the search's runs."""
    found = {f"{preset} seed {s}": RESULTS / f"{preset}_ar4" / f"seed{s}" for preset in ("cpu", "cpu-latent")
             for s in range(3)}
    found |= {p.name: p for p in sorted((RESULTS / "sweep").glob("ar4_*"))}
    return {name: path for name, path in found.items() if (path / "probe.csv").exists()}


def points(run: Path) -> tuple[list[float], list[float], list[float]]:
    """(pole R², angular velocity R², return) at each evaluation from FROM_STEP on."""
    returns = {e.env_steps: e.mean for e in read_evaluations(run / "eval.csv", seed=0)}
    r2: dict[int, dict[str, float]] = {}
    for row in csv.DictReader(open(run / "probe.csv")):
        r2.setdefault(int(row["scheduled_env_steps"]), {})[row["dimension"]] = float(row["r2"])
    steps = [s for s in sorted(returns) if s >= FROM_STEP and all(d in r2.get(s, {}) for d in POLE)]
    pole = [float(np.mean([max(r2[s][d], 0.0) for d in POLE])) for s in steps]
    return pole, [max(r2[s]["hinge_1_vel"], 0.0) for s in steps], [returns[s] for s in steps]


def spearman(x: list[float], y: list[float], permutations: int = 10_000) -> tuple[float, float]:
    """Spearman's rho (Pearson's on ranks, ties at their mean rank) and its two-sided permutation p-value (seeded,
    so the figure is the same on every run): numpy only, since scipy is not one of the project's dependencies."""
    def ranks(v: list[float]) -> np.ndarray:
        a = np.asarray(v, dtype=float)
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        for value in np.unique(a):  # ties share their mean rank
            r[a == value] = r[a == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    rho = float(np.corrcoef(rx, ry)[0, 1])
    rng = np.random.default_rng(0)
    shuffled = np.array([np.corrcoef(rx, rng.permutation(ry))[0, 1] for _ in range(permutations)])
    return rho, float((np.abs(shuffled) >= abs(rho)).mean())


def main() -> None:
    all_x: list[float] = []
    all_y: list[float] = []
    means = []
    for name, path in runs().items():
        pole, vel, ret = points(path)
        all_x += pole
        all_y += ret
        means.append((np.mean(pole), np.mean(ret)))
        print(f"{name:18s} points {len(ret):2d}  pole R² {np.mean(pole):.2f}  angular velocity R² {np.mean(vel):.2f}"
              f"  return {np.mean(ret):.0f}")
    rho, p = spearman(all_x, all_y)
    print(f"all points: n={len(all_x)}, Spearman rho {rho:.2f} (permutation p={p:.3f})")
    rho, p = spearman([m[0] for m in means], [m[1] for m in means])
    print(f"runs' means: n={len(means)}, Spearman rho {rho:.2f} (permutation p={p:.3f})")


if __name__ == "__main__":
    main()
