"""The losses of learner/losses.py against hand computations, their masks and their gradient routing."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from common.batch import Batch
from common.config import debug
from common.latent_model import LatentModel
from common.networks import TanhGaussianActor, TwinCritic
from learner.losses import (
    SacNetworks,
    actor_loss,
    alpha_loss,
    critic_loss,
    critic_target,
    latent_transition,
    model_loss,
)

pytestmark = pytest.mark.unit

torch.set_num_threads(1)  # tiny networks: a second thread only adds contention on a shared 2-core box
A = 3
CFG = debug()
TAU = CFG.model.sequence_length
T = TAU + 1


def _nets(seed: int = 0) -> tuple[LatentModel, SacNetworks]:
    torch.manual_seed(seed)
    m = CFG.model
    model = LatentModel(m, A)
    actor = TanhGaussianActor(TAU * m.feature_dim + (TAU - 1) * A, A, CFG.sac.hidden_dim)
    critic = TwinCritic(model.z_dim, A, CFG.sac.hidden_dim)
    target = copy.deepcopy(critic)
    with torch.no_grad():  # targets differ from the online critics, as after some training
        for p in target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    log_alpha = torch.tensor(math.log(0.3), requires_grad=True)
    return model, SacNetworks(actor, critic, target, log_alpha)


def _batch(b: int = 4, seed: int = 0, terminated: float = 0.0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randint(0, 256, (b, T, 3, 64, 64), dtype=torch.uint8, generator=g),
                 torch.rand(b, T - 1, A, generator=g) * 2 - 1, torch.randn(b, T - 1, generator=g),
                 torch.full((b, T - 1), terminated), torch.zeros(b, T, dtype=torch.bool))


def _transition(model: LatentModel, batch: Batch, grad: bool = False):
    with torch.set_grad_enabled(grad):
        features = model.encoder(batch.obs)
        posterior = model.posterior(features, batch.action, batch.first, generator=torch.Generator().manual_seed(9))
    return latent_transition(batch, features, posterior.z)


# ------------------------------------------------------------------ eq. 9
def test_model_loss_terms_match_hand_computation() -> None:
    model, _ = _nets()
    batch = _batch()
    with torch.no_grad():
        post = model.posterior(model.encoder(batch.obs), batch.action, batch.first,
                               generator=torch.Generator().manual_seed(1))
        loss, metrics = model_loss(model, batch, CFG.model, posterior=post)
        mean = model.decode(post)
        image = torch.distributions.Normal(mean, math.sqrt(CFG.model.pixel_variance))
        reconstruction = -image.log_prob(batch.obs.float() / 255).sum((1, 2, 3, 4)).mean()
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(post.z1_posterior.mean, post.z1_posterior.std),
            torch.distributions.Normal(post.z1_prior.mean, post.z1_prior.std)).sum((1, 2)).mean()
        r = model.reward(post.z[:, :-1], batch.action, post.z[:, 1:])
        reward = -torch.distributions.Normal(r.mean[..., 0], r.std[..., 0]).log_prob(batch.reward).sum(1).mean()
    assert metrics["model/reconstruction"].item() == pytest.approx(reconstruction.item(), rel=1e-5)
    assert metrics["model/kl"].item() == pytest.approx(kl.item(), rel=1e-4)
    assert metrics["model/reward"].item() == pytest.approx(reward.item(), rel=1e-5)
    assert loss.item() == pytest.approx((reconstruction + kl + reward).item(), rel=1e-5)
    mse = (mean - batch.obs.float() / 255).square().mean()
    assert metrics["model/image_mse"].item() == pytest.approx(mse.item(), rel=1e-5)


def test_model_loss_ignores_padding() -> None:
    """A window padded at its start scores exactly like the unpadded start of the episode (same noise)."""
    model, _ = _nets()
    pad, keep = 3, T - 3
    g = torch.Generator().manual_seed(3)
    obs = torch.randint(0, 256, (1, keep, 3, 64, 64), dtype=torch.uint8, generator=g)
    action, reward = torch.rand(1, keep - 1, A, generator=g), torch.randn(1, keep - 1, generator=g)
    first = torch.zeros(1, keep, dtype=torch.bool)
    first[0, 0] = True
    episode = Batch(obs, action, reward, torch.zeros(1, keep - 1), first)
    first_w = torch.zeros(1, T, dtype=torch.bool)
    first_w[0, pad] = True
    window = Batch(torch.cat([obs[:, :1].expand(1, pad, 3, 64, 64), obs], 1),
                   torch.cat([torch.zeros(1, pad, A), action], 1), torch.cat([torch.zeros(1, pad), reward], 1),
                   torch.zeros(1, T - 1), first_w)
    eps1, eps2 = model.draw_noise(1, keep, torch.device("cpu"), g)
    noise_w = (torch.cat([torch.randn(1, pad, eps1.shape[-1]), eps1], 1),
               torch.cat([torch.randn(1, pad, eps2.shape[-1]), eps2], 1))
    with torch.no_grad():
        ref = model_loss(model, episode, CFG.model,
                         posterior=model.posterior(model.encoder(episode.obs), action, first, noise=(eps1, eps2)))
        padded = model_loss(model, window, CFG.model,
                            posterior=model.posterior(model.encoder(window.obs), window.action, first_w, noise=noise_w))
    for key in ("model/loss", "model/reconstruction", "model/kl", "model/reward"):
        assert padded[1][key].item() == pytest.approx(ref[1][key].item(), rel=1e-5, abs=1e-4), key
    # Scoring the padding would change the loss: the comparison above can fail.
    unmasked = window._replace(first=torch.zeros_like(first_w))
    with torch.no_grad():
        leaky = model_loss(model, unmasked, CFG.model, posterior=model.posterior(
            model.encoder(window.obs), window.action, first_w, noise=noise_w))
    assert leaky[1]["model/reconstruction"].item() != pytest.approx(ref[1]["model/reconstruction"].item(), rel=1e-3)


def test_reward_likelihood_masked_after_termination() -> None:
    model, _ = _nets()
    terminated = torch.zeros(2, T - 1)
    terminated[:, 3] = 1.0
    batch = _batch(2)._replace(terminated=terminated)
    with torch.no_grad():
        post = model.posterior(model.encoder(batch.obs), batch.action, batch.first,
                               generator=torch.Generator().manual_seed(0))

        def reward_term(reward: torch.Tensor) -> float:
            return model_loss(model, batch._replace(reward=reward), CFG.model, posterior=post)[1]["model/reward"].item()

        base = reward_term(batch.reward)
        after = batch.reward.clone()
        after[:, 4:] += 5.0
        at = batch.reward.clone()
        at[:, 3] += 5.0
        assert reward_term(after) == base  # transitions after the terminal one are not scored
        assert reward_term(at) != pytest.approx(base)  # the terminal transition itself is


# ------------------------------------------------------------------ eqs. 10, 11 and alpha
def test_critic_target_terminated_vs_truncated() -> None:
    model, nets = _nets()
    cfg = CFG.sac
    live = _transition(model, _batch(6, terminated=0.0))  # a time limit: terminated stays 0
    dead = live._replace(terminated=torch.ones(6))
    y_dead = critic_target(nets, dead, cfg, torch.Generator().manual_seed(1))
    torch.testing.assert_close(y_dead, dead.reward)  # no bootstrap past a true terminal state
    y_live = critic_target(nets, live, cfg, torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, log_pi = nets.actor.sample(live.history_next, torch.Generator().manual_seed(1))
        q1, q2 = nets.critic_target(live.z_next, a)
        by_hand = live.reward + cfg.gamma * (torch.minimum(q1, q2) - 0.3 * log_pi)
    torch.testing.assert_close(y_live, by_hand)
    assert not torch.allclose(y_live, live.reward)


def test_critic_and_actor_losses_match_hand_computation() -> None:
    model, nets = _nets()
    tr = _transition(model, _batch(5))
    loss, metrics = critic_loss(nets, tr, CFG.sac, torch.Generator().manual_seed(2))
    y = critic_target(nets, tr, CFG.sac, torch.Generator().manual_seed(2))
    with torch.no_grad():
        q1, q2 = nets.critic(tr.z, tr.action)
    assert loss.item() == pytest.approx((0.5 * ((q1 - y) ** 2 + (q2 - y) ** 2)).mean().item(), rel=1e-6)
    assert metrics["critic/q1"].item() == pytest.approx(q1.mean().item(), rel=1e-6)

    loss, metrics = actor_loss(nets, tr, CFG.sac, torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, log_pi = nets.actor.sample(tr.history, torch.Generator().manual_seed(3))
        q1, q2 = nets.critic(tr.z, a)
    assert loss.item() == pytest.approx((0.3 * log_pi - torch.minimum(q1, q2)).mean().item(), rel=1e-5)
    assert metrics["actor/entropy"].item() == pytest.approx(-log_pi.mean().item(), rel=1e-6)


def _grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def _untouched(module: torch.nn.Module) -> bool:
    return all(g is None or not g.any() for g in _grads(module))


def _touched(module: torch.nn.Module) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in _grads(module))


def test_gradient_routing() -> None:
    """Each loss trains only its own parameters, even when the latents were built with gradients on."""
    model, nets = _nets()
    batch = _batch(4)
    everything = [model, nets.actor, nets.critic, nets.critic_target]

    def clear() -> None:
        for module in everything:
            module.zero_grad(set_to_none=True)
        nets.log_alpha.grad = None

    tr = _transition(model, batch, grad=True)
    critic_loss(nets, tr, CFG.sac)[0].backward()
    assert _touched(nets.critic)
    assert _untouched(model) and _untouched(nets.actor) and _untouched(nets.critic_target)
    assert nets.log_alpha.grad is None

    clear()
    tr = _transition(model, batch, grad=True)
    actor_loss(nets, tr, CFG.sac)[0].backward()
    assert _touched(nets.actor)
    assert _untouched(model.encoder) and _untouched(model) and _untouched(nets.critic)
    assert _untouched(nets.critic_target) and nets.log_alpha.grad is None

    clear()
    tr = _transition(model, batch, grad=True)
    alpha_loss(nets, tr, CFG.sac)[0].backward()
    assert nets.log_alpha.grad is not None and nets.log_alpha.grad != 0
    assert all(_untouched(m) for m in everything)

    clear()
    model_loss(model, batch, CFG.model)[0].backward()
    assert _touched(model.encoder) and _touched(model.decoder) and _touched(model.reward)
    assert _untouched(nets.actor) and _untouched(nets.critic) and nets.log_alpha.grad is None


@pytest.mark.parametrize("log_std, alpha_should", [(-6.0, "rise"), (0.0, "fall")])
def test_alpha_loss_pushes_toward_target_entropy(log_std: float, alpha_should: str) -> None:
    model, nets = _nets()
    last = nets.actor.net[-1]
    # A policy with a chosen spread, std = exp(log_std) whatever the history (a wide Gaussian would pile
    # up at +-1 after the tanh: std 1 is about the most spread-out tanh-Gaussian).
    with torch.no_grad():
        last.weight.zero_()
        last.bias[:A] = 0.0
        last.bias[A:] = log_std
    tr = _transition(model, _batch(8))
    loss, metrics = alpha_loss(nets, tr, CFG.sac)
    entropy = -nets.actor.sample(tr.history)[1].mean().item()
    assert (entropy < -A) == (alpha_should == "rise")
    loss.backward()
    log_alpha = nets.log_alpha.detach()
    stepped = log_alpha - 0.1 * nets.log_alpha.grad  # a plain gradient step
    assert (stepped.exp().item() > log_alpha.exp().item()) == (alpha_should == "rise")
