"""The driver of one training run: it starts the Ray processes (learner, actors, evaluator, weight board) and
polls them until the run's length, asking its parts each tick (disk guard, Redis watchdog, fleet, learner
supervisor, evaluation and checkpoint schedules, forecast, logger). The work happens in the Ray processes;
deploy/run/launch.py builds what the driver needs (the run directory, Ray, Redis) before it starts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import ray

from actors.evaluator import Evaluator
from actors.worker import EnvFactory
from common.config import Config
from deploy.run.checkpoint_schedule import CheckpointSchedule
from deploy.run.disk import MB, DiskFullError, DiskGuard
from deploy.run.evaluation_schedule import EvalSchedule
from deploy.run.fleet import ActorFleet, ActorPollError
from deploy.run.forecast import Forecast
from deploy.run.logger import RunLogger
from deploy.run.progress import bound_scalars, progress_line
from deploy.run.ray_runtime import EVALUATOR_CPUS, RENDER_PROCESS_ENV, Placement, placement
from deploy.run.run_dir import RunDir
from deploy.run.run_state import RunState
from deploy.run.signals import StopSignals
from deploy.run.supervisor import (
    REDIS_GIVE_UP_S,
    LearnerSupervisor,
    RayRestarts,
    RedisWatchdog,
    ReplayServerLostError,
    RestartsExhaustedError,
)
from deploy.run.weight_board import BOARD_NAME, RayWeightPublisher, start_board
from learner.checkpoint import latest_checkpoint
from learner.process import LearnerProcess
from replay_service.client import redact

log = logging.getLogger(__name__)


class Driver:
    """Starts the Ray processes and polls them; evaluation, checkpoints and stopping live here."""

    def __init__(self, cfg: Config, run: RunDir, replay_url: str, action_dim: int,
                 env_factory: EnvFactory | None, signals: StopSignals | None = None,
                 watchdog: RedisWatchdog | None = None, place: Placement | None = None) -> None:
        self.cfg, self.run, self.replay_url = cfg, run, replay_url
        self.signals, self.watchdog = signals or StopSignals(), watchdog
        resume = run.resume_state
        self.state, self.carried = RunState.restored(cfg, resume, replay_url)
        self.logger = RunLogger(cfg, run.path, run_id=resume["extra"]["wandb_run_id"] if resume else None)
        self.board = start_board()
        place = place or placement(cfg, cluster=False)
        # Three threads: `run`, a checkpoint being written, and the driver's polls (never queued behind a checkpoint).
        learner_cls = ray.remote(max_concurrency=3, **place.learner)(LearnerProcess)

        def make_learner(state: dict[str, Any] | None, restart: int) -> Any:
            name = "slac-learner" if restart == 0 else f"slac-learner-{restart}"  # the dead one's name may linger
            seen = [0] if restart == 0 else [self.learner_info["counters"]["version"], *(
                int(c.get("policy_version", 0)) for c in self.fleet.last_seen.values())]
            return learner_cls.options(name=name).remote(cfg, action_dim, replay_url,
                                                         RayWeightPublisher(BOARD_NAME, floor=max(seen)),
                                                         str(run.path), state)

        self.supervisor = LearnerSupervisor(cfg, run.path, make_learner, resume)
        # Ray restarts the evaluator, as the board, whenever its process dies; RayRestarts counts both.
        self.evaluator = ray.remote(num_cpus=EVALUATOR_CPUS, max_restarts=-1, runtime_env={"env_vars": RENDER_PROCESS_ENV})(
            Evaluator).options(name="slac-evaluator").remote(cfg, env_factory)
        self.ray_restarts = RayRestarts(self.state, {"evaluator_restarts": self.evaluator,
                                                     "weight_board_restarts": self.board})
        self.action_repeat = cfg.task_spec.action_repeat
        self.fleet = ActorFleet(cfg, replay_url, env_factory, self.state, self.carried, place.actors,
                                self.action_repeat, run.path)
        self.evals = EvalSchedule(cfg, self.state, self.evaluator, self.board, self.logger,
                                  self.logger.note_renderer)
        # From the checkpoint when resuming: the first poll's updates/s then counts only new updates.
        counters = dict(resume["counters"]) if resume else {"updates": 0, "pretrain_updates": 0, "version": 0}
        self.checkpoints = CheckpointSchedule(cfg.learner, counters)
        self.learner_info: dict[str, Any] = {"counters": counters, "metrics": {}, "figure": None,
                                             "replay": {"inserted": 0.0, "sampled": 0.0}, "phase": "collect"}
        self.started = self.last_poll = time.monotonic()
        self.earlier_lives_s = self.state.wall_clock_s  # 0 for a new run
        self.disk = DiskGuard(run.path, cfg.run.min_free_mb)
        self.forecast = Forecast(cfg, learner_on_cpu=not place.learner_gpu)
        self.closed = False

    # --- main loop ----------------------------------------------------------------------------------
    @property
    def learner(self) -> Any:
        return self.supervisor.handle

    def loop(self) -> dict[str, Any]:
        interrupted = False
        self.signals.defer()  # a signal now stops the loop between two ticks, never inside a write
        try:
            while self.state.env_steps < self.cfg.run.env_steps and not self.fleet.done:
                self.signals.check()
                tick = time.monotonic()
                self._check_processes()
                self._poll()
                self.evals.step(self.learner_info["counters"])
                self._maybe_checkpoint()
                # Pacing of the driver's poll (one W&B row per tick), not synchronisation.
                time.sleep(max(0.0, self.cfg.learner.log_every_s - (time.monotonic() - tick)))
            self.signals.stopping()
        except KeyboardInterrupt:
            interrupted = True
            self.signals.stopping()
            log.warning("%s: stopping, writing a checkpoint", self.signals.received or "interrupted")
        except ReplayServerLostError as lost:
            raise ReplayServerLostError(f"{lost} {self._checkpoint_without_replay()}") from lost
        except DiskFullError as full:
            raise DiskFullError(f"{full} {self._checkpoint_without_replay(disk_full=True)}") from full
        except ActorPollError as failed:  # the learner and Redis are well: stop as on Ctrl-C, with a full checkpoint
            checkpoint = self._finish(interrupted=True)["checkpoint"]
            raise ActorPollError(f"{failed} The run stopped with a checkpoint ({checkpoint}); --run.resume "
                                 f"{self.run.path} continues it.") from failed
        return self._finish(interrupted)

    def _checkpoint_without_replay(self, disk_full: bool = False) -> str:
        """The replay's server is gone for good, or the disk is nearly full: keep the learner's work in a
        checkpoint that needs no Redis (no snapshot, no sample count) and say where it is; on a full disk only
        if it fits, so a half-written one never pushes the AOF over the edge. Actors and the learner are told
        to stop; nothing waits on their Redis retries."""
        self.signals.stopping()
        self.fleet.stop()
        self.learner.stop.remote()
        newest = latest_checkpoint(self.run.files.checkpoints)
        if disk_full and (newest is None or self.disk.free_mb() < 2 * newest.stat().st_size / MB + 1):
            return (f"No final checkpoint was written (no room for one); the newest complete one is {newest or 'none'}. "
                    f"Free space on that disk, then continue with --run.resume {self.run.path}.")
        try:
            path = ray.get(self.learner.checkpoint.remote(self._extra(), replay=False), timeout=REDIS_GIVE_UP_S + 60)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
            log.exception("no learner checkpoint without the replay")
            newest = latest_checkpoint(self.run.files.checkpoints)
            return (f"The learner's checkpoint could not be written ({type(exc).__name__}); the newest is "
                    f"{newest or 'none'}.")
        log.warning("learner checkpoint without a replay snapshot: %s", path)
        when = "there is space again" if disk_full else "the server can start"
        return (f"The learner's state up to now is in {path} (written without a replay snapshot: the replay's "
                f"data is its AOF, which --run.resume {self.run.path} reads once {when}).")

    def _check_processes(self) -> None:
        self.disk.check()  # first: on a full disk every other process fails too, and restarting them cannot help
        if self.watchdog is not None:
            self.watchdog.check()
        # While Redis is being restarted a process that failed on it would only fail again: wait for Redis.
        redis_down = self.watchdog is not None and self.watchdog.down
        self.fleet.check(redis_down)
        self.ray_restarts.check()
        restored = None if redis_down else self.supervisor.check(self.learner_info["counters"])
        if restored is not None:  # counters went back to the checkpoint; rates and schedules follow them
            self.learner_info = {**self.learner_info, "counters": restored}
            self.checkpoints.restart_from(restored)
        if not any(self.fleet.alive):
            raise RestartsExhaustedError(
                f"every actor died and exhausted its restarts (actors.max_restarts {self.cfg.actors.max_restarts}); "
                f"see the actor logs above. Fix the cause, then continue with --run.resume {self.run.path}.")

    def _poll(self) -> None:
        """One tick's look at every process: the actors', the learner's and the run's scalars to W&B, the progress line."""
        actor_scalars, waits = self.fleet.poll_scalars(self.logger.note_renderer)
        info, updates_per_s = self._poll_learner()
        counters = info["counters"]
        scalars: dict[str, float] = {f"learner/{k}" if "/" not in k else k: v for k, v in info["metrics"].items()}
        # The mirror's sampled-version figures are NaN while nothing was sampled since its last report (replay_service/
        # mirror.py): a gap in the dashboards, not a NaN point. A NaN loss still goes through: it is news.
        scalars.update({f"replay/{k}": v for k, v in info["replay"].items() if not (isinstance(v, float) and math.isnan(v))})
        scalars.update({
            **actor_scalars,
            "perf/updates_per_s": updates_per_s,
            "counters/env_steps": self.state.env_steps,
            "counters/agent_steps": self.state.agent_steps,
            "counters/updates": counters["updates"],
            "counters/pretrain_updates": counters["pretrain_updates"],
            "counters/policy_version": counters["version"],
            "counters/episodes": self.state.episodes,
            "actors/restarts": self.state.actor_restarts,
            "learner/restarts": self.supervisor.restarts,
            "replay/server_restarts": self.watchdog.restarts if self.watchdog else 0,
            **self.ray_restarts.scalars(),
            "actors/env_errors": self.state.env_errors,
            **bound_scalars(waits, info["replay"], self.cfg.replay),
        })
        self.logger.scalars(self.state.env_steps, scalars)
        if info["figure"] is not None:
            self.logger.image(self.state.env_steps, "model/samples", info["figure"],
                              "rows: ground truth, posterior, conditional prior, prior")
        self.logger.progress(progress_line(self.cfg, self.learner_info, self.state.env_steps, self.state.agent_steps,
                                           scalars, self.fleet.train_return, self.evals.last_return, self.forecast.rate))

    def _poll_learner(self) -> tuple[dict[str, Any], float]:
        """The learner's poll (its counters, metrics, replay figures, phase) and its updates per second since the last
        tick; a learner that is dead or restarting answers with what the driver had."""
        try:
            info = ray.get(self.learner.poll.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            # Dead or restarting: the supervisor sees it at the next check; log what we had.
            info = {**self.learner_info, "metrics": {}, "figure": None}
        previous = self.learner_info["counters"]
        if info.get("execution") and info["execution"] != self.learner_info.get("execution"):
            self.logger.note("execution", info["execution"])  # which compile mode really runs (after any fallback)
        self.learner_info = info
        self.supervisor.progress(info["counters"])
        self.forecast.tick(info.get("phase", "?"), info["counters"], self.state.env_steps)
        elapsed = max(time.monotonic() - self.last_poll, 1e-6)
        self.last_poll = time.monotonic()
        updates = info["counters"]["updates"] + info["counters"]["pretrain_updates"]
        return info, (updates - previous["updates"] - previous["pretrain_updates"]) / elapsed

    def _maybe_checkpoint(self) -> None:
        self.checkpoints.tick(self.learner_info["counters"], lambda: self.learner.checkpoint.remote(self._extra()))

    def _wall_clock(self) -> tuple[float, float]:
        """Seconds this life has run, and the run over all its lives (RunState.wall_clock_s says what is counted)."""
        life = time.monotonic() - self.started
        return round(life, 1), round(self.earlier_lives_s + life, 1)

    def _extra(self) -> dict[str, Any]:
        """A checkpoint's `extra`: the W&B run id and the run's state, its wall clock stamped as of now."""
        _, self.state.wall_clock_s = self._wall_clock()
        return {"wandb_run_id": self.logger.run_id, "run_state": dataclasses.asdict(self.state)}

    # --- stopping -----------------------------------------------------------------------------------
    def _finish(self, interrupted: bool) -> dict[str, Any]:
        self.signals.stopping()
        if interrupted:
            self.evals.abandon()  # its grid point is redone by the resumed run
        self._stop_processes()
        self.checkpoints.wait()
        learner_gone = False
        try:
            self.learner_info = ray.get(self.learner.poll.remote())
        except ray.exceptions.RayActorError:  # e.g. a SIGTERM to every process of the machine reached it first
            learner_gone = True
        if not interrupted and self.cfg.run.eval_episodes > 0:
            self.evals.step(self.learner_info["counters"], wait=True)  # the one in flight
            if self.state.env_steps >= self.cfg.run.env_steps:
                self.evals.step(self.learner_info["counters"], wait=True, final=True)  # the curve's last point, at the run's length
        if not interrupted and self.state.env_steps >= self.cfg.run.env_steps:
            self.state.completed_length = self.cfg.run.env_steps  # set when a life finishes; a resume compares it with its length (run_dir.finished_at)
        # The final checkpoint after the final evaluations: its run state must count them, or a resume with a longer
        # run.env_steps evaluated the last grid point again (a newcomer's review saw two rows for it in eval.csv).
        checkpoint: str | None = None
        if not learner_gone:
            try:
                checkpoint = ray.get(self.learner.checkpoint.remote(self._extra()))
            except ray.exceptions.RayActorError:
                learner_gone = True
        if learner_gone:
            newest = latest_checkpoint(self.run.files.checkpoints)
            checkpoint = str(newest) if newest else None
            log.error("the learner process is gone, so no final checkpoint; the newest is %s", checkpoint)
        counters = self.learner_info["counters"]
        self.ray_restarts.check()
        life_s, wall_s = self._wall_clock()
        summary = {**self.state.summary(), "updates": counters["updates"],
                   "pretrain_updates": counters["pretrain_updates"], "policy_version": counters["version"],
                   "train_return": self.fleet.train_return,
                   "eval_return": self.evals.last_return,
                   "wall_clock_s": wall_s, "life_wall_clock_s": life_s,
                   "stopped_by": self.signals.received if interrupted else None, **self.supervisor.summary(),
                   **RedisWatchdog.summary_of(self.watchdog), "checkpoint": checkpoint, "run_dir": str(self.run.path),
                   "wandb_run_id": self.logger.run_id, "interrupted": interrupted, **self.fleet.summary(),
                   "learner_node_id": self.learner_info.get("node_id"), "replay_url": redact(self.replay_url),
                   "replay": self.learner_info.get("replay", {}), "execution": (execution := self.learner_info.get(
                       "execution") or {}), "learner_threads": execution.get("threads")}
        self.logger.finish({k: v for k, v in summary.items() if isinstance(v, int | float | str)})
        self.closed = True
        return summary

    def _stop_processes(self) -> None:
        self.fleet.stop()
        self.learner.stop.remote()
        try:
            ray.get(self.supervisor.run_ref)
        except ray.exceptions.RayTaskError:
            log.exception("the learner failed while stopping")
        except ray.exceptions.RayActorError:
            log.error("the learner process died before the run stopped")

    def close(self) -> None:
        """Tear down the Ray processes even when the loop failed."""
        for handle in [*self.fleet.actors, self.learner, self.evaluator, self.board]:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - best effort during teardown
                pass
        if not self.closed:
            self.logger.finish({"failed": 1})
