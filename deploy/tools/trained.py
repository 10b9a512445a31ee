"""A trained run's policy, for `make eval` and `make export`: the run's config and a checkpoint's actor weights.

The checkpoint holds the whole learner; what acting needs is the latent model's encoder and the actor
head, the same blob the learner publishes to its actors (`Learner.actor_weights`), so the policy that is
evaluated or exported is exactly the one the actors ran. Every way this can go wrong (not a run, no
checkpoint, a damaged one, one from another version of slac-dist, one that holds more than tensors and plain
containers and is refused unread: learner/checkpoint.py) is a `TrainedPolicyError` of one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import Config, ConfigError
from common.policy import Policy
from common.run_files import RunFiles
from learner.checkpoint import UnsafeCheckpointError, latest_checkpoint, read_checkpoint
from learner.state import STATE_FORMAT


class TrainedPolicyError(ValueError):
    """The run directory or checkpoint cannot give a policy; the message says why and what to pass."""


@dataclass(frozen=True)
class TrainedPolicy:
    """A run's config with one checkpoint's weights, as evaluation and export load them."""

    run_dir: Path
    cfg: Config
    checkpoint: Path
    weights: dict[str, Any]
    """The actor-weights blob (`Policy.from_weights`)."""
    counters: dict[str, int]
    """The learner's counters at the checkpoint: pretrain_updates, updates, version."""

    def policy(self, seed: int | None = None) -> Policy:
        return Policy.from_weights(self.weights, seed=seed)


def _checkpoint_path(run_dir: Path, checkpoint: str | None) -> Path:
    if not checkpoint:
        found = latest_checkpoint(RunFiles(run_dir).checkpoints)
        if found is None:
            raise TrainedPolicyError(
                f"{run_dir} has no checkpoint yet (nothing in {run_dir / 'checkpoints'}): a run writes its first one "
                "after model pre-training and when it stops; let it train longer, or resume it with "
                f"`make train ARGS=\"--run.resume {run_dir}\"`")
        return found
    for path in (Path(checkpoint), RunFiles(run_dir).checkpoints / checkpoint):
        if path.is_file():
            return path
    raise TrainedPolicyError(f"no checkpoint {checkpoint!r} (looked for it as a path and in {RunFiles(run_dir).checkpoints}); "
                             "CKPT= takes a file name such as ckpt_0000020000.pt, or leave it empty for the newest")


def load_trained(run_dir: str | Path, checkpoint: str | None = None) -> TrainedPolicy:
    """The policy of `run_dir`'s newest checkpoint, or of `checkpoint` (a file name in its checkpoints/ or a path)."""
    run_dir = Path(run_dir)
    try:
        cfg = RunFiles(run_dir).read_config()
    except ConfigError as exc:
        raise TrainedPolicyError(str(exc)) from None
    path = _checkpoint_path(run_dir, checkpoint)
    try:
        state = read_checkpoint(path)
    except UnsafeCheckpointError as exc:  # not damage: its own paragraph says why it was refused and what to do
        raise TrainedPolicyError(str(exc)) from None
    except Exception as exc:  # truncated, bit-flipped, not a torch file: all mean the same to the user
        raise TrainedPolicyError(f"checkpoint {path} cannot be read ({type(exc).__name__}): it is damaged or not a "
                                 "slac-dist checkpoint; pick another with CKPT=<file> (ls "
                                 f"{path.parent})") from None
    learner = state.get("learner") if isinstance(state, dict) else None
    if not isinstance(learner, dict) or learner.get("format") != STATE_FORMAT:
        found = learner.get("format") if isinstance(learner, dict) else None
        raise TrainedPolicyError(f"checkpoint {path} comes from another version of slac-dist (learner state format "
                                 f"{found!r}, this version reads {STATE_FORMAT}); evaluate it with the commit that "
                                 "wrote it (config.json and W&B record it)")
    tensors = {k: v for k, v in learner["model"].items() if k.startswith("encoder.")}
    tensors.update({f"actor.{k}": v for k, v in learner["actor"].items()})
    counters = {k: int(v) for k, v in state.get("counters", {}).items()}
    weights = {"version": counters.get("version", 0), "action_dim": int(learner["action_dim"]),
               "model_cfg": learner["model_cfg"], "sac_cfg": learner["sac_cfg"], "state_dict": tensors}
    try:
        Policy.from_weights(weights)
    except (RuntimeError, ConfigError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainedPolicyError(f"checkpoint {path} does not hold a policy this version can build ({first})") from None
    return TrainedPolicy(run_dir, cfg, path, weights, counters)
