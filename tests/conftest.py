"""Shared test setup: headless rendering chosen once, torch kept to one thread (2-core CI machines)."""

from __future__ import annotations

import os

import pytest
import torch

from common.envs import select_gl_backend

# Choose the GL backend once for this process and its children (Ray workers, writer processes).
select_gl_backend()
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)


@pytest.fixture
def debug_config():
    """The debug preset: tiny widths and counts."""
    from common.config import debug

    return debug()
