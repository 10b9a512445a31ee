"""Seeds already in `results/<task>/<preset>/`: a fresh clone adds seeds to committed results instead of
training the committed ones again.

`make reproduce ... SEEDS=3` on a machine that ran seeds 0 and 1 skips them through their run directories
(`runs/reproduce/...`, done.json). A fresh clone has no run directories (they hold checkpoints, the replay
and W&B files, far too big to commit), only what the harness wrote under `results/`: each seed's
`eval.csv` and its entry in `summary.json`. A seed whose run directory holds nothing and whose committed
entry was made with the same configuration is taken from there; its entry keeps the commit, machine and date that trained it.
A different configuration (another env_steps, preset or override) trains every seed again, as before.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from common.config import Config, ConfigError

log = logging.getLogger(__name__)


def same_config(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The two configs (as written to summary.json) are equal once both went through JSON, with every key a config
    written before it existed (the `task` group) at its default, and the task's settings resolved (auto and the
    registry's value are the same run)."""
    def canon(d: dict[str, Any]) -> str:
        plain = json.loads(json.dumps(d, default=str))
        try:
            cfg = Config.from_dict(plain)
            plain = cfg.with_task(cfg.task_spec).to_dict()
        except (ConfigError, ValueError):
            pass  # not a config of this version: compared as written
        return json.dumps(plain, sort_keys=True, default=str)

    return canon(a) == canon(b)


def committed_seeds(out: Path, base: Config, seeds: list[int], run_dirs: dict[int, Path]) -> dict[int, dict[str, Any]]:
    """Committed entries (summary.json's `seeds` rows) to reuse for those of `seeds` that have no run directory
    here; {} when `out` holds no summary or its config differs from `base`."""
    path = out / "summary.json"
    if not path.exists():
        return {}
    try:
        previous = json.loads(path.read_text())
        rows = {int(r["seed"]): r for r in previous["seeds"]}
        config = previous["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s): every seed is trained", path, exc)
        return {}
    if not same_config(config, base.to_dict()):
        if any(s in rows and not run_dirs[s].exists() for s in seeds):
            log.info("%s was made with another configuration: its seeds are trained again", path)
        return {}
    reused = {}
    for seed in seeds:
        row, run_dir = rows.get(seed), run_dirs[seed]
        if row is None or run_dir.exists() or not (out / f"seed{seed}" / "eval.csv").exists():
            continue
        reused[seed] = {**row, **{k: row.get(k, previous.get(k, "unknown")) for k in ("commit", "machine", "date")}}
        log.info("seed %d: taken from %s (trained at commit %s; its run directory is not on this machine)",
                 seed, out, reused[seed]["commit"][:12])
    return reused
