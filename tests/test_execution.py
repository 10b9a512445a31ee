"""The optimised update against the eager reference: torch.compile (fp32) and bf16 autocast, on CPU.

One compiled learner serves the whole module (compiling the debug-size update costs about a minute on 2
cores; inductor's on-disk cache makes a second process faster). Tolerances are stated per test.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from common.batch import Batch
from common.config import Config, debug
from learner import execution
from learner.learner import LOSSES, Learner

torch.set_num_threads(1)
CFG = debug()
T = CFG.model.sequence_length + 1
MODEL_UPDATES, JOINT_UPDATES = 2, 3


def _learner_cfg(**fields: object) -> Config:
    return dataclasses.replace(CFG, learner=dataclasses.replace(CFG.learner, **fields))


def _batch(b: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    first = torch.zeros(b, T, dtype=torch.bool)
    first[::2, 2] = True  # padded windows too, as the replay samples them
    return Batch(torch.randint(0, 256, (b, T, 3, 64, 64), dtype=torch.uint8, generator=g),
                 torch.rand(b, T - 1, 2, generator=g) * 2 - 1, torch.randn(b, T - 1, generator=g),
                 torch.zeros(b, T - 1), first)


def _train(learner: Learner) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """The same sequence of model-only and joint updates, on fixed batches; metrics and final parameters."""
    history = []
    for i in range(MODEL_UPDATES):
        history.append({k: float(v) for k, v in learner.update_model(_batch(CFG.model.batch_size, i)).items()})
    for i in range(JOINT_UPDATES):
        history.append({k: float(v) for k, v in learner.update(_batch(CFG.sac.batch_size, 10 + i)).items()})
    learner.check_finite()
    params = {f"{name}.{k}": v.detach().clone() for name in ("model", "actor", "critic", "critic_target")
              for k, v in getattr(learner, name).state_dict().items()}
    params["log_alpha"] = learner.log_alpha.detach().clone()
    return history, params


@pytest.fixture(scope="module")
def eager_and_compiled() -> tuple[tuple, tuple, Learner]:
    eager = _train(Learner(_learner_cfg(compile="none"), 2, seed=5))
    compiled_learner = Learner(_learner_cfg(compile="default"), 2, seed=5)
    return eager, _train(compiled_learner), compiled_learner


def test_compiled_update_matches_eager(eager_and_compiled: tuple[tuple, tuple, Learner]) -> None:
    """fp32, compile=default vs none, same state, noise and batches: after 2 model-only and 3 joint updates
    every loss and metric agrees to rtol 1e-3 and every parameter to atol 1e-4 (inductor reorders float
    sums, so not bit for bit; a wrong graph differs by orders of magnitude more)."""
    (eager_metrics, eager_params), (compiled_metrics, compiled_params), learner = eager_and_compiled
    assert set(learner.compile_seconds) == {"model", "model_critic", "actor", "alpha"}
    for step, (a, b) in enumerate(zip(eager_metrics, compiled_metrics, strict=True)):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), (step, key)
    assert eager_params.keys() == compiled_params.keys()
    for key, value in eager_params.items():
        torch.testing.assert_close(compiled_params[key], value, rtol=1e-3, atol=1e-4, msg=key)
    assert learner.model_updates == MODEL_UPDATES + JOINT_UPDATES


def test_compiled_update_catches_non_finite_loss(eager_and_compiled: tuple[tuple, tuple, Learner]) -> None:
    """The device-side finiteness flag works inside the compiled path too (no recompilation for NaN input)."""
    learner = eager_and_compiled[2]
    batch = _batch(CFG.sac.batch_size, 99)
    reward = batch.reward.clone()
    reward[1, 1] = float("inf")
    learner.update(batch._replace(reward=reward))
    with pytest.raises(FloatingPointError, match="model"):
        learner.check_finite()


def test_bf16_tracks_fp32_over_50_updates() -> None:
    """bf16 autocast (CPU) vs fp32 on one fixed batch: each of the four losses and the KL stay within 2 %
    relative of fp32 at every one of 50 joint updates (measured: at most 1 %), while differing somewhere
    (autocast really ran), and every metric is still fp32."""
    batch = _batch(CFG.sac.batch_size, 0)
    runs = {}
    for precision in ("fp32", "bf16"):
        learner = Learner(_learner_cfg(precision=precision), 2, seed=0)
        metrics = [learner.update(batch) for _ in range(50)]
        assert all(v.dtype == torch.float32 for m in metrics for v in m.values())
        learner.check_finite()
        runs[precision] = [{k: float(v) for k, v in m.items()} for m in metrics]
    differs = False
    for key in ("model/loss", "model/kl", "critic/loss", "actor/loss", "alpha/loss"):
        fp32 = np.array([m[key] for m in runs["fp32"]])
        bf16 = np.array([m[key] for m in runs["bf16"]])
        relative = np.abs(bf16 - fp32) / np.maximum(np.abs(fp32), 1e-2)
        assert relative.max() < 2e-2, (key, relative.max())
        differs |= bool((bf16 != fp32).any())
    assert differs


def test_execution_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert execution.compile_mode("none", cpu) is None
    assert execution.compile_mode("default", cuda) == "default"
    assert execution.compile_mode("max", cuda) == "max-autotune"  # CUDA graphs
    assert execution.compile_mode("max", cpu) == "max-autotune-no-cudagraphs"
    with pytest.raises(ValueError, match="learner.compile"):
        execution.compile_mode("fast", cpu)
    with pytest.raises(ValueError, match="learner.precision"), execution.autocast(cpu, "fp16"):
        pass
    assert execution.resolve_compile("auto", cuda) == "default"
    assert execution.resolve_compile("auto", cpu) == ("default" if execution.cpp_compiler() else "none")
    with monkeypatch.context() as m:
        m.setattr(execution.shutil, "which", lambda name: None)  # no C++ compiler: eager on CPU, compiled on CUDA
        assert execution.resolve_compile("auto", cpu) == "none" and execution.resolve_compile("auto", cuda) == "default"
    assert execution.resolve_precision("auto", cuda) == "bf16" and execution.resolve_precision("auto", cpu) == "fp32"
    assert LOSSES == ("model", "critic", "actor", "alpha")
