"""A run's config before anything starts: the values derived from it, and a warning for a run too short to train.

Kept apart from the launcher, which only wires processes together (deploy/run/driver.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from common.config import Config, ConfigError
from common.envs import RenderingUnavailableError, make_env, select_gl_backend
from common.tasks import TaskError

log = logging.getLogger(__name__)


def short_run_warning(cfg: Config) -> str | None:
    """Why a run may end before the learner trains a policy, or None.

    Without a single sample drawn, the rate limiter lets the actors insert `replay.min_size` (the initial
    collection) plus `replay.spi_tolerance` transitions; a run no longer than that can reach its length
    while the learner is still pre-training its model, and then only the random policy is evaluated.
    """
    repeat = cfg.task_spec.action_repeat
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


def resolve_task_of_run(cfg: Config, env_factory: Callable[[int], Any] | None = None) -> tuple[Config, int]:
    """Build one env of the run's task, before any directory, Ray, Redis or W&B exists, so that a task that cannot
    work (no such env, discrete actions, no rgb_array frames, a factory that does not import) stops the run here
    with one paragraph. Returns the config with every task setting resolved (what config.json records) and the
    task's action dimension."""
    spec = cfg.task_spec
    try:
        select_gl_backend()
    except RenderingUnavailableError:
        if spec.suite != "custom":
            raise
        # A user's env may draw without OpenGL (the numpy example does): only MuJoCo needs a backend.
    try:
        probe = (env_factory or (lambda seed: make_env(spec, seed, cfg.model.image_size)))(0)
        try:
            frame = probe.reset()
            action_dim = probe.action_dim
            if spec.suite == "custom" and cfg.task.episode_length == "auto" and getattr(probe, "own_time_limit", None):
                spec = dataclasses.replace(spec, episode_length=probe.own_time_limit)  # the env's own, not DEFAULTS'
        finally:
            probe.close()
    except TaskError:
        raise
    except Exception as exc:  # the user's env failing in reset or render: a task problem, named as one
        if spec.suite != "custom":
            raise
        raise TaskError(f"task {spec.name}: building, resetting or rendering its env raised {type(exc).__name__}: "
                        f"{exc}") from exc
    log.info("%s; frames %s, %d actions", spec.describe(), "x".join(map(str, frame.shape)), action_dim)
    return cfg.with_task(spec), action_dim
