"""`make export RUN=<run dir> [FORMAT=torchscript|onnx] [CKPT=<file>]`: the trained policy as one self-contained file.

The file holds the encoder and the actor head of a checkpoint (deploy/tools/trained.py) as a deterministic
policy, tanh of the actor's mean: it maps the last tau frames and the tau - 1 actions between them to the
next action, with nothing of this code base needed to run it (torch alone loads the TorchScript file,
onnxruntime the ONNX one). What a user must feed it is written into the file as JSON metadata (TorchScript:
the extra file `slac_policy.json`; ONNX: the metadata property `slac_policy`), see `metadata()`:

- obs_history uint8 [N, tau, 3, 64, 64], oldest frame first; before an episode has tau frames, the
  missing slots hold copies of its first frame (as the learner trained the actor);
- action_history float32 [N, tau - 1, A], the actions taken between those frames, zeros where missing;
- output action float32 [N, A] in [-1, 1]; the environment gets `low + (action + 1) / 2 * (high - low)`,
  repeated `action_repeat` times; episodes end after `episode_length` environment steps; MuJoCo tasks render
  at 64 x 64 from `camera` with MuJoCo's shadows and multisampling off, other envs render their own frames,
  resized to 64 x 64 by area averaging (common/frames.py).
`examples/play_exported.py` runs such a file on its task with dm_control, gymnasium or the task's own factory
and nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.envs import make_env
from common.policy import Policy
from common.rendering import RenderingUnavailableError
from common.run_files import RunFiles
from common.tasks import TaskError
from deploy.tools.trained import TrainedPolicy, TrainedPolicyError, load_trained

METADATA_FORMAT = 2
"""2: the task's settings (episode_length, camera), its suite may be custom, frames may be resized (`rendering`)."""
FORMATS = ("torchscript", "onnx")


class DeterministicPolicy(nn.Module):
    """Encoder + actor head without sampling: (obs_history, action_history) -> tanh(mean)."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.encoder = policy.encoder.net  # the conv stack; the uint8 -> [0, 1] scaling is in forward
        self.actor = policy.actor.net
        self.tau = policy.model_cfg.sequence_length
        self.size = policy.model_cfg.image_size
        self.action_dim = policy.action_dim

    def forward(self, obs_history: torch.Tensor, action_history: torch.Tensor) -> torch.Tensor:
        n = obs_history.shape[0]
        frames = obs_history.reshape(n * self.tau, 3, self.size, self.size).float() / 255.0
        features = self.encoder(frames).reshape(n, -1)
        history = torch.cat([features, action_history.reshape(n, -1)], dim=-1)
        mean = self.actor(history)[:, : self.action_dim]
        return torch.tanh(mean)


def metadata(trained: TrainedPolicy, fmt: str) -> dict[str, Any]:
    """What the exported file's user must know: history, frames, action bounds and repeat, provenance."""
    cfg = trained.cfg
    spec = cfg.task_spec
    env = make_env(spec, seed=0, image_size=cfg.model.image_size)
    try:
        low, high = (bound.tolist() for bound in env.action_bounds)
        mujoco, quality = env.draws_with_mujoco, env.render_quality()
    finally:
        env.close()
    tau, a = cfg.model.sequence_length, trained.weights["action_dim"]
    return {
        "format": METADATA_FORMAT, "file_format": fmt, "policy": "deterministic: tanh of the actor's mean",
        **spec.settings(), "image_size": cfg.model.image_size,
        "rendering": {"mujoco": mujoco, "mujoco_vis_quality": quality,
                      "resize": None if mujoco else "area"},
        "tau": tau, "action_dim": a, "action_low": low, "action_high": high,
        "inputs": {"obs_history": f"uint8 [N, {tau}, 3, {cfg.model.image_size}, {cfg.model.image_size}], oldest "
                                  "first; slots before the episode's first frame hold copies of it",
                   "action_history": f"float32 [N, {tau - 1}, {a}] in [-1, 1], the actions between those frames; "
                                     "zeros before the episode's first action"},
        "output": f"action float32 [N, {a}] in [-1, 1]; the env gets low + (action + 1) / 2 * (high - low), "
                  "repeated action_repeat times",
        "checkpoint": str(trained.checkpoint), "run_dir": str(trained.run_dir),
        "policy_version": trained.weights["version"], "counters": trained.counters, "seed": cfg.run.seed,
    }


def _example_inputs(trained: TrainedPolicy, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = trained.cfg
    tau, size, a = cfg.model.sequence_length, cfg.model.image_size, trained.weights["action_dim"]
    rng = np.random.default_rng(0)
    obs = torch.from_numpy(rng.integers(0, 256, (n, tau, 3, size, size), dtype=np.uint8))
    actions = torch.from_numpy(rng.uniform(-1, 1, (n, tau - 1, a)).astype(np.float32))
    return obs, actions


def export(run_dir: str | Path, fmt: str = "torchscript", checkpoint: str | None = None,
           out: str | Path | None = None) -> Path:
    """Write the policy of `run_dir`'s newest (or the named) checkpoint; default `<run dir>/export/<ckpt>.{pt,onnx}`."""
    if fmt not in FORMATS:
        raise TrainedPolicyError(f"FORMAT={fmt!r} is not one of {', '.join(FORMATS)}")
    trained = load_trained(run_dir, checkpoint)
    module = DeterministicPolicy(trained.policy()).eval().requires_grad_(False)
    meta = json.dumps(metadata(trained, fmt), indent=2)
    suffix = ".pt" if fmt == "torchscript" else ".onnx"
    path = Path(out) if out else RunFiles(trained.run_dir).exports / f"{trained.checkpoint.stem}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        torch.jit.save(torch.jit.script(module), str(path), _extra_files={"slac_policy.json": meta})
    else:
        _export_onnx(module, _example_inputs(trained), path, meta)
    return path


def _export_onnx(module: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], path: Path, meta: str) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch.onnx")  # its registry lists torchvision ops it skips: noise here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, inputs, dynamo=True, input_names=["obs_history", "action_history"],
                                    output_names=["action"], verbose=False,
                                    dynamic_shapes={"obs_history": {0: batch}, "action_history": {0: batch}})
    quiet.setLevel(level)
    program.save(str(path))
    model = onnx.load(str(path))
    model.metadata_props.add(key="slac_policy", value=meta)
    onnx.save(model, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory (runs/<task>-<timestamp>)")
    parser.add_argument("--format", default="torchscript", help="torchscript (default) or onnx")
    parser.add_argument("--ckpt", default="", help="checkpoint file name or path (default: the newest)")
    parser.add_argument("--out", default="", help="output file (default: <run dir>/export/<checkpoint>.pt|.onnx)")
    args = parser.parse_args(argv)
    try:
        path = export(args.run_dir, args.format, args.ckpt or None, args.out or None)
    except (TrainedPolicyError, RenderingUnavailableError, TaskError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); run it with examples/play_exported.py {path}",
          file=sys.stderr)
    print(json.dumps({"export": str(path), "format": args.format}))
    return 0

