"""Machines for `ray up` on this one machine (tests/test_cluster_up.py), as close to real ones as a test can get.

Each `SshHost` is a real OpenSSH server on its own loopback address, with a throwaway host key, accepting one
throwaway client key for root. It runs in its own PID and mount namespaces (`unshare`, which needs root, as CI
has), with `/root` bound to a directory of the test's:
- `ray stop`, which the YAMLs run first on every node, kills every Ray process it can see; in its own PID
  namespace a node sees only its own, not the other node's nor a training of the developer's.
- `~` is the node's own home, so `~/slac-dist`, its venv and `~/ray_bootstrap_config.yaml` are the node's, as on
  a fresh machine, and the developer's /root is never written.
- /tmp/ray is the node's own: with one shared, the worker's runtime-env agent deleted the job's working_dir
  package from under the driver on the head (`os.getcwd()` failed in the job), and the laptop's and the head's
  copies of the local provider's state file were one file.
When the namespace's first process (the sshd) ends, the kernel ends every process left in it.

The servers listen on PORT, not 22 (a machine may run its own sshd on 0.0.0.0:22); the client side finds the
port in `~/.ssh/config`, which `ssh_config` writes for the given addresses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
PORT = 2222


def ensure_sshd() -> None:
    """Install OpenSSH's server if this machine has none (Debian/Ubuntu, as root; RUNLEVEL=1 keeps the
    package's own service from starting)."""
    if Path(SSHD).exists():
        return
    assert os.geteuid() == 0, "the `ray up` test runs sshd in namespaces of its own and needs root (CI has it)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", RUNLEVEL="1")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "openssh-server"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def keypair(path: Path) -> Path:
    """A new ed25519 key without a passphrase at `path` (and `path`.pub)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "slac-dist-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path


def ssh_config(ssh_dir: Path, addresses: list[str]) -> None:
    """`ssh_dir`/config: the test's hosts are on PORT (Ray's ssh command line has no port option)."""
    ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (ssh_dir / "config").write_text(f"Host {' '.join(addresses)}\n  Port {PORT}\n")
    (ssh_dir / "config").chmod(0o600)


def pid_namespace(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def processes_in(namespace: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process in the PID namespace `namespace` (as /proc/<pid>/ns/pid reads)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_namespace(int(entry.name)) == namespace:
            with contextlib.suppress(OSError):
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()))
    return found


class SshHost:
    """One machine: `start()` brings its sshd up on `address`:PORT, `stop()` ends it and everything in it."""

    def __init__(self, name: str, address: str, home: Path, work: Path, authorized_key: Path) -> None:
        self.name, self.address, self.home = name, address, home
        self.config = work / f"sshd-{name}.conf"
        self.log = work / f"sshd-{name}.log"
        self.ray_tmp = work / f"tmp-ray-{name}"  # its /tmp/ray: Ray's sessions, logs and job packages
        host_key = keypair(work / f"host-key-{name}")
        self.config.write_text("\n".join([
            f"Port {PORT}", f"ListenAddress {address}", f"HostKey {host_key}", "PidFile none",
            f"AuthorizedKeysFile {authorized_key}", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "AllowTcpForwarding yes", ""]))
        self.proc: subprocess.Popen | None = None
        self.namespace = ""

    def start(self, timeout_s: float = 20) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        checked = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True)
        assert checked.returncode == 0, f"sshd rejects {self.config}: {checked.stderr}"
        self.home.mkdir(parents=True, exist_ok=True)
        self.ray_tmp.mkdir(exist_ok=True)
        Path("/tmp/ray").mkdir(exist_ok=True)
        script = (f'mount --rbind "{self.home}" /root && mount --bind "{self.ray_tmp}" /tmp/ray && '
                  f'exec {SSHD} -D -e -f "{self.config}"')
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--propagation", "private",
             "bash", "-c", script], stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError), socket.create_connection((self.address, PORT), timeout=1):
                break
            assert self.proc.poll() is None and time.monotonic() < deadline, \
                f"sshd of {self.name} did not come up on {self.address}:{PORT}: {self.log.read_text()[-2000:]}"
            time.sleep(0.2)
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        self.namespace = pid_namespace(int(children[0]))

    def processes(self) -> list[tuple[int, str]]:
        """Every process on this machine but its sshd's own (the listener, PID 1 there, and its sessions)."""
        return [(pid, cmd) for pid, cmd in processes_in(self.namespace) if not cmd.startswith(("sshd:", SSHD))]

    def stop(self) -> list[tuple[int, str]]:
        """End the sshd and, with it, every process in its namespace; returns those that outlived it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # unshare --kill-child: its child (PID 1 there) gets SIGKILL
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        deadline = time.monotonic() + 20
        while self.namespace and processes_in(self.namespace) and time.monotonic() < deadline:
            time.sleep(0.2)
        return processes_in(self.namespace) if self.namespace else []
