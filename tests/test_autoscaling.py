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

from deploy.tools.audit import audit
from replay_service.server import free_port

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]
CPUS_PER_NODE = 2
ACTORS = 3
IDLE_MINUTES = 0.25
LENGTH = 4000
LOSE_LENGTH = 10_000
"""The run that loses an actor node is longer: after the kill the node must be declared dead (3 s of failed
health checks), the autoscaler must launch a replacement and the actor's new process must start writing, which
took 25 s here, 47 s into a 12 000-step run of 123 s (2026-12-03, printed by the test); a CI run at 4 000 steps
ended before that with two actors doing the work."""


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


def _raylets(gcs: str) -> dict[int, list[str]]:
    """The raylets of the cluster whose GCS is at `gcs` (host:port): other Rays on this machine (a training's
    private one, beside which `make test` runs this test) are not its nodes."""
    return {pid: cmd for pid, cmd in _processes().items()
            if cmd and cmd[0].endswith("raylet") and f"--gcs-address={gcs}" in cmd and alive(pid)}


def nodes_by_type(gcs: str) -> dict[str, list[tuple[int, str]]]:
    """The cluster's nodes as they run: raylet pid and node id by node type. The fake provider starts each
    node's raylet with its type and id in the environment (the head's has neither)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for pid in _raylets(gcs):
        try:
            env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in kv)
        except OSError:
            continue
        out.setdefault(env.get("RAY_NODE_TYPE_NAME", "head"), []).append((pid, env.get("RAY_OVERRIDE_NODE_ID_FOR_TESTING", "")))
    return out


class FakeCluster:
    """`ray start --head --block` with the fake provider's autoscaler; its nodes, and teardown of all of it."""

    def __init__(self, config: dict[str, Any], tmp: Path) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="ra", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
        self.port = free_port()
        from ray._private.services import get_node_ip_address

        self.ip = get_node_ip_address()
        config["provider"]["gcs_address"] = f"{self.ip}:{self.port}"
        path = tmp / "autoscaling.json"
        path.write_text(json.dumps(config))
        head = config["available_node_types"]["ray.head.default"]["resources"]
        # Token auth off for this throwaway cluster (its nodes inherit the head's environment): the YAMLs' node
        # types are what is under test, not their authentication (tests/test_cluster.py covers that path).
        # A lost node is noticed within seconds rather than Ray's default half minute (GCS health checks, the
        # autoscaler's heartbeat timeout), so the test sees its replacement during a short run.
        self.env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_ADDRESS="",
                        RAY_AUTH_MODE="disabled", AUTOSCALER_HEARTBEAT_TIMEOUT_S="8",
                        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={self.port}",
             f"--autoscaling-config={path}", f"--num-cpus={head['CPU']}", f"--temp-dir={self.temp}",
             f"--dashboard-agent-listen-port={free_port()}",
             "--include-dashboard=false", "--disable-usage-stats",
             '--system-config={"health_check_period_ms": 1000, "health_check_failure_threshold": 3}'],
            stdout=(tmp / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        self.address = f"{self.ip}:{self.port}"

    def shutdown(self) -> list[str]:
        """Stop the head (and with --block, what it started), then anything left of the cluster; returns what
        was still alive before that last sweep."""
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


def _train(cluster: FakeCluster, tmp: Path, run_dir: Path, length: int) -> subprocess.Popen:
    env = dict(cluster.env, WANDB_MODE="offline", PYTHONUNBUFFERED="1", RAY_ADDRESS=cluster.address, CLUSTER="")
    env.pop("RAY_FAKE_CLUSTER")
    env.setdefault("MUJOCO_GL", "egl")
    args = (f"--run.dir {run_dir} --run.env-steps {length} --run.eval-episodes 0 --replay.audit "
            "--replay.samples-per-insert 0.5 --actors.max-restarts 10 --learner.node-wait-s 120")
    return subprocess.Popen(["make", "-s", "train", "PRESET=debug", "TASK=cheetah", f"ACTORS={ACTORS}", f"ARGS={args}"],
                            cwd=REPO, env=env, stdout=(tmp / "train.log").open("w"), stderr=subprocess.STDOUT)


@pytest.mark.parametrize("yaml_name", ["cluster.yaml", "cluster-gcp.yaml"])
def test_the_autoscaler_adds_and_removes_the_yamls_actor_nodes(tmp_path: Path, yaml_name: str) -> None:
    config = fake_cluster_config(REPO / "deploy" / yaml_name)
    types = config["available_node_types"]
    actor_type = next(name for name, t in types.items() if "actor" in t["resources"])
    learner_type = next(name for name, t in types.items() if "learner" in t["resources"])
    per_node = types[actor_type]["resources"]["actor"]
    needed = math.ceil(ACTORS / per_node)
    assert needed <= types[actor_type]["max_workers"]
    lose_a_node = yaml_name == "cluster.yaml"
    started = time.monotonic()
    cluster = FakeCluster(config, tmp_path)
    gcs = cluster.address
    try:
        deadline = time.monotonic() + 120
        while len(nodes_by_type(gcs).get(learner_type, [])) != 1:  # min_workers: the learner node comes with the cluster
            assert time.monotonic() < deadline and cluster.proc.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(1)
        up_s = time.monotonic() - started
        run_dir = tmp_path / "run"
        length = LOSE_LENGTH if lose_a_node else LENGTH
        proc = _train(cluster, tmp_path, run_dir, length)
        most_actor_nodes, learner_ids, actor_ids, lost = 0, set(), set(), ""
        killed_at = rewritten_at = None
        deadline = time.monotonic() + 420
        while proc.poll() is None and time.monotonic() < deadline:
            nodes = nodes_by_type(gcs)
            most_actor_nodes = max(most_actor_nodes, len(nodes.get(actor_type, [])))
            learner_ids |= {node_id for _, node_id in nodes.get(learner_type, [])}
            actor_ids |= {node_id for _, node_id in nodes.get(actor_type, [])}
            logs = list((run_dir / "audit").glob("*.log")) if (run_dir / "audit").is_dir() else []
            if lose_a_node and not lost and len(nodes.get(actor_type, [])) == needed and len(logs) >= ACTORS:
                pid, lost = nodes[actor_type][-1]
                os.kill(pid, signal.SIGKILL)  # the node's raylet: its workers die with it, as with a reclaimed spot VM
                killed_at = time.monotonic()
            if killed_at and not rewritten_at and len(logs) > ACTORS:  # a new life of a lost actor writes
                rewritten_at = time.monotonic()
            time.sleep(1)
        if proc.poll() is None:
            proc.kill()
        text = (tmp_path / "train.log").read_text()
        assert proc.wait() == 0, text[-5000:]
        summary = summary_of(text)
        run_s = time.monotonic() - started - up_s
        # Exactly the actor nodes the actors need (a lost one replaced, never more at once), one learner node,
        # every process on a node of its type.
        assert most_actor_nodes == needed, (most_actor_nodes, needed)
        assert len(learner_ids) == 1 and summary["learner_node_id"] in learner_ids, (learner_ids, summary)
        assert summary["actor_node_ids"] and set(summary["actor_node_ids"]) <= actor_ids, (summary, actor_ids)
        assert summary["env_steps"] >= length and not summary["interrupted"]
        if lose_a_node:
            assert lost, "no actor node was lost: the run ended first"
            events = "\n".join(line for line in text.splitlines() if "actor" in line and ("WARNING" in line or "ERROR" in line))
            timing = (f"killed {killed_at - started - up_s:.0f} s into the run, restarted actor writing "
                      f"{rewritten_at - killed_at:.0f} s later" if rewritten_at else "no restarted actor wrote")
            assert summary["actor_restarts"] >= 1 and len(actor_ids) > needed, (timing, summary, actor_ids, events)
            report = audit(run_dir)
            assert report.ok and report.checked_rows == report.acknowledged_rows, report
        # Idle actor nodes go; the learner node (min_workers 1) stays.
        deadline = time.monotonic() + IDLE_MINUTES * 60 + 90
        while nodes_by_type(gcs).get(actor_type) and time.monotonic() < deadline:
            time.sleep(1)
        nodes = nodes_by_type(gcs)
        assert not nodes.get(actor_type), "the idle actor nodes were not terminated"
        assert len(nodes.get(learner_type, [])) == 1, nodes
        idle_s = time.monotonic() - started - up_s - run_s
    finally:
        leftover = cluster.shutdown()
    assert not leftover, f"processes of the cluster outlived it: {leftover}"
    print(f"\n{yaml_name}: cluster up in {up_s:.0f} s, {ACTORS} actors on {needed} actor nodes of {per_node}, run "
          f"{run_s:.0f} s{f' with an actor node lost ({timing})' if lose_a_node else ''}, idle nodes gone {idle_s:.0f} s later")
