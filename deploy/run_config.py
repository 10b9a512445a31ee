"""A run's config before anything starts: the values derived from it, and a warning for a run too short to train.

Kept apart from the launcher, which only wires processes together (deploy/launcher.py).
"""

from __future__ import annotations

import dataclasses

from common.config import Config, ConfigError
from common.tasks import resolve_task


def short_run_warning(cfg: Config) -> str | None:
    """Why a run may end before the learner trains a policy, or None.

    Without a single sample drawn, the rate limiter lets the actors insert `replay.min_size` (the initial
    collection) plus `replay.spi_tolerance` transitions; a run no longer than that can reach its length
    while the learner is still pre-training its model, and then only the random policy is evaluated.
    """
    repeat = resolve_task(cfg.run.task).action_repeat
    agent_steps = cfg.run.env_steps // repeat
    free = max(cfg.replay.min_size, cfg.initial_collection_size) + int(cfg.replay.spi_tolerance)
    if agent_steps > free:
        return None
    return (f"run.env_steps {cfg.run.env_steps} is {agent_steps} agent steps, no more than the initial collection "
            f"plus the rate limiter's slack ({free} agent steps): the actors may reach the run's length before the "
            f"learner publishes a policy, and the run then evaluates only the random policy. For a trained policy "
            f"raise --run.env-steps above {free * repeat}.")


def derived_config(cfg: Config) -> Config:
    """Make the replay's minimum size cover the initial collection, or the actors would deadlock."""
    needed = max(cfg.replay.min_size, cfg.initial_collection_size)
    if needed > cfg.replay.capacity:
        raise ConfigError(f"replay.capacity ({cfg.replay.capacity}) is smaller than the initial collection "
                         f"({needed} transitions); raise --replay.capacity")
    return dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, min_size=needed))
