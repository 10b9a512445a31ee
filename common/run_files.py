"""Every file name in a run directory, in one place, and the one reader of a run's config.json.

A run directory (`--run.dir`, default runs/<task>-<time>) holds:

    config.json         the resolved config (written once when the run starts, again on each resume), a
                        replay.url password as *** (Config.to_dict): a run directory holds no secret
    checkpoints/        ckpt_<updates>.pt with its .sha256 (learner/checkpoint.py)
    eval.csv            every evaluation of the run
    probe.csv           the latent probe's held-out R^2 per state dimension of each evaluation that has one
    wandb/              the W&B run (offline unless configured)
    redis/              the embedded redis-server's AOF and RDB
    logs/               tracebacks of failures; train.log / train.stdout of a reproduce seed
    audit/              the writers' records (--replay.audit)
    eval/, export/      what `make eval` and `make export` write
    done.json           a finished reproduce seed's summary
    .lock               the driver's flock

In common/ because the learner (checkpoints, the RDB), the actors (audit records) and deploy/ all write there; kept
free of heavy imports, so the reproduce harness and the tools read it without Ray or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.config import Config, ConfigError


@dataclass(frozen=True)
class RunFiles:
    """The paths of one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def eval_csv(self) -> Path:
        return self.root / "eval.csv"

    @property
    def probe_csv(self) -> Path:
        """The latent probe's R^2 per evaluation and state dimension (common/probe.py)."""
        return self.root / "probe.csv"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def evaluations(self) -> Path:
        """`make eval`'s reports and GIFs."""
        return self.root / "eval"

    @property
    def exports(self) -> Path:
        return self.root / "export"

    @property
    def done(self) -> Path:
        """A finished reproduce seed's summary."""
        return self.root / "done.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def train_log(self) -> Path:
        """A reproduce seed's log (stderr) when seeds run side by side."""
        return self.logs / "train.log"

    @property
    def train_stdout(self) -> Path:
        return self.logs / "train.stdout"

    def is_run(self) -> bool:
        """Whether a run was started here (its config.json exists)."""
        return self.config.is_file()

    def read_config(self) -> Config:
        """The run's config; ConfigError (one message, naming the fix) when it is missing or damaged."""
        if not self.is_run():
            raise ConfigError(f"{self.root} is not a run directory (no config.json): pass the directory a training "
                              "started in (--run.dir, default runs/<task>-<timestamp>; `ls runs/`)")
        try:
            return Config.from_json(self.config.read_text(errors="replace"))
        except (OSError, ConfigError) as exc:
            raise ConfigError(f"{self.root}: not a slac-dist config: its config.json is damaged ({exc}). Restore it from "
                              "a copy (W&B keeps one with the run's files, as config.yaml) or start a new run; nothing "
                              "was changed.") from None

    def write_config(self, cfg: Config) -> None:
        """Record `cfg` as config.json, through Config.to_json: a replay.url password is written as ***, so a resume
        asks for it again (deploy/run/config.parse_args)."""
        self.config.write_text(cfg.to_json())
