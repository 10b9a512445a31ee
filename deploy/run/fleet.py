"""The actor processes of a run: their `run` tasks, deaths, restarts and counters over every life.

Ray restarts a crashed actor process (up to `actors.max_restarts`); the fleet then starts a new life on it
with fresh seeds, and banks the dead life's counters so the run's totals never go backwards. A `run` that
raised while its process lives on (e.g. the replay unreachable while its server restarts) gets a new life
too. Each life stops itself once the replay holds the run's length (`stop_at_inserted`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import redis

from actors.worker import ActorWorker, EnvFactory
from common.config import Config
from deploy.run.ray_runtime import RENDER_PROCESS_ENV, replay_inserts
from deploy.run.run_dir import write_traceback
from deploy.run.weight_board import BOARD_NAME, RayWeightSource
from replay_service import ReplayConnectionError

log = logging.getLogger(__name__)

RESTART_TIMEOUT_S = 120.0
"""How long the fleet waits for Ray to bring a crashed actor back before counting it lost."""

POLL_FAILURES_TOLERATED = 3
"""An actor's `poll` that raises (a bug: its process and its `run` go on) costs that poll, its traceback saved in
the run's logs; this many in a row for one actor end the run, since the run then no longer sees its counters."""


class ActorPollError(RuntimeError):
    """An actor's `poll` raised POLL_FAILURES_TOLERATED + 1 times in a row: a bug, explained in one paragraph."""


@dataclass
class RunState:
    """Counters the driver owns; saved in every checkpoint's `extra`."""

    env_steps: int = 0
    agent_steps: int = 0
    episodes: int = 0
    actor_restarts: int = 0
    env_errors: int = 0
    steps_written: int = 0
    """Transitions the actors' writers had acknowledged, over every life of this session (not carried over a resume)."""
    next_eval: int = 0
    last_eval_scheduled: int = -1
    generation: int = 0
    evals: int = 0
    evaluations_redone: int = 0
    """Evaluations cut off by their evaluator's death and run again at their grid point (evaluation_schedule.py)."""
    evaluator_restarts: int = 0
    """Restarts of the evaluator's process by Ray, over the run's lives (supervisor.RayRestarts)."""
    weight_board_restarts: int = 0
    """Restarts of the weight board's process by Ray, over the run's lives (supervisor.RayRestarts)."""
    wall_clock_s: float = 0.0
    """Seconds the run's driver has run, over its lives, as of this state's checkpoint: a resumed run counts on
    from it, so the summary's wall clock (and the harness's updates/s) covers every life. The time between a
    dead life's last checkpoint and its death is not counted."""
    actor_base: dict[int, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def restored(cls, cfg: Config, resume: dict[str, Any] | None, replay_url: str) -> tuple[RunState, dict[str, float]]:
        """The state a run starts from, and the totals of its earlier lives (`carried`): every actor process starts
        from zero, so a resumed run counts on from these (the per-actor bases only cover restarts within a life)."""
        state = cls(**resume["extra"]["run_state"]) if resume else cls()
        carried: dict[str, float] = {"env_steps": state.env_steps, "steps": state.agent_steps,
                                     "env_errors": state.env_errors}
        state.actor_base = {}
        if resume:
            state.generation += 1
        elif cfg.run.resume:  # stopped before its first checkpoint: count on from what the replay holds
            carried["steps"] = state.agent_steps = replay_inserts(replay_url, cfg)
            carried["env_steps"] = state.env_steps = state.agent_steps * cfg.task_spec.action_repeat
            state.generation = 1
        return state, carried

    def summary(self) -> dict[str, int]:
        """The run summary's counters of steps, episodes, evaluations and the lives of the actors, the evaluator
        and the weight board."""
        return {"env_steps": self.env_steps, "agent_steps": self.agent_steps, "episodes": self.episodes,
                "actor_restarts": self.actor_restarts, "env_errors": self.env_errors,
                "actor_steps_written": self.steps_written, "evaluator_restarts": self.evaluator_restarts,
                "weight_board_restarts": self.weight_board_restarts, "evaluations_redone": self.evaluations_redone}


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
        log.warning("actor %d stopped (%s); waiting for Ray to restart it", index, type(exc).__name__)
        self.restarting.setdefault(index, time.monotonic())

    def _run_failed(self, index: int, exc: ray.exceptions.RayTaskError) -> None:
        """Its `run` raised but the process lives on with its counters: a new life, at most max_restarts times."""
        self.run_failures[index] += 1
        cause = str(getattr(exc, "cause", None) or exc).strip().splitlines() or [type(exc).__name__]
        if self.run_failures[index] > self.cfg.actors.max_restarts:
            log.error("actor %d failed %d times (last: %s); it is gone for good", index, self.run_failures[index],
                      cause[-1])
            self.alive[index] = False
            return
        log.warning("actor %d failed (%s); starting it again", index, cause[-1])
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
        """The reports of the live actors (counters, episodes since the last poll); totals brought up to date."""
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
        """A poll that raised in a live actor: logged and skipped (the episodes it had taken are lost to the
        progress line's returns, not to the replay), until POLL_FAILURES_TOLERATED in a row end the run."""
        self.poll_failures[index] += 1
        cause = (str(getattr(exc, "cause", None) or exc).strip().splitlines() or [type(exc).__name__])[-1]
        saved = write_traceback(self.run_dir, exc)
        if self.poll_failures[index] > POLL_FAILURES_TOLERATED:
            raise ActorPollError(
                f"Actor {index}'s poll failed {self.poll_failures[index]} times in a row (last: {cause}; traceback in "
                f"{saved}), so the run can no longer count its steps. This is a bug: please report it with that "
                f"traceback. The run's checkpoint and replay are kept: --run.resume {self.run_dir} continues it.") from exc
        log.error("actor %d's poll failed (%s; traceback in %s); its run goes on, the poll is skipped (%d in a row, "
                  "the run ends after %d)", index, cause, saved, self.poll_failures[index], POLL_FAILURES_TOLERATED)

    def stop(self) -> None:
        """Stop every run; one still held by the rate limiter after 10 s is killed (its buffer is not stored)."""
        for actor in self.actors:
            actor.stop.remote()
        _, pending = ray.wait(list(self.runs), num_returns=len(self.runs), timeout=10)
        for ref in pending:
            ray.kill(self.actors[self.runs[ref]], no_restart=True)
        for i, actor in enumerate(self.actors):
            try:
                self.last_seen[i] = ray.get(actor.poll.remote(), timeout=5)["counters"]
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                continue
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
