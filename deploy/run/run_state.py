"""The counters a run's driver owns (steps, episodes, evaluations, restarts, wall clock), saved in every checkpoint's
`extra` and restored by `--run.resume`, so that every total counts over the run's lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.config import Config
from deploy.run.ray_runtime import replay_inserts


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
    from it, so the summary's wall clock (and the harness's updates/s) covers every life. Not counted: each life's
    start before its driver exists (Ray, Redis, the AOF's load), and its time after its last checkpoint (a dead
    life's last minutes; a finished life's final evaluation). 0 in checkpoints written before this field existed."""
    completed_length: int = 0
    """The `run.env_steps` a life of this run completed, its final evaluation included (0 until one has): a resume at
    that length or a shorter one is refused, one with a longer length trains on (deploy/run/run_dir.finished_at)."""
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
