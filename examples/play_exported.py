"""Play a policy exported by `make export` on its task, with no slac-dist code: torch (or onnxruntime),
numpy, and dm_control or gymnasium.

    python examples/play_exported.py runs/<run>/export/ckpt_0000020000.pt   [--episodes 3]
    python examples/play_exported.py runs/<run>/export/ckpt_0000020000.onnx

Everything it needs to know (frame size, camera, history length tau, action bounds and repeat) is read
from the file's metadata. Headless rendering goes through EGL (the GPU's, or Mesa's software one) unless
MUJOCO_GL says otherwise (MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa where only OSMesa is installed).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

if "MUJOCO_GL" not in os.environ:  # before dm_control or gymnasium load MuJoCo's GL bindings
    os.environ["MUJOCO_GL"] = os.environ["PYOPENGL_PLATFORM"] = "egl"


def load(path: str):
    """(act, metadata): act maps uint8 [1, tau, 3, H, W] and float32 [1, tau-1, A] to float32 [1, A]."""
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
    return (lambda obs, act: module(torch.from_numpy(obs), torch.from_numpy(act)).numpy()), meta


class Env:
    """The task as the policy was trained on it: 64x64 frames (3, H, W), actions rescaled and repeated."""

    def __init__(self, meta: dict, seed: int) -> None:
        self.meta, size = meta, meta["image_size"]
        quality = meta["rendering"]["mujoco_vis_quality"]
        if meta["suite"] == "dmc":
            from dm_control import suite

            domain, task = meta["env_id"].split("/")
            self.env = suite.load(domain, task, task_kwargs={"random": seed})
            model = self.env.physics.model
            self.render = lambda: self.env.physics.render(size, size, camera_id=meta["camera_id"]).transpose(2, 0, 1)
        else:
            import gymnasium as gym

            self.env = gym.make(meta["env_id"], render_mode="rgb_array", width=size, height=size)
            self.env.reset(seed=seed)
            model = self.env.unwrapped.model
            self.render = lambda: self.env.render().transpose(2, 0, 1)
        model.vis.quality.shadowsize, model.vis.quality.offsamples = quality["shadowsize"], quality["offsamples"]
        self.low, self.high = np.array(meta["action_low"]), np.array(meta["action_high"])

    def reset(self) -> np.ndarray:
        self.env.reset()
        return np.ascontiguousarray(self.render())

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
                _, reward, terminated, truncated, _ = self.env.step(raw.astype(np.float32))
                total, done = total + reward, terminated or truncated
            if done:
                break
        return np.ascontiguousarray(self.render()), total, done


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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="agent steps per episode at most")
    args = parser.parse_args()
    play(args.path, args.episodes, args.seed, args.max_steps)
