"""What leaves the `Learner`: its whole state for a checkpoint, and the weights the actors act with.

`learner_state` is everything a run needs to resume bit for bit (networks, delayed critics, log alpha, Adam's
moments, counters, the noise generator), as plain tensors and containers, which is what `read_checkpoint`'s
`torch.load(weights_only=True)` accepts (learner/checkpoint.py). `load_learner_state` refuses a state whose
networks are shaped otherwise and says which config fields differ; everything else (learning rates, batch
sizes, gamma) may change on a resume. `actor_weights` is the part the actor processes and the evaluator need.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from common.probe import filter_tensors

if TYPE_CHECKING:
    from learner.learner import Learner

STATE_FORMAT = 1
"""Bumped when the layout of `learner_state` changes; a checkpoint of another format is refused by name."""
_ARCHITECTURE = {"model": ("z1_dim", "z2_dim", "hidden_dim", "conv_channels", "sequence_length"), "sac": ("hidden_dim",)}


def _architecture(action_dim: int, model_cfg: dict[str, Any], sac_cfg: dict[str, Any]) -> dict[str, Any]:
    """The config fields that shape the networks (a checkpoint must agree on them)."""
    fields: dict[str, Any] = {"action_dim": action_dim}
    for group, cfg in (("model", model_cfg), ("sac", sac_cfg)):
        for key in _ARCHITECTURE[group]:
            fields[f"{group}.{key}"] = tuple(cfg[key]) if isinstance(cfg[key], list) else cfg[key]
    return fields


def _to_host(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of `tensors` on the CPU, made with one device-to-host copy per dtype (the tensors flattened into one
    buffer on their device first) rather than one blocking copy per tensor: ~30 for the actor's weights."""
    out: dict[str, torch.Tensor] = {}
    by_dtype: dict[torch.dtype, list[str]] = {}
    for name, tensor in tensors.items():
        by_dtype.setdefault(tensor.dtype, []).append(name)
    for names in by_dtype.values():
        flat = torch.cat([tensors[n].detach().reshape(-1) for n in names]).to("cpu", copy=True)
        for name, part in zip(names, flat.split([tensors[n].numel() for n in names]), strict=True):
            out[name] = part.view(tensors[name].shape)
    return {name: out[name] for name in tensors}


def actor_weights(learner: Learner, version: int) -> dict[str, Any]:
    """What an actor process needs to act (common.policy.Policy): encoder + actor head, on CPU, picklable; and the
    latent model's filtering networks, with which the evaluator's latent probe (common/probe.py) computes the
    latent the critic sees (0.27 MB more for the `cpu` preset, 4.0 MB beside 8.2 for `paper`)."""
    tensors = {f"encoder.{k}": v for k, v in learner.model.encoder.state_dict().items()}
    tensors.update({f"actor.{k}": v for k, v in learner.actor.state_dict().items()})
    tensors.update({k: v for k, v in filter_tensors(learner.model.state_dict()).items() if k not in tensors})
    return {
        "version": int(version), "action_dim": learner.action_dim,
        "model_cfg": dataclasses.asdict(learner.cfg.model), "sac_cfg": dataclasses.asdict(learner.cfg.sac),
        "state_dict": _to_host(tensors),
    }


def learner_state(learner: Learner) -> dict[str, Any]:
    """Everything needed to resume bit for bit: networks, targets, log alpha, optimisers, counters, RNG.

    A snapshot (deep copy): later updates do not change it.
    """
    return copy.deepcopy({
        "format": STATE_FORMAT, "action_dim": learner.action_dim, "seed": learner.seed,
        "model_cfg": dataclasses.asdict(learner.cfg.model), "sac_cfg": dataclasses.asdict(learner.cfg.sac),
        "model": learner.model.state_dict(), "actor": learner.actor.state_dict(),
        "critic": learner.critic.state_dict(), "critic_target": learner.critic_target.state_dict(),
        "log_alpha": learner.log_alpha.detach(),
        "optimizers": {name: optimizer.state_dict() for name, optimizer in _optimizers(learner).items()},
        "counters": {"model_updates": learner.model_updates, "sac_updates": learner.sac_updates},
        "rng": learner.generator.get_state(), "rng_device": learner.device.type,
    })


def load_learner_state(learner: Learner, state: dict[str, Any]) -> None:
    """Restore a `learner_state` (from any device) into `learner`."""
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"learner state format {state.get('format')!r}, expected {STATE_FORMAT}: "
                         "the checkpoint comes from another version of slac-dist")
    # Only what shapes the networks must match; learning rates, batch sizes, gamma... may change on resume.
    cfg = learner.cfg
    mine = _architecture(learner.action_dim, dataclasses.asdict(cfg.model), dataclasses.asdict(cfg.sac))
    theirs = _architecture(state["action_dim"], state["model_cfg"], state["sac_cfg"])
    differ = [f"{k}: checkpoint {theirs[k]!r}, learner {mine[k]!r}" for k in mine if mine[k] != theirs[k]]
    if differ:
        raise ValueError(f"checkpoint networks do not fit this learner ({'; '.join(differ)}); "
                         "resume with the config the checkpoint was trained with")
    learner.model.load_state_dict(state["model"])
    learner.actor.load_state_dict(state["actor"])
    learner.critic.load_state_dict(state["critic"])
    learner.critic_target.load_state_dict(state["critic_target"])
    with torch.no_grad():
        learner.log_alpha.copy_(state["log_alpha"])
    # Adam's moments resume; the learning rates are this config's (equal to the saved ones on a plain resume).
    rates = {"model": cfg.model.lr, "critic": cfg.sac.critic_lr, "actor": cfg.sac.actor_lr, "alpha": cfg.sac.alpha_lr}
    for name, optimizer in _optimizers(learner).items():
        optimizer.load_state_dict(state["optimizers"][name])
        for group in optimizer.param_groups:
            group["lr"] = rates[name]
    learner.model_updates = int(state["counters"]["model_updates"])
    learner.sac_updates = int(state["counters"]["sac_updates"])
    learner.seed = int(state["seed"])
    if state["rng_device"] == learner.device.type:
        learner.generator.set_state(state["rng"].cpu())
    else:  # CPU and CUDA generators differ in kind: resume with a deterministic fresh stream instead
        learner.generator.manual_seed(learner.seed * 1_000_003 + learner.model_updates + 1)


def _optimizers(learner: Learner) -> dict[str, torch.optim.Optimizer]:
    return {"model": learner.model_optimizer, "critic": learner.critic_optimizer, "actor": learner.actor_optimizer,
            "alpha": learner.alpha_optimizer}
