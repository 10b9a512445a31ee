"""Where a run's processes live: join a Ray cluster or start a private local one; what it offers.

The only place that decides between a cluster and this machine (deploy/launcher.py asks it).
"""

from __future__ import annotations

import math
import os

import ray

from common.config import Config
from replay_service import connect
from replay_service.schema import STATE


def connect_ray(cfg: Config) -> bool:
    """Join a cluster when there is one, else start a local Ray; returns True for a cluster.

    RAY_ADDRESS=<host:port> or `auto` joins that cluster; RAY_ADDRESS=local always starts a private
    local Ray (what the tests use, so they never join a cluster that happens to be running).
    """
    address = os.environ.get("RAY_ADDRESS", "")
    if address and address != "local":
        ray.init(address=address, log_to_driver=True)
        return True
    if not address:
        try:
            ray.init(address="auto", log_to_driver=True)
            return True
        except (ConnectionError, RuntimeError):
            pass
    # Logical CPUs may exceed the physical ones: the actors, learner and evaluator mostly wait on
    # each other, and the tests run them all on 2 cores. address="local": with no address, ray.init would
    # join the newest cluster recorded in /tmp/ray/ray_current_cluster (another run's on this machine).
    wanted = cfg.actors.num * cfg.actors.num_cpus + 2
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(wanted)), include_dashboard=False,
             log_to_driver=True, configure_logging=False)
    return False


def replay_inserts(url: str, cfg: Config) -> int:
    """Transitions ever inserted into the replay at `url` (its shared counter)."""
    client = connect(url, cfg.replay.connect_timeout_s)
    try:
        return int(client.hget(STATE, "inserted") or 0)
    finally:
        client.close()


def gpu_available() -> bool:
    """Whether the Ray cluster offers a whole GPU for the learner."""
    return ray.cluster_resources().get("GPU", 0) >= 1
