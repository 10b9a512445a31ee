#!/usr/bin/env bash
# Which build of torch this machine gets: the one place that decides, for `make setup` and so for every node
# that `ray up` sets up (the cluster YAMLs' setup_commands run `make setup`). Bash only: it runs before the
# venv exists.
#
#   scripts/torch_wheel.sh            # pip's arguments for torch: torch==<pin> and where it comes from
#   scripts/torch_wheel.sh --has-gpu  # 1 on a GPU machine, else 0
#
# A GPU machine is one where `nvidia-smi -L` works or /dev/nvidia0 exists (common/rendering.nvidia_gpu_present
# agrees); HAS_GPU=0 or 1 in the environment overrides that (`make setup HAS_GPU=0`: the CPU build anyway).
# It gets the CUDA build for the newest CUDA its driver supports (nvidia-smi's "CUDA Version"), from PyTorch's
# index, with --force-reinstall so that a local +cpu wheel in pip's find-links cannot win; a driver too old
# for every build, or one nvidia-smi reports no CUDA version for, is an error (exit 1) that names the fix.
# A CPU machine must not pull ~2 GB of CUDA wheels: the local CPU wheel when this workplace provides one in
# LOCAL_WHEELS (default /opt/wheels; named with --find-links, as a shell that `ray up` opens over SSH has no
# PIP_FIND_LINKS), else PyTorch's CPU index.
set -euo pipefail

# The pin in pyproject.toml (tests/test_setup.py checks they agree); the CUDA builds below are the ones
# PyTorch publishes for it.
TORCH_VERSION=2.13.0
INDEX=https://download.pytorch.org/whl
LOCAL_WHEELS="${LOCAL_WHEELS:-/opt/wheels}"

has_gpu() {
  case "${HAS_GPU:-}" in
    0 | 1) echo "$HAS_GPU" ;;
    "") if nvidia-smi -L >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; then echo 1; else echo 0; fi ;;
    *) echo "make setup: HAS_GPU=$HAS_GPU is neither 0 (the CPU build of torch) nor 1 (the CUDA build):" \
            "set one of them, or leave HAS_GPU unset to detect the GPU" >&2
       exit 2 ;;
  esac
}

# The CUDA build for the driver's CUDA version (e.g. 12.8), or an error saying what to do.
cuda_build() {
  local driver_cuda major minor
  driver_cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1) || true
  if [ -z "$driver_cuda" ]; then
    echo "make setup: this machine has an NVIDIA GPU but \`nvidia-smi\` does not report the driver's CUDA version:" \
         "check the driver with \`nvidia-smi\` (or \`make setup HAS_GPU=0\` for the CPU build)" >&2
    exit 1
  fi
  major=${driver_cuda%%.*}
  minor=${driver_cuda#*.}
  if [ "$major" -ge 13 ]; then echo cu130
  elif [ "$major" -eq 12 ] && [ "$minor" -ge 8 ]; then echo cu128
  elif [ "$major" -eq 12 ] && [ "$minor" -ge 6 ]; then echo cu126
  else
    echo "make setup: this machine has an NVIDIA GPU but its driver supports only CUDA $driver_cuda and" \
         "torch ${TORCH_VERSION%.*} needs 12.6 or newer: update the NVIDIA driver" \
         "(or \`make setup HAS_GPU=0\` for the CPU build)" >&2
    exit 1
  fi
}

case "${1:-}" in
  --has-gpu) has_gpu ;;
  "")
    gpu=$(has_gpu)
    if [ "$gpu" = 1 ]; then
      build=$(cuda_build)
      echo "torch==$TORCH_VERSION --force-reinstall --index-url $INDEX/$build"
    elif compgen -G "$LOCAL_WHEELS/torch-$TORCH_VERSION+cpu*" >/dev/null; then
      echo "torch==$TORCH_VERSION --find-links $LOCAL_WHEELS"
    else
      echo "torch==$TORCH_VERSION --index-url $INDEX/cpu"
    fi ;;
  *) echo "torch_wheel.sh: unknown argument $1 (none: pip's arguments for torch; --has-gpu: 1 or 0)" >&2; exit 2 ;;
esac
