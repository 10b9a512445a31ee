"""What made a result: the machine (CPU, cores, memory, GPU, OS, torch) and the code (git commit, and whether the
tree differed from it). One home for `make reproduce`'s summaries and the benchmarks' JSON (bench/machine.py)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()


def commit() -> str:
    """HEAD's hash, or "unknown" outside a git checkout."""
    try:
        return _git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dirty() -> bool:
    """Whether the working tree differs from HEAD; True when unknown (figures of unknown code claim no commit)."""
    try:
        return bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return True


def revision() -> str:
    """The commit as results record it: the hash, with `-dirty` when the tree has uncommitted changes."""
    head = commit()
    return head if head == "unknown" else head + ("-dirty" if dirty() else "")


def machine() -> dict[str, Any]:
    """What ran it: CPU model, logical cores, memory, GPU (if torch sees one), OS, torch."""
    import torch

    memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_gib": memory_gib, "gpu": gpu,
            "os": platform.platform(), "torch": torch.__version__}
