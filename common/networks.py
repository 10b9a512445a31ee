"""The building blocks of appendix B: conv encoder, transposed-conv decoder, Gaussian heads, the
tanh-Gaussian actor and the twin critic.

Images enter as uint8 and are scaled to [0, 1] inside the modules (appendix B: x_t in [0, 1]^{64x64x3};
the official implementation converts with `tf.image.convert_image_dtype`, also [0, 1]), so every
caller hands raw replay frames over unchanged. Layers use Glorot-uniform weights and zero biases, the
Keras defaults the official implementation ran with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# softplus(.) + this keeps every learned std strictly positive (the official implementation's 1e-5).
STD_EPSILON = 1e-5
# Clamp of the actor's log std, as in the official actor network (tf_agents' SAC default).
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_LOG_2PI = math.log(2.0 * math.pi)
# NHWC convolutions: on this project's CPUs the encoder runs ~1.6x faster forward, ~1.2x with backward.
_CONV_FORMAT = torch.channels_last
# Negative slope of every leaky ReLU of the model (encoder, decoder, Gaussian and reward heads): both the
# official implementation (tf.nn.leaky_relu's default) and the PyTorch port use 0.2, not PyTorch's 0.01.
LEAKY_RELU_SLOPE = 0.2


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """x in fp32 when autocast made it bf16/fp16 (other dtypes as they are): every network returns full
    precision, so log-densities, KL terms and losses are never computed in bf16 (learner/execution.py)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def leaky_relu() -> nn.Module:
    """The model's activation (appendix B: leaky ReLU), with the reference implementations' slope 0.2."""
    return nn.LeakyReLU(LEAKY_RELU_SLOPE)


class Gaussian(NamedTuple):
    """A diagonal Gaussian over the last dimension, kept as plain tensors so `torch.where` can mix two."""

    mean: torch.Tensor
    std: torch.Tensor

    def rsample(self, eps: torch.Tensor) -> torch.Tensor:
        """Reparameterised sample mean + std * eps (eps ~ N(0, I) drawn by the caller, so noise is explicit)."""
        return self.mean + self.std * eps

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise log density (no sum over the last dimension)."""
        return -0.5 * ((x - self.mean) / self.std).square() - self.std.log() - 0.5 * _LOG_2PI

    @staticmethod
    def where(condition: torch.Tensor, a: Gaussian, b: Gaussian) -> Gaussian:
        """`a` where condition (broadcast over the last dim) else `b`."""
        c = condition.unsqueeze(-1)
        return Gaussian(torch.where(c, a.mean, b.mean), torch.where(c, a.std, b.std))

    @staticmethod
    def standard(like: torch.Tensor) -> Gaussian:
        """N(0, I) with the shape of `like`: p(z1[1])."""
        return Gaussian(torch.zeros_like(like), torch.ones_like(like))


def gaussian_kl(q: Gaussian, p: Gaussian) -> torch.Tensor:
    """Analytic KL(q || p) of diagonal Gaussians, summed over the last dimension (the KL terms of eq. 9)."""
    var_ratio = (q.std / p.std).square()
    mean_term = ((q.mean - p.mean) / p.std).square()
    return 0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log()).sum(-1)


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def mlp(in_dim: int, hidden_dim: int, out_dim: int,
        activation: Callable[[], nn.Module] = leaky_relu) -> nn.Sequential:
    """Two hidden fully connected layers and a linear output (appendix B)."""
    net = nn.Sequential(nn.Linear(in_dim, hidden_dim), activation(), nn.Linear(hidden_dim, hidden_dim),
                        activation(), nn.Linear(hidden_dim, out_dim))
    net.apply(_init)
    return net


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of a module."""
    return sum(p.numel() for p in module.parameters())


class Encoder(nn.Module):
    """The conv stack shared by q(z1[1] | x[1]), q(z1[t+1] | x[t+1], z2[t], a[t]) and the actor (appendix B).

    uint8 [..., 3, 64, 64] -> float [..., conv_channels[-1]]: 5x5, 3x3, 3x3, 3x3 convs of stride 2
    (64 -> 4 pixels), then a 4x4 valid conv to 1x1; leaky ReLU after each layer.
    """

    def __init__(self, conv_channels: tuple[int, ...]) -> None:
        super().__init__()
        c0, c1, c2, c3, c4 = conv_channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c0, 5, 2, 2), leaky_relu(),
            nn.Conv2d(c0, c1, 3, 2, 1), leaky_relu(),
            nn.Conv2d(c1, c2, 3, 2, 1), leaky_relu(),
            nn.Conv2d(c2, c3, 3, 2, 1), leaky_relu(),
            nn.Conv2d(c3, c4, 4, 1, 0), leaky_relu(),
        )
        self.feature_dim = c4
        self.apply(_init)
        self.to(memory_format=_CONV_FORMAT)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        lead = obs.shape[:-3]
        # Reorder while still uint8 (4x less memory traffic than after the float conversion).
        x = obs.reshape(-1, *obs.shape[-3:]).contiguous(memory_format=_CONV_FORMAT).float() / 255.0
        return full_precision(self.net(x)).reshape(*lead, self.feature_dim)


class Decoder(nn.Module):
    """The mean of p(x[t] | z1[t], z2[t]) (appendix B): float [..., z] -> image mean [..., 3, 64, 64] in [0, 1] units.

    A 4x4 transposed conv from 1x1 to 4x4, then 3x3, 3x3, 3x3, 5x5 transposed convs of stride 2 mirroring
    the encoder's channels; leaky ReLU on all but the output layer (appendix B: "all the layers, except
    for the output layers"; the official code also squashes the output with leaky ReLU, which we don't).
    """

    def __init__(self, z_dim: int, conv_channels: tuple[int, ...]) -> None:
        super().__init__()
        c0, c1, c2, c3, _ = conv_channels
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z_dim, c3, 4, 1, 0), leaky_relu(),
            nn.ConvTranspose2d(c3, c2, 3, 2, 1, output_padding=1), leaky_relu(),
            nn.ConvTranspose2d(c2, c1, 3, 2, 1, output_padding=1), leaky_relu(),
            nn.ConvTranspose2d(c1, c0, 3, 2, 1, output_padding=1), leaky_relu(),
            nn.ConvTranspose2d(c0, 3, 5, 2, 2, output_padding=1),
        )
        self.apply(_init)
        self.to(memory_format=_CONV_FORMAT)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        x = self.net(z.reshape(-1, z.shape[-1], 1, 1).contiguous(memory_format=_CONV_FORMAT))
        x = full_precision(x)
        return x.reshape(*lead, *x.shape[-3:])


class GaussianHead(nn.Module):
    """A conditional diagonal Gaussian (appendix B): 2 leaky-ReLU layers, linear mean, softplus std."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden_dim, 2 * out_dim)

    def forward(self, *inputs: torch.Tensor) -> Gaussian:
        x = torch.cat(inputs, dim=-1) if len(inputs) > 1 else inputs[0]
        mean, pre_std = full_precision(self.net(x)).chunk(2, dim=-1)
        return Gaussian(mean, F.softplus(pre_std) + STD_EPSILON)


def tanh_log_det_jacobian(u: torch.Tensor) -> torch.Tensor:
    """log |d tanh(u) / du| = log(1 - tanh(u)^2), in the stable form 2 (log 2 - u - softplus(-2u))."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


def actor_input(features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The history the actor conditions on: [B, tau, F] features and [B, tau-1, A] actions -> [B, tau*F + (tau-1)*A]."""
    return torch.cat([features.flatten(1), actions.flatten(1)], dim=-1)


class TanhGaussianActor(nn.Module):
    """pi(a[t] | x[t-tau+1..t], a[t-tau+1..t-1]) (section 5): a tanh-squashed Gaussian on the history.

    The input is `actor_input` of the encoder's features; the conv layers belong to the latent model and
    the actor objective never trains them (the learner detaches the features). ReLU MLP of 2 x hidden_dim
    as the official actor network.
    """

    def __init__(self, input_dim: int, action_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.net = mlp(input_dim, hidden_dim, 2 * action_dim, activation=nn.ReLU)

    def forward(self, history: torch.Tensor) -> Gaussian:
        """The pre-tanh Gaussian over u, a = tanh(u)."""
        mean, log_std = full_precision(self.net(history)).chunk(2, dim=-1)
        return Gaussian(mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp())

    def sample(self, history: torch.Tensor, generator: torch.Generator | None = None,
               deterministic: bool = False, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, log pi(a | history)) with a = tanh(u), u reparameterised; deterministic uses u = mean.

        log pi(a) = log N(u; mean, std) - sum log(1 - tanh(u)^2) (change of variables through tanh).
        `eps` [B, A] is the standard normal noise of u (drawn with `generator` when None): the learner
        draws it up front so that its compiled update never handles a generator.
        """
        dist = self(history)
        if deterministic:
            u = dist.mean
        else:
            if eps is None:
                eps = torch.randn(dist.mean.shape, device=dist.mean.device, dtype=dist.mean.dtype, generator=generator)
            u = dist.rsample(eps)
        log_prob = (dist.log_prob(u) - tanh_log_det_jacobian(u)).sum(-1)
        return torch.tanh(u), log_prob


class TwinCritic(nn.Module):
    """Two soft Q networks Q_theta1, Q_theta2 on [z1, z2, a] (section 5, appendix B): 2 x hidden ReLU, linear out."""

    def __init__(self, z_dim: int, action_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.q1 = mlp(z_dim + action_dim, hidden_dim, 1, activation=nn.ReLU)
        self.q2 = mlp(z_dim + action_dim, hidden_dim, 1, activation=nn.ReLU)

    def forward(self, z: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([z, action], dim=-1)
        return full_precision(self.q1(x)).squeeze(-1), full_precision(self.q2(x)).squeeze(-1)
