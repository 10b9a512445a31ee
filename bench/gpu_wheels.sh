#!/usr/bin/env bash
# Download, on this (online) machine, the wheels bench/gpu_check.sh needs on the bare, offline GPU machine
# (Python 3.12, x86-64, torch/numpy/pytest already there) into .whl/ (ignored by git; the device tool's
# `carry` takes it): what the learner tests import (tyro and its needs, redis, lz4) and what the render
# probe needs (mujoco and its needs, PyOpenGL). About 32 MB (mujoco is 27 of them), inside the tool's 64 MiB;
# the versions are this project's pins.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PIP=".venv/bin/pip"; [ -x "$PIP" ] || PIP="python3 -m pip"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for wheel in tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 redis==8.1.0 lz4==4.4.5 \
             mujoco==3.17.0 absl-py etils glfw PyOpenGL websockets; do
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl "$wheel"
done
ls -la .whl
du -sh .whl
