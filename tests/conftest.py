"""Shared test setup: headless rendering chosen once, torch kept to one thread (2-core CI machines)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from replay_fixtures import flush_db, serve

from common.envs import select_gl_backend
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
