"""Pixel environments for the paper's eight tasks: 64x64 RGB frames rendered headless.

`make_env(task, seed)` hides whether a task comes from dm_control or gymnasium: actions in [-1, 1]
are rescaled to the env's bounds, each action is repeated (table 1) with rewards summed, and
termination (a gym robot falling) stays distinct from truncation (the time limit), because only
termination may zero the critic's bootstrap (eq. 10).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from common.tasks import TaskSpec, resolve_task

_GL_PROBE = "import mujoco; c = mujoco.GLContext(8, 8); c.make_current(); c.free()"
# The same, reporting what draws: NVIDIA's EGL on a GPU, or Mesa's llvmpipe (software) when EGL fell back.
_GL_STRINGS = ("import json, mujoco; from OpenGL import GL; c = mujoco.GLContext(8, 8); c.make_current(); "
               "print(json.dumps({k: GL.glGetString(v).decode() for k, v in (('vendor', GL.GL_VENDOR), "
               "('renderer', GL.GL_RENDERER))})); c.free()")
_GL_PACKAGES = {"egl": "libegl1", "osmesa": "libosmesa6"}
log = logging.getLogger(__name__)
_RENDERER: dict[str, str] | None = None


class RenderingUnavailableError(RuntimeError):
    """No headless OpenGL backend works; the message names the apt package to install."""


def nvidia_gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU: /dev/nvidia0 exists or `nvidia-smi -L` succeeds."""
    if os.path.exists("/dev/nvidia0"):
        return True
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def preferred_gl_backend(environ: Mapping[str, str], has_nvidia_gpu: Callable[[], bool]) -> str | None:
    """The backend to use without probing: MUJOCO_GL when set, else egl on an NVIDIA machine (renders
    on the GPU instead of in software on the CPU cores the actors need), else None (probe)."""
    if environ.get("MUJOCO_GL"):
        return environ["MUJOCO_GL"]
    return "egl" if has_nvidia_gpu() else None


def select_gl_backend() -> str:
    """Pick MuJoCo's headless GL backend and export it as MUJOCO_GL (see `preferred_gl_backend`).

    Without a choice made, probe EGL, then OSMesa. The probe runs in a subprocess because MuJoCo binds
    its GL backend once per process; exporting the choice lets child processes (Ray workers) skip it.
    """
    chosen = preferred_gl_backend(os.environ, nvidia_gpu_present)
    if chosen is not None:
        if not os.environ.get("MUJOCO_GL"):  # ours, not the user's: export it with its PyOpenGL platform
            os.environ["MUJOCO_GL"] = chosen
            os.environ.setdefault("PYOPENGL_PLATFORM", chosen)
        return chosen
    errors = []
    for backend in ("egl", "osmesa"):
        env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
        probe = subprocess.run([sys.executable, "-c", _GL_PROBE], env=env, capture_output=True, text=True,
                               timeout=120)
        if probe.returncode == 0:
            os.environ["MUJOCO_GL"] = backend
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return backend
        errors.append(f"{backend}: {probe.stderr.strip().splitlines()[-1:]}")
    raise RenderingUnavailableError(
        "no headless OpenGL backend works for MuJoCo (" + "; ".join(errors) + "). Install one: "
        "`apt-get install libosmesa6` (CPU rendering) or `apt-get install libegl1` (GPU rendering), "
        "or set MUJOCO_GL to a backend that works."
    )


def _gl_strings(backend: str) -> dict[str, str] | str:
    """Vendor and renderer of `backend` in a child process with this process's environment (CUDA_VISIBLE_DEVICES
    as Ray set it included), or the child's last error line."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        probe = subprocess.run([sys.executable, "-c", _GL_STRINGS], env=env, capture_output=True, text=True,
                               timeout=120)
    except subprocess.TimeoutExpired:
        return "timed out"
    if probe.returncode == 0 and probe.stdout.strip():
        return json.loads(probe.stdout.strip().splitlines()[-1])
    return (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]


def rendered_with() -> dict[str, str] | None:
    """What `process_renderer` found in this process, or None before this process made an environment."""
    return _RENDERER


def process_renderer() -> dict[str, str]:
    """The OpenGL backend and renderer this process renders with, probed once per process and logged once.

    Ray sets CUDA_VISIBLE_DEVICES="" in processes that ask for no GPU, and NVIDIA's EGL hides its devices
    by that variable, so an actor may fail to start EGL, or render in software, where the driver renders on
    the GPU (deploy/ray_runtime.RENDER_PROCESS_ENV keeps Ray from setting it for actors and the evaluator). When EGL cannot start here
    and MuJoCo has not bound a backend in this process yet, rendering falls back to OSMesa with one warning.
    """
    global _RENDERER
    if _RENDERER is not None:
        return _RENDERER
    backend = select_gl_backend()
    found = _gl_strings(backend)
    if isinstance(found, str) and backend == "egl" and "mujoco" not in sys.modules:
        fallback = _gl_strings("osmesa")
        if isinstance(fallback, dict):
            log.warning("EGL cannot start in this process (%s; CUDA_VISIBLE_DEVICES=%r): rendering with OSMesa "
                        "on the CPU instead, which is slower", found, os.environ.get("CUDA_VISIBLE_DEVICES"))
            os.environ["MUJOCO_GL"] = os.environ["PYOPENGL_PLATFORM"] = backend = "osmesa"
            found = fallback
    info = {"backend": backend, **(found if isinstance(found, dict) else {"vendor": "?", "renderer": f"unknown ({found})"})}
    log.info("rendering with %s: %s (%s)", backend, info["renderer"], info["vendor"])
    _RENDERER = info
    return info


class PixelEnv(Protocol):
    """What every slac-dist environment offers."""

    spec: TaskSpec
    action_dim: int

    def reset(self) -> np.ndarray: ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]: ...

    def close(self) -> None: ...


class _RepeatedActionEnv:
    """Shared action checking, rescaling and repeat; subclasses provide one raw step and a render."""

    spec: TaskSpec
    action_dim: int
    _low: np.ndarray
    _high: np.ndarray

    def __init__(self, spec: TaskSpec, image_size: int) -> None:
        self.spec = spec
        self.image_size = image_size

    def _raw_step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        raise NotImplementedError

    def render(self) -> np.ndarray:
        """The current frame as uint8 (3, H, W)."""
        raise NotImplementedError

    @property
    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of the env's own action space, which `rescale` maps [-1, 1]^A onto."""
        return self._low, self._high

    def rescale(self, action: np.ndarray) -> np.ndarray:
        """Map an action in [-1, 1]^A to the env's bounds."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (self.action_dim,):
            raise ValueError(f"{self.spec.name}: action must have {self.action_dim} entries, got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.spec.name}: action contains NaN or inf: {action}")
        action = np.clip(action, -1.0, 1.0)
        return self._low + (action + 1.0) * 0.5 * (self._high - self._low)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Repeat `action` spec.action_repeat times, summing rewards; stop early at the episode's end."""
        raw_action = self.rescale(action)
        total, terminated, truncated, steps = 0.0, False, False, 0
        for _ in range(self.spec.action_repeat):
            reward, terminated, truncated = self._raw_step(raw_action)
            total += reward
            steps += 1
            if terminated or truncated:
                break
        return self.render(), total, terminated, truncated, {"env_steps": steps}


class DmControlEnv(_RepeatedActionEnv):
    """A dm_control suite task; episodes are 1000 environment steps and never terminate early."""

    def __init__(self, spec: TaskSpec, seed: int, image_size: int = 64) -> None:
        super().__init__(spec, image_size)
        process_renderer()
        from dm_control import suite

        domain, task = spec.env_id.split("/")
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        action_spec = self._env.action_spec()
        self._low, self._high = action_spec.minimum.astype(np.float64), action_spec.maximum.astype(np.float64)
        self.action_dim = int(action_spec.shape[0])
        _fast_visuals(self._env.physics.model)

    def reset(self) -> np.ndarray:
        self._env.reset()
        return self.render()

    def _raw_step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        time_step = self._env.step(action)
        last = time_step.last()
        # dm_control marks a true terminal state with discount 0; the time limit keeps discount 1.
        terminated = bool(last and time_step.discount == 0.0)
        return float(time_step.reward or 0.0), terminated, bool(last and not terminated)

    def render(self) -> np.ndarray:
        frame = self._env.physics.render(self.image_size, self.image_size, camera_id=self.spec.camera_id)
        return np.ascontiguousarray(frame.transpose(2, 0, 1))

    def close(self) -> None:
        # dm_control's close() does nothing: free the render contexts here, on the thread that rendered with
        # them. Left to the garbage collector they are freed on whatever thread runs it (a restarted actor
        # loop runs on another of Ray's threads), where freeing them raises inside __del__.
        self._env.physics.free()
        self._env.close()


class GymnasiumEnv(_RepeatedActionEnv):
    """A gymnasium MuJoCo v5 task, with its 1000-step time limit as truncation."""

    def __init__(self, spec: TaskSpec, seed: int, image_size: int = 64) -> None:
        super().__init__(spec, image_size)
        process_renderer()
        import gymnasium as gym

        self._env = gym.make(spec.env_id, render_mode="rgb_array", width=image_size, height=image_size,
                             max_episode_steps=spec.max_env_steps)
        self._seed: int | None = seed
        self._env.action_space.seed(seed)
        self._low = self._env.action_space.low.astype(np.float64)
        self._high = self._env.action_space.high.astype(np.float64)
        self.action_dim = int(self._env.action_space.shape[0])
        self._visuals_set = False

    def reset(self) -> np.ndarray:
        # Seed only the first reset; later resets continue the env's own RNG stream.
        self._env.reset(seed=self._seed)
        self._seed = None
        if not self._visuals_set:
            _fast_visuals(self._env.unwrapped.model)
            self._visuals_set = True
        return self.render()

    def _raw_step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        _, reward, terminated, truncated, _ = self._env.step(action.astype(np.float32))
        return float(reward), bool(terminated), bool(truncated)

    def render(self) -> np.ndarray:
        # gymnasium's offscreen viewer draws into whichever GL context is current: with several envs in
        # one process (actors.envs_per_actor > 1) that is the newest env's, and after one is closed there
        # is none, so frames come out black. Make this env's own context current first.
        viewer = self._viewer()
        if viewer is not None:
            viewer.make_context_current()
        return np.ascontiguousarray(self._env.render().transpose(2, 0, 1))

    def _viewer(self) -> Any:
        return self._env.unwrapped.mujoco_renderer._viewers.get("rgb_array")

    def close(self) -> None:
        # Free MuJoCo's render context with its own GL context current. Left to the garbage collector,
        # it deletes its GL objects by id in whichever context is current then: another env's, whose
        # frames are black from then on.
        viewer = self._viewer()
        if viewer is not None:
            viewer.make_context_current()
            viewer.con.free()
        self._env.close()


def _fast_visuals(model: Any) -> None:
    """Turn off shadow maps and multisampling: 5-10x faster software rendering at 64x64.

    Must run before the first render, which allocates the offscreen buffers.
    """
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0


def make_env(task: str, seed: int, image_size: int = 64) -> DmControlEnv | GymnasiumEnv:
    """Build the pixel env for a task name or alias (see common.tasks.TASKS)."""
    spec = resolve_task(task)
    cls = DmControlEnv if spec.suite == "dmc" else GymnasiumEnv
    return cls(spec, seed, image_size)
