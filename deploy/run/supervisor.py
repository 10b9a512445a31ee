"""Process supervision beside the driver's polling loop: the embedded Redis and the learner (signals:
deploy/run/signals.py).

- `RedisWatchdog`: a thread that restarts the embedded redis-server on the same data directory and port
  when it dies (the AOF reloads every acknowledged flush); the clients' retries span the gap and the
  writers' acks keep flushes exactly-once.
- `LearnerSupervisor`: owns the learner process; when it dies (killed, out of memory, CUDA error) it is
  restarted from the newest checkpoint, at most `learner.max_restarts` times, while the actors keep
  acting with the weights they have.
- `RayRestarts`: counts the restarts Ray makes by itself of the evaluator and the weight board.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from common.config import Config
from common.run_files import RunFiles
from deploy.run.ray_runtime import ray_restarts
from learner.checkpoint import latest_checkpoint, load_checkpoint
from replay_service import RedisServer

log = logging.getLogger(__name__)

REDIS_GIVE_UP_S = 20.0
"""How long the watchdog keeps trying to bring a dead redis-server back before the run ends: shorter than
the clients' reconnect window (replay_service.client.RECONNECT_S), so the run ends on this clear cause
rather than on the learner and actors failing one by one."""


class RestartsExhaustedError(RuntimeError):
    """A process (the learner, or every actor) died more often than its restart limit allows."""


class ReplayServerLostError(RuntimeError):
    """The embedded redis-server died and could not be restarted."""


class RedisWatchdog:
    """Restarts a dead embedded redis-server on its data directory and port, counting the restarts."""

    def __init__(self, server: RedisServer, poll_s: float = 0.2, give_up_s: float = REDIS_GIVE_UP_S) -> None:
        self.server, self.poll_s, self.give_up_s = server, poll_s, give_up_s
        self.restarts = 0
        self.failed_starts = 0
        """Restart attempts that failed: the new server died while loading its AOF (killed, out of memory) or
        could not start (its port taken meanwhile, a full disk); each is retried."""
        self.killed_starts = 0
        """The failed starts whose new server was ended by a signal. A server killed during its own restart is
        one of these, not a restart of its own, so restarts + killed_starts is the number of servers that died
        under the run when every death is a kill, as in the chaos test (the other failed starts exited by
        themselves: `outages` says why)."""
        self.stalls_s: list[float] = []
        self.outages: list[dict[str, Any]] = []
        """One record per dead server: `down_at` (wall-clock seconds when the watchdog saw it dead), `up_at` (when a
        new one answered; None if none did), the `failed_starts` in between, how many of them were
        `killed_starts` (a new server killed before it was ready, e.g. during its AOF load) and the `causes` of
        the others (the error's first line and the server log's last two). The fault tests place their kills inside
        these windows."""
        self.failure: str | None = None
        self.down = False
        """True while the server is dead and being restarted (the learner's failures then wait for it)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="redis-watchdog", daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self.server.running:
                continue
            died, self.down, failed_before = time.monotonic(), True, self.failed_starts
            outage: dict[str, Any] = {"down_at": round(time.time(), 3), "up_at": None, "failed_starts": 0,
                                      "killed_starts": 0, "causes": []}
            self.outages.append(outage)
            log.warning("the replay's redis-server (port %s) died; restarting it on %s", self.server.port,
                        self.server.data_dir)
            while not self._stop.is_set():
                dead = getattr(self.server, "process", None)
                try:
                    self.server.start()  # same port, same data dir: the AOF reloads
                    break
                except Exception as exc:  # noqa: BLE001 - a port still taken or a disk full: retry, bounded
                    self.failed_starts += 1
                    outage["failed_starts"] += 1
                    if self._killed(dead):
                        self.killed_starts += 1
                        outage["killed_starts"] += 1
                        why = f"ended by signal {-self.server.process.returncode}"
                    else:
                        why = _cause(exc)
                        outage["causes"].append(why)
                    # One warning per outage: a server that cannot come back would otherwise print one a second.
                    log.log(logging.WARNING if self.failed_starts == failed_before + 1 else logging.DEBUG,
                            "redis-server failed to restart (%s); retrying every second for up to %.0f s", why,
                            self.give_up_s)
                    if time.monotonic() - died > self.give_up_s:
                        log.error("redis-server restart failed: %s", exc)
                        self.failure = (f"the replay's redis-server died and did not come back within "
                                        f"{self.give_up_s:.0f} s ({_cause(exc)})")
                        return
                    self._stop.wait(1.0)
            if self._stop.is_set():
                return
            self.restarts += 1
            outage["up_at"] = round(time.time(), 3)
            self.down = False
            self.stalls_s.append(time.monotonic() - died)
            log.warning("redis-server restarted in %.1f s (restart #%d)", self.stalls_s[-1], self.restarts)

    def _killed(self, dead: subprocess.Popen[bytes] | None) -> bool:
        """Whether the attempt that just failed started a server (one other than `dead`, the process that died
        before it) and a signal ended it (Popen: a negative return code)."""
        process = getattr(self.server, "process", None)
        if process is None or process is dead:
            return False
        code = process.poll()
        return code is not None and code < 0

    @staticmethod
    def summary_of(watchdog: RedisWatchdog | None) -> dict[str, Any]:
        """The run summary's Redis entries (zeros for a replay this run does not own)."""
        return {"replay_server_restarts": watchdog.restarts if watchdog else 0,
                "replay_server_failed_starts": watchdog.failed_starts if watchdog else 0,
                "replay_server_killed_starts": watchdog.killed_starts if watchdog else 0,
                "replay_server_stalls_s": [round(s, 1) for s in watchdog.stalls_s] if watchdog else [],
                "replay_server_outages": list(watchdog.outages) if watchdog else []}

    def check(self) -> None:
        """Raise in the driver once the server is lost for good."""
        if self.failure is not None:
            raise ReplayServerLostError(
                f"{self.failure}. The acknowledged replay data is in its AOF: fix the cause (disk, port), then "
                f"continue with --run.resume {self.server.data_dir.resolve().parent}.")

    def __enter__(self) -> RedisWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.give_up_s + 5)


def _cause(exc: Exception) -> str:
    """A failed start in one line: the error's first line, and the server log's last two when the error quotes it
    (redis-server says why, e.g. "bind: Address already in use", the line before "aborting")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join([lines[0], *lines[1:][-2:]]) if lines else type(exc).__name__


LearnerFactory = Callable[[dict[str, Any] | None, int], Any]
"""(resume state or None, restart number) -> a started Ray actor handle of `LearnerProcess`."""


class LearnerSupervisor:
    """The learner process and its `run` task; restarts it from the newest checkpoint when it dies."""

    def __init__(self, cfg: Config, run_path: Path, make: LearnerFactory, resume_state: dict[str, Any] | None) -> None:
        self.cfg, self.run_path, self.make = cfg, run_path, make
        self.restarts = 0
        self.updates_lost: list[int] = []
        self.stalls_s: list[float] = []
        self._waiting: tuple[float, int] | None = None  # (died at, restored total updates)
        self.handle = make(resume_state, 0)
        self.run_ref = self.handle.run.remote()

    def check(self, last_counters: dict[str, int]) -> dict[str, int] | None:
        """Restart the learner if its `run` ended; returns the restored counters when it did.

        `last_counters` are the counters the driver last saw, to count the updates the restart loses.
        """
        finished, _ = ray.wait([self.run_ref], timeout=0)
        if not finished:
            return None
        try:
            ray.get(self.run_ref)
            reason = "its run returned before the run was stopped"
        except ray.exceptions.RayError as exc:
            reason = _first_line(exc)
        if self.restarts >= self.cfg.learner.max_restarts:
            raise RestartsExhaustedError(
                f"the learner process failed {self.restarts + 1} times (last: {reason}); learner.max_restarts is "
                f"{self.cfg.learner.max_restarts}. The full error is in the log above and in {RunFiles(self.run_path).logs}; "
                f"fix the cause, then continue with --run.resume {self.run_path}.")
        died = time.monotonic()
        try:
            ray.kill(self.handle, no_restart=True)  # a failed `run` may leave the process itself alive
        except ray.exceptions.RayError:
            pass
        checkpoint = latest_checkpoint(RunFiles(self.run_path).checkpoints)
        state = load_checkpoint(checkpoint, self.cfg) if checkpoint else None
        restored = {"updates": 0, "pretrain_updates": 0, "version": 0}
        if state is not None:  # the new process publishes above the board's version (LearnerProcess.__init__)
            restored.update(state["counters"])
        self.restarts += 1
        lost = _total(last_counters) - _total(restored)
        self.updates_lost.append(max(lost, 0))
        log.warning("the learner process died (%s); restart %d/%d from %s (%d updates lost)", reason, self.restarts,
                    self.cfg.learner.max_restarts, checkpoint.name if checkpoint else "scratch", max(lost, 0))
        self.handle = self.make(state, self.restarts)
        self.run_ref = self.handle.run.remote()
        self._waiting = (died, _total(restored))
        return restored

    def summary(self) -> dict[str, Any]:
        """The run summary's learner entries: restarts, the updates each lost, the time each took to update again."""
        return {"learner_restarts": self.restarts, "learner_updates_lost": self.updates_lost,
                "learner_stalls_s": [round(s, 1) for s in self.stalls_s]}

    def progress(self, counters: dict[str, int]) -> None:
        """Note the learner's counters; the first update after a restart ends its stall."""
        if self._waiting is not None and _total(counters) > self._waiting[1]:
            self.stalls_s.append(time.monotonic() - self._waiting[0])
            log.warning("the restarted learner is updating again %.1f s after the failure", self.stalls_s[-1])
            self._waiting = None


class RayRestarts:
    """The restarts Ray makes by itself of the actors it brings back unasked (the evaluator, the weight board).

    `fields` maps a RunState counter (e.g. `evaluator_restarts`) to the actor's handle; `check`, each tick, sets
    each counter to its value at the start of this life of the run plus Ray's own count of the actor's restarts
    (`ray_runtime.ray_restarts`), and logs each new restart.
    """

    def __init__(self, state: Any, fields: dict[str, Any],
                 lookup: Callable[[Any], int | None] = ray_restarts) -> None:
        self.state, self.fields, self.lookup = state, fields, lookup
        self.before = {name: int(getattr(state, name)) for name in fields}
        self.seen = dict.fromkeys(fields, 0)

    def check(self) -> None:
        """Bring the counters up to Ray's counts (a count Ray does not give is left as it was)."""
        for name, handle in self.fields.items():
            count = self.lookup(handle)
            if count is None or count <= self.seen[name]:
                continue
            self.seen[name] = count
            setattr(self.state, name, self.before[name] + count)
            log.warning("Ray restarted a process that died (%s: %d in this life of the run)", name, count)

    def scalars(self) -> dict[str, int]:
        """The counters as dashboard scalars: `evaluator_restarts` is `evaluator/restarts`."""
        return {name.removesuffix("_restarts") + "/restarts": int(getattr(self.state, name)) for name in self.fields}


def _total(counters: dict[str, int]) -> int:
    return int(counters.get("updates", 0)) + int(counters.get("pretrain_updates", 0))


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"
