"""The driver's stop on a nearly full disk (deploy/run/driver.py `_checkpoint_without_replay`), with stand-ins for
the processes and for Ray: a learner-only checkpoint is written only when it fits (twice the newest one's size
and a megabyte free), so a half-written one never takes the AOF's last bytes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import deploy.run.driver as driver_module
from common.run_files import RunFiles
from deploy.run.disk import MB
from deploy.run.driver import Driver

pytestmark = pytest.mark.unit


def _driver(run_dir: Path, free_mb: float) -> tuple[Any, list[bool]]:
    """A stand-in Driver whose learner records each checkpoint it is asked for (its `replay` argument)."""
    asked: list[bool] = []

    def checkpoint(extra: dict[str, Any], replay: bool = True) -> str:
        asked.append(replay)
        return str(RunFiles(run_dir).checkpoints / "ckpt_0000000200.pt")

    learner = SimpleNamespace(stop=SimpleNamespace(remote=lambda: None), checkpoint=SimpleNamespace(remote=checkpoint))
    return SimpleNamespace(signals=SimpleNamespace(stopping=lambda: None), fleet=SimpleNamespace(stop=lambda: None),
                           learner=learner, run=SimpleNamespace(files=RunFiles(run_dir), path=run_dir),
                           disk=SimpleNamespace(free_mb=lambda: free_mb), _extra=lambda: {}), asked


@pytest.mark.parametrize("free_mb", [2.0, 40.0], ids=["no-room", "room"])
def test_a_learner_only_checkpoint_is_written_only_when_it_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                free_mb: float) -> None:
    monkeypatch.setattr(driver_module, "ray", SimpleNamespace(get=lambda ref, timeout=None: ref,
                                                              exceptions=driver_module.ray.exceptions))
    checkpoints = RunFiles(tmp_path).checkpoints
    checkpoints.mkdir(parents=True)
    newest = checkpoints / "ckpt_0000000100.pt"
    newest.write_bytes(b"\0" * (4 * MB))  # needs 2 x 4 + 1 = 9 MB free
    (checkpoints / "ckpt_0000000100.pt.sha256").write_text("0" * 64)
    driver, asked = _driver(tmp_path, free_mb)
    message = Driver._checkpoint_without_replay(driver, disk_full=True)
    if free_mb < 9:
        assert asked == [] and "No final checkpoint was written (no room for one)" in message
        assert str(newest) in message and f"--run.resume {tmp_path}" in message
    else:
        assert asked == [False] and "ckpt_0000000200.pt (written without a replay snapshot" in message
        assert "once there is space again" in message
