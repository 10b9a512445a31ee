"""The policy an actor process runs: pi(a[t] | x[t-tau+1..t], a[t-tau+1..t-1]) on CPU, from the learner's
versioned actor-weights blob (`Learner.actor_weights`).

The history follows common/batch.py's convention: before an episode has tau frames, the missing
slots hold copies of its first frame and the missing actions are zeros, exactly what the learner
trains the actor on. Appendix C acts with the stochastic policy, also for evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from common.config import Config, ModelConfig, SacConfig
from common.networks import Encoder, TanhGaussianActor, actor_input


def policy_input_shapes(model_cfg: ModelConfig, action_dim: int) -> dict[str, tuple[int, ...]]:
    """Per-environment shapes `Policy.act` takes: obs (tau, 3, 64, 64) uint8, actions (tau-1, A) float32."""
    tau, size = model_cfg.sequence_length, model_cfg.image_size
    return {"obs_history": (tau, 3, size, size), "action_history": (tau - 1, action_dim)}


def _configs(blob: dict[str, Any]) -> tuple[ModelConfig, SacConfig]:
    cfg = Config.from_dict({"model": blob["model_cfg"], "sac": blob["sac_cfg"]})
    return cfg.model, cfg.sac


class Policy:
    """Encoder + tanh-Gaussian actor head, loaded from an actor-weights blob, acting on CPU without gradients."""

    def __init__(self, model_cfg: ModelConfig, sac_cfg: SacConfig, action_dim: int, seed: int | None = None) -> None:
        self.model_cfg, self.sac_cfg, self.action_dim = model_cfg, sac_cfg, action_dim
        tau = model_cfg.sequence_length
        self.encoder = Encoder(model_cfg.conv_channels).eval().requires_grad_(False)
        history_dim = tau * model_cfg.feature_dim + (tau - 1) * action_dim
        self.actor = TanhGaussianActor(history_dim, action_dim, sac_cfg.hidden_dim).eval().requires_grad_(False)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.version = -1
        self.row_invariant = False
        """When True, each frame and each history is computed as a batch of one, whatever else shares the call: the
        rounding of oneDNN's convolutions, of PyTorch's own from 16 frames on, and of a BLAS GEMM depends on the
        batch, so a batched call gives an episode other last bits than playing it alone, and over an episode
        those become other returns in the 7th digit. The evaluator sets it, so an episode plays the same bit for
        bit whichever and however many episodes step beside it, for about 6% of its time (10 cartpole_swingup
        episodes, cpu preset, 2 cores: 5.3 s against 5.0 s batched; its time goes to rendering)."""

    @classmethod
    def from_weights(cls, blob: dict[str, Any], seed: int | None = None) -> Policy:
        """Build a policy from `Learner.actor_weights(version)`; `seed` fixes its action noise."""
        model_cfg, sac_cfg = _configs(blob)
        policy = cls(model_cfg, sac_cfg, int(blob["action_dim"]), seed)
        policy.load_weights(blob)
        return policy

    def load_weights(self, blob: dict[str, Any]) -> None:
        """Refresh the weights in place from a newer blob of the same architecture."""
        model_cfg, sac_cfg = _configs(blob)
        if (model_cfg, sac_cfg, int(blob["action_dim"])) != (self.model_cfg, self.sac_cfg, self.action_dim):
            raise ValueError("actor weights were built for another architecture (model_cfg, sac_cfg or action_dim "
                             "differ); build a new Policy with Policy.from_weights(blob)")
        state = blob["state_dict"]
        self.encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
        self.actor.load_state_dict({k[len("actor."):]: v for k, v in state.items() if k.startswith("actor.")})
        self.version = int(blob["version"])

    def encode(self, obs: np.ndarray) -> np.ndarray:
        """Encoder features float32 [..., F] of uint8 frames [..., 3, 64, 64] with the current weights.

        The feature ring (actors/history.py) calls this with only the frames it has not encoded yet.
        """
        obs = np.asarray(obs)
        mkldnn = torch.backends.mkldnn.enabled
        # One frame (an actor's usual step): PyTorch's own conv kernels beat oneDNN's, whose per-call
        # setup dominates at batch 1 (paper encoder, one EPYC core: 0.54 vs 0.85 ms; from 2 frames on,
        # oneDNN wins). Same arithmetic up to float rounding.
        frames = int(np.prod(obs.shape[:-3]))
        torch.backends.mkldnn.enabled = mkldnn and frames > 1 and not self.row_invariant
        try:
            with torch.inference_mode():
                if self.row_invariant and frames > 1:
                    flat = torch.from_numpy(obs).reshape(frames, *obs.shape[-3:])
                    features = torch.cat([self.encoder(flat[i:i + 1]) for i in range(frames)])
                    return features.reshape(*obs.shape[:-3], -1).numpy()
                return self.encoder(torch.from_numpy(obs)).numpy()
        finally:
            torch.backends.mkldnn.enabled = mkldnn

    def act(self, obs_history: np.ndarray, action_history: np.ndarray, *, deterministic: bool = False,
            generator: torch.Generator | None = None, seed: int | None = None) -> np.ndarray:
        """Actions float32 [N, A] in [-1, 1] for N histories, encoding every frame: the reference path.

        obs_history uint8 [N, tau, 3, 64, 64] (oldest first, newest last); action_history float32
        [N, tau-1, A], the actions between those frames. Samples pi unless `deterministic` (tanh of the
        mean). Noise comes from `generator`, else a fresh one seeded with `seed`, else the policy's own.
        """
        tau, size, a = self.model_cfg.sequence_length, self.model_cfg.image_size, self.action_dim
        obs = np.asarray(obs_history)
        actions = np.asarray(action_history, dtype=np.float32)
        if obs.dtype != np.uint8 or obs.ndim != 5 or obs.shape[1:] != (tau, 3, size, size):
            raise ValueError(f"obs_history: expected uint8 [N, {tau}, 3, {size}, {size}], got {obs.dtype} {obs.shape}")
        if actions.shape != (obs.shape[0], tau - 1, a):
            raise ValueError(f"action_history: expected [{obs.shape[0]}, {tau - 1}, {a}], got {actions.shape}")
        return self.act_encoded(self.encode(obs), actions, deterministic=deterministic, generator=generator,
                                seed=seed)

    def act_encoded(self, features: np.ndarray, action_history: np.ndarray, *, deterministic: bool = False,
                    generator: torch.Generator | None = None, seed: int | None = None,
                    eps: torch.Tensor | None = None) -> np.ndarray:
        """Actions float32 [N, A] from the histories' encoder features float32 [N, tau, F] (see `act`).

        The actor process's path: its feature ring keeps the features of the frames it holds, so it
        encodes each frame once instead of tau times. Same noise arguments as `act`, or `eps` [N, A], the
        standard normal noise itself: the evaluator draws each row's from that episode's own generator, so
        stepping episodes together samples what stepping them one at a time would.
        """
        tau, f, a = self.model_cfg.sequence_length, self.model_cfg.feature_dim, self.action_dim
        if features.dtype != np.float32 or features.ndim != 3 or features.shape[1:] != (tau, f):
            raise ValueError(f"features: expected float32 [N, {tau}, {f}], got {features.dtype} {features.shape}")
        if action_history.shape != (features.shape[0], tau - 1, a):
            raise ValueError(f"action_history: expected [{features.shape[0]}, {tau - 1}, {a}], "
                             f"got {action_history.shape}")
        if eps is not None and eps.shape != (features.shape[0], a):
            raise ValueError(f"eps: expected [{features.shape[0]}, {a}], got {tuple(eps.shape)}")
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        generator = generator or self.generator
        with torch.inference_mode():
            if self.row_invariant and len(features) > 1:  # each row a batch of one (fresh, aligned as one alone)
                action = torch.cat([self.actor.sample(
                    actor_input(torch.from_numpy(features[i:i + 1]), torch.from_numpy(action_history[i:i + 1])),
                    generator, deterministic, eps=None if eps is None else eps[i:i + 1])[0] for i in range(len(features))])
            else:
                history = actor_input(torch.from_numpy(features), torch.from_numpy(action_history))
                action, _ = self.actor.sample(history, generator, deterministic, eps=eps)
        return action.numpy().astype(np.float32, copy=False)
