"""The eager learner update of this checkout against an earlier commit's, in one run on one machine.

    python bench/learner_versus.py --base 81f1681 --preset paper --updates 5 --rounds 2 --out versus.json

A change to the update must not make it slower or add operators: this builds the base commit in a
temporary git worktree and times `Learner.update` (eager, fp32, the preset's SAC batch of random frames)
in child processes, alternating base and head for `--rounds` rounds so that both see the same machine
state, then counts the top-level operators one update dispatches (torch.profiler; bench/learner.py's
`top_level_operator_calls`). Reports the median
ms per update of each, head over base, and the operator counts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import commit, cpu_name, dirty, write_report  # noqa: E402

# Run inside a checkout (cwd and sys.path): only names both versions have (Batch, PRESETS, Learner).
CHILD = """
import json, statistics, sys, time
import torch
sys.path.insert(0, ".")
from common.batch import Batch
from common.config import PRESETS
from learner.learner import Learner
import dataclasses
preset, updates, action_dim = sys.argv[1], int(sys.argv[2]), 6
cfg = PRESETS[preset][1]
cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, compile="none", precision="fp32"))
b, t = cfg.sac.batch_size, cfg.model.sequence_length + 1
g = torch.Generator().manual_seed(0)
batch = Batch(torch.randint(0, 256, (b, t, 3, 64, 64), dtype=torch.uint8, generator=g),
              torch.rand(b, t - 1, action_dim, generator=g) * 2 - 1, torch.randn(b, t - 1, generator=g),
              torch.zeros(b, t - 1), torch.zeros(b, t, dtype=torch.bool))
learner = Learner(cfg, action_dim, device=torch.device("cpu"), seed=0)
for _ in range(2):
    learner.update(batch)
seconds = []
for _ in range(updates):
    start = time.perf_counter()
    learner.update(batch)
    seconds.append(time.perf_counter() - start)
with torch.profiler.profile() as prof:
    learner.update(batch)
top = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU and e.cpu_parent is None]
print(json.dumps({"seconds": seconds, "operators": len(top)}))
"""


def measure(checkout: Path, preset: str, updates: int) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", CHILD, preset, str(updates)], cwd=checkout, capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"the learner bench failed in {checkout}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per round (after 2 warm-up calls)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base_sha = subprocess.run(["git", "rev-parse", args.base], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="slac-base-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), base_sha], cwd=REPO, check=True,
                       capture_output=True)
        try:
            runs: dict[str, list[dict[str, object]]] = {"base": [], "head": []}
            started = time.time()
            for _ in range(args.rounds):
                runs["base"].append(measure(base, args.preset, args.updates))
                runs["head"].append(measure(REPO, args.preset, args.updates))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True)
    result: dict[str, object] = {"bench": "learner_versus", "command": " ".join(sys.argv), "commit": commit(),
                                 "dirty": dirty(), "base_commit": base_sha, "date": time.strftime("%Y-%m-%d"),
                                 "device_name": cpu_name(), "preset": args.preset, "wall_s": round(time.time() - started)}
    for name, rounds in runs.items():
        seconds = [s for r in rounds for s in r["seconds"]]
        result[name] = {"ms_per_update_median": round(1000 * statistics.median(seconds), 1),
                        "ms_per_round_median": [round(1000 * statistics.median(r["seconds"]), 1) for r in rounds],
                        "operators_per_update": rounds[-1]["operators"]}
    result["head_over_base_time"] = round(result["head"]["ms_per_update_median"] / result["base"]["ms_per_update_median"], 3)
    write_report(result, args.out)


if __name__ == "__main__":
    main()
