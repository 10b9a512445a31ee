"""SLAC's objectives, one pure function per paper equation: (networks, batch, cfg) -> (loss, metrics).

None of them steps an optimiser or logs; the `Learner` does. Metric values are detached 0-d tensors
(the learner process sums them on the device and fetches them every `learner.metrics_every` updates).
Shapes: B batch, T = tau + 1 frames, A action dim, Z = z1_dim + z2_dim, H = actor history size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from common.batch import Batch, padding_mask
from common.config import ModelConfig, SacConfig
from common.latent_model import LatentModel, Rollout
from common.networks import TanhGaussianActor, TwinCritic, actor_input, gaussian_kl

Metrics = dict[str, torch.Tensor]


class SacNetworks(NamedTuple):
    """What eqs. 10 and 11 and the temperature loss read."""

    actor: TanhGaussianActor
    critic: TwinCritic
    critic_target: TwinCritic
    log_alpha: torch.Tensor


class UpdateNoise(NamedTuple):
    """Every standard-normal draw of one update, made up front from the learner's generator: the eager
    and the compiled step consume the same noise, and compiled code never handles a generator."""

    z1: torch.Tensor
    """[B, T, z1_dim] the posterior's z1 samples."""
    z2: torch.Tensor
    """[B, T, z2_dim] the posterior's z2 samples."""
    next_action: torch.Tensor
    """[B, A] a' ~ pi(. | x[2..tau+1]) of eq. 10's target."""
    action: torch.Tensor
    """[B, A] a ~ pi(. | x[1..tau]) of eq. 11."""
    alpha_action: torch.Tensor
    """[B, A] the temperature loss's sample of pi."""


class LatentTransition(NamedTuple):
    """The SAC batch in latent form, every tensor without a path back to the model (see `latent_transition`)."""

    z: torch.Tensor
    """[B, Z] z[tau] from the filtering posterior."""
    action: torch.Tensor
    """[B, A] a[tau]."""
    reward: torch.Tensor
    """[B] r[tau]."""
    terminated: torch.Tensor
    """[B] 1 where x[tau+1] is a true terminal state."""
    z_next: torch.Tensor
    """[B, Z] z[tau+1], drawn from the same posterior sequence as z[tau]."""
    history: torch.Tensor
    """[B, H] actor input of x[1..tau] and a[1..tau-1]: the history pi acted on when it chose a[tau]."""
    history_next: torch.Tensor
    """[B, H] actor input of x[2..tau+1] and a[2..tau]: pi's history at x[tau+1], for the critic's target."""


def latent_transition(batch: Batch, features: torch.Tensor, posterior_z: torch.Tensor) -> LatentTransition:
    """Build eq. 10's (z[tau], a[tau], r[tau], z[tau+1]) and the actor's histories at x[tau] and x[tau+1].

    features [B, T, F] and posterior_z [B, T, Z] come from one posterior pass; both are detached here:
    the critic and actor objectives never train the model or its conv layers (section 5, appendix B).
    The actor trains on (z[tau], x[1..tau], a[1..tau-1]) as in the official implementation: a window
    whose last transition leaves an episode's first frame then gives pi the all-first-frame history it
    acts on at t = 0 of every episode (x[2..tau+1] never is one: x[tau+1] is never a first frame).
    """
    features, posterior_z = features.detach(), posterior_z.detach()
    return LatentTransition(
        z=posterior_z[:, -2], action=batch.action[:, -1], reward=batch.reward[:, -1],
        terminated=batch.terminated[:, -1], z_next=posterior_z[:, -1],
        history=actor_input(features[:, :-1], batch.action[:, :-1]),
        history_next=actor_input(features[:, 1:], batch.action[:, 1:]),
    )


def model_loss(model: LatentModel, batch: Batch, cfg: ModelConfig, *, posterior: Rollout | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, Metrics]:
    """Eq. 9 with the reward term: -E_q[sum_t log p(x[t]|z[t]) - KL(q(z1[t]) || p(z1[t])) + log p(r[t]|z[t],a[t],z[t+1])].

    Sums run over valid time steps and the mean over the batch (the official normalisation). Padding
    frames (before an episode's first frame) contribute no image or KL term; transitions out of padding
    and transitions after a termination contribute no reward term. `posterior` (with gradients) may be
    passed in when the caller already filtered the batch; otherwise it is sampled here.
    """
    if posterior is None:
        posterior = model.posterior(model.encoder(batch.obs), batch.action, batch.first, generator=generator)
    valid = ~padding_mask(batch.first)  # [B, T]
    valid_f = valid.float()

    # log p(x[t] | z[t]): Gaussian with fixed variance, summed over 3 x 64 x 64 pixels.
    mean = model.decode(posterior)
    target = batch.obs.float() / 255.0
    squared_error = (target - mean).square().flatten(2).sum(-1)  # [B, T]
    pixels = mean[0, 0].numel()
    log_px = -0.5 * squared_error / cfg.pixel_variance - 0.5 * pixels * math.log(2 * math.pi * cfg.pixel_variance)
    reconstruction = -(log_px * valid_f).sum(1).mean()

    # KL over z1 only: q and p share the z2 networks (section 6).
    kl = (gaussian_kl(posterior.z1_posterior, posterior.z1_prior) * valid_f).sum(1).mean()

    z = posterior.z
    reward_dist = model.reward(z[:, :-1], batch.action, z[:, 1:])
    log_pr = reward_dist.log_prob(batch.reward.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    terminated_before = (batch.terminated.cumsum(1) - batch.terminated) > 0
    reward_mask = (valid[:, :-1] & ~terminated_before).float()
    reward = -(log_pr * reward_mask).sum(1).mean()

    loss = reconstruction + kl + reward
    n_frames = valid_f.sum().clamp(min=1.0)
    metrics = {
        "model/loss": loss, "model/reconstruction": reconstruction, "model/kl": kl, "model/reward": reward,
        "model/image_mse": (squared_error * valid_f).sum() / (n_frames * pixels),
        "model/reward_mse": ((reward_dist.mean.squeeze(-1) - batch.reward).square() * reward_mask).sum()
        / reward_mask.sum().clamp(min=1.0),
    }
    return loss, {k: v.detach() for k, v in metrics.items()}


def _frozen(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in module.named_parameters()}


def critic_target(nets: SacNetworks, batch: LatentTransition, cfg: SacConfig,
                  generator: torch.Generator | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
    """The regression target of eq. 10, [B]:
    r[tau] + gamma (1 - terminated) (min_i Qbar_i(z[tau+1], a') - alpha log pi(a' | x[2..tau+1], a[2..tau])), a' ~ pi.

    Only termination zeroes the bootstrap; a time limit is not a terminal state (truncated windows keep
    terminated = 0). Computed without gradients: it is a fixed target built from the delayed critics.
    """
    with torch.no_grad():
        next_action, next_log_pi = nets.actor.sample(batch.history_next, generator, eps=eps)
        q1, q2 = nets.critic_target(batch.z_next, next_action)
        soft_value = torch.minimum(q1, q2) - nets.log_alpha.exp() * next_log_pi
        return batch.reward + cfg.gamma * (1.0 - batch.terminated) * soft_value


def critic_loss(nets: SacNetworks, batch: LatentTransition, cfg: SacConfig,
                generator: torch.Generator | None = None, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
    """Eq. 10: sum over both critics of 1/2 (Q_theta_i(z[tau], a[tau]) - target)^2, mean over the batch."""
    target = critic_target(nets, batch, cfg, generator, eps)
    q1, q2 = nets.critic(batch.z, batch.action)
    loss = 0.5 * ((q1 - target).square() + (q2 - target).square()).mean()
    metrics = {"critic/loss": loss, "critic/q1": q1.mean(), "critic/q2": q2.mean(), "critic/target": target.mean()}
    return loss, {k: v.detach() for k, v in metrics.items()}


def actor_loss(nets: SacNetworks, batch: LatentTransition, cfg: SacConfig,
               generator: torch.Generator | None = None, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
    """Eq. 11: alpha log pi(a | x[1..tau], a[1..tau-1]) - min_i Q_theta_i(z[tau], a), a ~ pi reparameterised.

    Trains the actor alone: alpha is detached (it has its own loss) and the critics are called with
    detached parameters, so eq. 11 neither fills their gradients nor changes theta; the actor's input is
    already detached from the encoder (`latent_transition`).
    """
    action, log_pi = nets.actor.sample(batch.history, generator, eps=eps)
    q1, q2 = functional_call(nets.critic, _frozen(nets.critic), (batch.z, action))
    alpha = nets.log_alpha.detach().exp()
    loss = (alpha * log_pi - torch.minimum(q1, q2)).mean()
    return loss, {"actor/loss": loss.detach(), "actor/entropy": -log_pi.detach().mean()}


def alpha_loss(nets: SacNetworks, batch: LatentTransition, cfg: SacConfig,
               generator: torch.Generator | None = None, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
    """SAC's temperature loss: -log_alpha (log pi(a | x[1..tau], a[1..tau-1]) + target_entropy), a ~ pi; target -|A| by default.

    Its gradient raises alpha while the policy's entropy is below the target and lowers it above. The
    log-probabilities are a fixed input here (no gradient into the actor).
    """
    target_entropy = cfg.target_entropy if cfg.target_entropy is not None else -float(batch.action.shape[-1])
    with torch.no_grad():
        _, log_pi = nets.actor.sample(batch.history, generator, eps=eps)
    loss = -(nets.log_alpha * (log_pi + target_entropy)).mean()
    return loss, {"alpha/loss": loss.detach(), "alpha/value": nets.log_alpha.detach().exp()}
