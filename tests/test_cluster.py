"""The cluster path, proved locally (marker `cluster`): no cloud here, but real Ray nodes and a real job server.

- A `ray.cluster_utils.Cluster` of a head and two workers advertising the custom resources of
  deploy/cluster*.yaml (`learner` on one, `actor` on the other): a debug run through the real entry point
  joins it as on a cloud head, puts the learner and the actors on their nodes, hands every process the
  embedded replay's address on the head with the `replay` ACL user, and finishes with the expected updates.
- A local Ray head with its job server: `make train RAY_ADDRESS=http://...` submits a debug run as a Ray job,
  and `make logs` follows it to the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from process_tools import summary_of
from replay_fixtures import listening_addresses, processes_whose_command_line_contains

from common.config import parse_cli
from replay_service.server import free_port

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]
RUN = ["debug", "--run.task", "cheetah", "--actors.num", "2", "--run.eval-episodes", "0",
       "--replay.samples-per-insert", "0.25", "--run.env-steps", "1600"]


def _expected_updates(summary: dict[str, Any]) -> tuple[float, float]:
    cfg = parse_cli(["debug", "--replay.samples-per-insert", "0.25"])
    min_size = max(cfg.replay.min_size, cfg.initial_collection_size)
    expected = (summary["replay"]["inserted"] - min_size) * cfg.replay.samples_per_insert
    return expected, cfg.replay.spi_tolerance + 2 * cfg.replay.flush_every


def _pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_learner_and_actors_land_on_their_nodes_and_reach_the_replay_on_the_head(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    started = time.monotonic()
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        learner_node = cluster.add_node(num_cpus=1, resources={"learner": 1})
        actor_node = cluster.add_node(num_cpus=2, resources={"actor": 2})
        cluster.wait_for_nodes()
        # A known replay password (as a user sets it for all nodes) so that the test can look for it.
        password = "slac-test-" + os.urandom(8).hex()
        env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", RAY_ADDRESS=cluster.address,
                   SLAC_REPLAY_PASSWORD=password)
        env.setdefault("MUJOCO_GL", "egl")
        head_ip = cluster.head_node.node_ip_address
        out, err = tmp_path / "stdout", tmp_path / "stderr"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "deploy.train", *RUN, "--run.dir", str(tmp_path / "run")],
                                    cwd=REPO, env=env, stdout=stdout, stderr=stderr, text=True)
            in_ps: list[str] = []
            listening: set[str] = set()
            deadline = time.monotonic() + 600
            while proc.poll() is None and time.monotonic() < deadline:
                in_ps += processes_whose_command_line_contains(password)  # what `ps` shows while it runs
                for pid in _pids_named("redis-server"):
                    listening |= listening_addresses(pid)
                time.sleep(0.5)
            if proc.poll() is None:
                proc.kill()
        stdout_text, stderr_text = out.read_text(), err.read_text()
        assert proc.wait() == 0, f"{stdout_text[-3000:]}\n{stderr_text[-5000:]}"
        summary = summary_of(stdout_text)
    finally:
        cluster.shutdown()
    # Security: the replay's Redis listens on the head's private address only, and its password is never on
    # a command line, in the run's output, in any file of the run (logs, config, W&B, checkpoints, AOF).
    port = re.search(r":(\d+)/0$", summary["replay_url"]).group(1)
    ours = {a for a in listening if a.endswith(f":{port}")}  # other redis-servers on this machine aside
    assert ours == {f"{head_ip}:{port}"}, (listening, head_ip, port)
    assert not in_ps, in_ps
    assert password not in stdout_text and password not in stderr_text
    leaked = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert not leaked, leaked
    wall = time.monotonic() - started
    assert summary["learner_node_id"] == learner_node.node_id, summary
    assert summary["actor_node_ids"] == [actor_node.node_id], (summary["actor_node_ids"], actor_node.node_id)
    # Every process got the head's address and the ACL user, never the admin (the password is redacted).
    assert re.fullmatch(rf"redis://replay:\*+@{re.escape(head_ip)}:\d+/0", summary["replay_url"]), summary["replay_url"]
    assert summary["env_steps"] >= 1600 and not summary["interrupted"]
    expected, slack = _expected_updates(summary)
    assert abs(summary["updates"] - expected) <= slack, (summary["updates"], expected)
    print(f"\nmulti-node run (head + learner node + actor node, debug preset, 1600 env steps): {wall:.0f} s wall "
          f"clock including the cluster's start")


@pytest.fixture(scope="module")
def job_server() -> Iterator[str]:
    """A local Ray head with its dashboard (the job server) on 127.0.0.1, as deploy/cluster*.yaml starts it."""
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    dashboard = free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # Its own agent port: the default (52365) is bound by whichever Ray the other lane runs (a debug run's private
    # one), and a head whose agent cannot bind answers every submission "No available agent" (a clean-clone run).
    proc = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={free_port()}", "--include-dashboard=true",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=4",
                             f"--dashboard-agent-listen-port={free_port()}",
                             '--resources={"learner": 1, "actor": 2}', f"--temp-dir={temp}", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            # Jobs run `python` from PATH: the venv's, as deploy/cluster*.yaml arrange on the nodes.
                            # No PYTHONPATH: a job's own modules must reach the nodes through its runtime env.
                            env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "RAY_ADDRESS": "",
                                 "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                    break
            except urllib.error.HTTPError:  # 401: up, and asking for Ray's token as it should
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the Ray head's job server did not start"
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # --block: the head stops its processes when told to
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_make_train_submits_a_ray_job_and_make_logs_follows_it(tmp_path: Path, job_server: str) -> None:
    """A task of the user's own (examples/custom_task, on PYTHONPATH here only): its module travels with the job."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, RAY_ADDRESS=job_server, SLAC_JOB_FILE=str(tmp_path / "job.json"), CLUSTER="",
               PYTHONPATH=str(REPO / "examples" / "custom_task"))
    env.setdefault("MUJOCO_GL", "egl")
    args = " ".join(RUN[3:] + ["--run.dir", str(run_dir)])
    submitted = subprocess.run(["make", "-s", "train", "PRESET=debug", "TASK=reach:make_env", f"ARGS={args}"], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = json.loads((tmp_path / "job.json").read_text())["job_id"]
    assert f"submitted job {job_id}" in submitted.stdout and "make logs" in submitted.stdout, submitted.stdout
    followed = subprocess.run(["make", "-s", "logs"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert followed.returncode == 0, followed.stdout[-4000:] + followed.stderr[-2000:]
    assert f"job {job_id}: SUCCEEDED" in followed.stdout, followed.stdout[-3000:]
    summary = summary_of(followed.stdout)
    assert json.loads((run_dir / "config.json").read_text())["task"]["env_id"] == "reach:make_env"
    assert summary["env_steps"] >= 1600 and summary["run_dir"] == str(run_dir) and Path(summary["checkpoint"]).exists()
    assert summary["replay_url"].startswith("redis://replay:"), summary["replay_url"]  # a job runs on the cluster
    # `make status`: the nodes by role (the fixture's one node advertises both), the job, its progress, W&B.
    shown = subprocess.run(["make", "-s", "status"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "nodes: 1 actor, 1 learner" and lines[1] == f"job {job_id}: SUCCEEDED", shown.stdout
    # The job's log ends with its final progress line: the run's length reached, in joint training.
    assert re.fullmatch(r"\[train\] env 1,[6-9]\d\d/1,600 \|.*", lines[2].strip()), shown.stdout
    assert lines[3].strip().startswith("W&B:"), shown.stdout


def test_make_stop_stops_a_job_with_a_checkpoint(tmp_path: Path, job_server: str) -> None:
    """`make stop`: Ray sends the driver SIGTERM and waits (RAY_JOB_STOP_WAIT_TIME_S from deploy/cluster/jobs.py) while
    it checkpoints and stops every process, as on a preempted machine."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, RAY_ADDRESS=job_server, SLAC_JOB_FILE=str(tmp_path / "job.json"), CLUSTER="")
    env.setdefault("MUJOCO_GL", "egl")
    args = " ".join(RUN[3:-2] + ["--run.env-steps", "1000000", "--run.dir", str(run_dir)])
    submitted = subprocess.run(["make", "-s", "train", "PRESET=debug", "TASK=cheetah", f"ARGS={args}"], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    deadline = time.monotonic() + 240
    while not list((run_dir / "checkpoints").glob("ckpt_*.pt")):  # in joint training: the first policy is out
        assert time.monotonic() < deadline, "the job never reached joint training"
        time.sleep(1)
    stopped = subprocess.run(["make", "-s", "stop"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0 and "stopping job" in stopped.stdout, stopped.stdout + stopped.stderr
    followed = subprocess.run(["make", "-s", "logs"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert "stopped by SIGTERM" in followed.stdout and "--run.resume" in followed.stdout, followed.stdout[-3000:]
    # W&B's service gets the SIGTERM too: at most a warning, never a traceback (its exit hook included).
    assert "Traceback" not in followed.stdout, followed.stdout[-3000:]
    summary = summary_of(followed.stdout)
    assert summary["interrupted"] and Path(summary["checkpoint"]).exists(), summary
    assert ": STOPPED" in followed.stdout.splitlines()[-1], followed.stdout[-500:]
