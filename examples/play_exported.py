"""Play a policy exported by `make export` on its task, with no slac-dist code: torch (or onnxruntime),
numpy, and dm_control or gymnasium (or, for a task of your own, the module of its factory on PYTHONPATH).

    python examples/play_exported.py runs/<run>/export/ckpt_0000020000.pt   [--episodes 3]
    python examples/play_exported.py runs/<run>/export/ckpt_0000020000.onnx

Everything it needs to know (frame size, camera, history length tau, action bounds and repeat) is read
from the file's metadata. Headless rendering goes through EGL (the GPU's, or Mesa's software one) unless
MUJOCO_GL says otherwise (MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa where only OSMesa is installed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

if "MUJOCO_GL" not in os.environ:  # before dm_control or gymnasium load MuJoCo's GL bindings
    os.environ["MUJOCO_GL"] = os.environ["PYOPENGL_PLATFORM"] = "egl"


class PolicyFileError(Exception):
    """The path is not a policy file `make export` wrote; the message says what to pass instead."""


WHAT_TO_PASS = ("`make export RUN=runs/<run>` writes the policy to runs/<run>/export/<checkpoint>.pt (FORMAT=onnx: "
                ".onnx); a training checkpoint (runs/<run>/checkpoints/) is not one")


def load(path: str) -> tuple[Callable[..., np.ndarray], dict[str, Any]]:
    """(act, metadata): act maps uint8 [1, tau, 3, H, W] and float32 [1, tau-1, A] to float32 [1, A].
    Raises PolicyFileError for a path that is missing or not an exported policy."""
    if not os.path.isfile(path):
        raise PolicyFileError(f"{path}: no such file. {WHAT_TO_PASS}.")
    try:
        if path.endswith(".onnx"):
            import onnx
            import onnxruntime

            meta = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["slac_policy"])
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            return (lambda obs, act: session.run(None, {"obs_history": obs, "action_history": act})[0]), meta
        import torch

        extra = {"slac_policy.json": ""}
        module = torch.jit.load(path, _extra_files=extra)
        meta = json.loads(extra["slac_policy.json"])
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch, onnx and json each raise their own kind for a foreign file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise PolicyFileError(f"{path} is not a policy file written by `make export` ({reason}). {WHAT_TO_PASS}.") \
            from exc
    return (lambda obs, act: module(torch.from_numpy(obs), torch.from_numpy(act)).numpy()), meta


class Env:
    """The task as the policy was trained on it: 64x64 frames (3, H, W), actions rescaled and repeated, episodes
    cut at `episode_length` environment steps."""

    def __init__(self, meta: dict, seed: int) -> None:
        self.meta, size = meta, meta["image_size"]
        camera = meta.get("camera", meta.get("camera_id"))  # camera_id: files of metadata format 1
        meta.setdefault("episode_length", 1000)
        meta["rendering"].setdefault("mujoco", True)
        if meta["suite"] == "dmc":
            from dm_control import suite

            domain, task = meta["env_id"].split("/")
            self.env = suite.load(domain, task, task_kwargs={"random": seed, "time_limit": float("inf")})
            model = self.env.physics.model
            self.render = lambda: self.env.physics.render(size, size, camera_id=camera or 0)
        else:
            import gymnasium as gym

            if meta["suite"] == "gym":
                kwargs = {"width": size, "height": size} if meta["rendering"]["mujoco"] else {}
                kwargs.update({"camera_id": camera} if camera is not None else {})
                self.env = gym.make(meta["env_id"], render_mode="rgb_array",
                                    max_episode_steps=meta["episode_length"], **kwargs)
            else:  # the user's own factory, importable here as it was in training
                module, _, name = meta["env_id"].partition(":")
                factory = importlib.import_module(module)
                for part in name.split("."):
                    factory = getattr(factory, part)
                self.env = factory()
            self.env.action_space.seed(seed)
            model = getattr(self.env.unwrapped, "model", None)
            self.render = self.env.render
        if meta["rendering"]["mujoco"]:
            quality = meta["rendering"]["mujoco_vis_quality"]
            model.vis.quality.shadowsize, model.vis.quality.offsamples = quality["shadowsize"], quality["offsamples"]
        self.low, self.high = np.array(meta["action_low"]), np.array(meta["action_high"])
        self.steps, self.seed = 0, seed

    def frame(self) -> np.ndarray:
        return np.ascontiguousarray(area_resize(np.asarray(self.render()), self.meta["image_size"]).transpose(2, 0, 1))

    def reset(self) -> np.ndarray:
        if self.meta["suite"] == "dmc":
            self.env.reset()
        else:  # seeded at its first reset only, as in training; later ones go on with the env's own stream
            self.env.reset(seed=self.seed)
            self.seed = None
        self.steps = 0
        return self.frame()

    def close(self) -> None:
        self.env.close()  # frees the GL context now, not in the interpreter's shutdown

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        raw = self.low + (np.clip(action, -1, 1) + 1.0) * 0.5 * (self.high - self.low)
        total, done = 0.0, False
        for _ in range(self.meta["action_repeat"]):
            if self.meta["suite"] == "dmc":
                step = self.env.step(raw)
                total, done = total + (step.reward or 0.0), step.last()
            else:
                _, reward, terminated, truncated, _ = self.env.step(raw.astype(self.env.action_space.dtype))
                total, done = total + reward, terminated or truncated
            self.steps += 1
            if done or self.steps >= self.meta["episode_length"]:
                done = True
                break
        return self.frame(), total, done


def area_resize(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 to (size, size, 3) by overlap-weighted area averages, as training saw it."""
    if frame.shape[:2] == (size, size):
        return frame

    def weights(n: int) -> np.ndarray:
        edges, cells = np.linspace(0.0, n, size + 1), np.arange(n + 1, dtype=np.float64)
        overlap = np.clip(np.minimum(edges[1:, None], cells[None, 1:]) - np.maximum(edges[:-1, None], cells[None, :-1]),
                          0.0, None)
        return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)

    out = np.einsum("ih,hwc,jw->ijc", weights(frame.shape[0]), frame.astype(np.float32), weights(frame.shape[1]),
                    optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def play(path: str, episodes: int = 1, seed: int = 0, max_steps: int | None = None) -> list[float]:
    """Returns of `episodes` episodes (each cut at `max_steps` agent steps when given)."""
    act, meta = load(path)
    tau, a = meta["tau"], meta["action_dim"]
    returns = []
    for episode in range(episodes):
        env = Env(meta, seed + episode)
        frame = env.reset()
        frames = [frame] * tau  # before tau frames exist, copies of the first one
        actions = [np.zeros(a, np.float32)] * (tau - 1)
        total, done, steps = 0.0, False, 0
        while not done and (max_steps is None or steps < max_steps):
            action = act(np.stack(frames)[None], np.stack(actions)[None].astype(np.float32))[0]
            frame, reward, done = env.step(action)
            frames, actions = frames[1:] + [frame], (actions[1:] + [action.astype(np.float32)])[-(tau - 1):]
            total, steps = total + reward, steps + 1
        env.close()
        returns.append(total)
        print(f"episode {episode}: return {total:.1f} over {steps} agent steps")
    return returns


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a .pt (TorchScript) or .onnx file written by make export")
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0,
                        help="episode i is seeded seed + i (make eval derives its seeds otherwise: see README)")
    parser.add_argument("--max-steps", type=int, default=None, help="agent steps per episode at most")
    args = parser.parse_args()
    try:
        play(args.path, args.episodes, args.seed, args.max_steps)
    except PolicyFileError as exc:
        print(f"play_exported: {exc}", file=sys.stderr)
        sys.exit(2)
