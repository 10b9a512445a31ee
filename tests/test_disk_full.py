"""A full disk during training (marker `faults`): the run directory on a small tmpfs that a filler file
fills while the run trains (CI runs as root, so the test mounts it itself).

The run must end with one paragraph naming the disk, keep its newest complete checkpoint intact and
loadable with no half-written one beside it (and write no final one: there is no room for it), leave the
replay's AOF valid (redis-check-aof), and continue with --run.resume once space is freed. A run on a disk that
is already that full refuses to start. (That a final learner-only checkpoint is written when it fits:
tests/test_run_driver_disk.py.)
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from process_tools import COUPLED, Run, wait_for

from deploy.run.disk import MB
from learner.checkpoint import latest_checkpoint, read_checkpoint

pytestmark = pytest.mark.faults


def _fill(path: Path) -> int:
    """Write zeros to `path` until the filesystem refuses (ENOSPC); returns the bytes written."""
    written, block = 0, b"\0" * (1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                written += os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    return written
                block = block[: len(block) // 2]  # the last free bytes too
    finally:
        os.close(fd)


def _updates_in_newest(directory: Path) -> int:
    """SAC updates in the newest complete checkpoint (0 when there is none yet)."""
    newest = latest_checkpoint(directory)
    return 0 if newest is None else int(read_checkpoint(newest)["counters"]["updates"])


def test_a_full_disk_ends_the_run_cleanly_and_resume_continues_after_freeing_space(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    assert mounted.returncode == 0, f"this test mounts a tmpfs and needs root: {mounted.stderr}"
    runs: list[Run] = []
    try:
        run_dir = disk / "run"
        runs.append(Run(tmp_path, ["debug", "--run.task", "cheetah", "--run.dir", str(run_dir), "--run.env-steps",
                                   "100000", "--run.eval-episodes", "0", "--run.min-free-mb", "4",
                                   "--learner.checkpoint-every-s", "3", *COUPLED]))
        run = runs[0]
        # A checkpoint with SAC updates in it: the first one (as soon as the first policy is out) holds only the
        # model's pre-training, and on a slow machine the disk could fill before the next one is written.
        wait_for(lambda: run.replay_state().get("sampled", 0) >= 40 and _updates_in_newest(run_dir / "checkpoints") > 0,
                 180, "joint training and a checkpoint with updates", run.proc, run.log)
        filled = _fill(disk / "filler")
        assert os.statvfs(disk).f_bavail == 0
        assert run.wait(120) == 2, run.text[-3000:]
        error = [line for line in run.text.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and f"mounted on {disk}" in error[0] and "--run.resume" in error[0], run.text[-3000:]
        assert "No final checkpoint was written (no room for one)" in error[0], error[0]
        assert "Traceback" not in run.text, run.text[-3000:]

        # The newest complete checkpoint is intact (its digest matches) and nothing half-written is left.
        checkpoints = run_dir / "checkpoints"
        assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".tmp-")]
        newest = latest_checkpoint(checkpoints)
        state = read_checkpoint(newest)
        assert state["counters"]["updates"] > 0
        # The AOF is valid: every part named by the manifest parses to the end.
        manifest = next((run_dir / "redis" / "appendonlydir").glob("*.manifest"))
        check = subprocess.run(["redis-check-aof", str(manifest)], capture_output=True, text=True)
        assert check.returncode == 0 and "All AOF files and manifest are valid" in check.stdout, check.stdout + check.stderr

        (disk / "filler").unlink()  # space freed
        env_steps = state["extra"]["run_state"]["env_steps"]
        runs.append(Run(tmp_path, ["--run.resume", str(run_dir), "--run.env-steps", str(env_steps + 400)],
                        name="resumed"))
        assert runs[1].wait() == 0, runs[1].text[-3000:]
        resumed = runs[1].summary()
        assert resumed["updates"] > state["counters"]["updates"] and resumed["env_steps"] >= env_steps + 400
        print(f"\nfull disk: filled {filled / 2**20:.1f} MiB; the run stopped with {newest.name} intact; the resume "
              f"went on from {state['counters']['updates']} to {resumed['updates']} updates")
    finally:
        for run in runs:
            run.kill()
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_run_refuses_to_start_on_a_disk_that_is_already_too_full(tmp_path: Path) -> None:
    """`run.min_free_mb` above the disk's free space: one paragraph naming the disk, before Ray or Redis start."""
    needed = int(2 * shutil.disk_usage(tmp_path).free / MB) + 1
    run = Run(tmp_path, ["debug", "--run.task", "cheetah", "--run.dir", str(tmp_path / "run"),
                         "--run.min-free-mb", str(needed)])
    assert run.wait(120) == 2, run.text[-3000:]
    error = [line for line in run.text.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"a run needs at least {needed} MB" in error[0] and "mounted on" in error[0], run.text
    assert "Traceback" not in run.text and "private Ray" not in run.text, run.text[-3000:]
    assert not (tmp_path / "run" / "redis").exists()
