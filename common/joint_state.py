"""The true state of a MuJoCo model as named numbers: what the latent probe (common/probe.py) regresses on.

Every joint gives its positions and velocities. A hinge's angle is reported as its cosine and sine, so an
angle that wraps (cartpole's pole swinging over the top) is a continuous target a linear probe can fit; a
slide joint's position as is; a ball joint's quaternion (w, x, y, z) and a free joint's position and
quaternion as they are in qpos. Velocities are qvel, one per degree of freedom. Names follow the model's
joint names (`hinge_1_cos`, `slider`, `slider_vel`; `joint<j>` for an unnamed joint).

Both dm_control (`physics.model.ptr`, `physics.data.ptr`) and gymnasium's MuJoCo envs (`env.unwrapped.model`,
`.data`) hand over the same `mujoco.MjModel` / `mujoco.MjData`, so one reader serves both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# mujoco.mjtJoint, without importing mujoco at module import (the tools read common/ without it)
_FREE, _BALL, _SLIDE, _HINGE = 0, 1, 2, 3
_QPOS_SUFFIXES = {_FREE: ("_x", "_y", "_z", "_qw", "_qx", "_qy", "_qz"), _BALL: ("_qw", "_qx", "_qy", "_qz"),
                  _SLIDE: ("",)}
_DOFS = {_FREE: 6, _BALL: 3, _SLIDE: 1, _HINGE: 1}


class JointState:
    """Reads a model's joint positions and velocities as one float64 vector, in the order of `names`."""

    def __init__(self, model: Any) -> None:
        take, cos, sin, pos_names, dof_take, vel_names = [], [], [], [], [], []
        for j in range(int(model.njnt)):
            joint = model.joint(j).name or f"joint{j}"
            kind, qpos, dof = int(model.jnt_type[j]), int(model.jnt_qposadr[j]), int(model.jnt_dofadr[j])
            if kind == _HINGE:  # the angle twice, as cos and sin: no jump where it wraps
                pos_names += [f"{joint}_cos", f"{joint}_sin"]
                take += [qpos, qpos]
                cos.append(len(take) - 2)
                sin.append(len(take) - 1)
            else:
                suffixes = _QPOS_SUFFIXES[kind]
                pos_names += [joint + s for s in suffixes]
                take += range(qpos, qpos + len(suffixes))
            dofs = _DOFS[kind]
            vel_names += [f"{joint}_vel"] if dofs == 1 else [f"{joint}_vel{i}" for i in range(dofs)]
            dof_take += range(dof, dof + dofs)
        self.names: tuple[str, ...] = tuple(pos_names + vel_names)
        self._take, self._dof_take = np.array(take, dtype=np.int64), np.array(dof_take, dtype=np.int64)
        self._cos, self._sin = np.array(cos, dtype=np.int64), np.array(sin, dtype=np.int64)

    def read(self, data: Any) -> np.ndarray:
        """float64 [len(names)]: the current positions (hinges as cos, sin) and velocities of `data`."""
        pos = np.asarray(data.qpos, dtype=np.float64)[self._take]
        pos[self._cos] = np.cos(pos[self._cos])
        pos[self._sin] = np.sin(pos[self._sin])
        return np.concatenate([pos, np.asarray(data.qvel, dtype=np.float64)[self._dof_take]])
