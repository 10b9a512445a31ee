"""Headless OpenGL for MuJoCo: which backend (EGL on an NVIDIA machine, else EGL or OSMesa, whichever starts), chosen
once per process and exported to its children, and what each process really draws with (the GPU, or llvmpipe).

Only MuJoCo envs need it (dm_control, gymnasium's MuJoCo envs); an env that draws its own frames does not.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping

_GL_PROBE = "import mujoco; c = mujoco.GLContext(8, 8); c.make_current(); c.free()"
# The same, reporting what draws: NVIDIA's EGL on a GPU, or Mesa's llvmpipe (software) when EGL fell back.
_GL_STRINGS = ("import json, mujoco; from OpenGL import GL; c = mujoco.GLContext(8, 8); c.make_current(); "
               "print(json.dumps({k: GL.glGetString(v).decode() for k, v in (('vendor', GL.GL_VENDOR), "
               "('renderer', GL.GL_RENDERER))})); c.free()")
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
    the GPU (deploy/run/ray_runtime.RENDER_PROCESS_ENV keeps Ray from setting it for actors and the evaluator). When EGL cannot start here
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
