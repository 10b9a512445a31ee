"""The learner loop against a real redis-server: Redis once per block, exact sample counts, NaN stops it.

No Ray: `LearnerProcess` runs in a thread on a replay filled by a real writer, as the driver would run it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import torch
from replay_fixtures import ACTION_DIM, TASK, write_episode

from common.config import Config, debug
from learner.process import LearnerProcess
from replay_service import ReplayWriter

pytestmark = pytest.mark.integration
torch.set_num_threads(1)


class _Publisher:
    def __init__(self) -> None:
        self.versions: list[int] = []

    def publish(self, version: int, blob: dict) -> None:
        self.versions.append(version)

    def version(self) -> int:
        return max(self.versions, default=0)


def _cfg(**learner: object) -> Config:
    cfg = debug()
    cfg = replace(cfg, run=replace(cfg.run, task=TASK),
                  replay=replace(cfg.replay, min_size=100, spi_tolerance=200.0),
                  learner=replace(cfg.learner, model_pretrain_steps=20, publish_every=1_000, figure_every=1_000_000,
                                  **learner))
    return cfg


def _fill(url: str, cfg: Config, transitions: int) -> None:
    with ReplayWriter(url, cfg.replay, TASK, ACTION_DIM, "w") as writer:
        for episode in range(transitions // 50):
            write_episode(writer, 0, episode, length=50, terminated=False)


def _run_until(process: LearnerProcess, done: object, timeout_s: float = 120.0) -> BaseException | None:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            process.run()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            errors.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.stop()
    thread.join(30)
    assert not thread.is_alive()
    return errors[0] if errors else None


def test_redis_is_visited_once_per_block_and_every_sample_is_recorded(url: str, tmp_path: Path) -> None:
    cfg = _cfg(replay_every=10, metrics_every=10)
    _fill(url, cfg, 300)
    process = LearnerProcess(cfg, ACTION_DIM, url, _Publisher(), str(tmp_path))
    assert process.block == 10
    client = redis.Redis.from_url(url)
    client.config_resetstat()
    error = _run_until(process, lambda: process.counters["updates"] >= 100)
    assert error is None
    updates = process.counters["updates"]
    stats = client.info("commandstats")
    # One record_samples script call per block of 10 updates, plus the final one of a block cut by stop(), plus
    # the script's load on first use (EVALSHA answered NOSCRIPT, then EVAL).
    scripts = sum(stats.get(f"cmdstat_{c}", {"calls": 0})["calls"] for c in ("evalsha", "eval"))
    assert 1 <= scripts <= updates // 10 + 2
    # Every update counted against the limiter: the shared counter equals the learner's.
    assert int(client.hget("replay:state", "sampled")) == updates
    # The mirror syncs (one MULTI/EXEC pipeline each) once per block, not once per update: once for the
    # initial collection, once per 10 pre-training updates, once per joint block, once at the end.
    assert stats["cmdstat_exec"]["calls"] <= 1 + 20 // 10 + (updates + 9) // 10 + 1
    metrics = process.poll()["metrics"]
    assert {"model/loss", "critic/loss", "actor/loss"} <= set(metrics)
    assert 0.0 <= metrics["bound/learner_wait_fraction"] <= 1.0


def test_a_non_finite_loss_stops_the_loop_within_metrics_every_and_is_never_checkpointed(url: str,
                                                                                         tmp_path: Path) -> None:
    cfg = _cfg(metrics_every=5)
    _fill(url, cfg, 150)
    process = LearnerProcess(cfg, ACTION_DIM, url, _Publisher(), str(tmp_path))
    with torch.no_grad():
        process.learner.model.decoder.net[0].weight.fill_(float("nan"))
    error = _run_until(process, lambda: False, timeout_s=60)
    assert isinstance(error, FloatingPointError) and "model loss" in str(error)
    assert process.counters["pretrain_updates"] <= 5
    with pytest.raises(FloatingPointError):
        process.checkpoint({})
    assert not list((tmp_path / "checkpoints").glob("*.pt"))


def test_checkpoint_writes_while_the_loop_keeps_updating(url: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the in-memory snapshot holds the update lock: a slow disk (an fsync that takes 2 s) does not stall
    the updates (the lock is held under 0.2 s), and the file holds the state as of the snapshot, not of the write."""
    cfg = _cfg()
    _fill(url, cfg, 300)  # the limiter then admits about 400 updates
    process = LearnerProcess(cfg, ACTION_DIM, url, _Publisher(), str(tmp_path))
    during: list[int] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        during.append(process.counters["updates"])
        time.sleep(2.0)
        during.append(process.counters["updates"])
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    holds: list[float] = []  # how long the checkpoint (this thread) held the update lock, each time
    lock = process._lock

    class TimedLock:
        def __enter__(self) -> None:
            lock.acquire()
            self.since = time.monotonic()

        def __exit__(self, *exc: object) -> None:
            if threading.current_thread() is threading.main_thread():
                holds.append(time.monotonic() - self.since)
            lock.release()

    process._lock = TimedLock()
    written: list[str] = []

    def checkpoint_once_training() -> bool:  # polled by _run_until on this thread, as Ray's second thread would
        if process.counters["updates"] >= 20 and not written:
            written.append(process.checkpoint({"k": 1}))
        return bool(written)

    error = _run_until(process, checkpoint_once_training, timeout_s=60)
    assert error is None and written
    assert during[1] - during[0] >= 5, f"updates during the 2 s write: {during}"  # the old lock allowed none
    # The loop's longest pause due to the checkpoint: the one time it held the lock (snapshot in memory, BGSAVE fork).
    assert len(holds) == 1 and holds[0] < 0.2, f"the checkpoint held the update lock for {holds} s"
    state = torch.load(written[0], map_location="cpu", weights_only=True)
    assert state["counters"]["updates"] <= during[0] and state["extra"] == {"k": 1}
    assert state["replay_snapshot"].endswith(".rdb")


def test_a_learner_restarted_without_a_checkpoint_publishes_above_the_actors_version(url: str, tmp_path: Path) -> None:
    """A learner that died after publishing version 7 and before its first checkpoint starts again from
    scratch: its first publication is 8, not 1 (which the board would ignore while the actors act on 7)."""
    cfg = _cfg()
    _fill(url, cfg, 150)
    board = _Publisher()
    board.versions.append(7)
    process = LearnerProcess(cfg, ACTION_DIM, url, board, str(tmp_path))
    assert _run_until(process, lambda: len(board.versions) >= 2, timeout_s=60) is None
    assert board.versions[:2] == [7, 8] and board.versions == sorted(board.versions)


def test_the_redis_block_is_10_updates_on_a_cpu_and_never_over_a_quarter_of_the_limiters_slack(url: str,
                                                                                            tmp_path: Path) -> None:
    assert LearnerProcess(_cfg(), ACTION_DIM, url, _Publisher(), str(tmp_path)).block == 10  # auto on a CPU
    # spi_tolerance 200 at one sample per insert: at most 50 updates between two looks at the limiter.
    assert LearnerProcess(_cfg(replay_every=1000), ACTION_DIM, url, _Publisher(), str(tmp_path)).block == 50
