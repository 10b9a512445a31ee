"""The latent probe (common/probe.py): ridge R^2 on held-out episodes, the critic's windows, the blob's filter.

Synthetic latents whose R^2 is known: a linear function of the state plus small noise is read back with R^2
near 1 on episodes the probe never fitted; pure noise gives R^2 near 0 or below. The windows the latents are
filtered from follow common/batch.py's padding, checked slot by slot and against the posterior over whole
episodes (the model restarts at every episode start, so the two agree within the first tau steps).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import debug
from common.probe import critic_latents, critic_windows, filter_model, filter_tensors, has_filter, ridge_r2
from learner.learner import Learner

pytestmark = pytest.mark.unit

NAMES = ("slider", "hinge_cos", "hinge_sin", "slider_vel")


def _episodes(n: int, length: int, rng: np.random.Generator) -> list[np.ndarray]:
    """States [length, 4] of n episodes: smooth random walks, each episode its own."""
    return [np.cumsum(rng.normal(0, 0.1, (length, len(NAMES))), axis=0) + rng.normal(0, 1, len(NAMES))
            for _ in range(n)]


def test_a_linear_latent_is_read_back_on_held_out_episodes() -> None:
    rng = np.random.default_rng(0)
    states = _episodes(10, 120, rng)
    mixing = rng.normal(size=(len(NAMES), 24))  # latent = state @ mixing + offset + small noise
    latents = [s @ mixing + 3.0 + rng.normal(0, 0.05, (len(s), 24)) for s in states]
    r2 = ridge_r2(latents, states, NAMES)
    assert set(r2) == {f"probe/r2/{n}" for n in NAMES} | {"probe/r2_mean"}
    assert all(r2[f"probe/r2/{n}"] > 0.97 for n in NAMES), r2
    assert r2["probe/r2_mean"] == pytest.approx(np.mean([r2[f"probe/r2/{n}"] for n in NAMES]))


def test_a_latent_of_pure_noise_explains_nothing() -> None:
    rng = np.random.default_rng(1)
    states = _episodes(10, 120, rng)
    latents = [rng.normal(size=(len(s), 24)) for s in states]
    r2 = ridge_r2(latents, states, NAMES)
    assert all(v < 0.05 for v in r2.values()), r2


def test_the_split_is_by_episode() -> None:
    """A latent that names its episode (a constant per episode) fits the fitting half's per-episode levels
    perfectly, but says nothing about the other half's: a split by step would have scored it near 1."""
    rng = np.random.default_rng(2)
    states = [np.full((50, 1), rng.normal()) + rng.normal(0, 0.01, (50, 1)) for _ in range(8)]
    latents = [np.tile(np.eye(8)[e], (50, 1)) for e in range(8)]
    assert ridge_r2(latents, states, ("level",))["probe/r2/level"] < 0.1


def test_a_constant_dimension_has_no_r2_and_is_left_out_of_the_mean() -> None:
    rng = np.random.default_rng(3)
    states = [np.column_stack([s[:, 0], np.zeros(len(s))]) for s in _episodes(4, 60, rng)]
    latents = [np.column_stack([s[:, :1], rng.normal(0, 0.01, (len(s), 3))]) for s in states]
    r2 = ridge_r2(latents, states, ("moving", "still"))
    assert np.isnan(r2["probe/r2/still"]) and r2["probe/r2_mean"] == pytest.approx(r2["probe/r2/moving"])
    with pytest.raises(ValueError, match="2 episodes"):
        ridge_r2(latents[:1], states[:1], ("moving", "still"))


def test_windows_pad_before_the_episode_start_as_the_replay_does() -> None:
    tau, length = 3, 6
    features = np.arange(length, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # feature = frame index
    actions = 10 + np.arange(length, dtype=np.float32)[:, None]  # a[t] = 10 + t
    f, a, first = critic_windows(features, actions, tau)
    assert f.shape == (length, tau, 2) and a.shape == (length, tau - 1, 1) and first.shape == (length, tau)
    # t = 0: every slot the first frame, zero actions, the true start in the last slot.
    assert f[0, :, 0].tolist() == [0, 0, 0] and a[0, :, 0].tolist() == [0, 0] and first[0].tolist() == [0, 0, 1]
    # t = 1: one padding slot, then frames 0 and 1 with a[0] between them.
    assert f[1, :, 0].tolist() == [0, 0, 1] and a[1, :, 0].tolist() == [0, 10] and first[1].tolist() == [0, 1, 0]
    # t = 4: frames 2..4 and a[2], a[3]; the start lies before the window.
    assert f[4, :, 0].tolist() == [2, 3, 4] and a[4, :, 0].tolist() == [12, 13] and not first[4].any()


def test_critic_latents_filter_each_window_as_the_model_filters_an_episode() -> None:
    cfg = debug()
    learner = Learner(cfg, 2, seed=4)
    blob = learner.actor_weights(1)  # published with the filtering networks
    assert has_filter(blob) and filter_tensors(learner.model.state_dict()).keys() <= blob["state_dict"].keys()
    model = filter_model(blob)
    tau, rng = cfg.model.sequence_length, np.random.default_rng(5)
    lengths = (tau + 4, tau - 2)  # one episode longer than a window, one shorter
    features = [rng.normal(size=(n, cfg.model.feature_dim)).astype(np.float32) for n in lengths]
    actions = [rng.uniform(-1, 1, (n, 2)).astype(np.float32) for n in lengths]
    z = critic_latents(model, features, actions, sample=False)
    assert [x.shape for x in z] == [(n, model.z_dim) for n in lengths]

    def mean_path(f: np.ndarray, a: np.ndarray) -> np.ndarray:  # the learner's own model over one sequence
        first = torch.zeros(1, len(f), dtype=torch.bool)
        noise = (torch.zeros(1, len(f), cfg.model.z1_dim), torch.zeros(1, len(f), cfg.model.z2_dim))
        with torch.no_grad():
            rollout = learner.model.posterior(torch.from_numpy(f)[None], torch.from_numpy(a[:len(f) - 1])[None],
                                              first, noise=noise)
        return rollout.z[0].numpy()

    # Within the first tau steps the window reaches back to the start: the whole episode's filtering.
    np.testing.assert_allclose(z[1], mean_path(features[1], actions[1]), atol=1e-5)
    np.testing.assert_allclose(z[0][:tau], mean_path(features[0][:tau], actions[0]), atol=1e-5)
    # Later, the model restarts at the window's first slot: the filtering of the last tau frames alone.
    t = tau + 2
    np.testing.assert_allclose(z[0][t], mean_path(features[0][t - tau + 1:t + 1], actions[0][t - tau + 1:])[-1],
                               atol=1e-5)
    # Sampled latents are what the critic sees: seeded, they repeat; they scatter around the mean path.
    one = critic_latents(model, features, actions, torch.Generator().manual_seed(0))
    again = critic_latents(model, features, actions, torch.Generator().manual_seed(0))
    assert all(np.array_equal(x, y) for x, y in zip(one, again, strict=True))
    assert not np.allclose(one[0], z[0])
