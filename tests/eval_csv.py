"""eval.csv files in the run logger's format, for the tests of what reads them (returns plot, committed seeds)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from deploy.run.logger import EVAL_COLUMNS


def _eval_csv(path: Path, rows: list[tuple[int, int, int, list[float]]]) -> Path:
    """eval.csv rows (env_steps, scheduled, policy_version, returns) in the run logger's format."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(EVAL_COLUMNS)
        for env_steps, scheduled, version, returns in rows:
            writer.writerow([env_steps, scheduled, 0, version, np.mean(returns), np.std(returns),
                             " ".join(str(r) for r in returns)])
    return path
