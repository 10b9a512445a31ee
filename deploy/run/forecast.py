"""How long this run will take on this machine: the first measured updates turned into one paragraph, and the ETA.

A run is learner-bound (the replay's rate limiter holds the actors to `replay.samples_per_insert` updates per
agent step), so its length in time is its updates over the learner's rate. The paper preset on a CPU makes about
one update a second: 100 000 model pre-training updates take more than a day before the policy learns anything.
The user asked for that run and it goes on; what they get is the figure, in hours, as soon as it is measured, and
the preset that learns within an hour on a CPU.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from common.config import Config

log = logging.getLogger(__name__)

MEASURE_S = 30.0
"""Seconds of updates measured before the forecast (after the first update: compilation is not counted)."""
CPU_HINT_ABOVE_S = 2 * 3600.0
"""A run forecast to take longer than this on a CPU learner gets the `cpu` preset suggested."""
CPU_PRESET_HINT = ("On a CPU, `make train PRESET=cpu` learns cartpole_swingup within about an hour on 2 cores "
                   "(evaluation return about 200-300 at its 400 000 environment steps against a random policy's "
                   "about 130: results/cartpole_swingup/cpu), and `PRESET=debug` shows the whole system in minutes "
                   "without learning.")


def updates_left(cfg: Config, counters: dict[str, int], env_steps: int) -> tuple[int, float]:
    """(model pre-training updates left, joint updates left): one joint update per agent step still to come
    (times `replay.samples_per_insert`)."""
    pretrain = max(0, cfg.learner.model_pretrain_steps - int(counters.get("pretrain_updates", 0)))
    agent_steps_left = max(0, cfg.run.env_steps - env_steps) / cfg.task_spec.action_repeat
    return pretrain, agent_steps_left * cfg.replay.samples_per_insert


def eta_seconds(cfg: Config, phase: str, counters: dict[str, int], env_steps: int, env_rate: float,
                update_rate: float) -> float:
    """Seconds left: the updates left over the learner's rate (pre-training: the actors wait; joint training: the
    rate limiter holds the actors to the learner), so the ETA is as steady as the rate it is given (the phase's
    average, `Forecast.rate`). The environment's rate of one tick is only a fallback while joint training has no
    update rate yet: it falls to a few steps a second while an evaluation shares the CPU (at action repeat 1, ten
    episodes are 10 000 rendered frames), and the ETA then read 23 hours for a run 90 minutes from its end. NaN
    while nothing has been measured, and during the initial collection (its speed, the actors', says nothing of
    the learner's phases after it)."""
    if phase not in ("pretrain", "train"):
        return math.nan
    if update_rate > 0:
        return sum(updates_left(cfg, counters, env_steps)) / update_rate
    if phase == "pretrain":
        return math.nan
    return max(0, cfg.run.env_steps - env_steps) / env_rate if env_rate > 0 else math.nan


def hours(seconds: float) -> str:
    """A duration as people say it: 40 min, 3.5 h, 2.1 days."""
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"


class Forecast:
    """Measures the learner's first `MEASURE_S` seconds of updates, then logs once what the run will take."""

    def __init__(self, cfg: Config, learner_on_cpu: bool) -> None:
        self.cfg, self.learner_on_cpu = cfg, learner_on_cpu
        self.seen: tuple[int, str] | None = None  # (updates, phase) at the first poll of this phase
        self.start: tuple[float, int] | None = None  # (time, updates) at the first poll after an update of this run
        self.said: str | None = None
        self.rate: float | None = None
        """Updates per second in this phase since this process saw its first update (steadier than one tick's
        rate, for the ETA)."""

    def tick(self, phase: str, counters: dict[str, int], env_steps: int, now: float | None = None) -> str | None:
        """Feed one poll; returns (and logs) the paragraph once, when it has been measured.

        The measurement starts at the first poll whose update count has grown since the phase's first poll, so the
        first update's compilation is not counted, nor are a resumed run's updates (its counters start from its
        checkpoint, and a resumed learner compiles at its first update); a count that falls (a learner restarted
        from its last checkpoint) starts it again."""
        if phase not in ("pretrain", "train"):
            return None
        now = time.monotonic() if now is None else now
        updates = int(counters.get("updates", 0)) + int(counters.get("pretrain_updates", 0))
        if self.seen is None or self.seen[1] != phase or (self.start is not None and updates < self.start[1]):
            self.seen, self.start, self.rate = (updates, phase), None, None
            return None
        if self.start is None:
            if updates > self.seen[0]:
                self.start = (now, updates)
            return None
        elapsed, done = now - self.start[0], updates - self.start[1]
        if elapsed >= 5.0 and done > 0:
            self.rate = done / elapsed
        if self.said is not None or elapsed < MEASURE_S or done <= 0:
            return None
        self.said = self.paragraph(phase, done / elapsed, counters, env_steps)
        log.warning(self.said)
        return self.said

    def paragraph(self, phase: str, rate: float, counters: dict[str, Any], env_steps: int) -> str:
        """What the measured rate means for this run, in one paragraph."""
        pretrain, joint = updates_left(self.cfg, counters, env_steps)
        total = (pretrain + joint) / rate
        where = "model pre-training" if phase == "pretrain" else "joint training"
        text = f"Measured on this machine: {rate:.2g} updates/s in {where}. "
        if pretrain:
            text += f"The {pretrain:,} model pre-training updates left will take about {hours(pretrain / rate)}, "
            text += f"then {joint:,.0f} joint updates about {hours(joint / rate)} more "
            text += "(joint updates also train the critics and the actor: more, not less), "
        else:
            text += f"The {joint:,.0f} joint updates left will take about {hours(joint / rate)}, "
        text += f"about {hours(total)} in all to {self.cfg.run.env_steps:,} environment steps. The run goes on."
        if self.learner_on_cpu and total > CPU_HINT_ABOVE_S:
            text += " " + CPU_PRESET_HINT
        return text
