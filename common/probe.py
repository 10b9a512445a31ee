"""What the model knows: a linear probe from the latent the critic sees to the simulator's true state.

SLAC's critic (eq. 10) sees z = [z1, z2] sampled from the filtering posterior q over a window of tau frames
and the tau - 1 actions between them (learner/losses.py takes z at slot tau - 1 of each T = tau + 1 window;
the model restarts at slot 0 and at an episode's first frame, common/batch.py). `critic_latents` rebuilds
exactly those windows from an evaluation's episodes, from the encoder features its actor computed anyway,
and samples z at every agent step in one batched posterior call. `ridge_r2` then fits a ridge regression
from z to each state dimension (common/joint_state.py) on the first half of the episodes and reports R^2 on
the other half: split by episode, because steps of one episode are strongly correlated and a split by step
would measure memorisation. Inputs are standardised on the fitting half; the ridge penalty is picked per
dimension by leave-one-episode-out over a few values when there are at least two fitting episodes.

R^2 near 1: the state is (linearly) in the latent; near 0 or below: not. A dimension constant over the test
episodes has no R^2 (NaN, left out of the mean).

The weights blob convention: the filtering posterior needs the latent model's encoder and its z heads
(`FILTER_MODULES`), which a blob may carry beside the actor under their `LatentModel` names
(`filter_tensors` picks them from `LatentModel.state_dict()`); `filter_model` builds the model from such a blob.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from common.config import Config
from common.latent_model import LatentModel

FILTER_MODULES = ("encoder", "z1_first_posterior", "z1_posterior", "z1_prior", "z2_first_prior", "z2_prior")
"""The `LatentModel` submodules the filtering posterior q(z[1..T] | x[1..T], a[1..T-1]) runs (not the decoder
nor the reward model)."""
RIDGE_PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Ridge penalties tried, relative to the number of fitting samples (inputs are standardised, so X'X / n has a
unit diagonal and these compare with it)."""
DEFAULT_PENALTY = 1e-2
"""The penalty when there is a single fitting episode (nothing to cross-validate on)."""
PREFIX = "probe/"


def filter_tensors(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a `LatentModel.state_dict()` that the filtering posterior needs (`FILTER_MODULES`)."""
    return {k: v for k, v in model_state.items() if k.split(".", 1)[0] in FILTER_MODULES}


def has_filter(blob: dict[str, Any]) -> bool:
    """Whether a weights blob carries the filtering posterior's networks (not only the encoder and actor)."""
    present = {k.split(".", 1)[0] for k in blob["state_dict"]}
    return set(FILTER_MODULES) <= present


def filter_model(blob: dict[str, Any], model: LatentModel | None = None) -> LatentModel:
    """A CPU `LatentModel` holding `blob`'s filtering networks (`model` reused when it fits), in eval mode.

    The decoder and reward model keep their initial weights: the posterior never runs them.
    """
    cfg = Config.from_dict({"model": blob["model_cfg"]}).model
    action_dim = int(blob["action_dim"])
    if model is None or model.cfg != cfg or model.action_dim != action_dim:
        model = LatentModel(cfg, action_dim).eval().requires_grad_(False)
    state = filter_tensors(blob["state_dict"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.split(".", 1)[0] in FILTER_MODULES]
    if missing or unexpected:
        raise ValueError(f"the weights blob's latent model does not fit its model_cfg (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}); build the blob with common.probe.filter_tensors")
    return model


def critic_windows(features: np.ndarray, actions: np.ndarray, tau: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The window the critic's z at each step of one episode is filtered from, as common/batch.py pads them.

    features float32 [L, F] of the frames the agent acted at, actions float32 [L, A] taken there. Returns
    features [L, tau, F], actions [L, tau - 1, A] and first bool [L, tau]: window t holds frames t-tau+1..t;
    slots before the episode's start hold copies of its first frame, zero actions, and `first` marks the
    true start.
    """
    length = features.shape[0]
    index = np.arange(length)[:, None] + np.arange(-tau + 1, 1)[None, :]  # [L, tau] frame of each slot
    window_features = features[np.clip(index, 0, None)]
    padded = np.concatenate([np.zeros((1, actions.shape[1]), actions.dtype), actions])
    # The action between slots i and i+1 is a[index[i]]: zero where that frame is padding.
    window_actions = padded[np.where(index[:, :-1] < 0, 0, index[:, :-1] + 1)]
    return window_features, window_actions, index == 0


@torch.inference_mode()
def critic_latents(model: LatentModel, features: Sequence[np.ndarray], actions: Sequence[np.ndarray],
                   generator: torch.Generator | None = None, sample: bool = True, chunk: int = 4096) -> list[np.ndarray]:
    """z = [z1, z2] float32 [L_e, z_dim] at every step of each episode e, as the critic sees it: sampled from
    the posterior over the step's window of tau frames (`critic_windows`), all episodes' windows batched
    (in chunks of `chunk` windows to bound memory). `sample` False takes zero noise: each z1 the posterior's
    mean and each z2 its prior's mean given it (for tests)."""
    tau = model.cfg.sequence_length
    windows = [critic_windows(f, a, tau) for f, a in zip(features, actions, strict=True)]
    feats, acts, first = (np.concatenate([w[i] for w in windows]) for i in range(3))
    out = []
    for start in range(0, len(feats), chunk):
        part = slice(start, start + chunk)
        f, a, first_part = torch.from_numpy(feats[part]), torch.from_numpy(acts[part]), torch.from_numpy(first[part])
        noise = None if sample else (torch.zeros(*first_part.shape, model.cfg.z1_dim),
                                     torch.zeros(*first_part.shape, model.cfg.z2_dim))
        rollout = model.posterior(f, a, first_part, noise=noise, generator=generator)
        out.append(rollout.z[:, -1].numpy())
    z = np.concatenate(out)
    return np.split(z, np.cumsum([len(f) for f in features])[:-1])


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (x - mean) / std


def _ridge_fit(x: np.ndarray, y: np.ndarray, penalties: Sequence[float]) -> np.ndarray:
    """Ridge weights [len(penalties), Z, S] for centred x [n, Z] and y [n, S], one SVD for all penalties."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    n = x.shape[0]
    return np.stack([vt.T @ ((s / (s**2 + lam * n))[:, None] * uty) for lam in penalties])


def ridge_r2(latents: Sequence[np.ndarray], states: Sequence[np.ndarray], names: Sequence[str],
             penalties: Sequence[float] = RIDGE_PENALTIES) -> dict[str, float]:
    """Held-out R^2 of a ridge probe from latents [L_e, Z] to states [L_e, S] (one array each per episode).

    Fits on the first len // 2 episodes, scores on the rest. Returns {"probe/r2/<name>": R^2, ...,
    "probe/r2_mean": mean over the dimensions that have one}. Needs at least two episodes.
    """
    if len(latents) < 2 or len(latents) != len(states):
        raise ValueError(f"ridge_r2 needs latents and states of the same >= 2 episodes, got {len(latents)} and "
                         f"{len(states)}: the probe fits on half the episodes and scores on the other half")
    fit = len(latents) // 2
    x_fit, y_fit = np.concatenate(latents[:fit]).astype(np.float64), np.concatenate(states[:fit]).astype(np.float64)
    x_test, y_test = np.concatenate(latents[fit:]).astype(np.float64), np.concatenate(states[fit:]).astype(np.float64)
    x_mean, x_std = x_fit.mean(0), x_fit.std(0)
    x_std[x_std < 1e-8] = np.inf  # a latent unit constant over the fitting half carries nothing: weight 0
    y_mean = y_fit.mean(0)
    penalty = _choose_penalties(latents[:fit], states[:fit], x_mean, x_std, y_mean, penalties)
    weights = _ridge_fit(_standardise(x_fit, x_mean, x_std), y_fit - y_mean, penalties)  # [P, Z, S]
    w = weights[penalty, :, np.arange(y_fit.shape[1])].T  # [Z, S]: each dimension's own penalty
    predicted = _standardise(x_test, x_mean, x_std) @ w + y_mean
    residual = ((y_test - predicted) ** 2).sum(0)
    total = ((y_test - y_test.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(total > 1e-12 * len(y_test), 1.0 - residual / total, np.nan)
    out = {f"{PREFIX}r2/{name}": float(v) for name, v in zip(names, r2, strict=True)}
    out[f"{PREFIX}r2_mean"] = float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan")
    return out


def _choose_penalties(latents: Sequence[np.ndarray], states: Sequence[np.ndarray], x_mean: np.ndarray,
                      x_std: np.ndarray, y_mean: np.ndarray, penalties: Sequence[float]) -> np.ndarray:
    """Index into `penalties` per state dimension: least leave-one-episode-out squared error on the fitting
    episodes (the default penalty where there is only one)."""
    if len(latents) < 2:
        return np.full(states[0].shape[1], int(np.argmin(np.abs(np.log(penalties) - np.log(DEFAULT_PENALTY)))))
    errors = np.zeros((len(penalties), states[0].shape[1]))
    for held in range(len(latents)):
        x = np.concatenate([z for i, z in enumerate(latents) if i != held]).astype(np.float64)
        y = np.concatenate([s for i, s in enumerate(states) if i != held]).astype(np.float64)
        weights = _ridge_fit(_standardise(x, x_mean, x_std), y - y_mean, penalties)
        predicted = _standardise(latents[held].astype(np.float64), x_mean, x_std) @ weights + y_mean  # [P, L, S]
        errors += ((predicted - states[held]) ** 2).sum(1)
    return errors.argmin(0)
