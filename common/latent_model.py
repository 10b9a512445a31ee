"""The two-layer sequential latent variable model of section 6 and appendix B.

Generative model p:                          Inference model q:
    z1[1] ~ N(0, I)                              z1[1]   ~ q(z1[1] | x[1])
    z2[1] ~ p(z2[1] | z1[1])                     z2[1]   ~ p(z2[1] | z1[1])
    z1[t+1] ~ p(z1[t+1] | z2[t], a[t])           z1[t+1] ~ q(z1[t+1] | x[t+1], z2[t], a[t])
    z2[t+1] ~ p(z2[t+1] | z1[t+1], z2[t], a[t])  z2[t+1] ~ p(z2[t+1] | z1[t+1], z2[t], a[t])
    x[t] ~ N(decoder(z1[t], z2[t]), pixel_variance)
    r[t] ~ p(r[t] | z[t], a[t], z[t+1]),  z = [z1, z2]

q over z2 reuses p's networks, so the KL of eq. 9 is over z1 alone. Every distribution resets to its
first-step form at frames where the batch's `first` is True (and at slot 0 of every window, as in the
official implementation), so a window padded before its episode's start (common/batch.py) filters
to the same latents at the true start as the unpadded episode.

Shapes: B batch, T frames, A action dim, F features; z1 [B, T, z1_dim], z2 [B, T, z2_dim].
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from common.config import ModelConfig
from common.networks import Decoder, Encoder, Gaussian, GaussianHead


class Rollout(NamedTuple):
    """A latent sequence and the z1 distributions it was drawn from / compared against (eq. 9's KL)."""

    z1: torch.Tensor
    z2: torch.Tensor
    z1_posterior: Gaussian
    """q(z1[t] | ...) at every t (where not observed, the prior that was sampled instead)."""
    z1_prior: Gaussian
    """p(z1[t] | z2[t-1], a[t-1]), or N(0, I) at first steps."""

    @property
    def z(self) -> torch.Tensor:
        """[B, T, z1_dim + z2_dim]: the latent state the critic and the reward model see."""
        return torch.cat([self.z1, self.z2], dim=-1)


class LatentModel(nn.Module):
    """Encoder, decoder, latent priors and posteriors and the reward model of appendix B."""

    def __init__(self, cfg: ModelConfig, action_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.action_dim = action_dim
        z1, z2, h, a = cfg.z1_dim, cfg.z2_dim, cfg.hidden_dim, action_dim
        f = cfg.feature_dim
        self.encoder = Encoder(cfg.conv_channels)
        self.decoder = Decoder(z1 + z2, cfg.conv_channels)
        self.z2_first_prior = GaussianHead(z1, z2, h)                  # p(z2[1] | z1[1])
        self.z1_prior = GaussianHead(z2 + a, z1, h)                     # p(z1[t+1] | z2[t], a[t])
        self.z2_prior = GaussianHead(z1 + z2 + a, z2, h)                # p(z2[t+1] | z1[t+1], z2[t], a[t])
        self.z1_first_posterior = GaussianHead(f, z1, h)                # q(z1[1] | x[1])
        self.z1_posterior = GaussianHead(f + z2 + a, z1, h)             # q(z1[t+1] | x[t+1], z2[t], a[t])
        self.reward = GaussianHead(2 * (z1 + z2) + a, 1, h)             # p(r[t] | z[t], a[t], z[t+1])

    @property
    def z_dim(self) -> int:
        return self.cfg.z1_dim + self.cfg.z2_dim

    def draw_noise(self, batch_size: int, frames: int, device: torch.device,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The standard normal eps of every z1 and z2 sample of one rollout, drawn up front."""
        eps1 = torch.randn(batch_size, frames, self.cfg.z1_dim, device=device, generator=generator)
        eps2 = torch.randn(batch_size, frames, self.cfg.z2_dim, device=device, generator=generator)
        return eps1, eps2

    def rollout(self, action: torch.Tensor, first: torch.Tensor, features: torch.Tensor | None = None,
                observe: torch.Tensor | None = None, noise: tuple[torch.Tensor, torch.Tensor] | None = None,
                generator: torch.Generator | None = None) -> Rollout:
        """Sample z[1..T] step by step, from q where `observe` [B, T] is True, else from the prior p.

        action [B, T-1, A]; first bool [B, T]; features [B, T, F] (needed where observed); noise as
        from `draw_noise` (drawn with `generator` when None). Gradients flow through everything.
        """
        batch, frames = first.shape
        if observe is None:
            observe = torch.ones_like(first) if features is not None else torch.zeros_like(first)
        if features is None and bool(observe.any()):
            raise ValueError("rollout: frames marked observed need encoder features; pass features=")
        eps1, eps2 = noise if noise is not None else self.draw_noise(batch, frames, first.device, generator)
        # Slot 0 always starts afresh: a window has no latent for what came before it.
        reset = first.clone()
        reset[:, 0] = True
        if features is not None:
            first_posterior = self.z1_first_posterior(features)  # q(z1[1] | x) for every frame, one batched call
        z1s, z2s, posteriors, priors = [], [], [], []
        for t in range(frames):
            if t == 0:
                prior = Gaussian.standard(eps1[:, 0])
                post = Gaussian(first_posterior.mean[:, 0], first_posterior.std[:, 0]) if features is not None else prior
            else:
                z2_prev, a_prev = z2s[-1], action[:, t - 1]
                prior = Gaussian.where(reset[:, t], Gaussian.standard(eps1[:, t]), self.z1_prior(z2_prev, a_prev))
                if features is not None:
                    post = Gaussian.where(reset[:, t],
                                          Gaussian(first_posterior.mean[:, t], first_posterior.std[:, t]),
                                          self.z1_posterior(features[:, t], z2_prev, a_prev))
                else:
                    post = prior
            z1_dist = Gaussian.where(observe[:, t], post, prior)
            z1 = z1_dist.rsample(eps1[:, t])
            if t == 0:
                z2_dist = self.z2_first_prior(z1)
            else:
                z2_dist = Gaussian.where(reset[:, t], self.z2_first_prior(z1), self.z2_prior(z1, z2_prev, a_prev))
            z1s.append(z1)
            z2s.append(z2_dist.rsample(eps2[:, t]))
            posteriors.append(z1_dist)
            priors.append(prior)
        return Rollout(
            torch.stack(z1s, 1), torch.stack(z2s, 1),
            Gaussian(torch.stack([d.mean for d in posteriors], 1), torch.stack([d.std for d in posteriors], 1)),
            Gaussian(torch.stack([d.mean for d in priors], 1), torch.stack([d.std for d in priors], 1)),
        )

    def posterior(self, features: torch.Tensor, action: torch.Tensor, first: torch.Tensor,
                  noise: tuple[torch.Tensor, torch.Tensor] | None = None,
                  generator: torch.Generator | None = None) -> Rollout:
        """The filtering posterior q(z[1..T] | x[1..T], a[1..T-1]) sampled with the reparameterisation trick."""
        return self.rollout(action, first, features, torch.ones_like(first), noise, generator)

    def conditional_prior(self, features: torch.Tensor, action: torch.Tensor, first: torch.Tensor,
                          generator: torch.Generator | None = None) -> Rollout:
        """Posterior up to each window's true first frame (slot 0 if none), then the dynamics p (figure 7)."""
        slots = torch.arange(first.shape[1], device=first.device)
        start = torch.where(first.any(1), first.float().argmax(1), torch.zeros_like(first[:, 0], dtype=torch.long))
        return self.rollout(action, first, features, slots[None, :] <= start[:, None], generator=generator)

    def prior(self, action: torch.Tensor, first: torch.Tensor, generator: torch.Generator | None = None) -> Rollout:
        """Samples of the generative model alone: z1[1] ~ N(0, I), then the dynamics under the given actions."""
        return self.rollout(action, first, None, torch.zeros_like(first), generator=generator)

    def decode(self, rollout: Rollout) -> torch.Tensor:
        """Image means [B, T, 3, 64, 64] in [0, 1] units."""
        return self.decoder(rollout.z)


def image_grid(rows: list[torch.Tensor], gap: int = 4) -> np.ndarray:
    """uint8 [H, W, 3] grid, one row per [T, 3, 64, 64] sequence (uint8 pixels or float in [0, 1]), `gap` white pixels apart."""
    strips = []
    for row in rows:
        row = row.detach().cpu()
        # uint8 frames are raw pixels; model outputs are means in [0, 1] units and may overshoot.
        row = row.float() / 255.0 if row.dtype == torch.uint8 else row.float().clamp(0.0, 1.0)
        strips.append(torch.cat(list(row), dim=-1))  # [3, 64, T * 64]
    height = sum(s.shape[1] for s in strips) + gap * (len(strips) - 1)
    grid = torch.ones(3, height, strips[0].shape[2])
    y = 0
    for strip in strips:
        grid[:, y:y + strip.shape[1]] = strip
        y += strip.shape[1] + gap
    return (grid.permute(1, 2, 0) * 255.0).round().to(torch.uint8).numpy()


@torch.no_grad()
def figure_rows(model: LatentModel, obs: torch.Tensor, action: torch.Tensor, first: torch.Tensor,
                generator: torch.Generator | None = None) -> np.ndarray:
    """Figure 7 of the paper for each window: rows ground truth, posterior, conditional prior, prior.

    obs uint8 [N, T, 3, 64, 64]; action [N, T-1, A]; first [N, T]. Padding frames show as the first frame
    (that is what the window holds); their reconstructions are not trained.
    """
    features = model.encoder(obs)
    posterior = model.decode(model.posterior(features, action, first, generator=generator))
    conditional = model.decode(model.conditional_prior(features, action, first, generator=generator))
    prior = model.decode(model.prior(action, first, generator=generator))
    rows: list[torch.Tensor] = []
    for i in range(obs.shape[0]):
        rows += [obs[i], posterior[i], conditional[i], prior[i]]
    return image_grid(rows)
