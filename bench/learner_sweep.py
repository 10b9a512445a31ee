"""What each of the `cpu` preset's sweep candidates costs per update, against the preset itself, in one process.

    python bench/learner_sweep.py --out bench/results/<host>-<date>-learner-sweep.json

Issue 17's sweep looks for the configuration that learns most in an hour on a 2-core CPU; the candidates that
change the update (model batch, SAC batch, widths) are worth running only if they cost little per update.
Each variant is the `cpu` preset with one change; all are timed in interleaved rounds after a warm-up (so a
shared machine's drift hits them alike) and reported as ms per update and as a ratio to the preset's own
update. The other candidates (pre-training updates, action repeat, tau) do not change an update's cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.learner import timed  # noqa: E402
from bench.machine import commit, cpu_name, dirty, write_report  # noqa: E402
from common.batch import random_batch  # noqa: E402
from common.config import Config, cpu  # noqa: E402
from learner.learner import Learner  # noqa: E402


def variants(base: Config) -> dict[str, Config]:
    """The preset and its one-change candidates."""
    def model(**kw: object) -> Config:
        return dataclasses.replace(base, model=dataclasses.replace(base.model, **kw))

    def sac(**kw: object) -> Config:
        return dataclasses.replace(base, sac=dataclasses.replace(base.sac, **kw))

    out = {"cpu": base}
    for b in (16, 32):
        out[f"model_batch_{b}"] = model(batch_size=b)
    for b in (64, 128):
        out[f"sac_batch_{b}"] = sac(batch_size=b)
    wide = model(hidden_dim=128)
    out["widths_128"] = dataclasses.replace(wide, sac=dataclasses.replace(wide.sac, hidden_dim=128))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=10, help="timed updates per variant (after 2 warm-up calls)")
    parser.add_argument("--action-dim", type=int, default=1, help="cartpole has 1")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = cpu()
    base = dataclasses.replace(base, learner=dataclasses.replace(base.learner, compile="none", precision="fp32"))
    configs = variants(base)
    frames = base.model.sequence_length + 1
    learners, batches = {}, {}
    for name, cfg in configs.items():
        learners[name] = Learner(cfg, args.action_dim, device=torch.device("cpu"), seed=0)
        # A SAC batch whose head is the model batch, as the sampler draws them.
        size = max(cfg.sac.batch_size, cfg.model.batch_size)
        batches[name] = random_batch(size, frames, args.action_dim, torch.Generator().manual_seed(0))
        for _ in range(2):
            learners[name].update(batches[name])
    seconds = timed({n: (lambda n=n: learners[n].update(batches[n])) for n in configs}, args.updates,
                    torch.device("cpu"))
    base_s = statistics.median(seconds["cpu"])
    report = {
        name: {"model_batch": configs[name].model.batch_size, "sac_batch": configs[name].sac.batch_size,
               "hidden_dim": configs[name].model.hidden_dim,
               "ms_per_update_median": round(1000 * statistics.median(t), 2),
               "cost_vs_cpu": round(statistics.median(t) / base_s, 3)}
        for name, t in seconds.items()}
    write_report({"bench": "learner_sweep", "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                  "commit": commit(), "dirty": dirty(), "date": time.strftime("%Y-%m-%d"), "host": platform.node(),
                  "cpu": cpu_name(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "timed_updates": args.updates, "variants": report}, args.out)


if __name__ == "__main__":
    main()
