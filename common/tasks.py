"""The paper's eight pixel tasks and their action repeats (table 1), and two easy tasks for quick checks.

`cartpole_swingup` and `cartpole_balance` are not among the paper's tasks. The first is the PlaNet
benchmark's easiest pixel task (action repeat 8 as in PlaNet), added so that learning can be shown
within an hour on a 2-core CPU machine (the `cpu` preset, `results/cartpole_swingup/cpu`, the `learning`
test tier); the second is dm_control's easier cartpole task, the pole starting upright (the uniform random
policy scores 271 +- 47 there), kept for quick checks (results/exploration: the `cpu` preset did not learn
it within 4 000 updates).

The gymnasium tasks use the current v5 versions of the paper's v2 environments; their own
`frame_skip` already gives table 1's original control time step (Hopper-v5: 0.008 s), so the action
repeat below multiplies it exactly as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class UnknownTaskError(ValueError):
    """The task name is not in the registry; the message lists the names."""


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task: where it comes from and how often each action is repeated."""

    name: str
    suite: Literal["dmc", "gym"]
    env_id: str
    """dm_control `domain/task`, or the gymnasium id."""
    action_repeat: int
    aliases: tuple[str, ...] = ()
    max_env_steps: int = 1000
    """Environment steps per episode (dm_control's 1000-step episodes; gymnasium's time limit)."""
    camera_id: int = 0


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cheetah_run", "dmc", "cheetah/run", 4, ("cheetah",)),
        TaskSpec("walker_walk", "dmc", "walker/walk", 2, ("walker",)),
        TaskSpec("ball_in_cup_catch", "dmc", "ball_in_cup/catch", 4, ("ball_in_cup", "cup")),
        TaskSpec("finger_spin", "dmc", "finger/spin", 2, ("finger",)),
        TaskSpec("half_cheetah", "gym", "HalfCheetah-v5", 1, ("halfcheetah", "HalfCheetah")),
        TaskSpec("walker2d", "gym", "Walker2d-v5", 4, ("Walker2d",)),
        TaskSpec("hopper", "gym", "Hopper-v5", 2, ("Hopper",)),
        TaskSpec("ant", "gym", "Ant-v5", 4, ("Ant",)),
        TaskSpec("cartpole_swingup", "dmc", "cartpole/swingup", 8, ("cartpole",)),
        TaskSpec("cartpole_balance", "dmc", "cartpole/balance", 8),
    )
}

_ALIASES: dict[str, str] = {alias: spec.name for spec in TASKS.values() for alias in (spec.name, *spec.aliases)}


def resolve_task(name: str) -> TaskSpec:
    """Return the spec for a task name or alias, or raise UnknownTaskError listing the valid names."""
    canonical = _ALIASES.get(name) or _ALIASES.get(name.replace("-", "_"))
    if canonical is None:
        raise UnknownTaskError(
            f"unknown task {name!r}; the tasks are: {', '.join(TASKS)} "
            f"(aliases: {', '.join(a for a in _ALIASES if a not in TASKS)})"
        )
    return TASKS[canonical]
