"""The latent model's filtering, first-step resets and figure-7 samples (common/latent_model.py)."""

from __future__ import annotations

import pytest
import torch

from common.config import debug
from common.latent_model import LatentModel, figure_rows, image_grid

pytestmark = pytest.mark.unit

torch.set_num_threads(1)  # tiny networks: a second thread only adds contention on a shared 2-core box
A = 3
CFG = debug().model
T = CFG.sequence_length + 1


def _model() -> LatentModel:
    torch.manual_seed(0)
    return LatentModel(CFG, A)


def _episode(frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (1, frames, 3, 64, 64), dtype=torch.uint8, generator=g)
    return obs, torch.rand(1, frames - 1, A, generator=g) * 2 - 1


def pad_start(obs: torch.Tensor, action: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An episode's first T - pad frames as a window padded at its start (common/batch.py convention)."""
    keep = T - pad
    obs_w = torch.cat([obs[:, :1].expand(1, pad, *obs.shape[2:]), obs[:, :keep]], 1)
    action_w = torch.cat([torch.zeros(1, pad, A), action[:, :keep - 1]], 1)
    first = torch.zeros(1, T, dtype=torch.bool)
    first[0, pad] = True
    return obs_w, action_w, first


def test_padded_window_filters_like_the_unpadded_episode() -> None:
    model, pad = _model(), 3
    obs, action = _episode(T)
    first = torch.zeros(1, T, dtype=torch.bool)
    first[0, 0] = True
    obs_w, action_w, first_w = pad_start(obs, action, pad)
    eps1, eps2 = model.draw_noise(1, T, torch.device("cpu"), torch.Generator().manual_seed(5))
    # The padded window's frame pad + k is the episode's frame k: give it the same noise.
    shift = torch.cat([torch.randn(1, pad, eps1.shape[-1]), eps1[:, :T - pad]], 1)
    shift2 = torch.cat([torch.randn(1, pad, eps2.shape[-1]), eps2[:, :T - pad]], 1)
    with torch.no_grad():
        ref = model.posterior(model.encoder(obs), action, first, noise=(eps1, eps2))
        padded = model.posterior(model.encoder(obs_w), action_w, first_w, noise=(shift, shift2))
    keep = T - pad
    torch.testing.assert_close(padded.z1[:, pad:], ref.z1[:, :keep])
    torch.testing.assert_close(padded.z2[:, pad:], ref.z2[:, :keep])
    torch.testing.assert_close(padded.z1_posterior.mean[:, pad:], ref.z1_posterior.mean[:, :keep])
    # At the true start the prior is p(z1[1]) = N(0, I), not the dynamics from the padding.
    assert torch.equal(padded.z1_prior.mean[0, pad], torch.zeros(CFG.z1_dim))
    assert torch.equal(padded.z1_prior.std[0, pad], torch.ones(CFG.z1_dim))

    # Without the first mask the padding would leak into the start: the test can fail.
    with torch.no_grad():
        leaked = model.posterior(model.encoder(obs_w), action_w, torch.zeros_like(first_w), noise=(shift, shift2))
    assert not torch.allclose(leaked.z1[:, pad:], ref.z1[:, :keep])


def test_reset_mid_window_uses_first_step_networks() -> None:
    model = _model()
    obs, action = _episode(T, seed=1)
    first = torch.zeros(1, T, dtype=torch.bool)
    first[0, 4] = True
    eps = model.draw_noise(1, T, torch.device("cpu"), torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = model.encoder(obs)
        post = model.posterior(features, action, first, noise=eps)
        q_first = model.z1_first_posterior(features[:, 4])
    torch.testing.assert_close(post.z1_posterior.mean[:, 4], q_first.mean)
    torch.testing.assert_close(post.z1[:, 4], q_first.mean + q_first.std * eps[0][:, 4])


def test_conditional_prior_and_prior() -> None:
    model = _model()
    obs, action = _episode(T, seed=3)
    obs_w, action_w, first_w = pad_start(obs, action, 2)
    eps = model.draw_noise(1, T, torch.device("cpu"), torch.Generator().manual_seed(4))
    with torch.no_grad():
        features = model.encoder(obs_w)
        post = model.posterior(features, action_w, first_w, noise=eps)
        slots = torch.arange(T)[None]
        cond = model.rollout(action_w, first_w, features, slots <= 2, noise=eps)
        cond_public = model.conditional_prior(features, action_w, first_w, generator=torch.Generator().manual_seed(4))
        prior = model.prior(action_w, first_w, generator=torch.Generator().manual_seed(4))
    # Observed up to the true first frame (slot 2), dynamics afterwards.
    torch.testing.assert_close(cond.z1[:, :3], post.z1[:, :3])
    assert not torch.allclose(cond.z1[:, 3:], post.z1[:, 3:])
    torch.testing.assert_close(cond.z1_posterior.mean[:, 3:], cond.z1_prior.mean[:, 3:])
    torch.testing.assert_close(cond_public.z1, cond.z1)  # same noise from the same seed
    # The prior never looks at an image: its first z1 is a N(0, I) sample.
    torch.testing.assert_close(prior.z1[:, 0], eps[0][:, 0])


def test_figure_grid_layout() -> None:
    model = _model()
    g = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (2, T, 3, 64, 64), dtype=torch.uint8, generator=g)
    grid = figure_rows(model, obs, torch.zeros(2, T - 1, A), torch.zeros(2, T, dtype=torch.bool), g)
    assert grid.dtype.name == "uint8" and grid.shape == (8 * 64 + 7 * 4, T * 64, 3)
    # Row 0 of the first sequence is the ground truth, frame by frame.
    assert (grid[:64, 64:128] == obs[0, 1].permute(1, 2, 0).numpy()).all()
    white = image_grid([torch.ones(2, 3, 64, 64), torch.zeros(2, 3, 64, 64)], gap=2)
    assert white.shape == (130, 128, 3) and white[:64].min() == 255 and white[66:].max() == 0
