"""The run directory's disk: a run stops cleanly before it fills, instead of failing in every process.

Everything a run keeps lives on that disk: the replay's AOF (growing with every flush), its snapshot
(redis/dump.rdb, rewritten whole by each checkpoint's BGSAVE), the checkpoints, W&B's files and the logs.
On a full disk Redis refuses writes (the actors' flushes fail), a checkpoint fails half-way and W&B stops
logging; each would surface as its own confusing error. `DiskGuard` looks at the free space every driver
tick and ends the run with one paragraph once it drops below what the next checkpoint needs
(`run.min_free_mb` plus the current snapshot's and checkpoint's sizes): the newest complete checkpoint is
kept as it is, the AOF stays whole, and `--run.resume` continues once there is space again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common.run_files import RunFiles
from learner.checkpoint import latest_checkpoint

MB = 1 << 20


class DiskFullError(RuntimeError):
    """The run directory's disk has too little free space for the run to go on safely."""


def mount_of(path: Path) -> tuple[str, str]:
    """(mount point, device) of the filesystem holding `path`."""
    point = path.resolve()
    while not os.path.ismount(point) and point != point.parent:
        point = point.parent
    device = "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[1] == str(point):
                device = f"{fields[0]} ({fields[2]})"
    except OSError:
        pass
    return str(point), device


class DiskGuard:
    """Free space of the run directory's disk against what the run needs next (see the module docstring)."""

    def __init__(self, run_dir: str | Path, min_free_mb: float) -> None:
        self.run_dir, self.min_free_mb = Path(run_dir), min_free_mb

    def free_mb(self) -> float:
        return shutil.disk_usage(self.run_dir).free / MB

    def needed_mb(self) -> float:
        """run.min_free_mb plus a new replay snapshot and a new checkpoint as large as the current ones."""
        sizes = 0
        for path in (RunFiles(self.run_dir).redis / "dump.rdb", latest_checkpoint(RunFiles(self.run_dir).checkpoints)):
            try:
                sizes += path.stat().st_size if path is not None else 0
            except OSError:
                pass
        return self.min_free_mb + sizes / MB

    def describe(self) -> str:
        point, device = mount_of(self.run_dir)
        return f"the disk holding {self.run_dir} ({device} mounted on {point}) has {self.free_mb():.0f} MB free"

    def check(self, starting: bool = False) -> None:
        """Raise DiskFullError when the free space is below `needed_mb()`."""
        free, needed = self.free_mb(), self.needed_mb()
        if free >= needed:
            return
        if starting:
            raise DiskFullError(f"{self.describe()}, and a run needs at least {needed:.0f} MB (run.min_free_mb "
                                f"{self.min_free_mb:g} plus its replay snapshot and checkpoint). Free some space, "
                                "pick a --run.dir on a larger disk, or lower --run.min-free-mb.")
        raise DiskFullError(f"{self.describe()}, less than the {needed:.0f} MB the next checkpoint needs "
                            f"(run.min_free_mb {self.min_free_mb:g} plus the replay snapshot and the checkpoint): "
                            "the run stopped before the disk filled up.")
