"""Which OpenGL renderer MuJoCo gets in a process that sees no GPU in CUDA_VISIBLE_DEVICES, and how fast it draws.

Ray sets CUDA_VISIBLE_DEVICES="" for actors that ask for no GPU, and NVIDIA's EGL filters its devices by that
variable: such an actor may render in software without saying so. For each backend (EGL, then OSMesa) a child
process with CUDA_VISIBLE_DEVICES="" renders a small MuJoCo scene at 64 x 64 and reports the GL vendor and
renderer strings and renders/s. Needs mujoco and PyOpenGL (bench/gpu_wheels.sh carries them to a bare machine).

    python bench/render_probe.py [--renders 500] [--out render.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SCENE = """<mujoco><worldbody><light pos="0 0 3"/><geom type="plane" size="2 2 .1"/>
<body pos="0 0 .5"><freejoint/><geom type="box" size=".1 .2 .3" rgba="1 .3 .2 1"/></body></worldbody></mujoco>"""


def child(renders: int) -> dict[str, object]:
    import mujoco
    from OpenGL import GL

    model = mujoco.MjModel.from_xml_string(SCENE)
    data = mujoco.MjData(model)
    renderer = mujoco.Renderer(model, 64, 64)
    renderer.update_scene(data)
    renderer.render()
    strings = {k: GL.glGetString(v).decode() for k, v in (("vendor", GL.GL_VENDOR), ("renderer", GL.GL_RENDERER))}
    start = time.perf_counter()
    for _ in range(renders):
        mujoco.mj_step(model, data)
        renderer.update_scene(data)
        renderer.render()
    seconds = time.perf_counter() - start
    return {**strings, "renders_per_s": round(renders / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=500)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.renders)))
        return
    report: dict[str, object] = {"bench": "render_probe", "cuda_visible_devices": ""}
    for backend in ("egl", "osmesa"):
        env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend, CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run([sys.executable, __file__, "--child", "--renders", str(args.renders)], env=env,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            report[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            report[backend] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
