"""Throughput of the full paper-size learner update: model batch 32 + SAC batch 256, 9-frame windows.

    python bench/learner.py --device cpu --updates 3

Prints one JSON object: updates/s of `Learner.update` (medians over interleaved rounds) with the model batch shared (the head of the
SAC batch: one encoder pass) and separate (its own batch), parameter counts and peak memory (CPU:
max RSS of the process; CUDA: torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.batch import Batch  # noqa: E402
from common.config import paper  # noqa: E402
from learner.learner import Learner  # noqa: E402


def random_batch(batch_size: int, frames: int, action_dim: int, generator: torch.Generator) -> Batch:
    """Random pixels and actions; every other window padded at its start, as replay produces them."""
    obs = torch.randint(0, 256, (batch_size, frames, 3, 64, 64), dtype=torch.uint8, generator=generator)
    action = torch.rand(batch_size, frames - 1, action_dim, generator=generator) * 2 - 1
    first = torch.zeros(batch_size, frames, dtype=torch.bool)
    first[::2, 3] = True
    return Batch(obs, action, torch.randn(batch_size, frames - 1, generator=generator),
                 torch.zeros(batch_size, frames - 1), first)


def timed(variants: dict[str, Callable[[], object]], updates: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each call of each variant, after one warm-up call each; the variants take turns so
    that drift in a shared machine's speed hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(updates + 1):
        for name, fn in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_ > 0:
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--updates", type=int, default=3, help="timed updates per variant (after 1 warm-up)")
    parser.add_argument("--action-dim", type=int, default=6, help="cheetah_run has 6")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = paper()
    frames = cfg.model.sequence_length + 1
    generator = torch.Generator().manual_seed(0)
    sac_batch = random_batch(cfg.sac.batch_size, frames, args.action_dim, generator).to(device)
    model_batch = random_batch(cfg.model.batch_size, frames, args.action_dim, generator).to(device)
    learner = Learner(cfg, args.action_dim, device=device, seed=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    seconds = timed({
        "shared_encoder_pass": lambda: learner.update(sac_batch.head(cfg.model.batch_size), sac_batch),
        "separate_batches": lambda: learner.update(model_batch, sac_batch),
        "model_only": lambda: learner.update_model(model_batch),
        "sac_only": lambda: learner.update_sac(sac_batch),
    }, args.updates, device)
    chosen = "shared_encoder_pass"  # what the learner process runs: the model batch is the SAC batch's head

    if device.type == "cuda":
        peak = {"peak_cuda_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
        name = torch.cuda.get_device_name(device)
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1)}
        name = platform.processor() or platform.machine()
    print(json.dumps({
        "device": args.device, "device_name": name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "model_batch": cfg.model.batch_size, "sac_batch": cfg.sac.batch_size, "frames": frames,
        "action_dim": args.action_dim, "timed_updates": args.updates,
        "updates_per_s": round(1.0 / statistics.median(seconds[chosen]), 3),
        "update_variant": chosen,
        "seconds_per_update_median": {name: round(statistics.median(t), 4) for name, t in seconds.items()},
        "seconds_per_update_min": {name: round(min(t), 4) for name, t in seconds.items()},
        "shared_speedup_median": round(statistics.median(seconds["separate_batches"])
                                       / statistics.median(seconds["shared_encoder_pass"]), 3),
        "shared_speedup_min": round(min(seconds["separate_batches"]) / min(seconds["shared_encoder_pass"]), 3),
        "parameters": learner.parameter_counts(),
        **peak,
    }, indent=2))


if __name__ == "__main__":
    main()
