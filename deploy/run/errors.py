"""The failures a run knows how to explain: printed as one paragraph by the entry points, never as a traceback."""

from __future__ import annotations

from common.config import ConfigError
from common.envs import RenderingUnavailableError
from common.tasks import TaskError
from learner.checkpoint import CheckpointMismatchError


def known_errors() -> tuple[type[Exception], ...]:
    """Failures with a message that says what to do: printed as a paragraph, never as a traceback."""
    from deploy.run.disk import DiskFullError
    from deploy.run.supervisor import ReplayServerLostError, RestartsExhaustedError
    from replay_service import RedisNotInstalledError, ReplayConnectionError, ReplaySchemaError

    return (ConfigError, TaskError, CheckpointMismatchError, RenderingUnavailableError, RedisNotInstalledError,
            ReplayConnectionError, ReplaySchemaError, RestartsExhaustedError, ReplayServerLostError, DiskFullError)
