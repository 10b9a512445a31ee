"""The `Learner`: owns SLAC's networks and optimisers and turns batches into gradient steps (Algorithm 1).

No I/O: batches in, scalar metrics out; `state_dict` for checkpoints, `actor_weights` for the actors,
`figure` for the logs. All randomness of training comes from one torch.Generator owned by the learner
(and saved with it), so a CPU learner is deterministic under its seed and resumes bit for bit.

The model batch is, as in the official implementation, the head of the SAC batch. `update` notices
when it is handed `sac_batch.head(n)` (same storage) and then encodes and filters the SAC batch once,
reusing the model's posterior pass for the head rows; with separate batches it runs `update_model`
then `update_sac`. See bench/learner.py for what sharing saves.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import torch

from common.batch import Batch
from common.config import Config
from common.latent_model import LatentModel, figure_rows
from common.networks import TanhGaussianActor, TwinCritic, count_parameters
from learner.losses import (
    LatentTransition,
    Metrics,
    SacNetworks,
    actor_loss,
    alpha_loss,
    critic_loss,
    latent_transition,
    model_loss,
)

MODEL_KEYS = frozenset({"model/loss", "model/reconstruction", "model/kl", "model/reward", "model/image_mse",
                        "model/reward_mse"})
SAC_KEYS = frozenset({"critic/loss", "critic/q1", "critic/q2", "critic/target", "actor/loss", "actor/entropy",
                      "alpha/loss", "alpha/value"})
STATE_FORMAT = 1


def polyak_update(online: torch.nn.Module, target: torch.nn.Module, coef: float) -> None:
    """theta_bar <- theta_bar + coef (theta - theta_bar): the delayed critics of eq. 10."""
    with torch.no_grad():
        for p_target, p in zip(target.parameters(), online.parameters(), strict=True):
            p_target.lerp_(p, coef)


_ARCHITECTURE = {"model": ("z1_dim", "z2_dim", "hidden_dim", "conv_channels", "sequence_length"), "sac": ("hidden_dim",)}


def _architecture(action_dim: int, model_cfg: dict[str, Any], sac_cfg: dict[str, Any]) -> dict[str, Any]:
    """The config fields that shape the networks (a checkpoint must agree on them)."""
    fields: dict[str, Any] = {"action_dim": action_dim}
    for group, cfg in (("model", model_cfg), ("sac", sac_cfg)):
        for key in _ARCHITECTURE[group]:
            fields[f"{group}.{key}"] = tuple(cfg[key]) if isinstance(cfg[key], list) else cfg[key]
    return fields


def _is_head(head: Batch, batch: Batch) -> bool:
    """True when every field of `head` is the leading rows of the same storage as `batch` (Batch.head)."""
    return head.batch_size <= batch.batch_size and all(
        h.device == b.device and h.data_ptr() == b.data_ptr() and h.shape[1:] == b.shape[1:]
        and h.stride() == b.stride() for h, b in zip(head, batch, strict=True))


class Learner:
    """SLAC's model, twin critics and their targets, actor and temperature, each with its Adam optimiser."""

    def __init__(self, cfg: Config, action_dim: int, device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.cfg = cfg
        self.action_dim = action_dim
        self.device = torch.device(device)
        self.seed = seed
        m, s = cfg.model, cfg.sac
        history_dim = m.sequence_length * m.feature_dim + (m.sequence_length - 1) * action_dim
        # Build on CPU under a forked, seeded RNG: the same weights on every device, global RNG untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = LatentModel(m, action_dim)
            self.actor = TanhGaussianActor(history_dim, action_dim, s.hidden_dim)
            self.critic = TwinCritic(self.model.z_dim, action_dim, s.hidden_dim)
        # The delayed critics of eq. 10 move only by Polyak averaging, never by gradients.
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        for module in (self.model, self.actor, self.critic, self.critic_target):
            module.to(self.device)
        self.log_alpha = torch.tensor(math.log(s.init_alpha), device=self.device, requires_grad=True)
        self.model_optimizer = torch.optim.Adam(self.model.parameters(), lr=m.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=s.critic_lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=s.actor_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=s.alpha_lr)
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(seed)
        self.model_updates = 0
        self.sac_updates = 0

    @property
    def sac_networks(self) -> SacNetworks:
        return SacNetworks(self.actor, self.critic, self.critic_target, self.log_alpha)

    # ---------------------------------------------------------------- updates
    def update_model(self, batch: Batch) -> dict[str, float]:
        """One Adam step of the model on eq. 9."""
        batch = self._prepare(batch)
        loss, metrics = model_loss(self.model, batch, self.cfg.model, generator=self.generator)
        self._step(self.model_optimizer, loss, "model")
        self.model_updates += 1
        return self._finish(metrics, MODEL_KEYS)

    def update_sac(self, batch: Batch) -> dict[str, float]:
        """Critic step (eq. 10), target update, actor step (eq. 11), temperature step, on latents of `batch`."""
        batch = self._prepare(batch)
        with torch.no_grad():  # eqs. 10-11 never train the model: filter without building a graph
            features = self.model.encoder(batch.obs)
            posterior = self.model.posterior(features, batch.action, batch.first, generator=self.generator)
        metrics = self._sac_step(latent_transition(batch, features, posterior.z))
        return self._finish(metrics, SAC_KEYS)

    def update(self, model_batch: Batch, sac_batch: Batch) -> dict[str, float]:
        """Model step, then critic, target, actor and temperature steps (Algorithm 1's gradient step)."""
        if not _is_head(model_batch, sac_batch):
            return {**self.update_model(model_batch), **self.update_sac(sac_batch)}
        n = model_batch.batch_size
        batch = self._prepare(sac_batch)
        head, tail = batch.head(n), Batch(*(t[n:] for t in batch))
        # One encoder and posterior pass per row: the tail's without a graph, the head's with gradients for
        # eq. 9 and, detached, for the critic. The SAC latents thus come from the model before this step's
        # model update, as in the official implementation's single gradient tape. The tail goes first:
        # encoding it while the model's graph holds its activations measured a few % slower on CPU.
        with torch.no_grad():
            tail_features = self.model.encoder(tail.obs)
            tail_posterior = self.model.posterior(tail_features, tail.action, tail.first, generator=self.generator)
        head_features = self.model.encoder(head.obs)
        head_posterior = self.model.posterior(head_features, head.action, head.first, generator=self.generator)
        loss, model_metrics = model_loss(self.model, head, self.cfg.model, posterior=head_posterior)
        # Detached: the SAC losses must not reach the model (latent_transition detaches too; explicit here
        # because these tensors still carry the model loss's graph).
        features = torch.cat([head_features.detach(), tail_features])
        z = torch.cat([head_posterior.z.detach(), tail_posterior.z])
        self._step(self.model_optimizer, loss, "model")
        self.model_updates += 1
        sac_metrics = self._sac_step(latent_transition(batch, features, z))
        return self._finish({**model_metrics, **sac_metrics}, MODEL_KEYS | SAC_KEYS)

    def _sac_step(self, transition: LatentTransition) -> Metrics:
        nets, cfg = self.sac_networks, self.cfg.sac
        loss, metrics = critic_loss(nets, transition, cfg, self.generator)
        self._step(self.critic_optimizer, loss, "critic")
        polyak_update(self.critic, self.critic_target, cfg.target_update_coef)
        loss, actor_metrics = actor_loss(nets, transition, cfg, self.generator)
        self._step(self.actor_optimizer, loss, "actor")
        metrics.update(actor_metrics)
        if cfg.auto_entropy:
            loss, alpha_metrics = alpha_loss(nets, transition, cfg, self.generator)
            self._step(self.alpha_optimizer, loss, "alpha")
            metrics.update(alpha_metrics)
        else:
            metrics.update({"alpha/loss": torch.zeros((), device=self.device), "alpha/value": self.log_alpha.detach().exp()})
        self.sac_updates += 1
        return metrics

    def _prepare(self, batch: Batch) -> Batch:
        batch.validate(self.cfg.model.sequence_length, self.action_dim)
        return batch.to(self.device)

    @staticmethod
    def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, name: str) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name} loss is {loss.item()}; the update was skipped. Check the batch for "
                                     f"NaN/inf and the learning rates, or resume from the last checkpoint.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @staticmethod
    def _finish(metrics: Metrics, expected: frozenset[str]) -> dict[str, float]:
        if set(metrics) != expected:
            raise KeyError(f"metric keys {sorted(set(metrics) ^ expected)} differ from the expected set {sorted(expected)}")
        values = torch.stack([metrics[k].float() for k in sorted(metrics)]).cpu().tolist()  # one device sync
        return dict(zip(sorted(metrics), values, strict=True))

    # ---------------------------------------------------------------- export
    def actor_weights(self, version: int) -> dict[str, Any]:
        """What an actor process needs to act (common.policy.Policy): encoder + actor head, on CPU, picklable."""
        tensors = {f"encoder.{k}": v for k, v in self.model.encoder.state_dict().items()}
        tensors.update({f"actor.{k}": v for k, v in self.actor.state_dict().items()})
        return {
            "version": int(version), "action_dim": self.action_dim,
            "model_cfg": dataclasses.asdict(self.cfg.model), "sac_cfg": dataclasses.asdict(self.cfg.sac),
            "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()},
        }

    def figure(self, batch: Batch, sequences: int = 3) -> np.ndarray:
        """uint8 [H, W, 3]: figure 7 of the paper for the first `sequences` windows of `batch`, rows
        ground truth / posterior / conditional prior / prior. Uses its own generator, so logging a figure
        never changes the training run."""
        batch = self._prepare(batch.head(min(sequences, batch.batch_size)))
        generator = torch.Generator(self.device)
        generator.manual_seed(self.seed * 1_000_003 + self.model_updates)
        return figure_rows(self.model, batch.obs, batch.action, batch.first, generator)

    def parameter_counts(self) -> dict[str, int]:
        """Scalar parameters per network (the targets mirror the critics)."""
        model = self.model
        return {
            "encoder": count_parameters(model.encoder), "decoder": count_parameters(model.decoder),
            "latent": count_parameters(model) - count_parameters(model.encoder) - count_parameters(model.decoder)
            - count_parameters(model.reward),
            "reward": count_parameters(model.reward), "model": count_parameters(model),
            "actor": count_parameters(self.actor), "critic": count_parameters(self.critic),
        }

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit for bit: networks, targets, log alpha, optimisers, counters, RNG.

        A snapshot (deep copy): later updates do not change it.
        """
        return copy.deepcopy({
            "format": STATE_FORMAT, "action_dim": self.action_dim, "seed": self.seed,
            "model_cfg": dataclasses.asdict(self.cfg.model), "sac_cfg": dataclasses.asdict(self.cfg.sac),
            "model": self.model.state_dict(), "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(), "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach(),
            "optimizers": {"model": self.model_optimizer.state_dict(), "critic": self.critic_optimizer.state_dict(),
                           "actor": self.actor_optimizer.state_dict(), "alpha": self.alpha_optimizer.state_dict()},
            "counters": {"model_updates": self.model_updates, "sac_updates": self.sac_updates},
            "rng": self.generator.get_state(), "rng_device": self.device.type,
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` (from any device) into this learner."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"learner state format {state.get('format')!r}, expected {STATE_FORMAT}: "
                             "the checkpoint comes from another version of slac-dist")
        # Only what shapes the networks must match; learning rates, batch sizes, gamma... may change on resume.
        mine = _architecture(self.action_dim, dataclasses.asdict(self.cfg.model), dataclasses.asdict(self.cfg.sac))
        theirs = _architecture(state["action_dim"], state["model_cfg"], state["sac_cfg"])
        differ = [f"{k}: checkpoint {theirs[k]!r}, learner {mine[k]!r}" for k in mine if mine[k] != theirs[k]]
        if differ:
            raise ValueError(f"checkpoint networks do not fit this learner ({'; '.join(differ)}); "
                             "resume with the config the checkpoint was trained with")
        self.model.load_state_dict(state["model"])
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        optimizers = state["optimizers"]
        self.model_optimizer.load_state_dict(optimizers["model"])
        self.critic_optimizer.load_state_dict(optimizers["critic"])
        self.actor_optimizer.load_state_dict(optimizers["actor"])
        self.alpha_optimizer.load_state_dict(optimizers["alpha"])
        # Adam's moments resume; the learning rates are this config's (equal to the saved ones on a plain resume).
        m, s = self.cfg.model, self.cfg.sac
        for optimizer, lr in ((self.model_optimizer, m.lr), (self.critic_optimizer, s.critic_lr),
                              (self.actor_optimizer, s.actor_lr), (self.alpha_optimizer, s.alpha_lr)):
            for group in optimizer.param_groups:
                group["lr"] = lr
        self.model_updates = int(state["counters"]["model_updates"])
        self.sac_updates = int(state["counters"]["sac_updates"])
        self.seed = int(state["seed"])
        if state["rng_device"] == self.device.type:
            self.generator.set_state(state["rng"].cpu())
        else:  # CPU and CUDA generators differ in kind: resume with a deterministic fresh stream instead
            self.generator.manual_seed(self.seed * 1_000_003 + self.model_updates + 1)
