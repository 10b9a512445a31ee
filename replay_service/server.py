"""The embedded redis-server child process and the one way clients connect to any replay server."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import weakref
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from common.config import ReplayConfig
from replay_service.limiter import poll_until
from replay_service.schema import FRAME_BYTES, frame_capacity

AOF_DIR = "appendonlydir"
RDB_FILE = "dump.rdb"
# Upper bound of Redis memory per stored frame: a raw 12 KiB frame lands in jemalloc's 14 KiB class,
# plus key, dict entry and header. maxmemory is a safety net (noeviction: refuse, never drop silently);
# FIFO eviction by the flush script keeps used_memory far below it.
_BYTES_PER_ROW_BOUND = FRAME_BYTES + 8 * 1024
_BASE_MEMORY = 64 * 1024**2
RECONNECT_S = 30.0
"""Seconds a client keeps retrying a dropped connection: covers a restart of the embedded server."""
_RECONNECT_TRIES = 6 + int(RECONNECT_S)  # 0.05 s doubling to 1 s in 5 tries, then 1 s each


class RedisNotInstalledError(RuntimeError):
    """The redis-server executable is missing."""


class ReplayConnectionError(ConnectionError):
    """A replay Redis server did not answer in time."""


def maxmemory_bytes(cfg: ReplayConfig) -> int:
    """The embedded server's maxmemory for this capacity."""
    return _BASE_MEMORY + frame_capacity(cfg) * _BYTES_PER_ROW_BOUND


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    return re.sub(r"//([^@/]*):[^@/]*@", r"//\1:***@", url)


def connect(url: str, timeout_s: float, name: str | None = None) -> redis.Redis:
    """A client for `url` once the server answers PING; ReplayConnectionError after `timeout_s`.

    `name` is shown by CLIENT LIST (writers use "writer:<id>", the learner "replay-mirror").

    The returned client retries dropped connections for about `RECONNECT_S` seconds (a server restarted
    by the launcher's watchdog, AOF reload included, is picked up again); writes stay exactly-once
    because every flush carries a sequence number (see ReplayWriter).
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    probe = None
    while True:
        left = deadline - time.monotonic()
        try:
            probe = redis.Redis.from_url(url, socket_connect_timeout=max(min(left, 2.0), 0.05),
                                         socket_timeout=max(min(left, 2.0), 0.05), retry=Retry(NoBackoff(), 0))
            probe.ping()
            break
        except redis.BusyLoadingError as exc:  # the server is loading its AOF: keep waiting
            last_error = exc
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            last_error = exc
        finally:
            if probe is not None:
                probe.close()
        if time.monotonic() + 0.05 >= deadline:
            raise ReplayConnectionError(
                f"cannot reach the replay Redis at {redact(url)} within {timeout_s:.1f} s ({last_error}). Start the "
                "server (an empty replay.url makes `make train` start an embedded one), check the host and "
                "port in replay.url, or raise replay.connect_timeout_s.")
        time.sleep(0.05)  # the server is not up yet; nothing to wait on but time
    return redis.Redis.from_url(url, socket_connect_timeout=max(timeout_s, 1.0), socket_timeout=max(10 * timeout_s, 60.0),
                                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), _RECONNECT_TRIES),
                                health_check_interval=30, client_name=name)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """An embedded redis-server: AOF on, maxmemory from the capacity with noeviction, data in `data_dir`.

    Restarting on the same `data_dir` reloads everything from the AOF. `restore_from` seeds an empty
    `data_dir` from an RDB snapshot (`SequenceReplay.snapshot()`), e.g. to resume from a checkpoint copy.
    """

    def __init__(self, data_dir: str | Path, cfg: ReplayConfig, *, executable: str = "redis-server",
                 host: str = "127.0.0.1", restore_from: str | Path | None = None,
                 start_timeout_s: float = 120.0) -> None:
        self.data_dir = Path(data_dir)
        self.cfg = cfg
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.restore_from = Path(restore_from) if restore_from else None
        found = shutil.which(executable)
        if found is None:
            raise RedisNotInstalledError(
                f"`{executable}` was not found on PATH; the replay needs a Redis server. Install it with "
                "`sudo apt-get install redis-server` (Debian/Ubuntu package `redis-server`; `make setup` does "
                "this), or point replay.url at a running server.")
        self.executable = found
        self.port: int | None = cfg.port or None
        # Listening beyond loopback (a cluster): require a random password, carried in `url`, instead
        # of turning Redis's protected mode off on the network.
        self.password = secrets.token_hex(16) if host not in ("127.0.0.1", "localhost") else None
        self.process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("RedisServer.url: the server has no port yet; call start() first")
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _args(self, appendonly: bool) -> list[str]:
        return [self.executable, "--port", str(self.port), "--bind", self.host, "--dir", str(self.data_dir.resolve()),
                "--appendonly", "yes" if appendonly else "no", "--appendfsync", self.cfg.appendfsync,
                "--appenddirname", AOF_DIR, "--dbfilename", RDB_FILE, "--save", "",
                "--maxmemory", str(maxmemory_bytes(self.cfg)), "--maxmemory-policy", "noeviction",
                "--daemonize", "no", "--logfile", str(self.log_path.resolve()), "--pidfile", str(self.pid_path.resolve()),
                *(["--requirepass", self.password] if self.password else [])]

    def start(self) -> RedisServer:
        """Start the child process and wait until it answers (after loading its AOF)."""
        if self.running:
            return self
        if self._finalizer is not None:  # a restart after the process died: that finalizer has nothing left to do
            self._finalizer.detach()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        restoring = self.restore_from is not None and not (self.data_dir / AOF_DIR).exists()
        if self.restore_from is not None and not restoring:
            raise ValueError(f"restore_from={self.restore_from}: {self.data_dir} already holds an AOF; "
                             "restore into an empty data dir, or drop restore_from to continue on the AOF")
        if restoring:
            shutil.copyfile(self.restore_from, self.data_dir / RDB_FILE)
        pick_port = self.port is None
        for _attempt in range(5):
            if pick_port:
                self.port = _free_port()
            # Own session: a Ctrl-C in the terminal must reach the launcher, which checkpoints and then
            # stops this server itself, not kill the server under the still-running actors.
            self.process = subprocess.Popen(self._args(appendonly=not restoring), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                            start_new_session=True)
            if self._wait_ready() or not pick_port:
                break
        # An owner that exits without stop() must not leave an orphan server holding the port.
        self._finalizer = weakref.finalize(self, _terminate, self.process)
        if not self.running:
            raise RuntimeError(f"redis-server exited with code {self.process.returncode if self.process else '?'} "
                               f"while starting on port {self.port}; its log {self.log_path} ends with:\n"
                               f"{self._log_tail()}")
        if restoring:  # the RDB is loaded: switch AOF on (Redis rewrites the AOF from memory)
            client = connect(self.url, self.cfg.connect_timeout_s)
            client.config_set("appendonly", "yes")
            if not poll_until(lambda: _aof_ready(client), self.start_timeout_s):
                raise RuntimeError(f"redis-server did not finish writing its AOF after restoring "
                                   f"{self.restore_from} within {self.start_timeout_s} s; see {self.log_path}")
            client.close()
            self.restore_from = None
        return self

    def _stop_orphan(self, timeout_s: float = 30.0) -> None:
        """Stop a redis-server still serving this data dir for an owner that died (a driver killed with -9):
        two servers on one AOF would corrupt it. SIGTERM makes it fsync its AOF first."""
        try:
            pid = int(self.pid_path.read_text().strip())
            alive = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].split(b" ")[0].endswith(b"redis-server")
        except (OSError, ValueError):
            return
        if not alive or (self.process is not None and self.process.pid == pid):
            return
        os.kill(pid, signal.SIGTERM)
        poll_until(lambda: _proc_state(pid) == b"Z", timeout_s)  # gone (reads as Z) or a zombie

    def _wait_ready(self) -> bool:
        """True once the server answers; False if it exited (e.g. port taken)."""
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                return False
            try:
                connect(self.url, 0.2).close()
                return True
            except ReplayConnectionError:
                continue
        raise TimeoutError(f"redis-server on port {self.port} did not answer within {self.start_timeout_s} s; "
                           f"its log {self.log_path} ends with:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        """SHUTDOWN (fsyncs the AOF), falling back to SIGTERM and SIGKILL; reaps the child."""
        if self._finalizer is not None:
            self._finalizer.detach()
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                                     socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
                client.shutdown()
            except redis.RedisError:
                self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests use it); reaps the child."""
        if self._finalizer is not None:
            self._finalizer.detach()
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _proc_state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b"Z"


def _aof_ready(client: redis.Redis) -> bool:
    info = client.info("persistence")
    return (info.get("aof_enabled") == 1 and info.get("aof_rewrite_in_progress") == 0
            and info.get("aof_rewrite_scheduled") == 0)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM makes redis-server fsync its AOF and exit cleanly."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
