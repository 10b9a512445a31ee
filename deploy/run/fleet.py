"""The actor processes of a run: their `run` tasks, deaths, restarts and counters over every life.

Ray restarts a crashed actor process (up to `actors.max_restarts`); the fleet then starts a new life on it
with fresh seeds, and banks the dead life's counters so the run's totals never go backwards. A `run` that
raised while its process lives on (e.g. the replay unreachable while its server restarts) gets a new life
too. Each life stops itself once the replay holds the run's length (`stop_at_inserted`). A `poll` that raises
in a live actor (a bug) costs that poll, up to POLL_FAILURES_TOLERATED in a row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import redis

from actors.worker import ActorWorker, EnvFactory
from common.config import Config
from deploy.run.progress import ActorWaitMeter
from deploy.run.ray_runtime import RENDER_PROCESS_ENV, replay_inserts
from deploy.run.run_dir import write_traceback
from deploy.run.run_state import RunState
from deploy.run.weight_board import BOARD_NAME, RayWeightSource
from replay_service import ReplayConnectionError

log = logging.getLogger(__name__)

RESTART_TIMEOUT_S = 120.0
"""How long the fleet waits for Ray to bring a crashed actor back before counting it lost."""

POLL_FAILURES_TOLERATED = 3
"""An actor's `poll` that raises (a bug: its process and its `run` go on) costs that poll, its traceback appended to
the run's logs/actor-poll-errors.log; up to this many in a row for one actor are skipped, and the next one ends the
run, since the run then no longer sees that actor's counters."""


class ActorPollError(RuntimeError):
    """An actor's `poll` raised POLL_FAILURES_TOLERATED + 1 times in a row: a bug, explained in one paragraph."""


def _cause(exc: Exception) -> str:
    """The last line of a Ray task error's cause: what the remote code raised."""
    return (str(getattr(exc, "cause", None) or exc).strip().splitlines() or [type(exc).__name__])[-1]


class ActorFleet:
    """`actors.num` Ray actors stepping environments into the replay at `replay_url`.

    `state` is the driver's RunState: the fleet keeps its step, error and restart totals current, counting on
    from `carried` (the totals of the run's earlier lives, for a resumed run). `run_dir` receives the tracebacks of
    failed polls.
    """

    def __init__(self, cfg: Config, replay_url: str, env_factory: EnvFactory | None, state: RunState,
                 carried: dict[str, float], options: dict[str, Any], action_repeat: int, run_dir: Path) -> None:
        self.cfg, self.replay_url, self.state, self.carried = cfg, replay_url, state, carried
        self.run_dir = run_dir
        self.action_repeat = action_repeat
        # The run's length as the replay's total of inserted transitions: each life stops itself there.
        self.start_inserted = replay_inserts(replay_url, cfg)
        remaining = -(-max(cfg.run.env_steps - state.env_steps, 0) // action_repeat)
        self.stop_at_inserted = self.start_inserted + remaining
        # SPREAD: on a cluster the actors go to as many nodes as possible.
        actor_cls = ray.remote(max_restarts=cfg.actors.max_restarts, max_task_retries=0, max_concurrency=2,
                               scheduling_strategy="SPREAD", runtime_env={"env_vars": RENDER_PROCESS_ENV},
                               **options)(ActorWorker)
        source = RayWeightSource(BOARD_NAME)
        self.actors = [actor_cls.options(name=f"slac-actor-{i}").remote(
            cfg, i, replay_url, source, env_factory, state.generation) for i in range(cfg.actors.num)]
        self.lives = [0] * cfg.actors.num
        self.alive = [True] * cfg.actors.num
        self.run_failures = [0] * cfg.actors.num
        self.poll_failures = [0] * cfg.actors.num  # in a row
        self.restarting: dict[int, float] = {}
        self.pids: dict[int, set[int]] = {}
        self.restarts_before = state.actor_restarts  # from the run being resumed
        self.nodes: dict[int, str] = {}
        self.finished: set[int] = set()  # actors whose run reached the run's length
        self.last_seen: dict[int, dict[str, float]] = {}
        self.last_pid: dict[int, int] = {}
        self.train_return: float | None = None  # the mean return of the episodes finished since the last poll with any
        self.wait_meter = ActorWaitMeter()
        self.runs = {a.run.remote(0, stop_at_inserted=self.stop_at_inserted): i for i, a in enumerate(self.actors)}

    @property
    def done(self) -> bool:
        """Every live actor reached the run's length."""
        return len(self.finished) >= sum(self.alive)

    def check(self, redis_down: bool) -> None:
        """Collect ended runs; start new lives on restarted actors (not while Redis is down: they would fail)."""
        done, _ = ray.wait(list(self.runs), num_returns=len(self.runs), timeout=0)
        for ref in done:
            index = self.runs.pop(ref)
            try:
                ray.get(ref)
                self.finished.add(index)
            except ray.exceptions.RayActorError as exc:
                self._died(index, exc)
            except ray.exceptions.RayTaskError as exc:
                self._run_failed(index, exc)
        if not redis_down:
            for index, since in list(self.restarting.items()):
                self._resume(index, since)

    def _died(self, index: int, exc: Exception) -> None:
        """Its process died: Ray is restarting it (or gave up); fold its counters into the base."""
        seen = self.last_seen.pop(index, None)
        if seen:  # so totals never go backwards when the new life starts from zero
            self._bank(index, seen)
        self.poll_failures[index] = 0  # the new process's polls start a new count
        log.warning("actor %d stopped (%s); waiting for Ray to restart it", index, type(exc).__name__)
        self.restarting.setdefault(index, time.monotonic())

    def _run_failed(self, index: int, exc: ray.exceptions.RayTaskError) -> None:
        """Its `run` raised but the process lives on with its counters: a new life, at most max_restarts times."""
        self.run_failures[index] += 1
        if self.run_failures[index] > self.cfg.actors.max_restarts:
            log.error("actor %d failed %d times (last: %s); it is gone for good", index, self.run_failures[index],
                      _cause(exc))
            self.alive[index] = False
            return
        log.warning("actor %d failed (%s); starting it again", index, _cause(exc))
        self.restarting.setdefault(index, time.monotonic())

    def _bank(self, index: int, seen: dict[str, float]) -> None:
        base = self.state.actor_base.setdefault(index, {})
        for key in ("env_steps", "steps", "env_errors", "steps_written"):
            base[key] = base.get(key, 0) + seen.get(key, 0)

    def _resume(self, index: int, since: float) -> None:
        """Once the restarted actor answers, start a new life (fresh seeds) on it."""
        try:
            report = ray.get(self.actors[index].poll.remote(), timeout=1)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            if time.monotonic() - since > RESTART_TIMEOUT_S or isinstance(exc, ray.exceptions.ActorDiedError):
                log.error("actor %d is gone for good (%s)", index, type(exc).__name__)
                self.alive[index] = False
                del self.restarting[index]
            return
        except ray.exceptions.RayTaskError as exc:  # it answers, but its poll raised: asked again next tick
            self._poll_failed(index, exc)
            return
        self.poll_failures[index] = 0
        self._count_pid(index, report["pid"])
        del self.restarting[index]
        self.lives[index] += 1
        self.runs[self.actors[index].run.remote(self.lives[index], stop_at_inserted=self.stop_at_inserted)] = index

    def _count_pid(self, index: int, pid: int) -> None:
        """Restarts counted exactly: each new process id of an actor is one restart."""
        pids = self.pids.setdefault(index, set())
        if pid not in pids:
            pids.add(pid)
            self.state.actor_restarts = self.restarts_before + sum(len(p) - 1 for p in self.pids.values())

    def poll(self) -> list[dict[str, Any]]:
        """The reports of the live actors (counters, episodes since the last poll); totals brought up to date.
        Raises ActorPollError when one actor's poll has raised more than POLL_FAILURES_TOLERATED times in a row."""
        polls = [(i, a.poll.remote()) for i, a in enumerate(self.actors) if self.alive[i] and i not in self.restarting]
        reports = []
        for i, ref in polls:
            try:
                report = ray.get(ref, timeout=10)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                continue  # restarting; its run ref reports the death
            except ray.exceptions.RayTaskError as exc:
                self._poll_failed(i, exc)
                continue
            self.poll_failures[i] = 0
            self._count_pid(i, report["pid"])
            if self.last_pid.get(i, report["pid"]) != report["pid"] and i in self.last_seen:
                # Ray restarted it before its failed run reached us: bank the dead life's counters now.
                self._bank(i, self.last_seen.pop(i))
            self.last_pid[i] = report["pid"]
            self.nodes[i] = report["node_id"]
            self.last_seen[i] = report["counters"]
            reports.append(report)
        self._update_totals()
        return reports

    def _poll_failed(self, index: int, exc: ray.exceptions.RayTaskError) -> None:
        """A poll that raised in a live actor: logged and skipped, up to POLL_FAILURES_TOLERATED in a row. The
        episodes it had taken from the actor are lost to the run's episode count and training returns (not to the
        replay: the actor's `run` goes on)."""
        self.poll_failures[index] += 1
        saved = self._save_traceback(index, exc)
        if self.poll_failures[index] > POLL_FAILURES_TOLERATED:
            raise ActorPollError(
                f"Actor {index}'s poll failed {self.poll_failures[index]} times in a row (last: {_cause(exc)}; "
                f"tracebacks in {saved}), so the run can no longer count its steps. This is a bug: please report it "
                f"with those tracebacks.") from exc
        log.error("actor %d's poll failed (%s; traceback in %s); its run goes on, the poll is skipped (%d in a row; "
                  "%d more in a row end the run)", index, _cause(exc), saved, self.poll_failures[index],
                  POLL_FAILURES_TOLERATED + 1 - self.poll_failures[index])

    def _save_traceback(self, index: int, exc: Exception) -> str:
        """Append `exc`'s traceback to <run dir>/logs/actor-poll-errors.log; where it went (or why nowhere)."""
        try:
            path = write_traceback(self.run_dir, exc, append_to="actor-poll-errors.log",
                                   header=f"actor {index}, failure {self.poll_failures[index]} in a row")
        except OSError as error:  # e.g. a full disk: the log line still says what failed
            log.error("actor %d's poll traceback could not be saved (%s)", index, error)
            return f"no file ({error.strerror or error})"
        return str(path)

    def poll_scalars(self, note_renderer: Callable[[dict[str, str] | None], None]) -> tuple[dict[str, float], list[float]]:
        """`poll`, as the driver's scalars since the last tick (rates, staleness, limiter timeouts, finished episodes,
        whose count and mean return go to the run's state and `train_return`) and the fraction of it each actor spent
        waiting on the replay; each report's renderer goes to `note_renderer`."""
        rates, lags, returns, lengths, timeouts, waits = [], [], [], [], 0, []
        for report in self.poll():
            note_renderer(report.get("renderer"))
            counters = report["counters"]
            rates.append(counters["steps_per_s"] * self.action_repeat)
            lags.append(counters["version_lag"])
            timeouts += counters["limiter_timeouts"]
            wait = self.wait_meter.fraction(report["index"], time.monotonic(), counters["replay_s"])
            if wait is not None:
                waits.append(wait)
            for episode in report["episodes"]:
                returns.append(episode["return"])
                lengths.append(episode["length"])
        self.state.episodes += len(returns)
        scalars = {"perf/env_steps_per_s": sum(rates), "actors/limiter_timeouts": timeouts,
                   **{f"perf/env_steps_per_s_actor{i}": rate for i, rate in enumerate(rates)}}
        if lags:
            scalars["actors/version_lag"] = sum(lags) / len(lags)
        if returns:
            self.train_return = sum(returns) / len(returns)
            scalars["train/return"] = self.train_return
            scalars["train/episode_length"] = sum(lengths) / len(lengths)
        return scalars, waits

    def stop(self) -> None:
        """Stop every run; one still held by the rate limiter after 10 s is killed (its buffer is not stored)."""
        for actor in self.actors:
            actor.stop.remote()
        _, pending = ray.wait(list(self.runs), num_returns=len(self.runs), timeout=10)
        for ref in pending:
            ray.kill(self.actors[self.runs[ref]], no_restart=True)
        finished: list[float] = []  # episodes ended since the last poll: a poll hands them over once
        for i, actor in enumerate(self.actors):
            try:
                report = ray.get(actor.poll.remote(), timeout=5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                continue
            except ray.exceptions.RayTaskError as exc:  # its last counters are lost; the replay's count below holds
                log.error("actor %d's last poll failed (%s)", i, _cause(exc))
                continue
            self.last_seen[i] = report["counters"]
            finished += [episode["return"] for episode in report["episodes"]]
        self.state.episodes += len(finished)
        if finished:
            self.train_return = sum(finished) / len(finished)
        self._update_totals()
        # An actor killed mid-run took steps after its last poll; those it stored are in the replay's count.
        try:
            stored = replay_inserts(self.replay_url, self.cfg) - self.start_inserted
        except (ReplayConnectionError, redis.RedisError):
            return
        self.state.agent_steps = max(self.state.agent_steps, int(self.carried["steps"]) + stored)
        self.state.env_steps = max(self.state.env_steps, int(self.carried["env_steps"]) + stored * self.action_repeat)

    def _update_totals(self) -> None:
        """Env steps and env errors over every life of the run: the totals carried from before a resume,
        then every life of every actor in this one (dead lives live in actor_base)."""
        def total(key: str) -> int:
            return int(self.carried.get(key, 0) + sum(
                self.state.actor_base.get(i, {}).get(key, 0) + self.last_seen.get(i, {}).get(key, 0)
                for i in range(len(self.actors))))

        self.state.env_steps = max(self.state.env_steps, total("env_steps"))
        self.state.agent_steps = max(self.state.agent_steps, total("steps"))
        self.state.env_errors = total("env_errors")
        self.state.steps_written = total("steps_written")

    def summary(self) -> dict[str, Any]:
        """The run summary's placement entries: the nodes the actors ran on."""
        nodes = sorted(set(self.nodes.values()))
        return {"actor_nodes": len(nodes), "actor_node_ids": nodes}
