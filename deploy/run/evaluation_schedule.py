"""The run's evaluations on the paper's grid of environment steps, one at a time on the evaluator actor.

Appendix C evaluates at step 0 and every `run.eval_every` environment steps; each evaluation is labelled with
its grid point (`scheduled`), so curves of different runs align whatever the actors' pace. The driver calls
`step` every tick: it collects a finished evaluation and starts the next one when the run has passed it; `final`
adds one at the run's length. An evaluation cut off by its evaluator's death (Ray restarts the evaluator) runs
again at the same grid point, counted in `RunState.evaluations_redone`. A grid point the run passed while an
evaluation was busy is not redone (the next starts at the newest point), and an interrupted run hands its
unfinished one to the resumed run (`abandon`). Each start is logged with its grid point.

A video of the first episode is recorded every `run.video_every` evaluations (counted over the run's lives),
and always at step 0 (the random policy) and at the final evaluation (the trained one): a video costs the
evaluator the frames and the driver a GIF encoding and upload. Where the evaluator returns the latent probe
(common/probe.py), its scalars go to the dashboards with the evaluation's (`probe/r2/<dimension>`,
`probe/r2_mean`) and one row per state dimension to `<run dir>/probe.csv`.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray

from common.config import Config
from common.probe import PREFIX
from common.run_files import RunFiles
from deploy.run.logger import RunLogger
from deploy.run.run_state import RunState

log = logging.getLogger(__name__)

PROBE_COLUMNS = ("env_steps", "scheduled_env_steps", "dimension", "r2")
"""probe.csv: one row per evaluation and state dimension (env_steps and scheduled_env_steps as in eval.csv)."""


def append_probe_rows(path: Path, env_steps: int, scheduled: int, probe: Mapping[str, float]) -> None:
    """Append one evaluation's `probe/r2/<dimension>` values to probe.csv (its header first when it is new)."""
    dimensions = {k[len(f"{PREFIX}r2/"):]: v for k, v in probe.items() if k.startswith(f"{PREFIX}r2/")}
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(PROBE_COLUMNS)
        writer.writerows([env_steps, scheduled, name, "nan" if math.isnan(r2) else f"{r2:.4f}"]
                         for name, r2 in dimensions.items())


def records_video(scheduled: int, evals: int, video_every: int, last: bool) -> bool:
    """Whether the `evals`-th evaluation of the run (1-based) records a video: step 0, the `last` one (at the
    run's length), and every `video_every`-th from the first."""
    return scheduled == 0 or last or (evals - 1) % video_every == 0


class EvalSchedule:
    """Starts and collects the evaluator's episodes; `last_return` is the newest evaluation's mean return."""

    def __init__(self, cfg: Config, state: RunState, evaluator: Any, board: Any, logger: RunLogger,
                 note_renderer: Callable[[dict[str, str] | None], None]) -> None:
        self.cfg, self.state, self.evaluator, self.board, self.logger = cfg, state, evaluator, board, logger
        self.note_renderer = note_renderer
        self.ref: tuple[Any, int, int, int] | None = None
        """(object ref, env steps at its start, grid point, updates at its start) of the one in flight."""
        self.last_return: float | None = None
        self.notes: set[str] = set()
        """Why the evaluator could not probe, each logged once (its own logs stay in its Ray process)."""
        self.redo: int | None = None
        """The grid point of an evaluation that was cut off, to run again before any other."""
        self.probe: Any = None
        """After a cut-off, a trivial call that must answer before the redo is sent: a task sent while Ray is still
        restarting the evaluator fails at once (ActorUnavailableError), and would cut off the redo too."""

    def step(self, counters: dict[str, int], wait: bool = False, final: bool = False) -> None:
        """Collect a finished evaluation; start the next one when the grid says so (`wait`: block for it)."""
        if self.ref is not None:
            ref, env_steps, scheduled, updates = self.ref
            ready, _ = ray.wait([ref], timeout=None if wait else 0)
            if not ready:
                return
            self.ref = None
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:  # e.g. the evaluator's process died: redo that grid point
                log.warning("the evaluation at grid point %d was cut off (%s); it runs again at that grid point",
                            scheduled, type(exc).__name__)
                self.state.evaluations_redone += 1
                self._hand_back(scheduled)
                self.probe = self.evaluator.__ray_call__.remote(id)  # id(evaluator): any call that needs it back
            else:
                self.record(result, env_steps, scheduled, updates)
        if not self._evaluator_answers(wait):
            return
        every, length = self.cfg.run.eval_every, self.cfg.run.env_steps
        if self.redo is not None:
            due, scheduled = True, self.redo
        elif final:
            due, scheduled = self.state.last_eval_scheduled < length, length
        else:
            due = self.state.env_steps >= self.state.next_eval and self.state.next_eval < length
            scheduled = self.state.env_steps // every * every  # a grid point skipped while busy is not redone
        if self.cfg.run.eval_episodes == 0 or not due or self.ref is not None:
            return
        latest = ray.get(self.board.latest.remote(0))
        if latest is None and counters["version"] > 0:
            return  # a resumed or restarted learner has not published yet: wait for its weights
        # Before the first publication (initial collection, model pre-training) the agent acts uniformly
        # at random: the evaluator measures exactly that (weights None), as the paper's curves start at 0.
        weights_ref = latest[1][0] if latest is not None else None
        self.state.evals += 1
        # The run's last point is `final`'s, or a grid point at the run's length the run reached while busy.
        video = records_video(scheduled, self.state.evals, self.cfg.run.video_every, final or scheduled >= length)
        ref = self.evaluator.evaluate.remote(weights_ref, self.cfg.run.eval_episodes,
                                             self.cfg.run.seed * 7919 + self.state.evals, video)
        log.info("evaluating policy version %d at %d env steps (grid point %d)", latest[0] if latest else 0,
                 self.state.env_steps, scheduled)
        self.redo = None
        self.ref = (ref, self.state.env_steps, scheduled, counters["updates"])
        self.state.last_eval_scheduled = scheduled
        self.state.next_eval = (scheduled // every + 1) * every  # the grid's next point, after a final one off it too
        if wait:
            self.step(counters, wait=True)

    def record(self, result: dict[str, Any], env_steps: int, scheduled: int, updates: int) -> None:
        """Log a finished evaluation: eval.csv and the dashboards, its probe (probe.csv too) and video if any."""
        self.note_renderer(result.get("renderer"))
        self.last_return = sum(result["returns"]) / len(result["returns"])
        probe, note = result.get("probe"), result.get("probe_note")
        if note and note not in self.notes:
            self.notes.add(note)
            log.info("%s", note)
        self.logger.evaluation(env_steps, scheduled, updates, result["version"], result["returns"], extra=probe)
        if probe:
            append_probe_rows(RunFiles(self.logger.run_dir).probe_csv, env_steps, scheduled, probe)
        if result["video"] is not None:
            self.logger.video(env_steps, "eval/video", result["video"])

    def _evaluator_answers(self, wait: bool) -> bool:
        """Whether the evaluator answers after a cut-off (at once when none was cut off); `wait`: until it does."""
        while self.probe is not None:
            ready, _ = ray.wait([self.probe], timeout=None if wait else 0)
            if not ready:
                return False
            try:
                ray.get(self.probe)
                self.probe = None
            except ray.exceptions.RayError:  # Ray is still restarting it: ask again
                self.probe = self.evaluator.__ray_call__.remote(id)
                if not wait:
                    return False
                time.sleep(0.2)  # pacing of the questions while Ray restarts it (each fails at once)
        return True

    def abandon(self) -> None:
        """An interrupted run: the one in flight is dropped and its grid point left to the resumed run."""
        if self.ref is not None:
            self._hand_back(self.ref[2])
            self.ref = None

    def _hand_back(self, scheduled: int) -> None:
        """Grid point `scheduled` was not evaluated: it is the next one, in this life (`redo`) or a resumed one's."""
        self.redo = scheduled
        self.state.next_eval = scheduled
        self.state.last_eval_scheduled = scheduled - self.cfg.run.eval_every
