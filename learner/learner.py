"""The `Learner`: owns SLAC's networks and optimisers and turns batches into gradient steps (Algorithm 1).

No I/O: batches in, metrics out; `state_dict` for checkpoints and `actor_weights` for the actors (both built
in learner/state.py), `figure` for the logs. All randomness of training comes from one torch.Generator owned by the learner
(and saved with it), so a CPU learner is deterministic under its seed and resumes bit for bit.

`update(batch)` is one joint gradient step; the model batch is, as in the official implementation, the
head of the SAC batch, so the head's encoder and posterior pass serves both eq. 9 and the SAC losses.
The step never waits for the device: every standard-normal draw is made up front (`losses.UpdateNoise`),
metrics come back as device tensors, and the finiteness of every loss is accumulated on the device
and checked by `check_finite()` when the caller fetches metrics. The step function is eager or
compiled (learner/execution.py) from the same code, so the two can be tested against each other.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from common.batch import Batch, random_batch
from common.config import Config
from common.latent_model import LatentModel, Rollout, figure_rows
from common.networks import Gaussian, TanhGaussianActor, TwinCritic, count_parameters
from learner import execution, state
from learner.losses import (
    LatentTransition,
    Metrics,
    SacNetworks,
    UpdateNoise,
    actor_loss,
    alpha_loss,
    critic_loss,
    latent_transition,
    model_loss,
)

log = logging.getLogger(__name__)

MODEL_KEYS = frozenset({"model/loss", "model/reconstruction", "model/kl", "model/reward", "model/image_mse",
                        "model/reward_mse"})
SAC_KEYS = frozenset({"critic/loss", "critic/q1", "critic/q2", "critic/target", "actor/loss", "actor/entropy",
                      "alpha/loss", "alpha/value"})
LOSSES = ("model", "critic", "actor", "alpha")
"""The four objectives whose finiteness the learner tracks, in the order of its flags."""
GUARDED_CALLS = 3
"""Calls of each step function during which a failing CUDA-graph mode falls back to inductor's default mode
(CUDA-graph trees warm up on the first call, record on the second and replay from the third)."""


def polyak_update(online: torch.nn.Module, target: torch.nn.Module, coef: float) -> None:
    """theta_bar <- theta_bar + coef (theta - theta_bar): the delayed critics of eq. 10 (one foreach kernel)."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), coef)


def _rows(rollout: Rollout, n: int) -> Rollout:
    """The first n batch rows of a rollout (every tensor, the Gaussians' included)."""
    return Rollout(rollout.z1[:n], rollout.z2[:n], Gaussian(*(t[:n] for t in rollout.z1_posterior)),
                   Gaussian(*(t[:n] for t in rollout.z1_prior)))


class Learner:
    """SLAC's model, twin critics and their targets, actor and temperature, each with its Adam optimiser."""

    def __init__(self, cfg: Config, action_dim: int, device: str | torch.device = "cpu", seed: int = 0) -> None:
        execution.persistent_cache()
        self.cfg = cfg = cfg.with_model_resolved()  # pixel_variance auto: the task's number
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
        if self.device.type == "cuda":
            # The fp32 paths (precision fp32; the critics and actor under bf16): TF32 tensor cores for matrix
            # products and convolutions (10-bit mantissa products, fp32 accumulation), cuDNN's autotuner for the
            # static shapes of every update.
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        self.log_alpha = torch.tensor(math.log(s.init_alpha), device=self.device, requires_grad=True)
        adam = execution.adam_options()
        self.model_optimizer = torch.optim.Adam(self.model.parameters(), lr=m.lr, **adam)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=s.critic_lr, **adam)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=s.actor_lr, **adam)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=s.alpha_lr, **adam)
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(seed)
        self.model_updates = 0
        self.sac_updates = 0
        self._finite = torch.ones(len(LOSSES), dtype=torch.bool, device=self.device)
        self._unchecked_updates = 0
        # Resolved once ("auto" -> what this device gets): the hot path never re-decides, and warns once.
        compile_setting = execution.resolve_compile(cfg.learner.compile, self.device)
        self.precision = execution.resolve_precision(cfg.learner.precision, self.device)
        self.one_rollout = self.device.type == "cuda"
        """Filter the SAC batch's head and tail in one posterior rollout (CUDA: half the tiny sequential kernels)
        or two (CPU: there the backward through the tail rows of a joint rollout costs more than the tail's
        own gradient-free rollout; 7 % slower per paper-size update, bench/results/vm-2026-12-02-learner-versus-
        81f1681-paper-one-rollout-on-cpu.json). Both give the same losses and gradients."""
        self._build_steps(execution.compile_mode(compile_setting, self.device))
        self._fallback: str | None = None
        self._calls = dict.fromkeys(self._steps, 0)
        self.first_call = execution.FirstCallTimer(self.device)

    def _build_steps(self, mode: str | None) -> None:
        """(Re)build the four step functions in torch.compile `mode` (None: eager)."""
        self._mode = mode
        self._cuda_graphs = self.device.type == "cuda" and mode in execution.CUDA_GRAPH_MODES
        self._steps = {name: execution.compile_step(fn, "none" if mode is None else "default", self.device, mode)
                       for name, fn in (("model", self._model_loss), ("model_critic", self._model_critic_losses),
                                        ("actor", self._actor_loss), ("alpha", self._alpha_loss))}

    @property
    def execution(self) -> dict[str, Any]:
        """How the update runs now: torch.compile mode (none = eager), precision, CUDA graphs, and why a CUDA-graph
        mode was given up, if it was (the learner process reports it to W&B)."""
        return {"compile": self._mode or "none", "precision": self.precision, "cuda_graphs": self._cuda_graphs,
                "fallback": self._fallback}

    @property
    def sac_networks(self) -> SacNetworks:
        return SacNetworks(self.actor, self.critic, self.critic_target, self.log_alpha)

    @property
    def compile_seconds(self) -> dict[str, float]:
        """Wall clock of the first call of each step function (compilation included when compiled)."""
        return dict(self.first_call.seconds)

    # ---------------------------------------------------------------- updates
    def update(self, batch: Batch) -> Metrics:
        """One gradient step of Algorithm 1: model (eq. 9) on the batch's first `model.batch_size` windows,
        then critic (eq. 10), target, actor (eq. 11) and temperature on all of them. Metrics are 0-d device
        tensors (no host sync), valid until the next update (CUDA graphs reuse their output buffers); call
        `check_finite()` before trusting them.

        The model and the critic share one backward pass: their parameters are disjoint and the critic
        reads the latents detached, so the gradients are exactly those of two separate passes.
        """
        batch = self._prepare(batch)
        if batch.batch_size < self.cfg.model.batch_size:
            raise ValueError(f"Learner.update: batch of {batch.batch_size} windows, expected the SAC batch of "
                             f"{self.cfg.sac.batch_size} (its head of model.batch_size {self.cfg.model.batch_size} "
                             "trains the model)")
        noise = self._draw_noise(batch.batch_size)
        self._zero_grads(self.model_optimizer, self.critic_optimizer, self.actor_optimizer, self.alpha_optimizer)
        if self._cuda_graphs:
            # A new iteration for CUDA-graph trees: this update's graph outputs may overwrite the last one's.
            torch.compiler.cudagraph_mark_step_begin()
        losses, transition, metrics = self._guarded("model_critic", (batch, noise),
                                                    (self.model_optimizer, self.critic_optimizer),
                                                    lambda out: out[0][0] + out[0][1])
        polyak_update(self.critic, self.critic_target, self.cfg.sac.target_update_coef)
        loss_actor, actor_metrics = self._guarded("actor", (transition, noise.action), (self.actor_optimizer,),
                                                  lambda out: out[0])
        if self.cfg.sac.auto_entropy:
            loss_alpha, alpha_metrics = self._guarded("alpha", (transition, noise.alpha_action),
                                                      (self.alpha_optimizer,), lambda out: out[0])
        else:
            loss_alpha = torch.zeros((), device=self.device)
            alpha_metrics = {"alpha/loss": loss_alpha, "alpha/value": self.log_alpha.detach().exp()}
        self._finite &= torch.isfinite(torch.stack([losses[0], losses[1], loss_actor, loss_alpha]))
        self.model_updates += 1
        self.sac_updates += 1
        self._unchecked_updates += 1
        return _expect({**metrics, **actor_metrics, **alpha_metrics}, MODEL_KEYS | SAC_KEYS)

    def update_model(self, batch: Batch) -> Metrics:
        """One Adam step of the model alone on eq. 9 (the pre-training phase); metrics as in `update`."""
        batch = self._prepare(batch)
        self._zero_grads(self.model_optimizer)
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss, metrics = self._guarded("model", (batch, self._draw_noise(batch.batch_size)), (self.model_optimizer,),
                                      lambda out: out[0])
        self._finite[0] &= torch.isfinite(loss)
        self.model_updates += 1
        self._unchecked_updates += 1
        return _expect(metrics, MODEL_KEYS)

    def warm_up(self) -> float:
        """Compile every step function now, forward and backward, on a random batch of the real shapes and dtypes,
        leaving parameters, optimiser states, the noise generator and the counters as they were; returns its
        seconds (0 when eager). The learner process calls it while the initial collection runs, so the first real
        update does not stall for the compilation (a minute or two on a CPU). A failure is logged and left to the
        first real update, whose guard (`_guarded`) handles a CUDA-graph mode that cannot capture."""
        if self._mode is None:
            return 0.0
        start = time.perf_counter()
        noise_generator = torch.Generator(self.device).manual_seed(self.seed)  # the updates' own stays untouched
        frames = self.cfg.model.sequence_length + 1

        def batch(size: int) -> tuple[Batch, UpdateNoise]:
            data = random_batch(size, frames, self.action_dim, torch.Generator().manual_seed(self.seed))
            return self._prepare(data), self._draw_noise(size, noise_generator)

        def call(name: str, *args: Any) -> Any:
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            return self.first_call(name, self._steps[name], *args)

        optimizers = (self.model_optimizer, self.critic_optimizer, self.actor_optimizer, self.alpha_optimizer)
        try:
            call("model", *batch(self.cfg.model.batch_size))[0].backward()
            sac_batch, noise = batch(self.cfg.sac.batch_size)
            (losses, transition, _) = call("model_critic", sac_batch, noise)
            (losses[0] + losses[1]).backward()
            call("actor", transition, noise.action)[0].backward()
            if self.cfg.sac.auto_entropy:
                call("alpha", transition, noise.alpha_action)[0].backward()
        except Exception as exc:  # noqa: BLE001 - the first real update meets it again, under its guard
            log.warning("learner: compiling ahead of the first update failed (%s: %s); it compiles at that update",
                        type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        finally:
            self._zero_grads(*optimizers)
        return time.perf_counter() - start

    @staticmethod
    def _zero_grads(*optimizers: torch.optim.Optimizer) -> None:
        """Clear gradients before the forward passes, not between forward and backward: with CUDA graphs the
        previous step's `.grad` tensors alias graph outputs that the next replay overwrites."""
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)

    def _guarded(self, name: str, args: tuple[Any, ...], optimizers: tuple[torch.optim.Optimizer, ...],
                 loss_of: Callable[[Any], torch.Tensor]) -> Any:
        """Run step function `name`, backward and its optimisers' steps. In a CUDA-graph mode, during the first
        GUARDED_CALLS calls of each step function (capture and first replays), a failure before the optimisers
        stepped switches every step function to inductor's default mode with one warning and runs this step
        again: nothing is stepped twice, and the run goes on."""
        self._calls[name] += 1
        try:
            out = self.first_call(name, self._steps[name], *args)
            _step(optimizers, loss_of(out))
            return out
        except Exception as exc:
            if self._mode not in execution.CUDA_GRAPH_MODES or self._calls[name] > GUARDED_CALLS:
                raise
            failed = self._mode
            self._fallback = f"{failed}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.warning("learner: torch.compile mode %s failed in its first updates (%s); continuing with inductor's "
                        "default mode, without CUDA graphs (traceback at debug level)", failed, self._fallback)
            log.debug("the failure of %s", failed, exc_info=True)
            self._build_steps("default")
            self._zero_grads(*optimizers)
            out = self.first_call(name, self._steps[name], *args)
            _step(optimizers, loss_of(out))
            return out

    def check_finite(self) -> None:
        """Raise FloatingPointError if any loss was NaN or infinite since the last check (one device sync).

        The check is deferred so the update never waits for the device; a run stops within the caller's
        check interval, and the networks stepped on a non-finite loss are not to be saved.
        """
        finite = self._finite.tolist()
        unchecked, self._unchecked_updates = self._unchecked_updates, 0
        if not all(finite):
            bad = ", ".join(name for name, ok in zip(LOSSES, finite, strict=True) if not ok)
            raise FloatingPointError(
                f"the {bad} loss became NaN or infinite within the last {unchecked} updates (model update "
                f"{self.model_updates}), so the networks are no longer usable. Check the replay's data and the "
                "learning rates, then resume from the last checkpoint (--run.resume <run dir>).")

    def _draw_noise(self, batch_size: int, generator: torch.Generator | None = None) -> UpdateNoise:
        m, g, dev = self.cfg.model, generator or self.generator, self.device
        frames = m.sequence_length + 1

        def normal(*shape: int) -> torch.Tensor:
            return torch.randn(shape, device=dev, generator=g)

        return UpdateNoise(normal(batch_size, frames, m.z1_dim), normal(batch_size, frames, m.z2_dim),
                           normal(batch_size, self.action_dim), normal(batch_size, self.action_dim),
                           normal(batch_size, self.action_dim))

    # The three forward passes below are what `learner.compile` compiles (with their backward graphs);
    # the optimiser steps between them run eagerly as fused kernels.
    def _model_loss(self, batch: Batch, noise: UpdateNoise) -> tuple[torch.Tensor, Metrics]:
        with execution.autocast(self.device, self.precision):
            posterior = self.model.posterior(self.model.encoder(batch.obs), batch.action, batch.first,
                                             noise=(noise.z1, noise.z2))
            return model_loss(self.model, batch, self.cfg.model, posterior=posterior)

    def _model_critic_losses(self, batch: Batch, noise: UpdateNoise
                             ) -> tuple[tuple[torch.Tensor, torch.Tensor], LatentTransition, Metrics]:
        """Eq. 9 on the head of the batch and eq. 10 on all of it, from one encoder pass per part and the posterior
        filtered in one rollout (CUDA) or two (CPU; see `one_rollout`)."""
        n, model = self.cfg.model.batch_size, self.model
        head, tail = batch.head(n), Batch(*(t[n:] for t in batch))
        with execution.autocast(self.device, self.precision):
            # The tail's frames are encoded without a graph (the encoder's backward over them would cost more
            # than the second call); the head's with gradients for eq. 9. The SAC latents are detached: they
            # come from the model before this step's model update, as in the official implementation's single
            # gradient tape.
            with torch.no_grad():
                tail_features = model.encoder(tail.obs)
            head_features = model.encoder(head.obs)
            features = torch.cat([head_features, tail_features])
            if self.one_rollout:
                # All rows in ONE rollout: its T sequential steps are the update's chain of tiny kernels, and a
                # second rollout doubles them. Only head rows reach eq. 9, so the tail rows get zero gradient
                # and the model's gradients are the head's alone (tests/test_learner.py checks both paths).
                posterior = model.posterior(features, batch.action, batch.first, noise=(noise.z1, noise.z2))
                head_posterior, z = _rows(posterior, n), posterior.z
            else:
                with torch.no_grad():
                    tail_z = model.posterior(tail_features, tail.action, tail.first,
                                             noise=(noise.z1[n:], noise.z2[n:])).z
                head_posterior = model.posterior(head_features, head.action, head.first,
                                                 noise=(noise.z1[:n], noise.z2[:n]))
                z = torch.cat([head_posterior.z, tail_z])
            loss_model, metrics = model_loss(model, head, self.cfg.model, posterior=head_posterior)
            transition = latent_transition(batch, features.detach(), z.detach())
        # The critics, their targets and the actor run in fp32 whatever learner.precision says (see
        # `execution.full_precision`): under 1 % of the update's FLOPs, and bf16 would round Q near 400 to
        # steps of 2, as large as a step's reward.
        with execution.full_precision(self.device, self.precision):
            loss_critic, critic_metrics = critic_loss(self.sac_networks, transition, self.cfg.sac,
                                                      eps=noise.next_action)
        return (loss_model, loss_critic), transition, {**metrics, **critic_metrics}

    def _actor_loss(self, transition: LatentTransition, eps: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        with execution.full_precision(self.device, self.precision):
            return actor_loss(self.sac_networks, transition, self.cfg.sac, eps=eps)

    def _alpha_loss(self, transition: LatentTransition, eps: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        with execution.full_precision(self.device, self.precision):
            return alpha_loss(self.sac_networks, transition, self.cfg.sac, eps=eps)

    def _prepare(self, batch: Batch) -> Batch:
        batch.validate(self.cfg.model.sequence_length, self.action_dim)
        return batch.to(self.device)

    # ---------------------------------------------------------------- export and checkpoints
    def actor_weights(self, version: int) -> dict[str, Any]:
        """What an actor process needs to act (learner/state.py's `actor_weights`)."""
        return state.actor_weights(self, version)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit for bit, a snapshot (learner/state.py's `learner_state`)."""
        return state.learner_state(self)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore a `state_dict()` (from any device) into this learner, refusing one of other networks."""
        state.load_learner_state(self, saved)

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


def _step(optimizers: tuple[torch.optim.Optimizer, ...], loss: torch.Tensor) -> None:
    """Backward, then one Adam step per optimiser (gradients were cleared before the forward pass; the loss's
    finiteness is tracked on the device)."""
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()


def _expect(metrics: Metrics, expected: frozenset[str]) -> Metrics:
    if set(metrics) != expected:
        raise KeyError(f"metric keys {sorted(set(metrics) ^ expected)} differ from the expected set {sorted(expected)}")
    return metrics
