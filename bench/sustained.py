"""The learner's sustained rate without Redis: a device mirror filled from synthetic episodes, then updates for
a fixed time with everything a learner process does per update besides Redis.

    python bench/sustained.py --device cuda --preset paper --seconds 60

The mirror (replay_service/mirror.DeviceRing, what the learner samples from in a run) is filled with
`--episodes` episodes of random frames, actions and rewards; then, for `--seconds`, each update samples a
batch through the learner process's prefetcher (a side stream on CUDA), runs `Learner.update`, and every
`learner.publish_every` updates builds the actors' weights blob (the device-to-host copies of publication),
every `learner.metrics_every` fetches the metrics with the finiteness check. It reports updates/s over the
whole time, including all of that, and the time publication took. What it leaves out: the mirror's sync
from Redis, the rate limiter and `record_samples` (one round trip per `learner.replay_every` updates).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import commit, cpu_name, dirty, write_report  # noqa: E402
from common.config import PRESETS  # noqa: E402
from learner.learner import Learner  # noqa: E402
from learner.pipeline import BatchPrefetcher  # noqa: E402
from replay_service.mirror import DeviceRing  # noqa: E402
from replay_service.schema import FRAME_SHAPE, KIND_START, KIND_STEP, DecodedRows  # noqa: E402


def synthetic_rows(episodes: int, length: int, action_dim: int, seed: int = 0) -> DecodedRows:
    """`episodes` episodes of `length` transitions as replay rows: a first frame, then one row per step."""
    rng = np.random.default_rng(seed)
    n = episodes * (length + 1)
    index = np.arange(n)
    starts = index % (length + 1) == 0
    return DecodedRows(
        start=0, present=np.ones(n, bool), kind=np.where(starts, KIND_START, KIND_STEP).astype(np.uint8),
        flags=np.zeros(n, np.uint8), step=(index % (length + 1)).astype(np.int64),
        episode=(index // (length + 1)).astype(np.int64), prev=np.where(starts, index, index - 1).astype(np.int64),
        version=np.zeros(n, np.int64), reward=(rng.standard_normal(n) * ~starts).astype(np.float32),
        action=(rng.uniform(-1, 1, (n, action_dim)) * ~starts[:, None]).astype(np.float32),
        frames=rng.integers(0, 256, (n, *FRAME_SHAPE), dtype=np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--seconds", type=float, default=60.0, help="timed seconds (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed updates first (compilation included)")
    parser.add_argument("--episodes", type=int, default=40, help="synthetic episodes in the mirror")
    parser.add_argument("--length", type=int, default=250, help="transitions per episode (cheetah: 250)")
    parser.add_argument("--compile", default="", help="learner.compile (default: the preset's, i.e. auto)")
    parser.add_argument("--precision", default="", help="learner.precision (default: the preset's, i.e. auto)")
    parser.add_argument("--action-dim", type=int, default=6)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cfg = PRESETS[args.preset][1]
    overrides = {k: v for k, v in (("compile", args.compile), ("precision", args.precision)) if v}
    cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, **overrides))
    learner = Learner(cfg, args.action_dim, device=device, seed=0)
    rows = synthetic_rows(args.episodes, args.length, args.action_dim)
    ring = DeviceRing(len(rows.present), args.action_dim, cfg.model.sequence_length, device)
    start = time.perf_counter()
    ring.write(rows)
    ring.link(0, 0)
    fill_s = time.perf_counter() - start
    generator = torch.Generator(device).manual_seed(0)
    prefetch = BatchPrefetcher(lambda: ring.sample(cfg.sac.batch_size, generator=generator), generator, device)

    def one(updates: int) -> float:
        """One update as the learner process makes it; returns the seconds spent publishing, if it published."""
        learner.update(prefetch.next())
        if (updates + 1) % cfg.learner.metrics_every == 0:
            learner.check_finite()
        if (updates + 1) % cfg.learner.publish_every == 0:
            t = time.perf_counter()
            learner.actor_weights(updates)
            return time.perf_counter() - t
        return 0.0

    start = time.perf_counter()
    for i in range(args.warmup):
        one(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warmup_s = time.perf_counter() - start
    updates, publish_s, publications = 0, 0.0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        spent = one(updates)
        publish_s, publications = publish_s + spent, publications + (spent > 0)
        updates += 1
    learner.check_finite()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    result = {
        "bench": "sustained", "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "commit": commit(),
        "dirty": dirty(), "date": time.strftime("%Y-%m-%d"), "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__, "preset": args.preset, "execution": learner.execution,
        "mirror_rows": len(rows.present), "mirror_fill_s": round(fill_s, 3), "warmup_updates": args.warmup,
        "warmup_s": round(warmup_s, 2), "timed_s": round(elapsed, 2), "updates": updates,
        "updates_per_s": round(updates / elapsed, 2), "publications": publications,
        "publish_ms_mean": round(1000 * publish_s / publications, 2) if publications else None,
        "publish_fraction": round(publish_s / elapsed, 4),
        "sampled_version_mean": ring.take_sampled_version_mean(),
    }
    if device.type == "cuda":
        result["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    write_report(result, args.out)


if __name__ == "__main__":
    main()
