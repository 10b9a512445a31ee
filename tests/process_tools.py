"""Watching a real training from outside, as a user would: its processes (by /proc), its output, its replay.

Shared by the fault tests (test_faults.py) and the chaos driver (chaos.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from replay_service.schema import STATE

REPO = Path(__file__).resolve().parents[1]
# A quarter update per insert and little limiter slack: actors wait for the learner within 40 transitions.
COUPLED = ["--replay.samples-per-insert", "0.25", "--replay.spi-tolerance", "40"]


def summary_of(text: str) -> dict[str, Any]:
    """The JSON summary a run prints last (`python -m deploy.train`, a job's logs)."""
    assert '{\n  "summary"' in text, f"no summary printed\n{text[-4000:]}"
    return json.JSONDecoder().raw_decode(text[text.index('{\n  "summary"'):])[0]["summary"]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` (with the run's log tail)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{tail}")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def descendants(root: int) -> dict[int, list[str]]:
    """Every live process below `root`, with its command line."""
    parents = {int(p.name): _ppid(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    found: dict[int, list[str]] = {}
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in found}
        found.update({pid: cmdline(pid) for pid in frontier})
    return {pid: cmd for pid, cmd in found.items() if cmd and alive(pid)}


def children(pid: int) -> list[int]:
    """The direct children of process `pid`, from its threads' /proc children lists: a few small reads, fast
    enough to catch a child between its exec and its first milliseconds (descendants() reads all of /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return found


def processes_using(*paths: str | Path) -> dict[int, str]:
    """Every live process (but this one) that names, sits in or holds open a file under one of `paths`: its
    command line, its working directory or an open file descriptor. Whatever a run leaves running keeps one of
    these in the run's directory or its private Ray's (the redis-server its AOF, Ray's processes their logs),
    however it retitled itself; returns pid -> command line, to show."""
    roots = [str(Path(p).resolve()) for p in paths]

    def under(target: str) -> bool:
        return any(target == root or target.startswith(root + "/") for root in roots)

    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid() or not alive(int(entry.name)):
            continue
        try:
            targets = [os.readlink(entry / "cwd"), *(os.readlink(fd) for fd in (entry / "fd").iterdir())]
        except OSError:  # it exited meanwhile
            continue
        command = cmdline(int(entry.name))
        if any(under(t) for t in targets) or any(root in part for part in command for root in roots):
            found[int(entry.name)] = " ".join(command)
    return found


def wait_for_no_process_using(*paths: str | Path, timeout_s: float = 20.0) -> dict[int, str]:
    """`processes_using(*paths)` once it is empty, or what is still there after `timeout_s` (Ray's last workers
    exit just after their raylet; a leaked process stays)."""
    deadline = time.monotonic() + timeout_s
    while (left := processes_using(*paths)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def ray_dir_of(text: str) -> str:
    """The private Ray directory a run's log names (deploy/run/ray_runtime.connect_ray logs it first)."""
    found = re.search(r"private Ray keeps its logs and sockets in (\S+)", text)
    assert found, f"the run's log names no private Ray directory\n{text[-3000:]}"
    return found.group(1)


class Run:
    """One `python -m deploy.train` process, its output in a file, killed with its session at the end."""

    def __init__(self, tmp: Path, args: list[str], name: str = "run", nice: int = 0) -> None:
        """`nice`: start the driver that much nicer than this process (`nice -n`), as a user's `nice make train`."""
        self.log = tmp / f"{name}.log"
        env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", RAY_ADDRESS="local")
        env.setdefault("MUJOCO_GL", "egl")
        self.started = time.time()
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([*(["nice", "-n", str(nice)] if nice else []), sys.executable, "-m",
                                          "deploy.train", *args], cwd=REPO, env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def text(self) -> str:
        return self.log.read_text()

    def wait(self, timeout_s: float = 240) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not end within {timeout_s} s\n{self.text[-3000:]}")

    def summary(self) -> dict[str, Any]:
        return summary_of(self.text)

    def child(self, marker: str) -> int | None:
        """The pid of the run's process whose command line contains `marker`."""
        for pid, cmd in descendants(self.proc.pid).items():
            if any(marker in part for part in cmd):
                return pid
        return None

    def redis(self, retry: bool = True) -> redis.Redis | None:
        """A client of the run's redis-server, or None while it has none; `retry=False`: a server that does not
        answer fails at once (redis-py's default retries take ~4 s)."""
        pid = self.child("redis-server")
        if pid is None:
            return None
        # redis-server retitles itself "redis-server 127.0.0.1:<port>"; before that, argv has --port.
        cmd = cmdline(pid)
        found = re.search(r":(\d+)", cmd[0]) if "--port" not in cmd else None
        port = int(found.group(1)) if found else int(cmd[cmd.index("--port") + 1]) if "--port" in cmd else None
        return redis.Redis(port=port, socket_timeout=5, **({} if retry else {"retry": Retry(NoBackoff(), 0)})) \
            if port else None

    def replay_state(self) -> dict[str, int]:
        client = self.redis()
        if client is None:
            return {}
        try:
            raw = client.hgetall(STATE)
        except redis.RedisError:
            return {}
        finally:
            client.close()
        return {k.decode(): int(v) for k, v in raw.items()}

    def kill(self) -> None:
        """SIGKILL to the run's session, then SIGTERM to its redis-server, which has a session of its own."""
        if self.proc.poll() is None:
            server = self.child("redis-server")
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            if server is not None and alive(server):
                os.kill(server, signal.SIGTERM)


def aof_written(client: redis.Redis, timeout_s: float = 5.0) -> bool:
    """Wait until the redis-server behind `client` has written to its AOF everything it acknowledged.

    Under appendfsync everysec Redis holds its AOF write back (up to 2 s) while a background fsync stalls on
    a busy disk, and still replies: a kill -9 then loses those acknowledged flushes, the hole
    replay_service/__init__.py documents (CI's disk once lost every step of a test so). A test that checks
    "a kill keeps every acknowledged step" waits this out first, so it checks the promise, not the hole.
    False if the buffer did not drain in `timeout_s` or the server did not answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.info("persistence").get("aof_buffer_length", 0) == 0:
                return True
        except redis.RedisError:
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def thread_niceness(pid: int) -> set[int]:
    """The niceness of every thread of process `pid` (Linux keeps one per thread), from /proc/<pid>/task/*/stat."""
    values = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        values.add(int(fields[16]))  # field 19 of stat(5); the two before the split are pid and (comm)
    return values
