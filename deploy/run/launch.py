"""`make train`'s run, start to end: resolve it, open its directory, start Ray and the embedded Redis, drive it.

On one machine everything is embedded: a local Ray, a redis-server started in the run directory, W&B
offline, and a run starts its own private Ray whatever else runs on the machine. On a cluster
(`RAY_ADDRESS` set, as it is for a Ray job; deploy/run/ray_runtime.connect_ray) the processes are placed across
its nodes and the replay URL must be reachable from all of them. Everything that can be refused (the task, the
config, an unreachable replay) is refused before the run directory, Ray or Redis exist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import ray

from actors.worker import EnvFactory
from common.config import Config
from deploy.run.config import resolve_run, short_run_warning
from deploy.run.disk import DiskGuard
from deploy.run.driver import Driver
from deploy.run.ray_runtime import connect_ray, placement
from deploy.run.run_dir import RunDir, prepare_run_dir, write_traceback
from deploy.run.signals import StopSignals
from deploy.run.supervisor import RedisWatchdog
from replay_service import RedisServer, connect

log = logging.getLogger(__name__)


def train(cfg: Config, env_factory: EnvFactory | None = None,
          on_started: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run SLAC end to end; returns the final summary. `env_factory` and `on_started` serve the tests."""
    cfg, action_dim = resolve_run(cfg, env_factory)
    if (short := short_run_warning(cfg)) is not None:
        log.warning(short)
    if cfg.replay.url:  # fail here, in one paragraph, rather than in every Ray process
        connect(cfg.replay.url, cfg.replay.connect_timeout_s).close()
    run = prepare_run_dir(cfg)
    cfg = run.cfg
    try:
        DiskGuard(run.path, cfg.run.min_free_mb).check(starting=True)
        return _train(cfg, run, action_dim, env_factory, on_started)
    except Exception as exc:
        try:
            exc.log_path = write_traceback(run.path, exc)  # type: ignore[attr-defined]  # main() names it
        except OSError:  # e.g. the disk is full: the paragraph still reaches the terminal
            pass
        raise
    finally:
        run.release()


def _train(cfg: Config, run: RunDir, action_dim: int, env_factory: EnvFactory | None,
           on_started: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    with ExitStack() as stack:
        replay_url = cfg.replay.url
        ray_dir = connect_ray(cfg)  # None on a cluster
        cluster = ray_dir is None
        stack.callback(ray.shutdown)
        signals = stack.enter_context(StopSignals())  # after ray.init, which installs its own SIGTERM handler
        watchdog = None
        if not replay_url:
            # On a cluster every node must reach the embedded server: it listens on this node's private
            # address only, with ACL users (the replay's clients get the `replay` user's URL; the admin
            # password stays in this process). Locally it listens on loopback.
            host = ray.util.get_node_ip_address() if cluster else "127.0.0.1"
            server = stack.enter_context(RedisServer(run.files.redis, cfg.replay, host=host, secure=cluster))
            watchdog = stack.enter_context(RedisWatchdog(server))  # stops before the server does
            replay_url = server.url
        driver = Driver(cfg, run, replay_url, action_dim, env_factory, signals, watchdog, placement(cfg, cluster))
        stack.callback(driver.close)
        if on_started is not None:
            on_started({"run_dir": str(run.path), "replay_url": replay_url})
        return {**driver.loop(), "ray_dir": ray_dir}
