"""The embedded redis-server child process: started, secured (ACL users), watched and stopped by the launcher.

Clients connect to it, or to any replay server, through replay_service/client.py.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
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
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from common.config import ReplayConfig
from replay_service.client import PASSWORD_ENV, ReplayConnectionError, connect
from replay_service.limiter import poll_until
from replay_service.schema import FRAME_BYTES, frame_capacity

AOF_DIR = "appendonlydir"
RDB_FILE = "dump.rdb"
# Upper bound of Redis memory per stored frame: a raw 12 KiB frame lands in jemalloc's 14 KiB class,
# plus key, dict entry and header. maxmemory is a safety net (noeviction: refuse, never drop silently);
# FIFO eviction by the flush script keeps used_memory far below it.
_BYTES_PER_ROW_BOUND = FRAME_BYTES + 8 * 1024
_BASE_MEMORY = 64 * 1024**2

LOOPBACK = ("127.0.0.1", "localhost")
ADMIN_USER, REPLAY_USER = "admin", "replay"

# The `replay` user (actors, learner, driver) may run only these commands, and only on keys `~replay:*`
# (Redis 7 checks every redis.call inside a script too, keys built in the script included): every Redis
# call of replay_service/, learner/, actors/ and deploy/. Left out on purpose: CONFIG (GET too: Redis 7.0
# cannot allow one parameter, and GET * reads the whole config; a client that needs the snapshot's path
# takes RedisServer.rdb_path), FLUSHALL/FLUSHDB, KEYS/SCAN, DEBUG, MODULE, ACL, SHUTDOWN, SELECT, pub/sub.
# The admin user, known only to the launcher's RedisServer, runs SHUTDOWN and CONFIG SET.
_REPLAY_COMMANDS = (
    # redis-py's connection set-up (AUTH, or HELLO with RESP3; CLIENT SETNAME: connect() names its
    # clients) and health checks (PING).
    "auth", "hello", "ping", "client|setname",
    # SequenceReplay.sync's MULTI/EXEC pipeline (redis-py sends DISCARD when it aborts one).
    "multi", "exec", "discard",
    # ensure_schema's EVAL; register_script's EVALSHA, with SCRIPT LOAD after NOSCRIPT and SCRIPT
    # EXISTS in pipelines.
    "eval", "evalsha", "script|load", "script|exists",
    # Data, from the clients and from the schema and flush scripts (redis-py's incr() sends INCRBY).
    "exists", "get", "set", "mget", "getrange", "del", "incrby", "hget", "hmget", "hset", "hgetall", "hincrby",
    # SequenceReplay.snapshot(), which every learner checkpoint calls: BGSAVE writes dump.rdb into the
    # server's own dir under the name the launcher fixed (a fork; no data changes), and INFO persistence
    # tells when it is done. INFO is read-only and holds no secrets.
    "bgsave", "info",
)
# CLIENT SETINFO (redis-py sends it on connect, ignoring a refusal) exists from Redis 7.2: 7.0 rejects
# an ACL that names it.
_SETINFO_SINCE = (7, 2)


class RedisNotInstalledError(RuntimeError):
    """The redis-server executable is missing."""


def maxmemory_bytes(cfg: ReplayConfig) -> int:
    """The embedded server's maxmemory for this capacity."""
    return _BASE_MEMORY + frame_capacity(cfg) * _BYTES_PER_ROW_BOUND


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STABLE_PORTS_FROM, STABLE_PORTS_BELOW = 20000, 30000
"""The ports `stable_port` draws from: above Ray's worker ports (10002-19999 by default), below Kubernetes'
NodePorts (30000-32767, which kube-proxy may intercept on a node) and below the kernel's ephemeral range."""


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 by Linux's default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def stable_port(host: str = "127.0.0.1", tries: int = 200) -> int:
    """A free TCP port on `host` below the kernel's ephemeral range, for a server that restarts on the port it had.

    A port from `free_port` lies in the ephemeral range (32768-60999 on Linux), where the kernel hands ports to
    every outgoing connection and every bind to port 0: while the server is down (killed, then restarted by the
    watchdog within a second), another process can take its port (a client reconnecting to it can even connect
    to itself on it), and the restart fails for as long as that process keeps it. Below the range only an
    explicit bind can, such as another `stable_port` caller's (one chance in about 10 000 per draw). Falls back to
    `free_port` when the range leaves no room (starts at or below STABLE_PORTS_FROM), when `host` is not an
    IPv4 address of this machine, or after `tries` taken ports."""
    high = min(_ephemeral_low(), STABLE_PORTS_BELOW)
    for _ in range(tries if high > STABLE_PORTS_FROM else 0):
        port = random.randrange(STABLE_PORTS_FROM, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server binds: TIME_WAIT is no bar
            try:
                s.bind(("0.0.0.0" if host in ("", "0.0.0.0") else host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                break  # not an address of this machine's, or not IPv4: nothing to probe on
            return port
    return free_port()


class RedisServer:
    """An embedded redis-server: AOF on, maxmemory from the capacity with noeviction, data in `data_dir`.

    Restarting on the same `data_dir` reloads everything from the AOF. `restore_from` seeds an empty
    `data_dir` from an RDB snapshot (`SequenceReplay.snapshot()`), e.g. to resume from a checkpoint copy.

    `secure` (default: iff `host` is not loopback) turns on ACL users for a server other machines can
    reach: the `default` user is off, `admin` (random password, known only to this object: `admin_url`)
    can do anything, and `replay` (password $SLAC_REPLAY_PASSWORD, else random: `url`) can run only the
    replay clients' commands on `replay:*` keys. Passwords and restarts (`start()` again) keep both.
    """

    def __init__(self, data_dir: str | Path, cfg: ReplayConfig, *, executable: str = "redis-server",
                 host: str = "127.0.0.1", restore_from: str | Path | None = None,
                 start_timeout_s: float = 120.0, secure: bool | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.cfg = cfg
        self.host = host
        self.secure = host not in LOOPBACK if secure is None else secure
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
        # Fixed for the object's life, so a watchdog's start() brings back a server its clients can
        # still log in to.
        self._admin_password = secrets.token_urlsafe(24) if self.secure else None
        self._replay_password = _replay_password() if self.secure else None
        self._setinfo = self.secure and _version(found) >= _SETINFO_SINCE
        self.process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        """What the replay's clients (actors, learner, driver) connect with: the `replay` user when secure."""
        return self._url(REPLAY_USER, self._replay_password)

    @property
    def admin_url(self) -> str:
        """The `admin` user's URL when secure (for this launcher only: SHUTDOWN, CONFIG); else `url`."""
        return self._url(ADMIN_USER, self._admin_password)

    def _url(self, user: str, password: str | None) -> str:
        if self.port is None:
            raise RuntimeError("RedisServer.url: the server has no port yet; call start() first")
        auth = f"{user}:{quote(password, safe='')}@" if password is not None else ""
        return f"redis://{auth}{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.host}:{self.port}/0"

    @property
    def rdb_path(self) -> Path:
        """Where BGSAVE writes (SequenceReplay.snapshot), for clients that may not CONFIG GET it (`replay`)."""
        return self.data_dir.resolve() / RDB_FILE

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
                *(["-"] if self.secure else [])]  # "-": read _secure_config() from stdin too

    def _secure_config(self) -> bytes:
        """The ACL users and protected mode, given on stdin: a command line is public (`ps`), a file
        could outlive a crash. Passwords go in as SHA-256 (`#`): the plain text never reaches the server,
        its log or its error messages (an ACL Redis refuses is logged rule by rule)."""
        assert self._admin_password is not None and self._replay_password is not None
        commands = (*_REPLAY_COMMANDS, *(["client|setinfo"] if self._setinfo else []))
        return "\n".join([
            "protected-mode yes",
            "user default off resetpass resetkeys resetchannels -@all",
            f"user {ADMIN_USER} reset on #{_sha256(self._admin_password)} ~* &* +@all",
            f"user {REPLAY_USER} reset on #{_sha256(self._replay_password)} ~replay:* -@all "
            + " ".join(f"+{c}" for c in commands),
            "",
        ]).encode()

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
                self.port = stable_port(self.host)
            # Own session: a Ctrl-C in the terminal must reach the launcher, which checkpoints and then
            # stops this server itself, not kill the server under the still-running actors.
            self.process = subprocess.Popen(self._args(appendonly=not restoring),
                                            stdin=subprocess.PIPE if self.secure else subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                            start_new_session=True,
                                            env={k: v for k, v in os.environ.items() if k != PASSWORD_ENV})
            if self.secure:
                _feed(self.process, self._secure_config())
            if self._wait_ready() or not pick_port:
                break
        # An owner that exits without stop() must not leave an orphan server holding the port.
        self._finalizer = weakref.finalize(self, _terminate, self.process)
        if not self.running:
            raise RuntimeError(f"redis-server exited with code {self.process.returncode if self.process else '?'} "
                               f"while starting on port {self.port}; its log {self.log_path} ends with:\n"
                               f"{self._log_tail()}")
        if restoring:  # the RDB is loaded: switch AOF on (Redis rewrites the AOF from memory)
            client = connect(self.admin_url, self.cfg.connect_timeout_s)
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
                connect(self.admin_url, 0.2).close()
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
                client = redis.Redis.from_url(self.admin_url, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
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


def _replay_password() -> str:
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        return secrets.token_urlsafe(24)
    if not password or any(c.isspace() for c in password):
        raise ValueError(f"{PASSWORD_ENV} is set but {'empty' if not password else 'contains whitespace'}; set it "
                         f"to one word (e.g. the output of `openssl rand -hex 16`), the same on every node, or "
                         f"unset it to get a random password per run")
    return password


def _sha256(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def _version(executable: str) -> tuple[int, ...]:
    """redis-server's version, e.g. (7, 0, 15); (0,) if it does not say."""
    out = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in found.groups()) if found else (0,)


def _feed(process: subprocess.Popen[bytes], config: bytes) -> None:
    """Write the config to the server's stdin and close it (the server reads it to EOF before serving)."""
    assert process.stdin is not None
    # A few hundred bytes fit the pipe: never blocks. A server that exited at once (a bad argument)
    # breaks the pipe; start() then reports it with the log.
    with contextlib.suppress(BrokenPipeError):
        process.stdin.write(config)
        process.stdin.close()


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
