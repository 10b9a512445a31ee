"""Agent steps/s of one actor process (one thread) with the real policy and real replay writes.

    .venv/bin/python bench/actor.py [--preset paper] [--tasks cheetah_run,hopper] [--steps 300]
                                    [--envs-per-actor 1,2,4] [--out bench/results/<host>-<date>-actor.json]

Per task, in one run on one core: the raw environment rate (random actions, no policy, no replay),
then `ActorWorker.run` writing to a real redis-server with the policy acting through the full history
("before": `Policy.act` encodes all tau frames every step, the old path) and through the feature ring
("after": one new frame per environment per step). Each step's time is split into physics, rendering,
policy, replay and other (resets, bookkeeping). The weight source hands out a new version at every
sync (`actors.weight_sync_every`), the worst case for the ring, which re-encodes its frames then.
Before and after step the preset's `actors.envs_per_actor` environments; `--envs-per-actor` also
measures the ring path with K environments per actor (agent steps/s of the process, i.e. per core).
Each measurement runs `--repeats` times, interleaved, and the fastest is kept (other processes on a
shared machine only slow runs down). The policy's weights are the learner's initial ones: speed does
not depend on their values. Prints JSON; `--out` also writes it to a file.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.worker import ActorWorker, EnvFactory  # noqa: E402
from bench.machine import commit, cpu_name, dirty, write_report  # noqa: E402
from common.config import PRESETS, Config  # noqa: E402
from common.envs import PixelEnv, make_env  # noqa: E402
from common.rendering import select_gl_backend  # noqa: E402
from common.tasks import TASKS  # noqa: E402
from learner.learner import Learner  # noqa: E402
from replay_service import RedisServer, connect  # noqa: E402

PAPER_TASKS = [t for t in TASKS if t != "cartpole_swingup"]  # the paper's eight


class _Timers:
    """Seconds spent in the environments' physics and rendering, summed over every env of a run."""

    def __init__(self) -> None:
        self.physics = self.render = 0.0

    def wrap(self, env: PixelEnv) -> PixelEnv:
        """Time `env`'s raw steps and renders by shadowing its bound methods (the step logic is untouched)."""
        raw_step, render = env._raw_step, env.render  # type: ignore[attr-defined]

        def timed_raw_step(action: np.ndarray) -> tuple[float, bool, bool]:
            start = time.perf_counter()
            try:
                return raw_step(action)
            finally:
                self.physics += time.perf_counter() - start

        first = [True]

        def timed_render() -> np.ndarray:
            start = time.perf_counter()
            try:
                return render()
            finally:
                if not first[0]:  # the first render creates the GL context, before any step is timed
                    self.render += time.perf_counter() - start
                first[0] = False

        env._raw_step, env.render = timed_raw_step, timed_render  # type: ignore[attr-defined,method-assign]
        return env


class _NewVersionEverySync:
    """A WeightSource that publishes a new version at every check: the most re-encoding the ring can see."""

    def __init__(self, blob: dict[str, Any]) -> None:
        self.blob = blob

    def latest(self, have_version: int) -> dict[str, Any] | None:
        return dict(self.blob, version=have_version + 1)


class _FullHistoryWorker(ActorWorker):
    """The actor as it was: the policy encodes every frame of every history at each step."""

    def _act(self, action_dim: int) -> np.ndarray:
        if self._policy is None:
            return super()._act(action_dim)
        return self._policy.act(self._ring.ordered_obs(), self._ring.actions)


def raw_rate(task: str, steps: int) -> dict[str, float]:
    """The environment alone: random actions, no policy, no replay."""
    timers = _Timers()
    env = timers.wrap(make_env(task, seed=0))
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, env.action_dim)).astype(np.float32)
    env.reset()
    timers.physics = timers.render = 0.0
    start = time.perf_counter()
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[i])
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return {"agent_steps_per_s": round(steps / elapsed, 1), "physics_ms": round(1e3 * timers.physics / steps, 2),
            "render_ms": round(1e3 * timers.render / steps, 2)}


def actor_rate(cfg: Config, url: str, blob: dict[str, Any], steps: int, full_history: bool) -> dict[str, Any]:
    """One ActorWorker for `steps` agent steps (over all its envs), writing to the replay at `url`."""
    client = connect(url, cfg.replay.connect_timeout_s)
    client.flushdb()  # a fresh replay for this task (its schema names the task and action dimension)
    client.close()
    timers = _Timers()
    factory: EnvFactory = lambda seed: timers.wrap(make_env(cfg.task_spec, seed))  # noqa: E731
    worker_cls: Callable[..., ActorWorker] = _FullHistoryWorker if full_history else ActorWorker
    worker = worker_cls(cfg, 0, url, _NewVersionEverySync(blob), env_factory=factory)
    k = cfg.actors.envs_per_actor
    counters = worker.run(max_steps=max(1, steps // k))
    n, loop = counters["steps"], counters["loop_s"]
    ms = {"physics": timers.physics, "render": timers.render, "policy": counters["policy_s"],
          "replay": counters["replay_s"]}
    ms["other"] = loop - sum(ms.values())  # resets, the ring's bookkeeping, counters
    return {"agent_steps_per_s": round(n / loop, 1), "agent_steps": int(n), "envs_per_actor": k,
            "ms_per_agent_step": {key: round(1e3 * v / n, 2) for key, v in ms.items()}}


def bench_task(cfg: Config, url: str, task: str, steps: int, envs_per_actor: list[int], repeats: int,
               sweep_only: bool = False) -> dict[str, Any]:
    """Raw, before and after (and each K of `envs_per_actor`), interleaved `repeats` times; the fastest
    run of each is kept, since other processes on the machine only ever slow a run down. The K sweep
    alternates its order between repeats and also reports the median of the paired ratios to the first
    K, the sturdier comparison on a busy machine. `sweep_only` skips raw, before and after."""
    probe = make_env(task, seed=0)
    action_dim = probe.action_dim
    probe.close()
    cfg = replace(cfg, run=replace(cfg.run, task=task))
    blob = Learner(cfg, action_dim, device="cpu").actor_weights(1)
    runs: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(repeats):
        if not sweep_only:
            runs.setdefault("raw", []).append(raw_rate(task, steps))
            runs.setdefault("before", []).append(actor_rate(cfg, url, blob, steps, full_history=True))
            runs.setdefault("after", []).append(actor_rate(cfg, url, blob, steps, full_history=False))
        for k in envs_per_actor if repeat % 2 == 0 else envs_per_actor[::-1]:
            with_k = replace(cfg, actors=replace(cfg.actors, envs_per_actor=k))
            runs.setdefault(f"K{k}", []).append(actor_rate(with_k, url, blob, steps, full_history=False))
    best = {name: max(rs, key=lambda r: r["agent_steps_per_s"]) for name, rs in runs.items()}
    result: dict[str, Any] = {}
    if not sweep_only:
        raw, before, after = best["raw"]["agent_steps_per_s"], best["before"], best["after"]
        result = {"agent_steps_per_s": after["agent_steps_per_s"], "raw_agent_steps_per_s": raw,
                  "ratio_to_raw": round(after["agent_steps_per_s"] / raw, 3),
                  "before_agent_steps_per_s": before["agent_steps_per_s"],
                  "before_ratio_to_raw": round(before["agent_steps_per_s"] / raw, 3),
                  "raw": best["raw"], "before": before, "after": after}
    if envs_per_actor:
        first = [r["agent_steps_per_s"] for r in runs[f"K{envs_per_actor[0]}"]]
        result["envs_per_actor"] = {}
        for k in envs_per_actor:
            rates = [r["agent_steps_per_s"] for r in runs[f"K{k}"]]
            result["envs_per_actor"][str(k)] = dict(
                best[f"K{k}"], runs_agent_steps_per_s=rates,
                median_ratio_to_first=round(statistics.median(r / f for r, f in zip(rates, first, strict=True)), 3))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="network sizes (common.config)")
    parser.add_argument("--tasks", default=",".join(PAPER_TASKS), help="comma-separated task names")
    parser.add_argument("--steps", type=int, default=300, help="agent steps per measurement")
    parser.add_argument("--envs-per-actor", default="", help="e.g. 1,2,4: also measure K envs per actor")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each measurement; the best is kept")
    parser.add_argument("--sweep-only", action="store_true", help="only the --envs-per-actor sweep")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = {"commit": commit(), "dirty": dirty()}  # before the run: the code that was measured
    backend = select_gl_backend()
    cfg = PRESETS[args.preset][1]
    # Nobody samples here: lift the rate limiter so writes never wait for a learner.
    cfg = replace(cfg, replay=replace(cfg.replay, spi_tolerance=1e12, capacity=20_000))
    envs_per_actor = [int(k) for k in args.envs_per_actor.split(",") if k]
    with tempfile.TemporaryDirectory() as tmp, RedisServer(tmp, cfg.replay) as server:
        tasks = {task: bench_task(cfg, server.url, task, args.steps, envs_per_actor, args.repeats,
                                 args.sweep_only)
                 for task in args.tasks.split(",")}
    report = {"bench": "actor", "preset": args.preset, "steps": args.steps, "repeats": args.repeats,
              "envs_per_actor": cfg.actors.envs_per_actor, "gl_backend": backend,
              "host": socket.gethostname(), "cpu": cpu_name(), "cpus": os.cpu_count(), "torch_threads": 1,
              **source, "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tasks": tasks}
    write_report(report, args.out)


if __name__ == "__main__":
    main()
