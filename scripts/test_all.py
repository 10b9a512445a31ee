"""`make test` with no MARK: every tier on two lanes, so that neither of the 2 cores waits while tests remain.

Lane 1 starts the `learning` tier (one long training whose learner takes one core, at normal priority); lane 2
runs the `unit` and `integration` tiers beside it at niceness 19. Whichever lane is free then takes the next
file of the `e2e`, `faults` and `cluster` tiers, longest first (one pytest per file, at niceness 19 while the
learning run lasts), so the end-to-end runs fill the core the learning run leaves and then both cores. Files that start a Ray
cluster the way a user does (`ray start`, `ray up`, `ray.cluster_utils`: Ray's default ports, its
/tmp/ray/ray_current_cluster) run one at a time. Each pytest's output is printed whole when it ends, with its
slowest durations; the last lines give every session's wall clock and return code, and the exit code is
nonzero if any session failed or was not run.

Usage: `python scripts/test_all.py` (the Makefile passes PY, the venv's python).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = os.environ.get("PY") or sys.executable
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]
AFTER = "e2e or faults or cluster"
ESTIMATE_S = {"tests/test_faults.py": 490, "tests/test_reproduce.py": 380, "tests/test_e2e.py": 370,
              "tests/test_cluster_up.py": 280, "tests/test_autoscaling.py": 250, "tests/test_own_task.py": 220,
              "tests/test_after_training.py": 190, "tests/test_chaos.py": 145, "tests/test_cluster.py": 125,
              "tests/test_disk_full.py": 70, "tests/test_probe_run.py": 65}
"""Seconds each file took in its lane (clean-clone `make test`, 2-core VM, 2026-12-07; the first two at niceness
19 beside the learning run): the queue's order, longest first, so that the last file to start is a short one.
A file not listed counts as 60 s."""
RAY_CLUSTER_FILES = {"tests/test_cluster_up.py", "tests/test_autoscaling.py", "tests/test_cluster.py",
                     "tests/test_e2e.py"}
"""Files whose Ray clusters take Ray's default ports (the dashboard's 8265, the agent's 52365) or announce
themselves in /tmp/ray: one of them at a time. A training's own Ray is private (deploy/run/ray_runtime.py)."""


def _log_file() -> Path:
    handle, path = tempfile.mkstemp(prefix="slac-test-", suffix=".log")
    os.close(handle)
    return Path(path)


@dataclass
class Session:
    """One pytest process: what it runs, on which lane, its output file and how it ended."""

    name: str
    args: list[str]
    lane: int = 0
    log: Path = field(default_factory=_log_file)
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ended: float = 0.0
    rc: int | None = None
    nice: bool = False

    def start(self, lane: int, t0: float, nice: bool) -> None:
        self.lane, self.started, self.nice = lane, time.monotonic(), nice
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([*(["nice", "-n", "19"] if nice else []), PY, *PYTEST, *self.args],
                                         cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        print(f"[{time.monotonic() - t0:6.0f} s] lane {lane}{' at niceness 19' * nice}: {self.name}", flush=True)

    def poll(self) -> bool:
        """True once it has ended (its output printed)."""
        if self.proc is None or self.proc.poll() is None:
            return False
        self.rc, self.ended = self.proc.returncode, time.monotonic()
        print(f"\n== {self.name}: rc {self.rc}, {self.ended - self.started:.0f} s on lane {self.lane}", flush=True)
        print(self.log.read_text(errors="replace"), flush=True)
        self.log.unlink(missing_ok=True)
        return True

    def stop(self) -> None:
        """Ctrl-C to its process group (pytest tears its fixtures down: the runs it started, their Redis and Ray),
        then SIGKILL if it is still there after a minute."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def after_files() -> list[str]:
    """The files holding tests of the e2e, faults and cluster tiers, longest first."""
    listed = subprocess.run([PY, *PYTEST, "--collect-only", "-m", AFTER], cwd=REPO, capture_output=True, text=True)
    files = sorted({line.split("::")[0] for line in listed.stdout.splitlines() if "::" in line})
    if listed.returncode != 0 or not files:
        sys.exit(f"make test: collecting the {AFTER} tiers failed (rc {listed.returncode}):\n{listed.stdout[-3000:]}")
    return sorted(files, key=lambda f: -ESTIMATE_S.get(f, 60))


def next_file(queue: list[str], running: list[Session]) -> str | None:
    """The longest file left that may start now: no two Ray-cluster files at once."""
    busy = any(s.name in RAY_CLUSTER_FILES for s in running)
    return next((f for f in queue if not (busy and f in RAY_CLUSTER_FILES)), None)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # CI's timeout: the sessions (each in a session of its own) go too
    t0 = time.monotonic()
    first = [Session("learning tier", ["-m", "learning"]), Session("unit and integration tiers",
                                                                   ["-m", "unit or integration"])]
    sessions, running = list(first), []
    for lane, session in enumerate(first, start=1):
        session.start(lane, t0, nice=lane == 2)
        running.append(session)
    queue: list[str] = []
    try:
        queue = after_files()
        print(f"then, on whichever lane is free, longest first: {', '.join(Path(f).stem for f in queue)}", flush=True)
        while running or queue:
            time.sleep(1)
            running = [s for s in running if not s.poll()]
            for lane in sorted({1, 2} - {s.lane for s in running}):
                # A lane stays idle only while the files left are Ray-cluster files and one of them runs.
                if (name := next_file(queue, running)) is not None:
                    queue.remove(name)
                    sessions.append(Session(name, ["-m", AFTER, name]))
                    # Below the learning run while it runs (it is the one that must not lose its core).
                    sessions[-1].start(lane, t0, nice=any(s is first[0] for s in running))
                    running.append(sessions[-1])
    except KeyboardInterrupt:
        print("make test: interrupted; stopping the running sessions", file=sys.stderr)
        return 130
    finally:
        for session in running:
            session.stop()
    total = time.monotonic() - t0
    print(f"\n== make test: {total:.0f} s in all, on two lanes (start, wall clock, return code):")
    for s in sorted(sessions, key=lambda s: s.started):
        print(f"  {s.name:<30} lane {s.lane}{' nice 19' if s.nice else '        '}  +{s.started - t0:5.0f} s"
              f"  {s.ended - s.started:6.0f} s  rc {s.rc}")
    failed = [s.name for s in sessions if s.rc != 0] + queue
    if failed:
        print(f"make test: FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
