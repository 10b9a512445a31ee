"""`make cluster-down` for machines you already have: stop Ray on every worker before `ray down`.

`ray down` stops Ray only on the head; with Ray's on-premise ("local") provider it then merely marks the workers
terminated in its state file, so their raylets, agents and log monitors run on until they give up on the dead
head (tests/test_cluster_up.py saw them outlive `ray down`). Cloud providers delete the worker VMs, so there is
nothing to do for them. This runs each worker's own `ray stop` line from the YAML (the first of its
`worker_start_ray_commands`) over SSH with the YAML's auth, all workers at once.

    python -m deploy.cluster_down deploy/cluster-local.yaml
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml


def stop_commands(config: dict[str, Any]) -> list[str]:
    """The YAML's own lines that stop Ray on a worker."""
    return [c for c in config.get("worker_start_ray_commands", []) if "ray stop" in c]


def ssh_command(config: dict[str, Any], address: str, command: str) -> list[str]:
    """ssh as Ray's cluster launcher would reach `address`: the YAML's user, key and proxy command."""
    auth = config.get("auth", {})
    options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
               "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]
    if auth.get("ssh_private_key"):
        options += ["-i", os.path.expanduser(auth["ssh_private_key"])]
    if auth.get("ssh_proxy_command"):
        options += ["-o", f"ProxyCommand={auth['ssh_proxy_command']}"]
    return ["ssh", *options, f"{auth.get('ssh_user', os.environ.get('USER', 'root'))}@{address}", command]


def stop_workers(config: dict[str, Any]) -> list[str]:
    """Run the stop lines on every listed worker; returns one line per worker that could not be reached."""
    provider = config.get("provider", {})
    if provider.get("type") != "local" or not provider.get("worker_ips"):
        return []
    command = "; ".join(stop_commands(config)) or "ray stop"

    def stop(address: str) -> str:
        try:
            done = subprocess.run(ssh_command(config, address, command), capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return f"{address}: `ray stop` did not finish in 120 s"
        return "" if done.returncode == 0 else f"{address}: `ray stop` failed ({done.stderr.strip()[-300:]})"

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [line for line in pool.map(stop, provider["worker_ips"]) if line]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_file():
        print("usage: python -m deploy.cluster_down <cluster YAML>", file=sys.stderr)
        return 2
    failures = stop_workers(yaml.safe_load(Path(args[0]).read_text()))
    for line in failures:  # `ray down` still runs: the head must stop even if a worker is unreachable
        print(f"make cluster-down: {line}; stop Ray there by hand (`ray stop`)", file=sys.stderr)
    return 0

