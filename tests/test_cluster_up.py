"""`ray up deploy/cluster-local.yaml` for real (marker `cluster`): two machines on this one, reached over SSH.

The head (127.0.0.2) and a worker (127.0.0.3) are real sshd servers in PID and mount namespaces of their own with
their own home (tests/ssh_hosts.py); this machine plays the user's laptop. Through the Makefile targets a user
types, the test runs `make cluster-up`, `make status`, `make train PRESET=debug`, `make logs`, a second job
stopped with `make stop`, and `make cluster-down`, and checks:
- `ray up` ran the shipped YAML's own file_mounts (the working tree and Ray's token), setup_commands (apt-get,
  `make setup` building the node's venv from PyPI) and start lines; the test's copy differs only in the
  addresses, the SSH user and key, the cluster's name, and (two Ray nodes sharing one network) in the start
  lines' ports and node addresses;
- the head advertises `learner` and the worker `actor` (the autoscaler on the head set the worker up), the
  learner runs on the head, the actors on the worker, the replay on the head's address;
- the job finishes with its summary in `make logs`; `make stop` leaves a final checkpoint;
- after `make cluster-down` no Ray or Redis process is left on either machine, and none of the test's sshd.
The machines share this machine's system (only /root and /tmp/ray are their own), so their setup's apt-get runs
on it: on a machine set up by `make setup` it adds python3-venv and upgrades the listed packages if newer
ones are out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from process_tools import summary_of, wait_for
from ssh_hosts import SshHost, ensure_sshd, keypair, pid_namespace, processes_in, ssh_config

from replay_service.server import stable_port

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]
HEAD, WORKER = "127.0.0.2", "127.0.0.3"
RUN = "--actors.num 2 --run.eval-episodes 0 --replay.samples-per-insert 0.25"


def cluster_copy(shipped: dict[str, Any], key: Path) -> dict[str, Any]:
    """deploy/cluster-local.yaml for the two test machines: what a user edits (addresses, auth), a name of its
    own (Ray keeps the local provider's state in /tmp/ray/cluster-<name>.state), and ports and node addresses on
    the start lines, which machines of their own would not need."""
    copy = json.loads(json.dumps(shipped))
    copy["cluster_name"] = "slac-dist-up-test"
    copy["provider"].update(head_ip=HEAD, worker_ips=[WORKER])
    copy["auth"] = {"ssh_user": "root", "ssh_private_key": str(key)}
    # Drawn now, bound minutes later (after the head's `make setup`): below the ephemeral range, where no other
    # process's connection or bind to port 0 (the other lane's Ray runs) can take them meanwhile.
    gcs, head_agent, worker_agent = _distinct_ports(3)

    def edit(commands: list[str], old: str, new: str) -> list[str]:
        hits = [c for c in commands if old in c]
        assert len(hits) == 1, f"the shipped start lines changed shape ({old!r} in {len(hits)} of them): {commands}"
        return [c.replace(old, new) for c in commands]

    copy["head_start_ray_commands"] = edit(
        shipped["head_start_ray_commands"], "--port=6379",
        f"--port={gcs} --node-ip-address={HEAD} --dashboard-agent-listen-port={head_agent}")
    copy["worker_start_ray_commands"] = edit(
        shipped["worker_start_ray_commands"], "--address=$RAY_HEAD_IP:6379",
        f"--address=$RAY_HEAD_IP:{gcs} --node-ip-address={WORKER} --dashboard-agent-listen-port={worker_agent}")
    return copy


def _distinct_ports(count: int) -> list[int]:
    """`count` different ports free on every address (Ray binds the machines' 127.0.0.2 and .3, and 0.0.0.0)."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(stable_port("0.0.0.0"))
    return sorted(ports)


class Laptop:
    """This machine as the user's: the Makefile targets, with ~/.ssh and ~/.ray bound to the test's (a mount
    namespace of their own), so the developer's keys, token and ssh config are neither used nor touched."""

    def __init__(self, tmp: Path, cluster_yaml: Path) -> None:
        self.ssh, self.ray = tmp / "laptop-ssh", tmp / "laptop-ray"
        self.ray.mkdir()
        ssh_config(self.ssh, [HEAD, WORKER])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
        # The cluster it brings up is remembered in the test's own file, not the checkout's .cluster, which every
        # other test's `make train` (running beside this one in `make test`) would read and submit to.
        self.env.update(CLUSTER=str(cluster_yaml), CLUSTER_FILE=str(tmp / ".cluster"),
                        SLAC_JOB_FILE=str(tmp / "job.json"), WANDB_MODE="offline")
        self.log = tmp / "laptop.log"

    def run(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        for home_dir in ("/root/.ssh", "/root/.ray"):
            Path(home_dir).mkdir(exist_ok=True)
        script = 'mount --bind "$1" /root/.ssh && mount --bind "$2" /root/.ray && shift 2 && exec "$@"'
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "laptop",
                               str(self.ssh), str(self.ray), *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        with self.log.open("a") as log:
            log.write(f"$ {' '.join(args)}  (exit {done.returncode})\n{done.stdout}\n{done.stderr}\n")
        return done

    def make(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        # `-o sysdeps`: this machine is set up already, and the machines' own apt-get (their setup_commands run
        # on this same system) may be mid-install, when `make setup`'s check for a library can miss it.
        done = self.run("make", "-s", "-o", "sysdeps", *args, timeout=timeout)
        assert done.returncode == 0 or not check, f"make {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        return done

    def node_ips(self) -> dict[str, str]:
        """Node id -> address, from the head's state API through the same tunnel `make status` uses."""
        code = ("import json; from deploy.cluster.jobs import job_server, use_token; use_token()\n"
                "from ray.util.state import list_nodes\n"
                "with job_server() as url: print(json.dumps({n.node_id: n.node_ip for n in list_nodes(address=url)}))")
        done = self.run(str(REPO / ".venv/bin/python"), "-c", code, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])


def on_node(path: str, node_home: Path) -> Path:
    """Where a path of the machines' home (`~/...` or /root/...) lies on this machine."""
    return Path(re.sub(r"^(~|/root)/", f"{node_home}/", path))


def ray_or_redis(processes: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(pid, cmd) for pid, cmd in processes if re.search(r"ray|redis", cmd)]


@pytest.fixture
def machines(tmp_path: Path):
    ensure_sshd()
    key = keypair(tmp_path / "id_ed25519")
    node_home = tmp_path / "node-home"  # one filesystem: the head and the worker share their home, as NFS would
    ssh_config(node_home / ".ssh", [HEAD, WORKER])
    hosts = [SshHost(name, address, node_home, tmp_path, Path(f"{key}.pub"))
             for name, address in (("head", HEAD), ("worker", WORKER))]
    try:
        for host in hosts:
            host.start()
        yield key, node_home, hosts
    finally:
        leftovers = [p for host in hosts for p in host.stop()]
        shutil.rmtree(node_home / "slac-dist/.venv", ignore_errors=True)  # the node's venv, ~1 GB
        assert not leftovers, f"processes outlived the test's machines: {leftovers}"


def autoscaler_account(head: SshHost, address: str) -> str:
    """What the autoscaler on the head said of the node at `address` (its NodeUpdater's steps and the setup and
    start commands' output, errors included), from the newest Ray session's monitor logs: a failed join explained."""
    sessions = sorted(head.ray_tmp.glob("session_2*"), key=lambda p: p.stat().st_mtime)
    if not sessions:
        return f"(no Ray session under {head.ray_tmp})"
    wanted = re.compile(rf"{re.escape(address)}|update-failed|Traceback|\berror\b", re.IGNORECASE)
    said: list[str] = []
    for name, keep in (("monitor.out", 25), ("monitor.err", 10), ("monitor.log", 10)):
        log = sessions[-1] / "logs" / name
        text = log.read_text(errors="replace").splitlines() if log.exists() else []
        said += [f"{name}: {line[:300]}" for line in text if name == "monitor.err" or wanted.search(line)][-keep:]
    return "the autoscaler's account:\n" + "\n".join(said) if said else "(the autoscaler said nothing of it)"


def tunnels(head: SshHost) -> list[str]:
    """`ray dashboard` tunnels still open to the head: this machine's ssh forwarding a port to it, and the
    command each keeps running there."""
    here = pid_namespace(os.getpid())
    local = [cmd for _, cmd in processes_in(here) if cmd.startswith("ssh ") and " -L " in cmd and f"@{HEAD}" in cmd]
    return local + [cmd for _, cmd in head.processes() if "sleep 86400" in cmd]


def test_ray_up_runs_the_shipped_yaml_and_make_train_runs_on_it(tmp_path: Path, machines) -> None:
    key, node_home, (head, worker) = machines
    shipped = yaml.safe_load((REPO / "deploy/cluster-local.yaml").read_text())
    cluster_yaml = tmp_path / "cluster-local.yaml"
    cluster_yaml.write_text(yaml.safe_dump(cluster_copy(shipped, key), sort_keys=False))
    laptop = Laptop(tmp_path, cluster_yaml)
    remembered = tmp_path / ".cluster"
    timings: dict[str, float] = {}
    up = False
    try:
        started = time.monotonic()
        brought_up = laptop.make("cluster-up", f"CLUSTER={cluster_yaml}", timeout=900)
        up = True
        timings["cluster-up"] = time.monotonic() - started
        assert "cluster up: `make train TASK=hopper` now runs there" in brought_up.stdout, brought_up.stdout[-2000:]
        assert remembered.read_text().strip() == str(cluster_yaml), "make cluster-up did not remember the cluster"
        # The YAML's own setup ran on the head: the working tree, the token, the venv `make setup` built there.
        assert (node_home / "slac-dist/Makefile").read_text() == (REPO / "Makefile").read_text()
        assert (node_home / ".ray/auth_token").read_text() == (laptop.ray / "auth_token").read_text()
        assert (node_home / "slac-dist/.venv/.installed").exists()
        assert 'slac-dist/.venv/bin:$PATH' in (node_home / ".bashrc").read_text()
        # The autoscaler on the head sets the worker up and starts it: `make status` shows both roles.
        deadline = time.monotonic() + 420
        while True:
            shown = laptop.make("status", timeout=120)
            if shown.stdout.startswith("nodes: 1 actor, 1 learner"):
                break
            assert time.monotonic() < deadline, \
                f"the worker never joined as an actor node: {shown.stdout}\n{autoscaler_account(head, WORKER)}"
            time.sleep(5)
        timings["worker joined"] = time.monotonic() - started
        assert [cmd for _, cmd in head.processes() if "raylet" in cmd], "no raylet on the head"
        assert [cmd for _, cmd in worker.processes() if "raylet" in cmd], "no raylet on the worker"

        # A job to its end: `make train`, then `make logs` follows it to its summary.
        started = time.monotonic()
        laptop.make("train", "PRESET=debug", "TASK=cheetah", f"ARGS={RUN} --run.env-steps 1600")
        followed = laptop.make("logs", timeout=600)
        timings["debug job"] = time.monotonic() - started
        assert "SUCCEEDED" in followed.stdout.splitlines()[-1], followed.stdout[-3000:]
        summary = summary_of(followed.stdout)
        assert summary["env_steps"] >= 1600 and not summary["interrupted"], summary
        ips = laptop.node_ips()
        assert ips[summary["learner_node_id"]] == HEAD, (summary["learner_node_id"], ips)
        assert {ips[n] for n in summary["actor_node_ids"]} == {WORKER}, (summary["actor_node_ids"], ips)
        assert re.fullmatch(rf"redis://replay:\*+@{re.escape(HEAD)}:\d+/0", summary["replay_url"]), summary
        assert on_node(summary["checkpoint"], node_home).exists(), summary["checkpoint"]

        # A second job, stopped: the driver checkpoints first.
        started = time.monotonic()
        laptop.make("train", "PRESET=debug", "TASK=cheetah", f"ARGS={RUN} --run.env-steps 1000000")
        second = json.loads((tmp_path / "job.json").read_text())
        run_dir = on_node(re.search(r"--run\.dir (\S+)", second["entrypoint"]).group(1), node_home)
        wait_for(lambda: list((run_dir / "checkpoints").glob("ckpt_*.pt")), 300,
                 f"the second job to reach joint training ({run_dir})")
        stopped = laptop.make("stop", timeout=120)
        assert "stopping job" in stopped.stdout, stopped.stdout
        followed = laptop.make("logs", timeout=400, check=False)  # a stopped job's logs exit 1
        timings["stopped job"] = time.monotonic() - started
        assert ": STOPPED" in followed.stdout.splitlines()[-1], followed.stdout[-3000:]
        summary = summary_of(followed.stdout)
        assert summary["interrupted"], summary
        assert on_node(summary["checkpoint"], node_home).exists(), summary["checkpoint"]
        # Each jobs command reached the head through its own `ray dashboard` tunnel: none outlives its command.
        deadline = time.monotonic() + 30
        while tunnels(head) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not tunnels(head), f"tunnels outlived their jobs commands: {tunnels(head)}"

        started = time.monotonic()
        laptop.make("cluster-down", timeout=300)
        up = False
        timings["cluster-down"] = time.monotonic() - started
        assert not remembered.exists(), "make cluster-down left .cluster behind"
        deadline = time.monotonic() + 30
        while ray_or_redis(head.processes() + worker.processes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not ray_or_redis(head.processes() + worker.processes()), \
            f"Ray or Redis outlived make cluster-down: {ray_or_redis(head.processes() + worker.processes())}"
    finally:
        if up:
            laptop.make("cluster-down", timeout=300, check=False)
    namespaces = {head.namespace, worker.namespace}
    assert all(processes_in(ns) for ns in namespaces)  # only the sshd listeners now; the fixture ends them
    print("\nray up on two SSH machines: " + ", ".join(f"{what} {s:.0f} s" for what, s in timings.items()))
