"""Scheduling priority of a run's Ray processes: the learner first, actors and the evaluator after it.

A run is learner-bound (its updates/s is its speed), and a CPU learner runs OpenMP threads that wait for each
other: one preempted thread stalls the rest. So actors and the evaluator run at a higher niceness
(`actors.nice`, 19) and take a core only when the learner leaves it; the learner runs at its Ray node's niceness
(`node_niceness`: 0 unless the run was started niced), as do Redis, the weight board and the driver. Ray itself
starts every worker process at niceness 15 (its `worker_niceness`), below Redis and the driver: a private local Ray
is started with 0 (deploy/run/ray_runtime.connect_ray), and a learner that finds itself above its node's niceness
(a cluster started without RAY_worker_niceness=0) lowers it where it may.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def in_ray_worker() -> bool:
    """Whether this process is a Ray worker (an actor's process), not a driver or a test's own process. Asked of
    Ray only if this process has imported it (common/ does not depend on Ray): a Ray worker always has."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def node_niceness() -> int:
    """The niceness of the Ray node this worker runs on: its raylet's, the worker's parent, which a local run's
    raylet inherits from the driver. The learner runs at it rather than at 0: a run started niced (`nice -n 10 make
    train`, or `make test`'s second lane at 19, beside the learning run) stays below what its user put above it,
    which a learner lowering itself to 0 as root would not."""
    try:
        return os.getpriority(os.PRIO_PROCESS, os.getppid())
    except OSError:  # the parent ended (the node is going down): what Ray starts a node at
        return 0


def set_niceness(nice: int) -> int:
    """In a Ray worker, set the niceness of every thread of this process to `nice`; returns the niceness now.

    Linux keeps a niceness per thread and `setpriority(PRIO_PROCESS, 0, ...)` sets only the caller's, so each
    thread already running (Ray's, gRPC's) is set; threads started later inherit their creator's. Raising it
    always works; lowering it needs CAP_SYS_NICE or a RLIMIT_NICE that allows it, else it stays (one warning).
    Outside a Ray worker nothing changes: a test that builds an actor in its own process would otherwise run, and
    start every later process (a learner included), at the actors' niceness.
    """
    if not in_ray_worker():
        return os.getpriority(os.PRIO_PROCESS, 0)
    tasks = Path("/proc/self/task")
    refused = False
    for tid in ([int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except PermissionError:
                refused = True
    now = os.getpriority(os.PRIO_PROCESS, 0)
    if refused:
        log.warning("process %d may not lower its niceness to %d (it stays %d): start Ray with RAY_worker_niceness=0 "
                    "(`ray start` on a cluster) so that its processes start at 0", os.getpid(), nice, now)
    return now
