"""`make setup` on a GPU machine, checked on CPU: a stub `nvidia-smi` on PATH stands for the driver, and `make -n`
shows what setup would install (the recipe is printed, not run). scripts/torch_wheel.sh, which makes the choice for
`make setup` (and so for every node `ray up` sets up), is checked on its own with the same stubs."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
STUB = """#!/bin/sh
if [ "$1" = "-L" ]; then echo "GPU 0: NVIDIA H200 (UUID: GPU-0000)"; exit 0; fi
echo "| NVIDIA-SMI 580.00   Driver Version: 580.00   CUDA Version: {cuda}  |"
"""
TORCH_WHEEL = REPO / "scripts" / "torch_wheel.sh"


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


def _torch_wheel(tmp_path: Path, stub: str | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs scripts/torch_wheel.sh with `stub` as nvidia-smi (None: no nvidia-smi answers) and `env` added."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # A failing stub rather than none, so that a real nvidia-smi further along PATH cannot answer.
    stub = stub if stub is not None else "#!/bin/sh\necho 'NVIDIA-SMI has failed: no driver' >&2\nexit 9\n"
    (bin_dir / "nvidia-smi").write_text(stub)
    (bin_dir / "nvidia-smi").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("HAS_GPU", "LOCAL_WHEELS")}
    return subprocess.run(["bash", str(TORCH_WHEEL), *args], env=dict(base, PATH=f"{bin_dir}:{base['PATH']}", **env),
                          capture_output=True, text=True, timeout=60)


def _pinned_torch() -> str:
    return re.search(r'"(torch==[^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)


@pytest.mark.parametrize(("driver_cuda", "wheel"), [("13.0", "cu130"), ("12.8", "cu128"), ("12.6", "cu126")])
def test_the_script_picks_the_cuda_build_the_driver_supports(tmp_path: Path, driver_cuda: str, wheel: str) -> None:
    proc = _torch_wheel(tmp_path, STUB.format(cuda=driver_cuda))
    assert proc.returncode == 0, proc.stderr
    # --force-reinstall: a local +cpu wheel in pip's find-links must not win over the CUDA build.
    assert proc.stdout.split() == [_pinned_torch(), "--force-reinstall", "--index-url",
                                   f"https://download.pytorch.org/whl/{wheel}"]
    assert _torch_wheel(tmp_path, STUB.format(cuda=driver_cuda), "--has-gpu").stdout.strip() == "1"


def test_the_script_refuses_a_driver_too_old_for_torch(tmp_path: Path) -> None:
    proc = _torch_wheel(tmp_path, STUB.format(cuda="12.4"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert "driver supports only CUDA 12.4" in proc.stderr and "update the NVIDIA driver" in proc.stderr
    assert "make setup HAS_GPU=0" in proc.stderr


def test_the_script_refuses_a_driver_that_reports_no_cuda_version(tmp_path: Path) -> None:
    stub = STUB.replace("CUDA Version: {cuda}", "")
    proc = _torch_wheel(tmp_path, stub)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "does not report the driver's CUDA version" in proc.stderr and "check the driver" in proc.stderr
    assert "make setup HAS_GPU=0" in proc.stderr


@pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="a real GPU machine: the stub would not decide")
def test_the_script_gives_a_machine_without_a_gpu_the_cpu_build(tmp_path: Path) -> None:
    local, empty = tmp_path / "wheels", tmp_path / "no-wheels"
    local.mkdir()
    empty.mkdir()
    (local / f"torch-{_pinned_torch().split('==')[1]}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    # The local CPU wheel, named with --find-links (a shell `ray up` opens over SSH has no PIP_FIND_LINKS) ...
    with_wheel = _torch_wheel(tmp_path, None, LOCAL_WHEELS=str(local))
    assert with_wheel.returncode == 0, with_wheel.stderr
    assert with_wheel.stdout.split() == [_pinned_torch(), "--find-links", str(local)]
    # ... else PyTorch's CPU index: never the default index, whose torch pulls ~2 GB of CUDA wheels.
    without = _torch_wheel(tmp_path, None, LOCAL_WHEELS=str(empty))
    assert without.returncode == 0, without.stderr
    assert without.stdout.split() == [_pinned_torch(), "--index-url", "https://download.pytorch.org/whl/cpu"]
    assert _torch_wheel(tmp_path, None, "--has-gpu").stdout.strip() == "0"


def test_has_gpu_0_gives_a_gpu_machine_the_cpu_build(tmp_path: Path) -> None:
    # An old driver would be an error: HAS_GPU=0 never looks at it.
    proc = _torch_wheel(tmp_path, STUB.format(cuda="12.4"), HAS_GPU="0", LOCAL_WHEELS=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [_pinned_torch(), "--index-url", "https://download.pytorch.org/whl/cpu"]
    assert _torch_wheel(tmp_path, STUB.format(cuda="12.4"), "--has-gpu", HAS_GPU="0").stdout.strip() == "0"


def test_a_has_gpu_other_than_0_or_1_is_an_error_naming_both(tmp_path: Path) -> None:
    proc = _torch_wheel(tmp_path, None, HAS_GPU="no")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "HAS_GPU=no" in proc.stderr and "0 (the CPU build" in proc.stderr and "1 (the CUDA build)" in proc.stderr


def test_sysdeps_on_a_set_up_machine_installs_nothing_even_with_sbin_off_path(tmp_path: Path) -> None:
    """A non-root Debian user's PATH has no /sbin, where ldconfig lives: every GL library then read as missing and
    each `make` ran `sudo apt-get install`. Stub apt-get and sudo record a call; on this set-up machine none may come."""
    calls = tmp_path / "calls"
    for name in ("apt-get", "sudo"):
        (tmp_path / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {calls}\nexit 1\n")
        (tmp_path / name).chmod(0o755)
    path = ":".join([str(tmp_path), *(d for d in os.environ["PATH"].split(":") if not d.rstrip("/").endswith("sbin"))])
    proc = subprocess.run(["make", "sysdeps"], cwd=REPO, env=dict(os.environ, PATH=path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and not calls.exists(), (proc.stdout, proc.stderr, calls.exists() and calls.read_text())
