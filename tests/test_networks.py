"""Networks of appendix B: shapes and parameter counts at the paper's sizes, the Gaussian maths."""

from __future__ import annotations

import math

import pytest
import torch

from common.config import paper
from common.latent_model import LatentModel
from common.networks import (
    Encoder,
    Gaussian,
    TanhGaussianActor,
    TwinCritic,
    actor_input,
    gaussian_kl,
    tanh_log_det_jacobian,
)
from learner.learner import Learner

pytestmark = pytest.mark.unit

torch.set_num_threads(1)  # tiny networks: a second thread only adds contention on a shared 2-core box
A = 6  # cheetah_run


def _head(i: int, o: int, h: int = 256) -> int:
    """Hand count of a Gaussian head: two hidden layers, then mean and pre-softplus std."""
    return (i * h + h) + (h * h + h) + (h * 2 * o + 2 * o)


def _mlp(i: int, o: int, h: int = 256) -> int:
    return (i * h + h) + (h * h + h) + (h * o + o)


def test_shapes_at_paper_sizes() -> None:
    cfg = paper().model
    model = LatentModel(cfg, A)
    b, t = 2, cfg.sequence_length + 1
    obs = torch.randint(0, 256, (b, t, 3, 64, 64), dtype=torch.uint8)
    action = torch.rand(b, t - 1, A) * 2 - 1
    first = torch.zeros(b, t, dtype=torch.bool)
    with torch.no_grad():
        features = model.encoder(obs)
        assert features.shape == (b, t, 256)
        post = model.posterior(features, action, first)
        assert post.z1.shape == (b, t, 32) and post.z2.shape == (b, t, 256) and post.z.shape == (b, t, 288)
        assert post.z1_posterior.mean.shape == post.z1_prior.std.shape == (b, t, 32)
        assert model.decode(post).shape == (b, t, 3, 64, 64)
        assert model.reward(post.z[:, :-1], action, post.z[:, 1:]).mean.shape == (b, t - 1, 1)
        history = actor_input(features[:, 1:], action[:, 1:])
        assert history.shape == (b, 8 * 256 + 7 * A)
        actor = TanhGaussianActor(history.shape[1], A, 256)
        a, log_pi = actor.sample(history)
        assert a.shape == (b, A) and log_pi.shape == (b,) and bool((a.abs() <= 1).all())
        q1, q2 = TwinCritic(288, A, 256)(post.z[:, -1], a)
        assert q1.shape == q2.shape == (b,)


def test_parameter_counts_match_hand_counts() -> None:
    counts = Learner(paper(), A).parameter_counts()
    encoder = (3 * 32 * 25 + 32) + (32 * 64 * 9 + 64) + (64 * 128 * 9 + 128) + (128 * 256 * 9 + 256) \
        + (256 * 256 * 16 + 256)
    decoder = (288 * 256 * 16 + 256) + (256 * 128 * 9 + 128) + (128 * 64 * 9 + 64) + (64 * 32 * 9 + 32) \
        + (32 * 3 * 25 + 3)
    latent = (_head(32, 256)                 # p(z2[1] | z1[1])
              + _head(256 + A, 32)           # p(z1[t+1] | z2[t], a[t])
              + _head(32 + 256 + A, 256)     # p(z2[t+1] | z1[t+1], z2[t], a[t])
              + _head(256, 32)               # q(z1[1] | x[1])
              + _head(256 + 256 + A, 32))    # q(z1[t+1] | x[t+1], z2[t], a[t])
    reward = _head(2 * 288 + A, 1)
    expected = {
        "encoder": encoder, "decoder": decoder, "latent": latent, "reward": reward,
        "model": encoder + decoder + latent + reward,
        "actor": _mlp(8 * 256 + 7 * A, 2 * A), "critic": 2 * _mlp(288 + A, 1),
    }
    print("parameter counts at paper sizes:", counts)
    assert counts == expected
    assert encoder == 1_438_784


def test_encoder_scales_uint8_to_unit_interval() -> None:
    encoder = Encoder((4, 8, 8, 16, 16))
    obs = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        expected = encoder.net(obs.float() / 255.0).flatten(1)
        torch.testing.assert_close(encoder(obs), expected)


def test_analytic_kl_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    d = 4
    q = Gaussian(torch.randn(d, generator=g, dtype=torch.float64),
                 torch.rand(d, generator=g, dtype=torch.float64) + 0.3)
    p = Gaussian(torch.randn(d, generator=g, dtype=torch.float64),
                 torch.rand(d, generator=g, dtype=torch.float64) + 0.5)
    x = q.rsample(torch.randn(400_000, d, generator=g, dtype=torch.float64))
    log_ratio = (q.log_prob(x) - p.log_prob(x)).sum(-1)
    mc, stderr = log_ratio.mean().item(), log_ratio.std().item() / math.sqrt(len(x))
    analytic = gaussian_kl(q, p).item()
    assert analytic > 0.1
    assert abs(analytic - mc) < 5 * stderr, (analytic, mc, stderr)
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(q.mean, q.std),
                                                  torch.distributions.Normal(p.mean, p.std)).sum().item()
    assert analytic == pytest.approx(reference, rel=1e-12)


def test_tanh_log_det_jacobian_is_stable() -> None:
    u = torch.tensor([-30.0, -3.0, 0.0, 0.5, 3.0, 30.0], dtype=torch.float64)
    naive = torch.log(1 - torch.tanh(u[1:-1]) ** 2)
    torch.testing.assert_close(tanh_log_det_jacobian(u[1:-1]), naive)
    assert torch.isfinite(tanh_log_det_jacobian(u)).all()


def test_tanh_gaussian_log_prob_matches_numerical_change_of_variables() -> None:
    torch.manual_seed(0)
    actor = TanhGaussianActor(5, 3, 16).double()
    history = torch.randn(64, 5, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        a, log_pi = actor.sample(history, g)
        dist = actor(history)
    normal = torch.distributions.Normal(dist.mean, dist.std)
    # The density of a = tanh(u) as the numerical derivative of its CDF P(a' <= a) = Phi((atanh(a) - mean) / std).
    h = 1e-6
    a = a.clamp(-1 + 1e-5, 1 - 1e-5)

    def cdf(x: torch.Tensor) -> torch.Tensor:
        return normal.cdf(torch.atanh(x.clamp(-1 + 1e-12, 1 - 1e-12)))

    density = (cdf(a + h) - cdf(a - h)) / (2 * h)
    numerical = density.log().sum(-1)
    torch.testing.assert_close(log_pi, numerical, rtol=1e-4, atol=1e-4)
    deterministic, _ = actor.sample(history, deterministic=True)
    torch.testing.assert_close(deterministic, torch.tanh(dist.mean))


def test_tanh_gaussian_density_integrates_to_one() -> None:
    torch.manual_seed(0)
    actor = TanhGaussianActor(2, 1, 8).double()
    history = torch.randn(3, 2, dtype=torch.float64)
    with torch.no_grad():
        dist = actor(history)
    grid = torch.linspace(-1 + 1e-9, 1 - 1e-9, 200_001, dtype=torch.float64)
    u = torch.atanh(grid)[:, None]
    log_density = Gaussian(dist.mean[:, 0], dist.std[:, 0]).log_prob(u) - tanh_log_det_jacobian(u)
    mass = torch.trapezoid(log_density.exp(), grid, dim=0)
    torch.testing.assert_close(mass, torch.ones(3, dtype=torch.float64), atol=2e-3, rtol=0)


def test_every_model_leaky_relu_has_the_references_slope() -> None:
    # Both reference implementations use leaky ReLU with slope 0.2 (tf.nn.leaky_relu's default), not
    # PyTorch's 0.01: encoder (5 layers), decoder (4), and two hidden layers of each of the 6 Gaussian heads.
    model = LatentModel(paper().model, action_dim=2)
    slopes = [m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert len(slopes) == 5 + 4 + 6 * 2
    assert set(slopes) == {0.2}
    x = torch.tensor([-1.0, 2.0])
    assert torch.equal(model.encoder.net[1](x), torch.tensor([-0.2, 2.0]))
