"""How the learner's update runs: eager or compiled (torch.compile, CUDA graphs), fp32 or bf16 autocast.

The losses (learner/losses.py) and the update's structure (learner/learner.py) are the same on every
path; this module only wraps the step function and says how optimisers and autocast are set up, so the
eager path is the reference the compiled path is tested against (tests/test_execution.py).

- `compile`: `none` runs eagerly; `default` is inductor's default mode, which launches every kernel from
  the CPU (~800 per update: a cap of a few hundred updates/s however fast the GPU); `reduce-overhead`
  adds CUDA graphs without max-autotune's long compile, inductor copying each sampled batch into the
  graph's static input buffers; `max` is `max-autotune` (CUDA graphs too; on CPU
  `max-autotune-no-cudagraphs`). `auto` is reduce-overhead on CUDA. Shapes are static: one batch size per
  step function. Capturing can fail on a new driver or torch; the learner then warns once and carries on
  with `default` (`Learner.update`'s guard), and reports the mode that ran (`Learner.execution`).
- Compilation happens at the first call of each step function, once per process; the learner process
  makes those calls on a random batch while the initial collection runs (`Learner.warm_up`). Inductor's
  FX-graph and AOT-autograd caches (in TORCHINDUCTOR_CACHE_DIR, by default `persistent_cache()`'s
  ~/.cache/slac-dist/inductor) make later processes on the same machine compile faster; Dynamo's tracing
  is paid every time.
- `precision`: `bf16` autocasts the convolutions and matrix products of the latent model (encoder,
  decoder, latent and reward heads); every network returns fp32 (common/networks.py), so KL terms,
  log-probabilities, the tanh Jacobian, the losses and Adam's state stay fp32. The critics, their
  targets and the actor run wholly in fp32 (`full_precision`): a bf16 output layer rounds Q between 256
  and 512 to steps of 2.0, the size of a whole step's reward on DMC tasks, so TD targets would carry
  rounding noise as large as their signal; those networks are under 1 % of the update's FLOPs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_MODES = {"default": "default", "reduce-overhead": "reduce-overhead", "max": "max-autotune"}
CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})
"""torch.compile modes that capture CUDA graphs (on CUDA)."""


def resolve_compile(setting: str, device: torch.device) -> str:
    """`learner.compile` with auto resolved: reduce-overhead (CUDA graphs) on CUDA, default on a CPU with a C++
    compiler on PATH (measured 1.12-1.22x on 2 cores, bench/results), else none."""
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "reduce-overhead"
    if cpp_compiler() is not None:
        return "default"
    log.warning("learner.compile=auto: no C++ compiler (g++/c++/clang++) on PATH, so the update runs eagerly; "
                "install one (Debian: apt install g++) for the compiled CPU update")
    return "none"


def cpp_compiler() -> str | None:
    """The C++ compiler inductor's CPU kernels would be built with, if any is on PATH."""
    return next((path for name in ("g++", "c++", "clang++") if (path := shutil.which(name))), None)


def resolve_precision(setting: str, device: torch.device) -> str:
    """`learner.precision` with auto resolved: bf16 on CUDA, fp32 on CPU."""
    if setting == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return setting


def compile_mode(setting: str, device: torch.device) -> str | None:
    """torch.compile's mode for `learner.compile`, or None for eager."""
    setting = resolve_compile(setting, device)
    if setting == "none":
        return None
    if setting not in _MODES:
        raise ValueError(f"learner.compile must be none, default or max, got {setting!r}")
    mode = _MODES[setting]
    if device.type != "cuda":  # CUDA graphs need CUDA
        return {"max-autotune": "max-autotune-no-cudagraphs", "reduce-overhead": "default"}.get(mode, mode)
    return mode


def persistent_cache() -> Path:
    """Point inductor's caches (compiled kernels, FX graphs, AOT-autograd graphs) at a per-user directory that
    outlives /tmp cleaners and reboots, unless TORCHINDUCTOR_CACHE_DIR already names one: a second run on the same
    machine then loads what the first compiled instead of compiling again. Call it before anything of inductor runs:
    it fixes its directory at the first use (building a fused Adam is one). Returns the directory."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(base / "slac-dist" / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def compile_step(fn: F, setting: str, device: torch.device, mode: str | None = None) -> F:
    """`fn` (a loss's forward pass) itself, or compiled: inductor compiles the forward graph and, through
    AOT autograd, its backward graph; `loss.backward()` then runs the compiled backward. `mode` (a
    torch.compile mode) overrides the one `setting` gives."""
    mode = mode or compile_mode(setting, device)
    if mode is None:
        return fn
    return torch.compile(fn, mode=mode, dynamic=False)  # type: ignore[return-value]


def adam_options() -> dict[str, bool]:
    """The fused Adam kernel on every path: one launch per optimiser step, outside the compiled graphs
    (a compiled optimiser step would split them: torch.optim breaks Dynamo's graph around `step`)."""
    return {"fused": True}


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast of convolutions and matrix products when `precision` is bf16, else nothing."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        yield
        return
    if precision != "bf16":
        raise ValueError(f"learner.precision must be fp32 or bf16, got {precision!r}")
    with torch.autocast(device.type, dtype=torch.bfloat16):
        yield


def full_precision(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """Autocast off (fp32) where Q values are computed, when `precision` autocasts at all; with fp32 nothing, so
    the fp32 update (eager or compiled) is exactly what it was before the bf16 path needed this region."""
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


class FirstCallTimer:
    """Wall clock of each step function's first call (compilation plus one execution), by name."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        if name in self.seconds:
            return fn(*args)
        start = time.perf_counter()
        out = fn(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = time.perf_counter() - start
        log.info("learner: first %s update took %.1f s (includes compilation when learner.compile is on)",
                 name, self.seconds[name])
        return out
