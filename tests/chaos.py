"""Chaos: a debug-preset training through the real entry point while its components are killed at random.

A seeded schedule kills, every 5-12 s, one of: an actor process, the learner, the embedded redis-server,
the evaluator, the weight board (each at least once), plus three compound faults: two kills inside one
interval, the learner killed while a checkpoint is being written, and the learner killed while Redis is
restarting (with the restarted redis-server killed again during its AOF load). Afterwards `check` asserts
what the run promises (see `check`). The seed and the schedule are printed first, so a failure replays
exactly:

    .venv/bin/python -m tests.chaos --seed 7            # what the test runs, with its seed
    .venv/bin/python -m tests.chaos --seed 7 --dir /tmp/chaos7   # keep the run directory

The test (tests/test_chaos.py::test_chaos) draws a fresh seed each time unless SLAC_CHAOS_SEED is set.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python tests/chaos.py`: make the repo and tests/ importable
    sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from process_tools import Run, alive, cmdline, descendants  # noqa: E402
from tensorboard_files import read_events, scalars  # noqa: E402

from deploy.tools.audit import audit  # noqa: E402
from learner.checkpoint import latest_checkpoint, read_checkpoint  # noqa: E402

COMPONENTS = {"actor": "ray::ActorWorker", "learner": "ray::LearnerProcess", "redis": "redis-server",
              "evaluator": "ray::Evaluator", "board": "ray::WeightBoard"}
COMPOUND = ("double", "during_checkpoint", "during_redis_restart")
LENGTH, EVAL_EVERY, FLUSH_EVERY, ACTION_REPEAT = 7200, 2400, 25, 4
HURRY_AT = 0.75
"""Past this fraction of the run's length the events left come 3 s apart, so a fast machine sees them all."""
RUN_ARGS = ["debug", "--run.task", "cheetah", "--run.env-steps", str(LENGTH), "--run.eval-every", str(EVAL_EVERY),
            "--replay.audit", "--replay.flush-every", str(FLUSH_EVERY),
            "--learner.checkpoint-every", "100000", "--learner.checkpoint-every-s", "4",
            "--learner.max-restarts", "50", "--actors.max-restarts", "50"]


@dataclass
class Event:
    at_s: float
    """Seconds after joint training began."""
    what: str
    """A component name, or one of COMPOUND."""
    pair: tuple[str, str] = ("", "")
    """For `double`: the two components killed back to back."""


def schedule(seed: int, window_s: float) -> list[Event]:
    """Every component once and every compound fault once, in a seeded order, then random kills while the
    window lasts; 5-12 s apart."""
    rng = random.Random(seed)
    kinds = [*COMPONENTS, *COMPOUND]
    rng.shuffle(kinds)
    events, t = [], 0.0
    while kinds or t < window_s:
        t += rng.uniform(5, 12)
        what = kinds.pop() if kinds else rng.choice(list(COMPONENTS))
        pair = (rng.choice(list(COMPONENTS)), rng.choice(list(COMPONENTS))) if what == "double" else ("", "")
        events.append(Event(round(t, 1), what, pair))
    return events


@dataclass
class Chaos:
    """Carries a schedule out against one run; records each kill (component, pid, time) as it lands."""

    run: Run
    run_dir: Path
    rng: random.Random
    kills: list[dict[str, Any]] = field(default_factory=list)
    event: int = -1
    seen: dict[int, list[str]] = field(default_factory=dict)

    def pids(self, component: str) -> list[int]:
        marker = COMPONENTS[component]
        found = descendants(self.run.proc.pid)
        self.seen.update(found)
        return sorted(pid for pid, cmd in found.items() if any(marker in part for part in cmd))

    def kill(self, component: str, note: str = "", wait_s: float = 20.0, not_pid: int | None = None) -> int | None:
        """SIGKILL one process of `component` (waiting up to `wait_s` for one, e.g. while Ray restarts it)."""
        deadline = time.monotonic() + wait_s
        pids = [p for p in self.pids(component) if p != not_pid]
        while not pids and time.monotonic() < deadline and self.run.proc.poll() is None:
            time.sleep(0.05)
            pids = [p for p in self.pids(component) if p != not_pid]
        if not pids:
            self.kills.append({"event": self.event, "component": component, "pid": None, "note": note or "not running"})
            return None
        pid = self.rng.choice(pids)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pid = None
        self.kills.append({"event": self.event, "component": component, "pid": pid, "note": note})
        return pid

    def during_checkpoint(self, timeout_s: float = 30.0) -> None:
        """Kill the learner as soon as a checkpoint is being written: the replay's BGSAVE file or the
        learner's temporary checkpoint file exists."""
        deadline = time.monotonic() + timeout_s
        ckpts, data = self.run_dir / "checkpoints", self.run_dir / "redis"
        while time.monotonic() < deadline:
            writing = [p.name for d in (ckpts, data) if d.is_dir() for p in os.scandir(d)
                       if p.name.startswith((".tmp-", "temp-"))]
            if writing:
                self.kill("learner", f"during checkpoint ({writing[0]})")
                return
            time.sleep(0.002)
        self.kills.append({"event": self.event, "component": "learner", "pid": None, "note": "no checkpoint write seen"})

    def during_redis_restart(self, timeout_s: float = 20.0) -> None:
        """Kill redis-server, then the learner while the watchdog restarts it, then the new server during
        its AOF load (the moment it appears)."""
        old = self.kill("redis", "before the restart")
        time.sleep(0.3)
        self.kill("learner", "while Redis restarts")
        self.kill("redis", "during its restart", wait_s=timeout_s, not_pid=old)

    def carry_out(self, index: int, event: Event) -> None:
        self.event = index
        if event.what == "double":
            first = self.kill(event.pair[0], "double, first")
            time.sleep(0.5)
            self.kill(event.pair[1], "double, second", not_pid=first)
        elif event.what == "during_checkpoint":
            self.during_checkpoint()
        elif event.what == "during_redis_restart":
            self.during_redis_restart()
        else:
            self.kill(event.what)

    def landed(self, component: str) -> int:
        return sum(k["component"] == component and k["pid"] is not None for k in self.kills)


def run_chaos(seed: int, run_dir: Path, window_s: float = 60.0, timeout_s: float = 420.0) -> dict[str, Any]:
    """Start the run, carry out the schedule once joint training has begun, wait for the end; check it."""
    events = schedule(seed, window_s)
    print(f"chaos seed {seed}: {len(events)} events: " + ", ".join(
        f"{e.at_s}s {e.what}{'(' + '+'.join(e.pair) + ')' if e.what == 'double' else ''}" for e in events),
        flush=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    run = Run(run_dir.parent, [*RUN_ARGS, "--run.dir", str(run_dir)], name=f"chaos-{seed}")
    chaos = Chaos(run, run_dir, random.Random(seed + 1))
    try:
        started = time.monotonic()
        while run.replay_state().get("sampled", 0) < 20:  # the model's pre-training is over, SAC updates run
            if run.proc.poll() is not None or time.monotonic() - started > 180:
                raise AssertionError(f"seed {seed}: the run never reached joint training\n{run.text[-3000:]}")
            time.sleep(0.2)
        t0 = time.monotonic()
        last = 0.0
        for index, event in enumerate(events):
            while time.monotonic() - t0 < event.at_s and run.proc.poll() is None:
                chaos.pids("learner")  # keeps `seen` up to date
                near_end = run.replay_state().get("inserted", 0) * ACTION_REPEAT >= HURRY_AT * LENGTH
                if near_end and time.monotonic() - last >= 3:
                    break
                time.sleep(0.5)
            if run.proc.poll() is not None:
                break
            chaos.carry_out(index, event)
            last = time.monotonic()
        code = run.proc.wait(timeout=max(timeout_s - (time.monotonic() - started), 1))
    except BaseException:
        run.kill()
        raise
    result = {"seed": seed, "exit": code, "wall_s": round(time.monotonic() - started, 1), "events": len(events),
              "kills": chaos.kills, "landed": {c: chaos.landed(c) for c in COMPONENTS}}
    check(seed, run, run_dir, chaos, events, result)
    return result


def check(seed: int, run: Run, run_dir: Path, chaos: Chaos, events: list[Event], result: dict[str, Any]) -> None:
    """What the run promises however it was hit (each assertion names the seed)."""
    where = f"chaos seed {seed}, kills {json.dumps(chaos.kills)}"
    assert result["exit"] == 0, f"{where}: exit {result['exit']}\n{run.text[-4000:]}"
    assert len({k.get("event") for k in chaos.kills}) == len(events), f"{where}: the run ended before the schedule did"
    missed = [k for k in chaos.kills if k["pid"] is None]
    assert not missed, f"{where}: kills that found nothing to kill: {missed}"
    summary = run.summary()
    result["summary"] = {k: summary[k] for k in ("env_steps", "agent_steps", "episodes", "updates", "actor_restarts",
                                                 "learner_restarts", "replay_server_restarts", "replay_server_failed_starts",
                                                 "wall_clock_s")}
    # The run reached its length, every restart was counted, nothing ended it early.
    assert summary["env_steps"] >= LENGTH and not summary["interrupted"], f"{where}: {summary}"
    assert summary["agent_steps"] * ACTION_REPEAT == summary["env_steps"], f"{where}: {summary}"
    assert summary["learner_restarts"] == chaos.landed("learner"), f"{where}: {summary}"
    # A server killed while the watchdog restarts it makes that restart attempt fail (then retried), not a
    # restart of its own: every killed server is one or the other.
    assert summary["replay_server_restarts"] + summary["replay_server_failed_starts"] == chaos.landed("redis"), \
        f"{where}: {summary}"
    assert summary["actor_restarts"] == chaos.landed("actor"), f"{where}: {summary}"
    assert "Traceback" not in run.text, f"{where}: a traceback reached the terminal\n{run.text[-4000:]}"

    # No process of the run outlives it (the last Ray workers exit just after their raylet).
    deadline = time.monotonic() + 20
    def left() -> list[str]:
        return [cmd[0] for pid, cmd in chaos.seen.items() if alive(pid) and cmdline(pid) == cmd]
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left(), f"{where}: processes of the run outlived it: {left()}"

    # Every acknowledged row is in the replay, byte for byte (the writers' own records against Redis).
    report = audit(run_dir)
    result["audit"] = {k: getattr(report, k) for k in ("writers", "acknowledged_rows", "checked_rows", "stored_rows",
                                                        "unacknowledged_stored_rows", "inserted", "sampled")}
    assert report.ok, f"{where}: missing {report.missing[:10]}, changed {report.changed[:10]}, " \
                      f"claimed twice {report.conflicting[:10]}"
    assert report.evicted_rows == 0 and report.checked_rows == report.acknowledged_rows, f"{where}: {report}"
    assert report.stored_transitions == report.inserted, f"{where}: the replay's count disagrees with its rows"
    # Counting: a transition is counted once. The driver counts steps from the actors' reports, the replay
    # from its flushes; they differ only by an actor's last flush around its death (taken and reported but
    # never flushed, or flushed after its last report) and each actor's buffer at the end.
    slack = (chaos.landed("actor") + 2) * FLUSH_EVERY
    assert abs(summary["agent_steps"] - report.inserted) <= slack, f"{where}: {summary['agent_steps']} agent " \
        f"steps counted, {report.inserted} stored (slack {slack})"
    assert report.inserted - report.acknowledged_transitions <= chaos.landed("actor") * FLUSH_EVERY, f"{where}: {report}"
    assert abs(summary["episodes"] - report.stored_episode_ends) <= chaos.landed("actor") + 2, \
        f"{where}: {summary['episodes']} episodes counted, {report.stored_episode_ends} ended in the replay"
    # Samples: once per update. Updates a dead learner made after its last checkpoint are redone by its
    # successor (counted in learner_updates_lost); each death can also drop one unrecorded block.
    lost = sum(summary["learner_updates_lost"])
    blocks = 30 * chaos.landed("learner") + 10
    assert summary["updates"] - 10 <= report.sampled <= summary["updates"] + lost + blocks, \
        f"{where}: sampled {report.sampled}, updates {summary['updates']}, lost {lost}"

    # The dashboards (read in the TensorBoard file, the same calls as W&B's): steps only going forward.
    logged = scalars(read_events(run_dir, file=-1), "counters/env_steps")
    steps = [event.step for event in logged]
    assert logged and steps == sorted(steps) and steps == [event.value for event in logged], \
        f"{where}: the logged env steps went backwards"
    # The evaluation grid: every point once, the last at the run's length.
    scheduled = [int(r["scheduled_env_steps"]) for r in csv.DictReader((run_dir / "eval.csv").open())]
    assert scheduled == [*range(0, LENGTH, EVAL_EVERY), LENGTH], f"{where}: evaluation grid {scheduled}"
    # The newest checkpoint is whole (its digest matches) and loads.
    newest = latest_checkpoint(run_dir / "checkpoints")
    assert newest is not None and read_checkpoint(newest)["counters"]["updates"] > 0, where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Replay a chaos test by its seed.")
    parser.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: a fresh one)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of random kills after the mandatory ones")
    parser.add_argument("--dir", default="", help="the run directory (default: a temporary one)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    run_dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-")) / "run"
    result = run_chaos(seed, run_dir, args.window)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
