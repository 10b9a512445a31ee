"""`make setup` on a GPU machine, checked on CPU: a stub `nvidia-smi` on PATH stands for the driver, and `make -n`
shows what setup would install (the recipe is printed, not run)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUB = """#!/bin/sh
if [ "$1" = "-L" ]; then echo "GPU 0: NVIDIA H200 (UUID: GPU-0000)"; exit 0; fi
echo "| NVIDIA-SMI 580.00   Driver Version: 580.00   CUDA Version: {cuda}  |"
"""


def _setup_dry_run(tmp_path: Path, cuda: str | None, *extra: str) -> subprocess.CompletedProcess[str]:
    path = os.environ["PATH"]
    if cuda is not None:
        (tmp_path / "nvidia-smi").write_text(STUB.format(cuda=cuda))
        (tmp_path / "nvidia-smi").chmod(0o755)
        path = f"{tmp_path}:{path}"
    # -W pyproject.toml: as if it had changed, so the stamp's recipe (the installs) is printed.
    return subprocess.run(["make", "-n", "-W", "pyproject.toml", ".venv/.installed", *extra], cwd=REPO,
                          env=dict(os.environ, PATH=path), capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="a real GPU machine: the stub would not decide")
@pytest.mark.parametrize(("driver_cuda", "wheel"), [("13.0", "cu130"), ("12.8", "cu128"), ("12.6", "cu126")])
def test_a_gpu_machine_gets_the_cuda_build_its_driver_supports(tmp_path: Path, driver_cuda: str, wheel: str) -> None:
    proc = _setup_dry_run(tmp_path, driver_cuda)
    assert proc.returncode == 0, proc.stderr
    install = next(line for line in proc.stdout.splitlines() if "install -q torch==" in line)
    assert f"--index-url https://download.pytorch.org/whl/{wheel}" in install and "--force-reinstall" in install
    # After installing, torch must see the GPU: a CPU or unusable CUDA build is an error with the fix, not a warning.
    check = next(line for line in proc.stdout.splitlines() if "torch.cuda.is_available()" in line)
    assert "exit 1" in proc.stdout[proc.stdout.index(check):].split("touch")[0]


@pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="a real GPU machine: the stub would not decide")
def test_a_driver_too_old_for_torch_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    proc = _setup_dry_run(tmp_path, "12.4")
    assert proc.returncode != 0
    assert "driver supports only CUDA 12.4" in proc.stderr and "update the NVIDIA driver" in proc.stderr
    assert "HAS_GPU=0" in proc.stderr


@pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="a real GPU machine")
def test_a_machine_without_a_gpu_never_asks_for_cuda_wheels(tmp_path: Path) -> None:
    for proc in (_setup_dry_run(tmp_path, None), _setup_dry_run(tmp_path, "12.8", "HAS_GPU=0")):
        assert proc.returncode == 0, proc.stderr
        install = next(line for line in proc.stdout.splitlines() if "install -q torch==" in line)
        assert "whl/cu" not in install
