"""`make train TASK=... PRESET=... ARGS=...`: parse the config, warn where it will be slow, train."""

from __future__ import annotations

import json
import logging
import signal
import sys

from common.config import Config, ConfigError, parse_cli
from common.envs import RenderingUnavailableError
from learner.checkpoint import CheckpointMismatchError


def _slow_on_this_machine(cfg: Config) -> bool:
    import torch

    return cfg.learner.device != "cuda" and not torch.cuda.is_available() and cfg.model.z2_dim >= 256


def known_errors() -> tuple[type[Exception], ...]:
    """Failures with a message that says what to do: printed as a paragraph, never as a traceback."""
    from replay_service import RedisNotInstalledError, ReplayConnectionError, ReplaySchemaError

    return (ConfigError, CheckpointMismatchError, RenderingUnavailableError, RedisNotInstalledError,
            ReplayConnectionError, ReplaySchemaError)


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C must reach the driver as KeyboardInterrupt (it stops the run and checkpoints), even when a
    # parent shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_cli(argv)
    if _slow_on_this_machine(cfg):
        logging.warning("the paper preset without a GPU is very slow (about a second per update on 2 cores, "
                        "100 000 model pre-training updates first); to see the whole system work in minutes "
                        "run `make train TASK=%s PRESET=debug`", cfg.run.task)
    from deploy.launcher import train  # imports Ray; kept out of the CLI's --help path

    try:
        summary = train(cfg)
    except known_errors() as exc:
        logging.error("%s", exc)
        return 2
    print(json.dumps({"summary": summary}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
