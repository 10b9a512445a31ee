"""Throughput of the learner's update, eager against optimised (torch.compile, bf16), in one process.

    python bench/learner.py --device cpu --preset paper --updates 5
    python bench/learner.py --device cuda --preset paper --precisions fp32,bf16 --compile max

For each precision it builds an eager learner and an optimised one from the same seed, times
`Learner.update` (a full SAC batch; the model batch is its head) in interleaved rounds after a warm-up,
and reports updates/s, the optimised path's first-call seconds (its compilation), `speedup_vs_eager`
(optimised over eager, same precision), peak memory, and with `--profile` the operator calls and
milliseconds of one profiled update of each variant. `--out` also writes the JSON to a file
(`make bench` stores bench/results/<host>-<date>-learner.json).
"""

from __future__ import annotations

import argparse
import dataclasses
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

from bench.machine import commit, cpu_name, dirty, write_report  # noqa: E402
from common.batch import random_batch  # noqa: E402
from common.config import PRESETS, Config  # noqa: E402
from learner.learner import Learner  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(variants: dict[str, Callable[[], object]], updates: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each call of each variant; the variants take turns so that drift in a shared machine's
    speed hits them alike. Warm-up calls (compilation included) happen before."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(updates):
        for name, fn in variants.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def operator_profile(fn: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Operator calls (top-level, as dispatched from Python or a compiled graph's wrapper) and all
    operator events, with the wall milliseconds, of one call under torch.profiler."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    _sync(device)
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        _sync(device)
    elapsed = time.perf_counter() - start
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    report = {"top_level_operator_calls": sum(e.cpu_parent is None for e in events),
              "all_operator_events": len(events), "profiled_ms": round(1000 * elapsed, 2)}
    if device.type == "cuda":
        # Kernels the GPU ran and how much of the update's wall clock they cover (busy fraction; under 1 means
        # the GPU waited for the CPU to launch). A replayed CUDA graph shows its kernels, launched at once.
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_us = sum(e.device_time for e in kernels)
        report.update({"cuda_kernels": len(kernels), "gpu_busy_ms": round(busy_us / 1000, 2),
                       "gpu_busy_fraction": round(busy_us / 1000 / max(1000 * elapsed, 1e-9), 3)})
    return report


def _with(cfg: Config, **learner: object) -> Config:
    return dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, **learner))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if available")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per variant (after 2 warm-up calls)")
    parser.add_argument("--compile", choices=["default", "reduce-overhead", "max"], default="default",
                        help="the optimised path's learner.compile (reduce-overhead and max capture CUDA graphs on CUDA)")
    parser.add_argument("--precisions", default="", help="comma list of fp32,bf16; default fp32 (CPU), fp32,bf16 (CUDA)")
    parser.add_argument("--action-dim", type=int, default=6, help="cheetah_run has 6")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--profile", action="store_true", help="also count operator calls of one update of each")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    precisions = args.precisions.split(",") if args.precisions else (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    cfg = PRESETS[args.preset][1]
    frames = cfg.model.sequence_length + 1
    batch = random_batch(cfg.sac.batch_size, frames, args.action_dim, torch.Generator().manual_seed(0)).to(device)

    learners: dict[str, Learner] = {}
    for precision in precisions:
        for kind, setting in (("eager", "none"), ("optimised", args.compile)):
            learners[f"{kind}_{precision}"] = Learner(_with(cfg, compile=setting, precision=precision),
                                                      args.action_dim, device=device, seed=0)
    first_call_s = {}
    for name, learner in learners.items():
        start = time.perf_counter()
        for _ in range(2):
            learner.update(batch)
        _sync(device)
        first_call_s[name] = round(time.perf_counter() - start, 2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed({name: (lambda lr=learner: lr.update(batch)) for name, learner in learners.items()},
                    args.updates, device)
    for learner in learners.values():
        learner.check_finite()

    variants = {}
    for name, learner in learners.items():
        median = statistics.median(seconds[name])
        variants[name] = {"updates_per_s": round(1.0 / median, 3), "ms_per_update_median": round(1000 * median, 2),
                          "ms_per_update_min": round(1000 * min(seconds[name]), 2),
                          "warmup_s": first_call_s[name],
                          "compile_s": round(sum(learner.compile_seconds.values()), 2) if name.startswith("optimised") else 0.0}
        if args.profile:
            variants[name]["profile"] = operator_profile(lambda lr=learner: lr.update(batch), device)
    speedup = {p: round(statistics.median(seconds[f"eager_{p}"]) / statistics.median(seconds[f"optimised_{p}"]), 3)
               for p in precisions}
    baseline = "eager_fp32" if "fp32" in precisions else f"eager_{precisions[0]}"
    # Every variant against the plain eager fp32 update (what bf16 buys on top of compilation).
    versus_fp32 = {name: round(statistics.median(seconds[baseline]) / statistics.median(t), 3)
                   for name, t in seconds.items()}
    if device.type == "cuda":
        peak = {"peak_cuda_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
        name = torch.cuda.get_device_name(device)
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1)}
        name = cpu_name()
    result = {
        "bench": "learner", "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "commit": commit(), "dirty": dirty(),
        "date": time.strftime("%Y-%m-%d"), "host": platform.node(),
        "device": args.device, "device_name": name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "preset": args.preset,
        "compile": args.compile, "model_batch": cfg.model.batch_size, "sac_batch": cfg.sac.batch_size,
        "frames": frames, "action_dim": args.action_dim, "timed_updates": args.updates,
        "variants": variants, "speedup_vs_eager": speedup, f"speedup_vs_{baseline}": versus_fp32,
        "parameters": next(iter(learners.values())).parameter_counts(), **peak,
    }
    write_report(result, args.out)


if __name__ == "__main__":
    main()
