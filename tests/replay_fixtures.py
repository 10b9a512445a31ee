"""Shared helpers of the replay tests: a real redis-server per module, frames that encode their identity.

A step's identity is uid = writer * 1_000_000 + episode * 1_000 + step (step 0 = the first frame);
the frame carries it in its first 8 bytes, and its action, reward are pure functions of it, so any
sampled window can be checked against what was written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import redis
import torch

from common.batch import Batch
from common.config import ReplayConfig
from replay_service import RedisServer, ReplayWriter

TASK = "cheetah_run"
ACTION_DIM = 6
BASE_CFG = ReplayConfig(capacity=1_000, min_size=1, spi_tolerance=1e9, flush_every=4, connect_timeout_s=5.0,
                        writer_timeout_s=10.0)


def uid_of(writer: int, episode: int, step: int) -> int:
    return writer * 1_000_000 + episode * 1_000 + step


def frame(uid: int) -> np.ndarray:
    """A (3, 64, 64) uint8 frame whose first 8 bytes hold `uid` (compressible, like rendered frames)."""
    f = np.full((3, 64, 64), uid % 251, np.uint8)
    f.reshape(-1)[:8] = np.frombuffer(np.int64(uid).tobytes(), np.uint8)
    return f


def frame_uids(obs: torch.Tensor) -> np.ndarray:
    """int64 [...]: the uid of every frame of obs uint8 [..., 3, 64, 64]."""
    flat = obs.reshape(-1, 3 * 64 * 64)[:, :8].contiguous().cpu().numpy()
    return flat.view(np.int64).reshape(obs.shape[:-3])


def action_for(uid: int, action_dim: int = ACTION_DIM) -> np.ndarray:
    return np.array([((uid * (d + 7)) % 2001) / 1000 - 1 for d in range(action_dim)], np.float32)


def reward_for(uid: int) -> float:
    return float(uid % 997) / 8.0  # exact in float32


def write_episode(writer: ReplayWriter, w: int, episode: int, length: int, terminated: bool = True,
                  version: int = 0) -> list[int]:
    """Write one episode of `length` transitions; returns the uids of its transitions."""
    writer.begin_episode(frame(uid_of(w, episode, 0)))
    uids = []
    for step in range(1, length + 1):
        uid = uid_of(w, episode, step)
        last = step == length
        writer.add(action_for(uid), reward_for(uid), frame(uid), terminated and last, last and not terminated,
                   version)
        uids.append(uid)
    return uids


def check_windows(batch: Batch, sequence_length: int, terminal: set[int]) -> np.ndarray:
    """Assert every window is its episode's frames ending at its last uid, padded per common/batch.py.

    `terminal` holds the uids of steps written with terminated=True. Returns the last uids [B].
    """
    batch.validate(sequence_length, ACTION_DIM)
    T = sequence_length + 1
    uids = frame_uids(batch.obs)
    action, reward = batch.action.cpu().numpy(), batch.reward.cpu().numpy()
    term, first = batch.terminated.cpu().numpy(), batch.first.cpu().numpy()
    for b in range(uids.shape[0]):
        last = int(uids[b, -1])
        assert last % 1_000 >= 1, f"window {b} ends at a first frame {last}, not a transition"
        steps = [last % 1_000 - (T - 1) + j for j in range(T)]
        expect = [last - last % 1_000 + max(s, 0) for s in steps]
        assert uids[b].tolist() == expect, f"window {b}: frames {uids[b].tolist()}, expected {expect}"
        for j in range(T - 1):
            real = steps[j + 1] >= 1  # transition j leads to a real step of the episode
            uid = expect[j + 1]
            np.testing.assert_array_equal(action[b, j], action_for(uid) if real else np.zeros(ACTION_DIM, np.float32))
            assert reward[b, j] == (reward_for(uid) if real else 0.0)
            assert term[b, j] == float(real and uid in terminal)
        assert first[b].tolist() == [s == 0 for s in steps], f"window {b}: first {first[b].tolist()}, steps {steps}"
    return uids[:, -1]


def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Body of a module-scoped fixture: one real redis-server (free port, AOF in a temp dir)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), replace(BASE_CFG, capacity=100_000))
    server.start()
    yield server
    server.stop()


def flush_db(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def writer_process(url: str, cfg: ReplayConfig, w: int, lengths: list[int]) -> None:
    """Body of a spawned actor: write episodes of `lengths` as writer `w` (even episodes terminate)."""
    torch.set_num_threads(1)
    writer = ReplayWriter(url, cfg, TASK, ACTION_DIM, writer_id=f"proc{w}")
    for episode, length in enumerate(lengths):
        write_episode(writer, w, episode, length, terminated=episode % 2 == 0)
    writer.close()


def listening_addresses(pid: int) -> set[str]:
    """The `ip:port` TCP addresses process `pid` listens on, read from /proc (IPv6 as `[hex]:port`); none once
    it has exited (a server stopping while a test polls it)."""
    try:
        return _listening_addresses(pid)
    except OSError:
        return set()


def _listening_addresses(pid: int) -> set[str]:
    import ipaddress
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in list(f)[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                addr, port = local.split(":")
                if width == 8:  # little-endian IPv4
                    ip = str(ipaddress.IPv4Address(bytes.fromhex(addr)[::-1]))
                    found.add(f"{ip}:{int(port, 16)}")
                else:
                    found.add(f"[{addr}]:{int(port, 16)}")
    return found


def processes_whose_command_line_contains(secret: str) -> list[str]:
    """What `ps` would show with `secret` in it: the command lines of every process on the machine."""
    import os

    hits = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if secret.encode() in cmdline:
            hits.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return hits
