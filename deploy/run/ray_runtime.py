"""Where a run's processes live: join a Ray cluster or start a private local one; what it offers.

The only place that decides between a cluster and this machine (deploy/run/launch.py asks it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from common.config import Config, ConfigError
from replay_service import connect
from replay_service.schema import STATE
from replay_service.server import free_port

log = logging.getLogger(__name__)


RENDER_PROCESS_ENV = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}
"""runtime_env env_vars for Ray processes that render but ask for no GPU (actors, the evaluator): Ray then leaves
CUDA_VISIBLE_DEVICES alone, so NVIDIA's EGL sees the GPU. Their policies run on the CPU whatever they see."""


def joins_cluster() -> bool:
    """Whether this run will join a Ray cluster (RAY_ADDRESS names one; see `connect_ray`)."""
    address = os.environ.get("RAY_ADDRESS", "")
    return bool(address) and address != "local"


EVALUATOR_CPUS = 1
"""Ray CPUs the evaluator asks for."""
OVERHEAD_CPUS = EVALUATOR_CPUS + 1
"""Cores a run needs besides its actors and learner: the evaluator, and Redis with the driver (which Ray does not
schedule)."""
CPUS_PER_ACTOR_WITH_CPU_LEARNER = 8
"""With a CPU learner, `actors.num: auto` starts one actor per this many cores: a learner-bound run inserts one
agent step per update, a CPU learner makes 20-60 updates/s and one actor ~180 agent steps/s (bench/results)."""


def learner_on_gpu(cfg: Config) -> bool:
    """Whether a learner on this machine would run on CUDA (`learner.device` and what torch sees)."""
    import torch

    return cfg.learner.device != "cpu" and torch.cuda.is_available()


def resolve_processes(cfg: Config, cluster: bool | None = None, cpus: int | None = None,
                      gpu: bool | None = None) -> Config:
    """`actors.num` and `learner.cpus` made numbers where they are auto (numbers stay as they are).

    On a Ray cluster: `actors.cluster_num` actors (the autoscaler adds nodes for them) and a 1-CPU learner. On
    this machine (`cpus` cores; `gpu`: the learner runs on CUDA):
    - CUDA learner: 1 CPU for it (one Python thread launching kernels), and every other core but the evaluator's
      and Redis's steps environments: a GPU learner wants many actors.
    - CPU learner: one actor per CPUS_PER_ACTOR_WITH_CPU_LEARNER cores (at least one), and for the learner's
      threads every core but the actors' and one for the rest of the run (Redis, the driver, W&B, Ray's own
      processes; at least one thread). OpenMP's threads wait for each other, so a learner thread preempted by
      any of those stalls the update: measured on 2 cores (bench/results/vm-2026-12-06-whole-run*.json), a
      whole `cpu`-preset run of the code before this setting (one thread) made 21.6 updates/s, its learner's
      rate alone, and one of this code with two threads 16.2, whose learner alone makes 28.1.
    """
    cluster = joins_cluster() if cluster is None else cluster
    cores = cpus or len(os.sched_getaffinity(0))
    gpu = learner_on_gpu(cfg) if gpu is None else gpu

    def given(actors: int) -> int:
        return actors if cfg.actors.num == "auto" else cfg.actors.num

    if cluster:
        num, learner_cpus = given(cfg.actors.cluster_num), 1
    elif gpu:
        learner_cpus = 1
        num = given(max(1, cores - learner_cpus - OVERHEAD_CPUS))
    else:
        num = given(max(1, cores // CPUS_PER_ACTOR_WITH_CPU_LEARNER))
        learner_cpus = max(1, cores - math.ceil(num * cfg.actors.num_cpus) - 1)
    threads = learner_cpus if cfg.learner.cpus == "auto" else cfg.learner.cpus
    return dataclasses.replace(cfg, actors=dataclasses.replace(cfg.actors, num=num),
                               learner=dataclasses.replace(cfg.learner, cpus=threads))


def describe_processes(cfg: Config, cores: int | None = None, nice: int | None = None) -> str:
    """The run's first lines' account of its processes: the learner's threads and niceness (this process's, which
    a local Ray's raylet inherits: common/priority.node_niceness) and the actors, on how many cores."""
    cores = cores or len(os.sched_getaffinity(0))
    nice = os.getpriority(os.PRIO_PROCESS, 0) if nice is None else nice
    return (f"learner: {cfg.learner.cpus} thread(s) and Ray CPU(s), niceness {nice}; {cfg.actors.num} actor(s) of "
            f"{cfg.actors.envs_per_actor} env(s) and the evaluator at niceness {cfg.actors.nice}; {cores} cores here")


def ray_cpus(cfg: Config) -> float:
    """What a run asks of Ray: its actors, its learner and its evaluator (numbers, after `resolve_processes`)."""
    learner = cfg.learner.cpus if isinstance(cfg.learner.cpus, int) else 1
    return cfg.actors.num * cfg.actors.num_cpus + learner + EVALUATOR_CPUS


RAY_DIR_PREFIX = "slac-ray-"
"""A private Ray's directory (its logs and sockets): `<temp dir>/slac-ray-<random>`, one per run."""
_SHORT_TEMP_ROOT = 24
"""Ray's sockets live at `<its dir>/session_<date>_<time>_<pid>/sockets/plasma_store`, about 80 bytes below the
temp root with our directory's name, and a unix socket's path may not exceed 107 bytes: a temp root longer than
this (a deep $TMPDIR) is replaced by /tmp."""


def private_ray_dir() -> str:
    """A new directory for one run's private Ray, short enough for its sockets' paths.

    Ray's default, /tmp/ray, is shared by every Ray on the machine; a directory of the run's own names all of its
    Ray processes: their logs are there, and a process still holding a file there outlived the run."""
    root = tempfile.gettempdir()
    return tempfile.mkdtemp(prefix=RAY_DIR_PREFIX, dir=root if len(root) <= _SHORT_TEMP_ROOT else "/tmp")


def connect_ray(cfg: Config) -> str | None:
    """Join a Ray cluster only when asked to, else start a private local Ray in a directory of its own
    (`private_ray_dir`, logged); returns None for a cluster, else that directory.

    Asked to means RAY_ADDRESS names one: `host:port`, `auto` (a cluster started on this machine with
    `ray start --head`), or what Ray sets for a driver it runs as a Ray job (`make train` on a `make
    cluster-up` cluster submits one). Without it, or with RAY_ADDRESS=local, every run starts its own Ray,
    whatever other runs on the machine are doing: a run never joins another run's private Ray (ray.init
    with address "auto" would, through /tmp/ray/ray_current_cluster) and waits for a learner node that
    never comes.
    """
    if joins_cluster():
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return None
    # Logical CPUs may exceed the physical ones: the actors and the evaluator run at a lower priority and mostly
    # wait on the learner, which may take every core (`resolve_processes`); the tests run them all on 2 cores.
    # Ray starts its workers at niceness 15 unless told otherwise: the learner must run at 0, above the actors and
    # the evaluator, which raise theirs to `actors.nice` (common/priority.py).
    # Ray starts a dashboard process even without the dashboard (its job and state APIs): on a free port, so that a
    # private run never holds 8265, the port a `ray start --head` or `ray up` on this machine needs.
    temp_dir = private_ray_dir()
    log.info("this run's private Ray keeps its logs and sockets in %s", temp_dir)
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(ray_cpus(cfg))), include_dashboard=False,
             dashboard_port=free_port(), log_to_driver=True, configure_logging=False,
             _system_config={"worker_niceness": 0}, _temp_dir=temp_dir)
    return temp_dir


def replay_inserts(url: str, cfg: Config) -> int:
    """Transitions ever inserted into the replay at `url` (its shared counter)."""
    client = connect(url, cfg.replay.connect_timeout_s)
    try:
        return int(client.hget(STATE, "inserted") or 0)
    finally:
        client.close()


def ray_restarts(handle: Any) -> int | None:
    """How often Ray has restarted the actor behind `handle` (Ray's own count), or None where it cannot be read.

    Read from the actor table of Ray's control store (about a millisecond). Ray's public state API
    (ray.util.state) asks the dashboard, and refuses to choose when several Ray instances run on one machine, as
    runs side by side do; the table is an internal of Ray, so a Ray that changes it makes the count unavailable
    (None), never the run fail."""
    try:
        return int(ray._private.state.actors(actor_id=handle._actor_id.hex())["NumRestarts"])
    except Exception:  # noqa: BLE001 - see the docstring: an internal API, read best effort
        return None


def gpu_available() -> bool:
    """Whether the Ray cluster offers a whole GPU for the learner."""
    return ray.cluster_resources().get("GPU", 0) >= 1


@dataclass(frozen=True)
class Placement:
    """The Ray options that put the learner and the actors on their nodes."""

    learner: dict[str, Any] = field(default_factory=dict)
    actors: dict[str, Any] = field(default_factory=dict)
    learner_gpu: bool = False


def _nodes_with(resource: str) -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(resource, 0) > 0]


def placement(cfg: Config, cluster: bool, poll_s: float = 2.0) -> Placement:
    """Where the learner and the actors run.

    On a private local Ray everything shares this machine; the learner takes the GPU if there is one. On a
    cluster the learner asks for one unit of `learner.node_resource` (the GPU node type of deploy/cluster*.yaml
    advertises it) and uses that node's GPU; the driver waits for that node to join, since a cloud GPU node
    boots for minutes. Each actor asks for one unit of `actors.node_resource`: the autoscaler adds actor nodes
    for them, so none need to exist yet.
    """
    wants_gpu = cfg.learner.device != "cpu"
    learner_cpus = cfg.learner.cpus if isinstance(cfg.learner.cpus, int) else 1
    resource = cfg.learner.node_resource if cluster else ""
    if not resource:
        use_gpu = wants_gpu and gpu_available()
        learner: dict[str, Any] = {"num_gpus": 1 if use_gpu else 0, "num_cpus": learner_cpus}
    else:
        deadline, said = time.monotonic() + cfg.learner.node_wait_s, False
        while not (nodes := _nodes_with(resource)):
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"no node of the Ray cluster offers the `{resource}` resource after {cfg.learner.node_wait_s:.0f} s, "
                    "so the learner has nowhere to run. With deploy/cluster*.yaml the autoscaler starts the GPU node "
                    "that advertises it (see `ray status` and the autoscaler log: `ray exec <yaml> 'tail -n 100 "
                    "/tmp/ray/session_latest/logs/monitor.*'`); on a cluster of your own start that node with "
                    f"`ray start --resources '{{\"{resource}\": 1}}'`, or pass --learner.node-resource '' to put the "
                    "learner anywhere.")
            if not said:
                log.warning("waiting up to %.0f s for a node with the `%s` resource to join the cluster (a cloud GPU "
                            "node takes a few minutes to boot and set up). A cluster of your own without an autoscaler "
                            "never adds one: stop and pass --learner.node-resource '' --actors.node-resource '' to "
                            "place the learner and actors on any node", cfg.learner.node_wait_s, resource)
                said = True
            time.sleep(poll_s)
        use_gpu = wants_gpu and nodes[0]["Resources"].get("GPU", 0) >= 1
        learner = {"num_gpus": 1 if use_gpu else 0, "num_cpus": learner_cpus, "resources": {resource: 1}}
    actors: dict[str, Any] = {"num_cpus": cfg.actors.num_cpus}
    if cluster and cfg.actors.node_resource:
        actors["resources"] = {cfg.actors.node_resource: 1}
        if not _nodes_with(cfg.actors.node_resource):
            log.warning("no node offers the `%s` resource yet: the actors wait for the autoscaler to add actor "
                        "nodes (deploy/cluster*.yaml). On a cluster without an autoscaler, start actor nodes with "
                        "`ray start --resources '{\"%s\": <CPUs>}'` or pass --actors.node-resource ''.",
                        cfg.actors.node_resource, cfg.actors.node_resource)
    if not use_gpu and wants_gpu:
        log.warning("no GPU %s: the learner runs on CPU", "on the learner's node" if resource else "in the Ray cluster")
    return Placement(learner=learner, actors=actors, learner_gpu=use_gpu)
