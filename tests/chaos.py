"""Chaos: a debug-preset training through the real entry point while its components are killed at random.

A seeded schedule kills, every 5-12 s, one of: an actor process, the learner, the embedded redis-server,
the evaluator, the weight board (each at least once), plus three compound faults: two kills inside one
interval, the learner killed while a checkpoint is being written, and a Redis restart hit twice (the
restarted redis-server killed the moment it appears, before it is ready, then the learner while the watchdog
waits to retry). Besides the schedule, the evaluator is killed as soon as the driver logs an evaluation's
start, until one evaluation is cut off. Each compound fault is confirmed by the run's own record: the Redis
watchdog's outage windows (summary `replay_server_outages`) hold both kills of the Redis restart and a killed
start, and the driver's log says the evaluation was cut off and runs again at its grid point. Afterwards
`check` asserts what the run promises (see `check`). The seed and the schedule are printed first, so a
failure replays exactly:

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
import re
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

from process_tools import Run, alive, aof_written, children, cmdline, descendants, wait_for_no_process_using  # noqa: E402
from tensorboard_files import read_events, scalars  # noqa: E402

from deploy.tools.audit import audit  # noqa: E402
from learner.checkpoint import latest_checkpoint, read_checkpoint  # noqa: E402

COMPONENTS = {"actor": "ray::ActorWorker", "learner": "ray::LearnerProcess", "redis": "redis-server",
              "evaluator": "ray::Evaluator", "board": "ray::WeightBoard"}
COMPOUND = ("double", "during_checkpoint", "during_redis_restart")
LENGTH, EVAL_EVERY, FLUSH_EVERY, ACTION_REPEAT = 7200, 2400, 25, 4
HURRY_AT = 0.75
"""Past this fraction of the run's length the events left come 3 s apart, so a fast machine sees them all."""
EVALUATING = re.compile(r"evaluating policy version \d+ at \d+ env steps \(grid point (\d+)\)")
CUT_OFF = re.compile(r"the evaluation at grid point (\d+) was cut off")
"""The driver's log lines (deploy/run/evaluation_schedule.py) of an evaluation's start and of one lost with its
evaluator."""
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
    event: int | str = -1
    read: int = 0
    """How much of the run's log `watch_evaluations` has read."""
    targeted: list[int] = field(default_factory=list)
    """Grid points whose evaluation the evaluator was killed under, as soon as its start was logged."""
    cut_off: list[int] = field(default_factory=list)
    """Grid points the driver logged as cut off (and to run again)."""

    def pids(self, component: str) -> list[int]:
        marker = COMPONENTS[component]
        found = descendants(self.run.proc.pid)
        return sorted(pid for pid, cmd in found.items() if any(marker in part for part in cmd))

    def kill(self, component: str, note: str = "", wait_s: float = 20.0, not_pid: int | None = None) -> int | None:
        """SIGKILL one process of `component` (waiting up to `wait_s` for one, e.g. while Ray restarts it)."""
        pids = self._wait_for(component, time.monotonic() + wait_s, not_pid)
        if not pids:
            self.kills.append({"event": self.event, "component": component, "pid": None, "note": note or "not running"})
            return None
        if component == "redis":  # the audit checks the promise, not everysec's documented hole
            self._aof_written()
        return self._kill(component, self.rng.choice(pids), note)

    def _aof_written(self) -> None:
        """Let a running redis-server write what it acknowledged (process_tools.aof_written; 5 s at most, ~0 s
        unless an fsync stalls); one not answering yet has acknowledged nothing since it started."""
        client = self.run.redis(retry=False)
        if client is not None:
            aof_written(client)
            client.close()

    def _wait_for(self, component: str, deadline: float, not_pid: int | None = None) -> list[int]:
        """The pids of `component` (but `not_pid`), waiting until `deadline` for one (e.g. while Ray restarts it)."""
        pids = [p for p in self.pids(component) if p != not_pid]
        while not pids and time.monotonic() < deadline and self.run.proc.poll() is None:
            time.sleep(0.05)
            pids = [p for p in self.pids(component) if p != not_pid]
        return pids

    def _kill(self, component: str, pid: int, note: str) -> int | None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pid = None
        self.kills.append({"event": self.event, "component": component, "pid": pid, "note": note,
                           "at": round(time.time(), 3)})
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
        """Kill redis-server; kill the new one the watchdog starts the moment it execs (before it has loaded its
        AOF: a failed start, which the watchdog retries a second later); kill the learner in that second.
        `check` finds both kills inside one outage of the watchdog's record, with a killed start. The learner is
        found first (Ray may still be restarting it after an earlier event): looked for only after the Redis kills,
        a learner in its restart was killed seconds later, after the outage (a CI run)."""
        deadline = time.monotonic() + timeout_s
        learners = self._wait_for("learner", deadline)
        old = self.kill("redis", "before the restart")
        while time.monotonic() < deadline and self.run.proc.poll() is None:
            # The driver's own children, read in a millisecond: a full /proc scan could miss the AOF load.
            new = [pid for pid in children(self.run.proc.pid) if pid != old and alive(pid)
                   and cmdline(pid)[:1] and "redis-server" in cmdline(pid)[0]]
            if new:
                self._kill("redis", new[0], "during its restart, before it was ready")
                if learners:
                    self._kill("learner", self.rng.choice(learners), "while Redis restarts")
                else:
                    self.kills.append({"event": self.event, "component": "learner", "pid": None,
                                       "note": "while Redis restarts: not running"})
                return
            time.sleep(0.001)
        self.kills.append({"event": self.event, "component": "redis", "pid": None, "note": "no restart seen"})

    def watch_evaluations(self) -> None:
        """Read the run's new log lines: kill the evaluator under each evaluation the driver starts (grid point
        above 0, not yet finished) until one was cut off; note the grid points the driver says were cut off."""
        with self.run.log.open("rb") as f:
            f.seek(self.read)
            text = f.read()
        text = text[: text.rfind(b"\n") + 1]  # whole lines only
        self.read += len(text)
        for line in text.decode(errors="replace").splitlines():
            if found := CUT_OFF.search(line):
                self.cut_off.append(int(found.group(1)))
            found = EVALUATING.search(line)
            if found and int(found.group(1)) > 0 and not set(self.targeted) & set(self.cut_off):
                pids, event = self.pids("evaluator"), self.event
                self.event = "evaluation"
                if pids and self._kill("evaluator", pids[0], f"evaluating grid point {found.group(1)}"):
                    self.targeted.append(int(found.group(1)))
                self.event = event

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
        last = looked = 0.0
        for index, event in enumerate(events):
            while time.monotonic() - t0 < event.at_s and run.proc.poll() is None:
                chaos.watch_evaluations()
                if time.monotonic() - looked >= 0.5:
                    looked = time.monotonic()
                    near_end = run.replay_state().get("inserted", 0) * ACTION_REPEAT >= HURRY_AT * LENGTH
                    if near_end and looked - last >= 3:
                        break
                time.sleep(0.05)
            if run.proc.poll() is not None:
                break
            chaos.carry_out(index, event)
            last = time.monotonic()
        while run.proc.poll() is None:  # the evaluations left, the final one included, may still be targeted
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"seed {seed}: the run did not end within {timeout_s} s\n{run.text[-3000:]}")
            chaos.watch_evaluations()
            time.sleep(0.05)
        chaos.watch_evaluations()
        code = run.proc.returncode
    except BaseException:
        run.kill()
        raise
    result = {"seed": seed, "exit": code, "wall_s": round(time.monotonic() - started, 1), "events": len(events),
              "kills": chaos.kills, "landed": {c: chaos.landed(c) for c in COMPONENTS},
              "evaluations_targeted": chaos.targeted, "evaluations_cut_off": chaos.cut_off}
    check(seed, run, run_dir, chaos, events, result)
    return result


def check(seed: int, run: Run, run_dir: Path, chaos: Chaos, events: list[Event], result: dict[str, Any]) -> None:
    """What the run promises however it was hit (each assertion names the seed)."""
    where = f"chaos seed {seed}, kills {json.dumps(chaos.kills)}"
    assert result["exit"] == 0, f"{where}: exit {result['exit']}\n{run.text[-4000:]}"
    scheduled = {k["event"] for k in chaos.kills if k["event"] != "evaluation"}
    assert len(scheduled) == len(events), f"{where}: the run ended before the schedule did"
    missed = [k for k in chaos.kills if k["pid"] is None]
    assert not missed, f"{where}: kills that found nothing to kill: {missed}"
    summary = run.summary()
    result["summary"] = {k: summary[k] for k in (
        "env_steps", "agent_steps", "episodes", "updates", "actor_restarts", "learner_restarts", "replay_server_restarts",
        "replay_server_failed_starts", "replay_server_killed_starts", "replay_server_outages", "evaluator_restarts",
        "weight_board_restarts", "evaluations_redone", "wall_clock_s", "ray_dir")}
    # The run reached its length, every restart was counted, nothing ended it early.
    assert summary["env_steps"] >= LENGTH and not summary["interrupted"], f"{where}: {summary}"
    assert summary["agent_steps"] * ACTION_REPEAT == summary["env_steps"], f"{where}: {summary}"
    assert summary["learner_restarts"] == chaos.landed("learner"), f"{where}: {summary}"
    # A server killed while the watchdog restarts it makes that restart attempt fail (then retried), not a
    # restart of its own: every killed server is one or the other. A start that failed by itself (its port
    # taken for a moment) is retried too and is in the outage's `causes`, not in this count.
    assert summary["replay_server_restarts"] + summary["replay_server_killed_starts"] == chaos.landed("redis"), \
        f"{where}: {summary}"
    assert summary["actor_restarts"] == chaos.landed("actor"), f"{where}: {summary}"
    # Ray's own count of the processes it brought back by itself.
    assert summary["evaluator_restarts"] == chaos.landed("evaluator"), f"{where}: {summary}"
    assert summary["weight_board_restarts"] == chaos.landed("board"), f"{where}: {summary}"
    assert "Traceback" not in run.text, f"{where}: a traceback reached the terminal\n{run.text[-4000:]}"
    check_redis_restarts_hit(where, chaos, summary["replay_server_outages"])
    # An evaluation cut off by its evaluator's death, in the driver's words, runs again at its grid point (the
    # grid is checked below: every point once); the driver counts what it logs.
    assert set(chaos.targeted) & set(chaos.cut_off), f"{where}: the evaluator was killed under the evaluations " \
        f"of grid points {chaos.targeted}, and the driver saw {chaos.cut_off} cut off"
    assert summary["evaluations_redone"] == len(chaos.cut_off), f"{where}: {summary}, cut off: {chaos.cut_off}"

    # No process of the run outlives it: none holds a file in its directory, its log or its private Ray's
    # directory, whenever it started (the last Ray workers exit just after their raylet).
    left = wait_for_no_process_using(run_dir, run.log, summary["ray_dir"])
    assert not left, f"{where}: processes of the run outlived it: {left}"

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
    # successor (counted in learner_updates_lost); each death can also drop one unrecorded block. The driver
    # counts a death's lost updates from the last counters it polled, so the updates the learner made after that
    # poll are missing from its count: at most the longest gap between two of its polls at the fastest rate it
    # logged (a busy 2-core machine once kept the driver from polling for 13 s, and a run made 1502 samples
    # against 1333 updates and counted losses). Both come from the driver's own rows (counters/updates).
    polls = scalars(read_events(run_dir, file=-1), "counters/updates")
    pairs = [(b.wall_time - a.wall_time, b.value - a.value)
             for a, b in zip(polls, polls[1:], strict=False) if b.wall_time > a.wall_time]
    unseen = max(gap for gap, _ in pairs) * max(done / gap for gap, done in pairs) if pairs else 0.0
    lost = sum(summary["learner_updates_lost"])
    blocks = (30 + int(unseen) + 1) * chaos.landed("learner") + 10
    assert summary["updates"] - 10 <= report.sampled <= summary["updates"] + lost + blocks, \
        f"{where}: sampled {report.sampled}, updates {summary['updates']}, lost {lost}, unseen per death {unseen:.0f}"

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


def check_redis_restarts_hit(where: str, chaos: Chaos, outages: list[dict[str, Any]]) -> None:
    """Each `during_redis_restart` event happened as named, by the watchdog's own record: its second Redis kill
    and its learner kill fall inside one outage (after the watchdog saw the server dead, before a new one
    answered), and that outage had a start killed (the new server died by a signal before it was ready)."""
    for index in sorted({k["event"] for k in chaos.kills if k["note"].startswith("during its restart")}):
        second, learner = (next(k.get("at") for k in chaos.kills if k["event"] == index and k["component"] == c
                                and k["note"] != "before the restart") for c in ("redis", "learner"))
        learner = second if learner is None else learner  # no learner to kill: the Redis kill alone is checked
        hit = [o for o in outages if o["down_at"] <= min(second, learner) and o["up_at"] is not None
               and max(second, learner) <= o["up_at"] and o["killed_starts"] >= 1]
        assert hit, f"{where}: event {index}'s kills (redis at {second}, learner at {learner}) are not inside " \
                    f"one outage with a killed start: {outages}"


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
