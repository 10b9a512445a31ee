"""A run's config, resolved once before anything starts: the command line (a preset and overrides, or a resumed
run's config.json and overrides) parsed here, then every auto value made a number by `resolve_run` (the task's
settings, by building one env; the actor count; the replay's minimum size). The run directory's config.json is
written from that (deploy/run/run_dir.py), and read back only through common/run_files.RunFiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tyro

from common.config import CLI_PROG, PRESETS, Config, ConfigError, parse_cli, resume_dir
from common.config_groups import is_redacted
from common.envs import make_env
from common.rendering import RenderingUnavailableError, select_gl_backend
from common.run_files import RunFiles
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
        if spec.suite == "dmc":
            raise
        # A gymnasium or user's env may draw without OpenGL (the numpy example does); a MuJoCo one asks for the
        # backend when it is built, and then fails with this same paragraph.
    try:
        probe = (env_factory or (lambda seed: make_env(spec, seed, cfg.model.image_size)))(0)
        try:
            frame = probe.reset()
            action_dim = probe.action_dim
            probe.step(np.zeros(action_dim, np.float32))  # an env that fails only in step() (an old gym API) fails here
            if spec.suite == "custom" and cfg.task.episode_length == "auto" and getattr(probe, "own_time_limit", None):
                spec = dataclasses.replace(spec, episode_length=probe.own_time_limit)  # the env's own, not DEFAULTS'
        finally:
            probe.close()
    except (TaskError, RenderingUnavailableError):
        raise
    except Exception as exc:  # an env failing in reset or render (a missing render dependency): named as a task problem
        raise TaskError(f"task {spec.name}: building, resetting, stepping or rendering its env raised {type(exc).__name__}: "
                        f"{exc}") from exc
    log.info("%s; frames %s, %d actions", spec.describe(), "x".join(map(str, frame.shape)), action_dim)
    return cfg.with_task(spec), action_dim


def parse_args(argv: Sequence[str]) -> Config:
    """The config to run: a preset and overrides, or for a resume the saved config and overrides.

    config.json keeps a `replay.url` password as `***` (Config.to_dict), so a resume of a run on a password-protected
    Redis needs the URL from this command line; without it the resume stops here, before anything starts, rather
    than failing to authenticate in every process."""
    resume = resume_dir(argv)
    if not resume:
        return parse_cli(argv)
    try:
        saved = RunFiles(Path(resume)).read_config()
    except ConfigError as exc:
        raise ConfigError(f"--run.resume {resume}: {exc}") from None
    rest = list(argv[1:] if argv and argv[0] in PRESETS else argv)  # the saved config replaces the preset
    cfg = tyro.cli(Config, default=saved, args=rest, prog=f"{CLI_PROG} --run.resume {resume}")
    if is_redacted(cfg.replay.url):
        raise ConfigError(
            f"--run.resume {resume}: the run's replay is the Redis at {cfg.replay.url}, and its config.json keeps "
            f"that URL without its password (a run directory holds no secret). Pass the whole URL again, password "
            f"included, as when the run started: --run.resume {resume} --replay.url "
            f"'redis://<user>:<password>@<host>:<port>/<db>'.")
    return cfg


MAX_ERROR_LINES = 12
"""Lines of a command-line error: tyro repeats its suggestions once per preset (30 lines for one typo)."""


def parse_quietly(argv: list[str]) -> Config:
    """`parse_args`, with tyro's error box (a typo, a value of the wrong type) cut to its first distinct lines."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parse_args(argv)
    except SystemExit as exc:
        text = captured.getvalue()
        if exc.code not in (0, None):
            seen: list[str] = []
            for line in text.splitlines():
                # tyro draws a box around its message and names a preset's config by an internal name
                line = line.strip(" │╭╮╰╯─").replace("__tyro-dummy-inner__.", "")
                if line and not line.startswith("in ") and line not in seen:
                    seen.append(line)
            more = len(seen) > MAX_ERROR_LINES
            text = "\n".join(seen[:MAX_ERROR_LINES] + (["... (see --help)"] if more else [])) + "\n"
        sys.stderr.write(text)
        raise


def slow_on_this_machine(cfg: Config) -> bool:
    """Whether this run would be the paper's sizes on a CPU learner: worth a warning before a days-long run. The
    conv features' width tells (the paper's 256; the cpu presets' 64), not the latent's: `cpu-latent` has the
    paper's z2 of 256 at 0.93x the `cpu` preset's speed."""
    import torch

    return cfg.learner.device != "cuda" and not torch.cuda.is_available() and cfg.model.feature_dim >= 256


def resolve_run(cfg: Config, env_factory: Callable[[int], Any] | None = None) -> tuple[Config, int]:
    """The config a run records and runs with, every auto resolved, and the task's action dimension."""
    from deploy.run.ray_runtime import (  # imports Ray: kept out of the command line's --help
        describe_processes,
        resolve_processes,
    )

    cfg, action_dim = resolve_task_of_run(cfg, env_factory)
    cfg = resolve_processes(cfg)
    log.info("%s", describe_processes(cfg))
    return derived_config(cfg), action_dim
