"""Autoscaling with the cloud YAMLs' own node types (marker `cluster`), on Ray's fake multi-node provider.

Ray's fake provider (what `ray.cluster_utils.AutoscalingCluster` drives; its example config is not in the
wheel, so the test writes the whole config itself) runs the real autoscaler (monitor) against "nodes" that
are raylets on this machine. The node types are read from deploy/cluster.yaml and deploy/cluster-gcp.yaml:
their resources (CPU counts scaled to 2 per node to fit 2 cores, the `actor` count scaled with them),
min_workers, max_workers and the global max_workers; idle_timeout_minutes is shortened. `ACTORS=3 make train
PRESET=debug` then runs against the head as a user's driver on a cloud head would, and the test asserts:
the autoscaler starts exactly the actor nodes 3 actors need at the node type's `actor` count (never more) and
exactly one learner node; every actor runs on an actor node and the learner on the learner node; once the
run is over the idle actor nodes are terminated and the learner node (min_workers 1) stays. For
deploy/cluster.yaml one actor node is also lost mid-run (its raylet killed): its actors are restarted on a
node the autoscaler brings back, no acknowledged step is lost (the writers' audit records against the
replay), and the run finishes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from process_tools import alive, cmdline, summary_of

from deploy.audit import audit
from replay_service.server import free_port

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]
CPUS_PER_NODE = 2
ACTORS = 3
IDLE_MINUTES = 0.25
LENGTH = 2400


def fake_cluster_config(yaml_path: Path) -> dict[str, Any]:
    """The YAML's node types for Ray's fake provider: CPUs scaled to CPUS_PER_NODE, `actor` with them."""
    raw = yaml.safe_load(yaml_path.read_text())
    types = raw["available_node_types"]

    def scaled(resources: dict[str, float]) -> dict[str, float]:
        factor = CPUS_PER_NODE / resources["CPU"]
        out = {**resources, "CPU": CPUS_PER_NODE}
        if "actor" in resources:
            out["actor"] = max(1, round(resources["actor"] * factor))
        return out

    nodes: dict[str, Any] = {"ray.head.default": {"resources": scaled(types[raw["head_node_type"]]["resources"]),
                                                  "node_config": {}, "max_workers": 0}}
    for name, spec in types.items():
        if name != raw["head_node_type"]:
            nodes[name] = {"resources": scaled(spec["resources"]), "node_config": {},
                           "min_workers": spec.get("min_workers", 0), "max_workers": spec["max_workers"]}
    return {"cluster_name": f"fake-{yaml_path.stem}", "max_workers": raw["max_workers"],
            "upscaling_speed": raw.get("upscaling_speed", 1.0), "idle_timeout_minutes": IDLE_MINUTES,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},
            "available_node_types": nodes, "head_node_type": "ray.head.default", "auth": {}, "docker": {},
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": []}


def _processes() -> dict[int, list[str]]:
    return {int(p.name): cmdline(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}


def _raylets() -> dict[int, list[str]]:
    return {pid: cmd for pid, cmd in _processes().items() if cmd and cmd[0].endswith("raylet") and alive(pid)}


class FakeCluster:
    """`ray start --head --block` with the fake provider's autoscaler; its nodes, and teardown of all of it."""

    def __init__(self, config: dict[str, Any], tmp: Path) -> None:
        assert not _raylets(), "another Ray runs on this machine; this test starts and stops a cluster of its own"
        self.temp = Path(tempfile.mkdtemp(prefix="ra", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
        self.port = free_port()
        from ray._private.services import get_node_ip_address

        self.ip = get_node_ip_address()
        config["provider"]["gcs_address"] = f"{self.ip}:{self.port}"
        path = tmp / "autoscaling.json"
        path.write_text(json.dumps(config))
        head = config["available_node_types"]["ray.head.default"]["resources"]
        self.env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_ADDRESS="",
                        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={self.port}",
             f"--autoscaling-config={path}", f"--num-cpus={head['CPU']}", f"--temp-dir={self.temp}",
             "--include-dashboard=false", "--disable-usage-stats"],
            stdout=(tmp / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        self.address = f"{self.ip}:{self.port}"

    def nodes(self) -> list[dict[str, Any]]:
        """Alive nodes as the GCS sees them (this test process connects as a second driver once it is up)."""
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, logging_level="ERROR", log_to_driver=False, namespace="autoscaling-test")
        return [n for n in ray.nodes() if n["Alive"]]

    def count(self, resource: str) -> tuple[int, list[str]]:
        ids = [n["NodeID"] for n in self.nodes() if n["Resources"].get(resource, 0) > 0]
        return len(ids), ids

    def shutdown(self) -> list[str]:
        """Stop the head (and with --block, what it started), then anything left of the cluster; returns what
        was still alive before that last sweep."""
        import ray

        ray.shutdown()
        session = os.getsid(self.proc.pid) if self.proc.poll() is None else self.proc.pid
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (left := self._left(session)):
            time.sleep(0.5)
        left = self._left(session)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return [" ".join(cmd)[:120] for pid, cmd in _processes().items() if pid in left]

    def _left(self, session: int) -> list[int]:
        mine = []
        for pid, cmd in _processes().items():
            try:
                same_session = os.getsid(pid) == session
            except OSError:
                continue
            if alive(pid) and (same_session or any(str(self.temp) in part for part in cmd)):
                mine.append(pid)
        return mine


def _train(cluster: FakeCluster, tmp: Path, run_dir: Path) -> subprocess.Popen:
    env = dict(cluster.env, WANDB_MODE="offline", PYTHONUNBUFFERED="1", RAY_ADDRESS=cluster.address, CLUSTER="")
    env.pop("RAY_FAKE_CLUSTER")
    env.setdefault("MUJOCO_GL", "egl")
    args = (f"--run.dir {run_dir} --run.env-steps {LENGTH} --run.eval-episodes 0 --replay.audit "
            "--replay.samples-per-insert 0.5 --actors.max-restarts 10 --learner.node-wait-s 120")
    return subprocess.Popen(["make", "-s", "train", "PRESET=debug", "TASK=cheetah", f"ACTORS={ACTORS}", f"ARGS={args}"],
                            cwd=REPO, env=env, stdout=(tmp / "train.log").open("w"), stderr=subprocess.STDOUT)


@pytest.mark.parametrize("yaml_name", ["cluster.yaml", "cluster-gcp.yaml"])
def test_the_autoscaler_adds_and_removes_the_yamls_actor_nodes(tmp_path: Path, yaml_name: str) -> None:
    config = fake_cluster_config(REPO / "deploy" / yaml_name)
    actor_type = next(t for t in config["available_node_types"].values() if "actor" in t["resources"])
    per_node = actor_type["resources"]["actor"]
    needed = math.ceil(ACTORS / per_node)
    assert needed <= actor_type["max_workers"]
    lose_a_node = yaml_name == "cluster.yaml"
    started = time.monotonic()
    cluster = FakeCluster(config, tmp_path)
    leftover: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while True:  # min_workers: the learner node comes up with the cluster
            try:
                if cluster.count("learner")[0] == 1:
                    break
            except (ConnectionError, RuntimeError, TimeoutError):
                pass  # the head is not up yet
            assert time.monotonic() < deadline and cluster.proc.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(1)
        up_s = time.monotonic() - started
        run_dir = tmp_path / "run"
        proc = _train(cluster, tmp_path, run_dir)
        most_actor_nodes, learner_nodes, lost = 0, set(), None
        deadline = time.monotonic() + 420
        while proc.poll() is None and time.monotonic() < deadline:
            nodes = cluster.nodes()
            actor_nodes = [n for n in nodes if n["Resources"].get("actor")]
            most_actor_nodes = max(most_actor_nodes, len(actor_nodes))
            learner_nodes |= {n["NodeID"] for n in nodes if n["Resources"].get("learner")}
            inserted = sum(1 for _ in (run_dir / "audit").glob("*.log")) if (run_dir / "audit").is_dir() else 0
            if lose_a_node and lost is None and len(actor_nodes) == needed and inserted >= ACTORS:
                lost = _kill_a_node(actor_nodes[-1])
            time.sleep(2)
        if proc.poll() is None:
            proc.kill()
        text = (tmp_path / "train.log").read_text()
        assert proc.wait() == 0, text[-5000:]
        summary = summary_of(text)
        run_s = time.monotonic() - started - up_s
        # Exactly the actor nodes the actors need, one learner node, everything in its place.
        assert most_actor_nodes == needed, (most_actor_nodes, needed)
        assert len(learner_nodes) == 1 and summary["learner_node_id"] in learner_nodes, (learner_nodes, summary)
        actor_ids = {n["NodeID"] for n in cluster.nodes() if n["Resources"].get("actor")}
        assert set(summary["actor_node_ids"]) <= actor_ids | ({lost} if lost else set()), (summary, actor_ids)
        assert summary["learner_node_id"] not in summary["actor_node_ids"]
        assert summary["env_steps"] >= LENGTH and not summary["interrupted"]
        if lose_a_node:
            assert lost is not None, "no actor node was lost: the run ended first"
            assert summary["actor_restarts"] >= 1, summary
            report = audit(run_dir)
            assert report.ok and report.checked_rows == report.acknowledged_rows, report
        # Idle actor nodes go; the learner node (min_workers 1) stays.
        deadline = time.monotonic() + IDLE_MINUTES * 60 + 90
        while cluster.count("actor")[0] and time.monotonic() < deadline:
            time.sleep(2)
        assert cluster.count("actor")[0] == 0, "the idle actor nodes were not terminated"
        assert cluster.count("learner")[0] == 1
        idle_s = time.monotonic() - started - up_s - run_s
    finally:
        leftover = cluster.shutdown()
    assert not leftover, f"processes of the cluster outlived it: {leftover}"
    print(f"\n{yaml_name}: cluster up in {up_s:.0f} s, {ACTORS} actors on {needed} actor nodes of {per_node}, run "
          f"{run_s:.0f} s{' with an actor node lost' if lose_a_node else ''}, idle nodes gone {idle_s:.0f} s later")


def _kill_a_node(node: dict[str, Any]) -> str:
    """SIGKILL the raylet of `node` (its workers die with it), as a reclaimed spot machine would vanish."""
    for pid, cmd in _raylets().items():
        if any(node["NodeID"] in part for part in cmd):
            os.kill(pid, signal.SIGKILL)
            return node["NodeID"]
    raise AssertionError(f"no raylet for node {node['NodeID']}: {list(_raylets().values())[:3]}")
