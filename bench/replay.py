"""Replay service benchmark: prints JSON with insert, sync and sample rates, compression and memory.

    .venv/bin/python bench/replay.py [--device cuda] [--steps 6000] [--out bench/results/<tag>-replay.json]

Frames are real 64x64 renders (cheetah_run, hopper; random actions) so compression figures are
honest; writers cycle through that pool. Each writer is its own process (spawn), as actors are.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import lz4.block
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import commit, cpu_name, dirty, write_report  # noqa: E402
from common.config import ReplayConfig  # noqa: E402
from replay_service import RedisServer, ReplayWriter, SequenceReplay, connect  # noqa: E402
from replay_service.schema import FRAME_BYTES  # noqa: E402

TASKS = {"cheetah_run": 6, "hopper": 3}
EPISODE = 250  # cheetah_run's agent steps per episode (1000 env steps / action repeat 4)


def render_pool(task: str, n: int) -> np.ndarray:
    """n real frames of `task` under random actions (with resets), uint8 [n, 3, 64, 64]."""
    from common.envs import make_env
    from common.rendering import select_gl_backend

    select_gl_backend()
    env = make_env(task, 0)
    rng = np.random.default_rng(0)
    frames = [env.reset()]
    while len(frames) < n:
        obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_dim).astype(np.float32))
        frames.append(env.reset() if terminated or truncated else obs)
    env.close()
    return np.stack(frames)


def frame_stats(pool: np.ndarray) -> dict[str, float]:
    raw = [f.tobytes() for f in pool]
    t0 = time.perf_counter()
    packed = [lz4.block.compress(r, store_size=False) for r in raw]
    t1 = time.perf_counter()
    for p in packed:
        lz4.block.decompress(p, uncompressed_size=FRAME_BYTES)
    t2 = time.perf_counter()
    return {"lz4_ratio": round(len(raw) * FRAME_BYTES / sum(map(len, packed)), 3),
            "compress_us_per_frame": round(1e6 * (t1 - t0) / len(raw), 1),
            "decompress_us_per_frame": round(1e6 * (t2 - t1) / len(raw), 1)}


def write_steps(url: str, cfg: ReplayConfig, task: str, pool: np.ndarray, steps: int, name: str) -> dict[str, float]:
    writer = ReplayWriter(url, cfg, task, TASKS[task], name)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (64, TASKS[task])).astype(np.float32)
    t0 = time.perf_counter()
    for i in range(steps):
        if i % EPISODE == 0:
            writer.begin_episode(pool[i % len(pool)])
        end = (i + 1) % EPISODE == 0
        writer.add(actions[i % 64], 0.5, pool[(i + 1) % len(pool)], False, end, 0)
    writer.close()
    return {"t0": t0, "t1": time.perf_counter(), "steps": steps, "bytes": writer.stats()["bytes_written"]}


def _writer_process(url: str, cfg: ReplayConfig, task: str, pool: np.ndarray, steps: int, name: str,
                    barrier: mp.synchronize.Barrier, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    connect(url, 10.0).close()
    barrier.wait()  # all writers start together
    result = write_steps(url, cfg, task, pool, steps, name)
    result["t0"], result["t1"] = time.time() - (result["t1"] - result["t0"]), time.time()
    out.put(result)


def insert_rate(url: str, cfg: ReplayConfig, task: str, pool: np.ndarray, writers: int, steps: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_writer_process, args=(url, cfg, task, pool, steps // writers, f"bench{k}", barrier, out))
             for k in range(writers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    seconds = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    total = sum(r["steps"] for r in results)
    return {"steps_per_s": round(total / seconds), "raw_MB_per_s": round(total * FRAME_BYTES / seconds / 1e6, 1),
            "sent_MB_per_s": round(sum(r["bytes"] for r in results) / seconds / 1e6, 1)}


def sample_latency(replay: SequenceReplay, batch_size: int, reps: int) -> dict[str, float]:
    generator = torch.Generator(device=replay.device).manual_seed(0)
    times = []
    for i in range(reps + 3):
        if replay.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        batch = replay.sample(batch_size, generator)
        if replay.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:  # warm-up excluded
            times.append(1e3 * (time.perf_counter() - t0))
    del batch
    times.sort()
    return {"device": str(replay.device), "batch": batch_size, "mean_ms": round(statistics.fmean(times), 2),
            "p50_ms": round(times[len(times) // 2], 2), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="where the learner's mirror lives: cpu or cuda")
    parser.add_argument("--steps", type=int, default=6_000, help="steps inserted per insert measurement")
    parser.add_argument("--reps", type=int, default=50, help="sample() calls timed")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    source = {"commit": commit(), "dirty": dirty()}  # before the run: the code that was measured
    torch.set_num_threads(1)  # like the learner sharing 2 cores with Redis and actors
    pools = {task: render_pool(task, 200) for task in TASKS}
    report: dict[str, object] = {"bench": "replay", "steps": args.steps, "reps": args.reps, "cpu": cpu_name(),
                                 "cpus": os.cpu_count(), "torch_threads": 1, **source,
                                 "command": " ".join([Path(sys.executable).name, *sys.argv]),
                                 "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "frames": {task: frame_stats(pool) for task, pool in pools.items()}}
    base = ReplayConfig(capacity=max(args.steps, 1_000), min_size=1, spi_tolerance=1e12, flush_every=50)
    insert: dict[str, dict[str, object]] = {}
    memory: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for compress in (True, False):
            mode = "lz4" if compress else "raw"
            cfg = replace(base, compress=compress)
            for task, pool in pools.items():
                with RedisServer(Path(tmp) / f"{mode}-{task}", cfg) as server:
                    client = connect(server.url, 5.0)
                    baseline = client.info("memory")["used_memory"]
                    row = {"writers_1": insert_rate(server.url, cfg, task, pool, 1, args.steps)}
                    rows = client.dbsize() - 4
                    memory.setdefault(mode, {})[f"{task}_redis_bytes_per_step"] = round(
                        (client.info("memory")["used_memory"] - baseline) / rows)
                    if task == "cheetah_run":  # the least compressible: the worst case
                        replay = SequenceReplay(server.url, cfg, task, TASKS[task], 8, device=args.device)
                        t0 = time.perf_counter()
                        synced = replay.sync()
                        row["sync_steps_per_s"] = round(synced / (time.perf_counter() - t0))
                        if compress:
                            report["sample_256"] = sample_latency(replay, 256, args.reps)
                        replay.close()
                        if compress:
                            client.flushdb()
                            row["writers_4"] = insert_rate(server.url, cfg, task, pool, 4, args.steps)
                    insert.setdefault(mode, {})[task] = row
        cfg = replace(base, appendfsync="always")  # strict durability: one fsync per flush
        with RedisServer(Path(tmp) / "always", cfg) as server:
            insert["lz4_appendfsync_always"] = {
                "cheetah_run": {"writers_1": insert_rate(server.url, cfg, "cheetah_run", pools["cheetah_run"], 1,
                                                         args.steps)}}
    report["insert"] = insert
    report["memory"] = memory
    write_report(report, args.out)


if __name__ == "__main__":
    main()
