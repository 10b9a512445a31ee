"""The terminal's view of a run: the progress line, its ETA, and which side bounds the run (actors waiting on the
rate limiter, or the learner waiting for data), from the actors' wait fractions and the limiter's position."""

from __future__ import annotations

import math
from typing import Any

from common.config import Config, ReplayConfig
from deploy.run.forecast import eta_seconds


def format_eta(seconds: float) -> str:
    """Time left as H:MM:SS for the progress line: 0:00:00 once a run has passed its length (the last
    polls overshoot it), hours past 24 kept whole, --:--:-- while no rate is known yet."""
    if not math.isfinite(seconds):
        return "--:--:--"
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class ActorWaitMeter:
    """The fraction of wall-clock time each actor spent in replay writes since the previous poll.

    An actor's writes wait while the rate limiter holds them back (the learner is behind), so a high
    fraction means the run is learner-bound. Reads the cumulative `replay_s` of `ActorWorker.poll`.
    """

    def __init__(self) -> None:
        self._marks: dict[int, tuple[float, float]] = {}

    def fraction(self, index: int, now: float, replay_s: float) -> float | None:
        """Actor `index`'s waiting fraction since its last report (None at its first, or a new life's)."""
        mark = self._marks.get(index)
        self._marks[index] = (now, replay_s)
        if mark is None or replay_s < mark[1] or now <= mark[0]:  # first report, or a restarted process
            return None
        return min(1.0, (replay_s - mark[1]) / (now - mark[0]))


def limiter_position(inserted: float, sampled: float, min_size: int, samples_per_insert: float,
                     tolerance: float) -> float:
    """Where the rate limiter stands, in [-1, 1]: -1 at its floor (the learner waits for inserts), +1 at
    its ceiling (the writers wait for the learner). replay_service/limiter.py: inserts are allowed while
    inserted * spi - sampled <= (min_size + tolerance) * spi, samples while it is >= (min_size - tolerance) * spi.
    """
    slack = inserted * samples_per_insert - sampled - min_size * samples_per_insert
    return max(-1.0, min(1.0, slack / (samples_per_insert * tolerance)))


def run_bound(actors_wait: float | None, position: float, learner_wait: float | None = None) -> str:
    """Which side sets the pace: learner-bound when the actors spend most of their time held in writes
    (more actors will not help), actor-bound when the learner spends most of its time waiting for
    inserts or sits at the limiter's floor (more will)."""
    if actors_wait is not None and actors_wait >= 0.5:
        return "learner-bound"
    if (learner_wait is not None and learner_wait >= 0.5) or position <= -0.5:
        return "actor-bound"
    return "balanced"


def bound_scalars(waits: list[float], replay: dict[str, float], cfg: ReplayConfig) -> dict[str, float]:
    """W&B's bound/ scalars: the actors' mean waiting fraction (when known) and the limiter's position."""
    out = {"bound/limiter_position": limiter_position(replay["inserted"], replay["sampled"], cfg.min_size,
                                                      cfg.samples_per_insert, cfg.spi_tolerance)}
    if waits:
        out["bound/actors_wait_fraction"] = sum(waits) / len(waits)
    return out


def bound_text(phase: str, scalars: dict[str, float]) -> str:
    """' | learner-bound (actors wait 87%, learner waits 2%)' for the progress line while training jointly
    (the learner's share is its time in replay syncs and waiting for inserts); empty before
    (during the initial collection and the model pre-training the phases set the pace)."""
    if phase != "train":
        return ""
    wait = scalars.get("bound/actors_wait_fraction")
    learner_wait = scalars.get("bound/learner_wait_fraction")
    bound = run_bound(wait, scalars["bound/limiter_position"], learner_wait)
    fraction = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
    return f" | {bound} (actors wait {fraction(wait)}, learner waits {fraction(learner_wait)})"


def progress_line(cfg: Config, learner_info: dict[str, Any], env_steps: int, agent_steps: int,
                  scalars: dict[str, float], train_return: float | None, eval_return: float | None,
                  update_rate: float | None = None) -> str:
    """The terminal's one-line view of a run: phase, steps, updates, returns, rates, bound side, ETA."""
    total = cfg.run.env_steps
    rate = scalars["perf/env_steps_per_s"]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    counters = learner_info["counters"]
    phase = learner_info.get("phase", "?")
    # The phase's average update rate when known (deploy/run/forecast.py): one tick's swings by 2-4x on a CPU.
    updates_per_s = update_rate if update_rate is not None else scalars["perf/updates_per_s"]
    eta_text = format_eta(eta_seconds(cfg, phase, counters, env_steps, rate, updates_per_s))
    # Agent steps are policy decisions (env steps / action repeat): the unit of the initial collection.
    agent = (f"agent {agent_steps:,}/{cfg.initial_collection_size:,}" if phase == "collect"
             else f"agent {agent_steps:,}")
    return (f"[{phase}] env {env_steps:,}/{total:,} | {agent} | upd {counters['updates']:,}"
            f" (+{counters['pretrain_updates']:,}/{cfg.learner.model_pretrain_steps:,} model) | ret {fmt(train_return)}"
            f" | eval {fmt(eval_return)} | {rate:.0f} env/s | {scalars['perf/updates_per_s']:.1f} upd/s"
            f"{bound_text(phase, scalars)} | {cfg.actors.num}x{cfg.actors.envs_per_actor} envs | ETA {eta_text}")
