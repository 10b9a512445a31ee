"""A run's private Ray (deploy/run/ray_runtime.py) on a real local Ray: its own short directory, which every one of
its processes holds a file in (so the fault tests see a leaked one), and Ray's count of an actor's restarts."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import ray
from process_tools import processes_using, wait_for_no_process_using

from common.config import debug
from deploy.run.ray_runtime import RAY_DIR_PREFIX, connect_ray, private_ray_dir, ray_restarts
from deploy.run.weight_board import WeightBoard

pytestmark = pytest.mark.integration


def test_a_private_ray_lives_in_its_own_directory_and_counts_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "local")
    monkeypatch.setenv("TMPDIR", "/tmp/" + "deep/" * 20)  # too deep for Ray's socket paths: /tmp is used instead
    deep = Path(private_ray_dir())
    deep.rmdir()
    assert deep.parent == Path("/tmp")
    monkeypatch.delenv("TMPDIR")
    ray_dir = connect_ray(debug())
    try:
        assert ray_dir is not None and Path(ray_dir).name.startswith(RAY_DIR_PREFIX)
        # Its sockets' paths are about 80 bytes longer (`session_<date>_<time>_<pid>/sockets/plasma_store`); a unix
        # socket's path must fit in 107.
        assert len(ray_dir) + 80 <= 107 and list(Path(ray_dir).glob("session_*/sockets/plasma_store")), ray_dir
        board = ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)(WeightBoard).remote()
        assert ray.get(board.version.remote()) == 0
        # The raylet and the actor's worker (retitled `ray::WeightBoard`) both hold files in it.
        using = processes_using(ray_dir)
        (pid,) = [pid for pid, command in using.items() if command.startswith("ray::WeightBoard")]
        assert any("raylet" in command for command in using.values()), using
        assert ray_restarts(board) == 0
        os.kill(pid, signal.SIGKILL)
        assert ray.get(board.version.remote()) == 0 and ray_restarts(board) == 1
        assert pid not in processes_using(ray_dir)
    finally:
        ray.shutdown()
    assert wait_for_no_process_using(ray_dir) == {}
    shutil.rmtree(ray_dir)
