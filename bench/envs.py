"""Agent steps per second of each pixel task in one process (physics + action repeat + 64x64 render).

Prints JSON. Usage: python bench/envs.py [--steps N] [--tasks a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from common.envs import make_env
from common.rendering import select_gl_backend
from common.tasks import TASKS


def bench_task(task: str, steps: int) -> dict[str, float]:
    env = make_env(task, seed=0)
    rng = np.random.default_rng(0)
    env.reset()
    env_steps, start = 0, time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, info = env.step(rng.uniform(-1, 1, env.action_dim))
        env_steps += info["env_steps"]
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    render_start = time.perf_counter()
    for _ in range(steps):
        env.render()
    render_rate = steps / (time.perf_counter() - render_start)
    env.close()
    return {"agent_steps_per_s": round(steps / elapsed, 1), "env_steps_per_s": round(env_steps / elapsed, 1),
            "renders_per_s": round(render_rate, 1), "action_repeat": env.spec.action_repeat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--tasks", default=",".join(TASKS))
    args = parser.parse_args()
    backend = select_gl_backend()
    results = {task: bench_task(task, args.steps) for task in args.tasks.split(",")}
    print(json.dumps({"bench": "envs", "gl_backend": backend, "machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "steps": args.steps, "tasks": results}, indent=2))


if __name__ == "__main__":
    main()
