"""Shared test setup: headless rendering chosen once, torch kept to one thread (2-core CI machines)."""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from replay_fixtures import flush_db, serve

from common.rendering import select_gl_backend
from replay_service import RedisServer

# Choose the GL backend once for this process and its children (Ray workers, writer processes).
select_gl_backend()
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for one test module (started in a temp dir, stopped after the module)."""
    yield from serve(tmp_path_factory)


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    """The module's server, emptied for this test."""
    flush_db(redis_server.url)
    return redis_server.url


@pytest.fixture
def debug_config():
    """The debug preset: tiny widths and counts."""
    from common.config import debug

    return debug()


_exit_status: int | None = None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remember pytest's verdict for `pytest_unconfigure`."""
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process with pytest's verdict once everything is reported, skipping interpreter teardown.

    The suite runs Ray drivers, W&B runs, MuJoCo GL contexts and torch's thread pools inside this one
    process, one after another; CI once saw the process die of SIGSEGV after "255 passed" had been printed,
    in the interpreter's teardown of those native libraries (no test was running). The processes users run
    (`deploy.train`, `deploy.reproduce`, ...) each hold one of them and exit 0, which the end-to-end tests
    check. Here the in-process resources are closed explicitly, with faulthandler printing every thread's
    stack should one of those steps crash, and the process then exits without the teardown.
    """
    if _exit_status is None:  # no session ran (a usage error): nothing of ours is loaded
        return
    faulthandler.enable(file=sys.__stderr__, all_threads=True)
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    if "wandb" in sys.modules:
        import wandb

        wandb.teardown()
    for child in multiprocessing.active_children():
        child.terminate()
        child.join(5)
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if left:
        print(f"conftest: threads still running at exit: {left}", file=sys.__stderr__)
    _stop_children_left()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)


def _stop_children_left() -> None:
    """Stop the embedded redis-servers a failed test left running, and name them.

    os._exit skips the finalizer that would stop them: a test that fails before its RedisServer.stop() leaves its
    redis-server (RedisServer's weakref.finalize stops it at a normal exit), which would outlive CI's run and hold
    its port and data dir. SIGTERM (redis-server fsyncs and exits), then SIGKILL after 10 s. Other children are
    left alone: multiprocessing's resource tracker ignores SIGTERM and exits by itself once this process is gone."""
    from process_tools import alive, children, cmdline

    commands = {pid: cmdline(pid) for pid in children(os.getpid()) if alive(pid)}
    left = {pid: " ".join(cmd).strip()[:80] for pid, cmd in commands.items()
            if cmd and Path(cmd[0]).name.startswith("redis-server")}
    if not left:
        return
    print(f"conftest: stopping processes the tests left running: {left}", file=sys.__stderr__)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
