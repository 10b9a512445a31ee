"""ReplayWriter: input checks, flush policy, exactly-once retries, rate limiting, concurrent and dying writers."""

from __future__ import annotations

import multiprocessing as mp
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from replay_fixtures import (
    ACTION_DIM,
    BASE_CFG,
    TASK,
    action_for,
    check_windows,
    frame,
    frame_uids,
    reward_for,
    uid_of,
    write_episode,
    writer_process,
)

from replay_service import RateLimit, RateLimitTimeout, ReplayWriter, SequenceReplay, connect
from replay_service.limiter import poll_until
from replay_service.schema import ROW, STATE, decode_rows, row_key

pytestmark = pytest.mark.integration


GOOD_ACTION = np.zeros(ACTION_DIM, np.float32)
GOOD_FRAME = frame(uid_of(0, 0, 1))
BAD_ADDS = {
    "action of the wrong size": ((np.zeros(ACTION_DIM + 1, np.float32), 0.0, GOOD_FRAME), r"shape \(6,\)"),
    "integer action": ((np.zeros(ACTION_DIM, np.int64), 0.0, GOOD_FRAME), "float array"),
    "NaN action": ((np.full(ACTION_DIM, np.nan, np.float32), 0.0, GOOD_FRAME), "NaN/inf"),
    "NaN reward": ((GOOD_ACTION, float("nan"), GOOD_FRAME), "finite number"),
    "inf reward": ((GOOD_ACTION, float("inf"), GOOD_FRAME), "finite number"),
    "frame of the wrong shape": ((GOOD_ACTION, 0.0, np.zeros((64, 64, 3), np.uint8)), r"\(3, 64, 64\)"),
    "float frame": ((GOOD_ACTION, 0.0, GOOD_FRAME.astype(np.float32)), "uint8"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADDS))
def test_bad_input_raises_clearly_and_writes_nothing(url: str, case: str) -> None:
    args, message = BAD_ADDS[case]
    writer = ReplayWriter(url, replace(BASE_CFG, flush_every=1), TASK, ACTION_DIM, "w")
    with pytest.raises(ValueError, match="begin_episode"):
        writer.add(GOOD_ACTION, 0.0, GOOD_FRAME, False, False, 0)
    with pytest.raises(ValueError, match="uint8"):
        writer.begin_episode(np.zeros((3, 64, 64), np.float64))
    writer.begin_episode(frame(uid_of(0, 0, 0)))
    with pytest.raises(ValueError, match=message):
        writer.add(*args, False, False, 0)
    with pytest.raises(ValueError, match="policy_version"):
        writer.add(GOOD_ACTION, 0.0, GOOD_FRAME, False, False, -1)
    client = connect(url, 2.0)
    assert writer.pending == 0 and writer.flush() == 0
    assert client.keys(ROW + "*") == [] and client.hget(STATE, "inserted") is None
    writer.add(GOOD_ACTION, 0.0, GOOD_FRAME, False, False, 0)  # the writer still works afterwards
    assert int(client.hget(STATE, "inserted")) == 1 and len(client.keys(ROW + "*")) == 2
    writer.close()


def test_flush_policy_batches_and_episode_ends(url: str) -> None:
    client = connect(url, 2.0)
    writer = ReplayWriter(url, replace(BASE_CFG, flush_every=3), TASK, ACTION_DIM, "w")
    writer.begin_episode(frame(uid_of(0, 0, 0)))
    inserted = []
    for step in range(1, 8):
        uid = uid_of(0, 0, step)
        writer.add(action_for(uid), reward_for(uid), frame(uid), step == 7, False, step)
        inserted.append(int(client.hget(STATE, "inserted") or 0))
    assert inserted == [0, 0, 3, 3, 3, 6, 7]  # every 3 steps, then at the episode's end
    writer.begin_episode(frame(uid_of(0, 1, 0)))
    writer.add(action_for(1), 0.0, frame(uid_of(0, 1, 1)), False, False, 8)
    writer.begin_episode(frame(uid_of(0, 2, 0)))  # abandons episode 1: its step stays queued
    assert writer.pending == 1 and writer.flush() == 1
    writer.begin_episode(frame(uid_of(0, 3, 0)))
    writer.close()  # a first frame without a transition is never written
    rows = decode_rows(0, client.mget([row_key(i) for i in range(10)]), ACTION_DIM)
    assert rows.present.sum() == 10 and not client.exists(row_key(10))
    assert rows.version[1:8].tolist() == list(range(1, 8)) and rows.kind.tolist() == [0] + [1] * 7 + [0, 1]
    assert rows.prev.tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 8, 8]  # first frames point at themselves
    assert len(set(rows.episode.tolist())) == 2


def test_replayed_flush_is_applied_once(url: str) -> None:
    """A flush whose reply was lost is re-sent with the same sequence number and dropped by Redis."""
    writer = ReplayWriter(url, BASE_CFG, TASK, ACTION_DIM, "w")
    writer.begin_episode(frame(uid_of(0, 0, 0)))
    writer.add(action_for(1), 0.0, frame(uid_of(0, 0, 1)), False, False, 0)
    writer._freeze()
    batch = writer._queue[0]
    writer._send(batch, time.monotonic() + 1)
    writer._send(batch, time.monotonic() + 1)  # as a retry after a dropped connection would
    client = connect(url, 2.0)
    assert int(client.hget(STATE, "inserted")) == 1 and int(client.hget(STATE, "head")) == 2
    assert writer.stats()["duplicate_flushes"] == 1


def test_rate_limit_rules() -> None:
    limit = RateLimit(min_size=10, samples_per_insert=2.0, tolerance=5.0)
    assert limit.can_insert(15, 0) and not limit.can_insert(16, 0)  # 15*2 - 0 <= 10*2 + 2*5
    assert limit.can_insert(20, 10) and not limit.can_sample(9, 0)
    assert limit.can_sample(10, 10) and not limit.can_sample(10, 11)  # 10*2 - 10 >= 20 - 10


def test_writer_blocks_when_ahead_then_resumes_when_the_learner_samples(url: str) -> None:
    cfg = replace(BASE_CFG, min_size=10, samples_per_insert=1.0, spi_tolerance=20.0, flush_every=5,
                  writer_timeout_s=0.3)
    replay = SequenceReplay(url, cfg, TASK, ACTION_DIM, sequence_length=2)
    assert not replay.wait_for_sample(0.2)  # the learner waits for min_size
    writer = ReplayWriter(url, cfg, TASK, ACTION_DIM, "w")
    writer.begin_episode(frame(uid_of(0, 0, 0)))
    t0 = time.monotonic()
    with pytest.raises(RateLimitTimeout, match="call flush"):
        for step in range(1, 100):
            uid = uid_of(0, 0, step)
            writer.add(action_for(uid), reward_for(uid), frame(uid), False, False, 0)
    assert time.monotonic() - t0 >= 0.3
    assert 30 <= replay.num_inserted <= 35  # min_size + tolerance, overshooting by at most one flush
    assert writer.pending == 5 and writer.stats()["timeouts"] == 1 and writer.stats()["blocked_events"] == 1
    assert replay.wait_for_sample(5.0) and replay.size == replay.num_inserted

    writer.cfg = replace(cfg, writer_timeout_s=30.0)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (writer.flush(), done.set()), daemon=True)
    thread.start()
    assert poll_until(lambda: writer.stats()["blocked_events"] == 2, 5.0), "the retried flush must block"
    assert not done.is_set()
    replay.record_samples(10)  # the learner catches up: inserts may go on
    assert done.wait(10.0) and writer.pending == 0 and replay.num_inserted == 40

    replay.record_samples(45)  # now the learner is ahead: 40 - 55 < 10 - 20
    assert not replay.can_sample() and not replay.wait_for_sample(0.2)
    for step in range(100, 106):
        writer.add(action_for(step), 0.0, frame(uid_of(0, 0, step)), False, False, 0)
    assert replay.wait_for_sample(5.0)
    # A block of k samples is admitted only if its last sample is: I - (S + k - 1) >= 10 - 20.
    k = replay.num_inserted - 55 + 11
    assert k >= 1 and replay.can_sample(samples=k) and not replay.can_sample(samples=k + 1)
    assert not replay.wait_for_sample(0.2, samples=k + 1)
    writer.close()


def _spawn(target, *args) -> mp.Process:  # noqa: ANN001 - multiprocessing's own signature
    process = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    return process


def test_four_writer_processes_exact_counts_and_contents(url: str) -> None:
    cfg = replace(BASE_CFG, flush_every=7)
    rng = np.random.default_rng(0)
    lengths = {w: [int(x) for x in rng.integers(1, 40, size=4)] for w in range(4)}
    processes = [_spawn(writer_process, url, cfg, w, lengths[w]) for w in range(4)]
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    total = sum(map(sum, lengths.values()))
    client = connect(url, 2.0)
    head = int(client.hget(STATE, "head"))
    rows = decode_rows(0, client.mget([row_key(i) for i in range(head)]), ACTION_DIM)
    assert head == total + 16 and rows.present.all()
    uids = frame_uids(torch.from_numpy(rows.frames))
    by_episode: dict[int, list[int]] = {}
    for g in range(head):  # each episode's rows: steps 0..L in order, chained by prev
        by_episode.setdefault(int(rows.episode[g]), []).append(g)
    assert len(by_episode) == 16
    for gs in by_episode.values():
        w, e = divmod(int(uids[gs[0]]) // 1_000, 1_000)
        assert [int(uids[g]) for g in gs] == [uid_of(w, e, s) for s in range(lengths[w][e] + 1)]
        assert rows.prev[gs].tolist() == [gs[0]] + gs[:-1] and rows.step[gs].tolist() == list(range(len(gs)))
        for g in gs[1:]:
            np.testing.assert_array_equal(rows.action[g], action_for(int(uids[g])))
    replay = SequenceReplay(url, cfg, TASK, ACTION_DIM, sequence_length=4)
    replay.sync()
    assert replay.size == total == replay.num_inserted
    terminal = {uid_of(w, e, n) for w in lengths for e, n in enumerate(lengths[w]) if e % 2 == 0}
    last = check_windows(replay.sample(1024, torch.Generator().manual_seed(1)), 4, terminal)
    assert len(set(last.tolist())) > 0.9 * total


def test_killed_writer_leaves_whole_flushes(url: str) -> None:
    cfg = replace(BASE_CFG, capacity=100_000, flush_every=5)  # no eviction: every flush stays countable
    process = _spawn(writer_process, url, cfg, 3, [995] * 100)  # far more than it gets to write
    client = connect(url, 2.0)
    assert poll_until(lambda: int(client.hget(STATE, "inserted") or 0) >= 60, 60.0)
    process.kill()  # SIGKILL mid-episode, possibly mid-flush
    process.join(10)
    # Redis runs whatever complete command the dead writer sent before it drops the connection.
    assert poll_until(lambda: all(c["name"] != "writer:proc3" for c in client.client_list()), 10.0)
    replay = SequenceReplay(url, cfg, TASK, ACTION_DIM, sequence_length=3)
    replay.sync()
    assert replay.size % 5 == 0 and replay.size >= 60  # only whole flushes of 5 steps
    assert replay.sampleable == replay.size == replay.num_inserted
    written = {uid_of(3, i // 995, i % 995 + 1) for i in range(replay.size)}
    last = check_windows(replay.sample(512, torch.Generator().manual_seed(2)), 3,
                         {uid_of(3, e, 995) for e in range(0, 100, 2)})
    assert set(last.tolist()) <= written


def test_stats_count_once_and_report_staleness(url: str) -> None:
    cfg = replace(BASE_CFG, min_size=4, spi_tolerance=100.0)
    with ReplayWriter(url, cfg, TASK, ACTION_DIM, "w") as writer:
        write_episode(writer, 0, 0, 6, version=3)
        write_episode(writer, 0, 1, 2, version=7)
    replay = SequenceReplay(url, cfg, TASK, ACTION_DIM, sequence_length=2)
    assert replay.sync() == 10 and replay.sync() == 0  # each row is pulled once
    before = replay.stats(current_version=10)
    assert np.isnan(before["sampled_version_mean"])
    batch = replay.sample(4000, torch.Generator().manual_seed(0))
    replay.record_samples(2)
    stats = replay.stats(current_version=10)
    assert set(stats) == set(before)
    assert stats["size"] == 8 and stats["frames"] == 10 and stats["inserted"] == 8 and stats["sampled"] == 2
    assert stats["samples_per_insert"] == 0.25 and stats["synced_rows"] == 10
    assert stats["stored_version_mean"] == (6 * 3 + 2 * 7) / 8 and stats["staleness_stored"] == 10 - 4
    assert abs(stats["staleness_sampled"] - 6) < 0.2  # uniform draws: version mean 4 +- noise
    assert int(frame_uids(batch.obs[:, -1]).min()) >= uid_of(0, 0, 1)


class _ReplyDropper:
    """A TCP proxy in front of the real Redis that, once armed, forwards the next request containing
    `marker` and closes both connections instead of relaying Redis's reply: a reply lost on the wire."""

    def __init__(self, upstream_port: int, marker: bytes) -> None:
        import socket

        self.marker, self.upstream_port, self.armed, self.dropped = marker, upstream_port, False, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _pipe(self, client, server) -> None:  # noqa: ANN001 - sockets
        import select

        drop_next_reply = False
        try:
            while True:
                readable, _, _ = select.select([client, server], [], [])
                for sock in readable:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    if sock is client:
                        if self.armed and self.marker in data:
                            self.armed, drop_next_reply = False, True
                        server.sendall(data)
                    elif drop_next_reply:  # Redis executed the call; its reply never arrives
                        self.dropped += 1
                        return
                    else:
                        client.sendall(data)
        finally:
            client.close()
            server.close()


def test_record_samples_retried_after_a_lost_reply_counts_once(url: str) -> None:
    """The learner's sample count is exactly-once too: redis-py re-sends a call whose connection died after
    Redis ran it, and the per-learner sequence number makes the second run a no-op."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    proxy = _ReplyDropper(port, marker=STATE.encode())
    replay = SequenceReplay(url.replace(f":{port}", f":{proxy.port}"), BASE_CFG, TASK, ACTION_DIM, sequence_length=2)
    client = connect(url, 2.0)
    before = int(client.hget(STATE, "sampled") or 0)
    replay.record_samples(3)  # nothing dropped yet
    proxy.armed = True
    replay.record_samples(5)  # Redis counts it, the reply is lost, redis-py reconnects and re-sends it
    assert proxy.dropped == 1
    assert int(client.hget(STATE, "sampled")) == before + 8
    assert replay.stats()["sampled"] == before + 8
    other = SequenceReplay(url, BASE_CFG, TASK, ACTION_DIM, sequence_length=2)  # another learner life
    other.record_samples(2)
    assert int(client.hget(STATE, "sampled")) == before + 10


def test_audit_records_find_every_lost_or_changed_acknowledged_row(url: str, tmp_path) -> None:
    """replay.audit: each writer's own record of acknowledged flushes, checked against Redis (deploy/tools/audit.py).
    A retried flush is recorded once; a deleted, a rewritten and an evicted row are each told apart."""
    from deploy.tools.audit import audit_replay

    audit_dir = tmp_path / "audit"
    writers = [ReplayWriter(url, replace(BASE_CFG, flush_every=4), TASK, ACTION_DIM, f"w{w}", audit_dir=audit_dir)
               for w in range(2)]
    for episode in range(3):
        for w, writer in enumerate(writers):
            write_episode(writer, w, episode, length=6, terminated=episode != 1)
    writers[0].begin_episode(frame(uid_of(0, 9, 0)))
    writers[0].add(action_for(1), 0.0, frame(uid_of(0, 9, 1)), True, False, 0)  # flushed at the episode's end
    for writer in writers:
        writer.close()
    client = connect(url, 2.0)
    clean = audit_replay(client, audit_dir)
    assert clean.ok and clean.writers == 2 and clean.unacknowledged_stored_rows == 0
    assert clean.acknowledged_rows == clean.stored_rows == clean.checked_rows == int(client.hget(STATE, "head"))
    assert clean.acknowledged_transitions == clean.stored_transitions == clean.inserted == 2 * 3 * 6 + 1
    assert clean.stored_episode_ends == 2 * 3 + 1

    # A flush acknowledged twice (its first reply lost) is one flush in the records.
    line = sorted(audit_dir.glob("*.log"))[0].read_text().splitlines()[0]
    with sorted(audit_dir.glob("*.log"))[0].open("a") as f:
        f.write(line + "\n")
    assert audit_replay(client, audit_dir).acknowledged_flushes == clean.acknowledged_flushes

    client.delete(row_key(3))
    blob = bytearray(client.get(row_key(5)))
    blob[-1] ^= 0xFF
    client.set(row_key(5), bytes(blob))
    client.hset(STATE, "tail", 1)  # row 0 evicted by capacity: counted, not checked
    broken = audit_replay(client, audit_dir)
    assert not broken.ok and broken.missing == [3] and broken.changed == [5] and broken.evicted_rows == 1


def test_stats_may_be_read_from_another_thread_while_the_actor_writes(url: str) -> None:
    """An actor's `poll` (the driver's call, on a second thread of the Ray actor) reads its writers' stats while the
    actor's loop queues and flushes: a `pending` that iterated the queue raised "deque mutated during iteration"
    there and ended a 70-minute run. Episodes of one transition queue a batch each (200 before a flush), and a
    reader thread asks for the stats all along, with the interpreter switching threads as often as it can."""
    writer = ReplayWriter(url, replace(BASE_CFG, flush_every=200), TASK, ACTION_DIM, "w")
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                assert 0 <= writer.stats()["pending"] <= 200
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for episode in range(1_000):
            uid = uid_of(0, episode, 1)
            writer.begin_episode(frame(uid_of(0, episode, 0)))
            writer.add(action_for(uid), reward_for(uid), frame(uid), False, False, 0)
        writer.flush()
    finally:
        stop.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert not errors, repr(errors[0])
    stats = writer.stats()
    assert stats["pending"] == 0 and stats["steps_written"] == 1_000
    writer.close()
