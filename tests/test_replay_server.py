"""The embedded redis-server: lifecycle, configuration, clear errors, schema checks, memory, crashes."""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import torch
from process_tools import aof_written
from replay_fixtures import (
    ACTION_DIM,
    BASE_CFG,
    TASK,
    action_for,
    check_windows,
    frame,
    reward_for,
    uid_of,
    write_episode,
)

from common.config import ReplayConfig
from deploy.run.supervisor import RedisWatchdog
from replay_service import (
    SCHEMA_VERSION,
    RedisNotInstalledError,
    RedisServer,
    ReplayConnectionError,
    ReplayFullError,
    ReplaySchemaError,
    ReplayWriter,
    SequenceReplay,
    connect,
    ensure_schema,
    maxmemory_bytes,
)
from replay_service.schema import HEADER, STATE
from replay_service.server import STABLE_PORTS_BELOW, STABLE_PORTS_FROM, stable_port

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_server_config_restart_reload_and_clean_stop(tmp_path: Path) -> None:
    cfg = replace(BASE_CFG, capacity=500, appendfsync="always")
    server = RedisServer(tmp_path, cfg).start()
    assert server.url.startswith("redis://127.0.0.1:") and server.url.endswith("/0")
    client = connect(server.url, 2.0)
    conf = {k: v for key in ("appendonly", "appendfsync", "maxmemory", "maxmemory-policy", "dir")
            for k, v in client.config_get(key).items()}
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "always"
    assert conf["maxmemory-policy"] == "noeviction" and int(conf["maxmemory"]) == maxmemory_bytes(cfg)
    assert Path(conf["dir"]) == tmp_path.resolve()
    client.set("probe", "kept")
    pid = server.process.pid
    server.stop()
    assert server.process is None and not _pid_alive(pid), "stop() must reap the child (no zombie)"
    with server:  # restart on the same data dir and port: the AOF is reloaded
        assert connect(server.url, 2.0).get("probe") == b"kept"
    assert not server.running


def test_watchdog_counts_a_failed_restart_apart_from_the_restart(tmp_path: Path) -> None:
    """A killed server whose first restart fails (here its port is taken meanwhile, as when the new server is
    itself killed while loading) is one restart and one failed start, and comes back with its data."""
    server = RedisServer(tmp_path, replace(BASE_CFG, capacity=500, appendfsync="always")).start()
    connect(server.url, 2.0).set("probe", "kept")
    with RedisWatchdog(server, poll_s=0.5, give_up_s=30) as watchdog:
        squatter = socket.socket()
        try:
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait()
            squatter.bind(("127.0.0.1", server.port))  # before the watchdog's next look
            squatter.listen()
            deadline = time.monotonic() + 20
            while watchdog.failed_starts == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert watchdog.failed_starts >= 1 and watchdog.restarts == 0 and watchdog.down
        finally:
            squatter.close()
        deadline = time.monotonic() + 20
        while watchdog.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watchdog.restarts == 1 and not watchdog.down and watchdog.failure is None
        assert connect(server.url, 2.0).get("probe") == b"kept"
    # Not a killed start: the new servers exited by themselves, and the record says why, in redis-server's words.
    (outage,) = watchdog.outages
    assert watchdog.killed_starts == outage["killed_starts"] == 0, outage
    assert len(outage["causes"]) == outage["failed_starts"] >= 1, outage
    assert all("Address already in use" in cause for cause in outage["causes"]), outage
    server.stop()


def test_the_servers_own_port_lies_below_the_ephemeral_range(tmp_path: Path) -> None:
    """A port the kernel never hands to an outgoing connection or a bind to port 0, which could otherwise take it
    while the server is down (a restart would fail for as long as they hold it)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    high = min(low, STABLE_PORTS_BELOW)
    assert high > STABLE_PORTS_FROM + 1000, f"this machine's ephemeral range starts at {low}: no room below it"
    ports = {stable_port() for _ in range(20)}
    assert all(STABLE_PORTS_FROM <= port < high for port in ports) and len(ports) > 1, (ports, low)
    with socket.socket() as taken:  # one that is taken is not handed out
        taken.bind(("127.0.0.1", min(ports)))
        taken.listen()
        assert min(ports) not in {stable_port() for _ in range(50)}
    assert stable_port("::1") >= low  # not IPv4: the kernel's pick, at once
    with RedisServer(tmp_path, BASE_CFG) as server:
        assert STABLE_PORTS_FROM <= server.port < high


def test_missing_redis_server_names_the_apt_package(tmp_path: Path) -> None:
    with pytest.raises(RedisNotInstalledError, match="apt-get install redis-server"):
        RedisServer(tmp_path, BASE_CFG, executable="redis-server-that-does-not-exist")


def test_unreachable_server_fails_clearly_within_the_timeout() -> None:
    bad = f"redis://127.0.0.1:{_closed_port()}/0"
    t0 = time.monotonic()
    with pytest.raises(ReplayConnectionError, match=r"127\.0\.0\.1.*within 0\.5 s"):
        connect(bad, 0.5)
    assert time.monotonic() - t0 < 1.5
    with pytest.raises(ReplayConnectionError, match=bad.replace(".", r"\.")):
        ReplayWriter(bad, replace(BASE_CFG, connect_timeout_s=0.3), TASK, ACTION_DIM, "w")


def _dump_all(client: redis.Redis) -> dict[bytes, bytes]:
    return {k: client.dump(k) for k in client.keys("*")}


def test_schema_mismatch_raises_and_leaves_data_untouched(url: str) -> None:
    with ReplayWriter(url, BASE_CFG, TASK, ACTION_DIM, "w0") as writer:
        write_episode(writer, 0, 0, 5)
    client = connect(url, 2.0)
    before = _dump_all(client)
    with pytest.raises(ReplaySchemaError, match="action_dim: stored '6', this run '3'"):
        ReplayWriter(url, BASE_CFG, TASK, 3, "w1")
    with pytest.raises(ReplaySchemaError, match="task: stored 'cheetah_run', this run 'hopper'"):
        SequenceReplay(url, BASE_CFG, "hopper", ACTION_DIM, sequence_length=2)
    with pytest.raises(ReplaySchemaError, match="capacity"):
        ensure_schema(client, replace(BASE_CFG, capacity=77), TASK, ACTION_DIM)
    assert _dump_all(client) == before
    client.hset("replay:meta", "schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(ReplaySchemaError, match="schema_version"):
        ensure_schema(client, BASE_CFG, TASK, ACTION_DIM)
    client.delete("replay:meta")  # counters without a schema record: foreign data, refuse too
    with pytest.raises(ReplaySchemaError, match="no schema record"):
        ensure_schema(client, BASE_CFG, TASK, ACTION_DIM)
    assert client.exists("replay:row:0") and not client.exists("replay:meta")


def test_memory_stays_within_bound_under_fifo_eviction(url: str) -> None:
    """used_memory growth <= 1.25 x capacity x bytes/step while 3x capacity raw steps are written.

    The AOF buffer is left out: under everysec it briefly holds up to 2 s of writes while an fsync
    runs (Redis leaves it out of maxmemory too). A raw 12 KiB row costs ~14.4 KB (jemalloc's 14 KiB
    class plus key and object headers), i.e. 1.17x; first frames and fixed overhead add the rest.
    """
    cfg = replace(BASE_CFG, capacity=800, compress=False, flush_every=20)
    client = connect(url, 2.0)
    ensure_schema(client, cfg, TASK, ACTION_DIM)
    before = client.info("memory")
    with ReplayWriter(url, cfg, TASK, ACTION_DIM, "w") as writer:
        for episode in range(24):
            write_episode(writer, 0, episode, 100)
    stored, head, tail = (int(x) for x in client.hmget(STATE, "stored", "head", "tail"))
    assert stored <= cfg.capacity and head - tail <= cfg.capacity * (1 + cfg.frame_reserve)
    assert client.dbsize() == head - tail + 4  # rows + meta, state, acks, next_episode
    after = client.info("memory")
    grown = (after["used_memory"] - after["mem_aof_buffer"]) - (before["used_memory"] - before["mem_aof_buffer"])
    bytes_per_step = HEADER.size + 4 * ACTION_DIM + 3 * 64 * 64
    ratio = grown / (cfg.capacity * bytes_per_step)
    assert ratio <= 1.25, f"Redis holds {ratio:.2f} x capacity x bytes/step"


def test_noeviction_refuses_writes_and_keeps_them_buffered(url: str) -> None:
    client = connect(url, 2.0)
    maxmemory = client.config_get("maxmemory")["maxmemory"]
    writer = ReplayWriter(url, replace(BASE_CFG, flush_every=100), TASK, ACTION_DIM, "w")
    write_episode(writer, 0, 0, 3, terminated=False)  # ends by truncation: flushed
    try:
        client.config_set("maxmemory", 1)
        writer.begin_episode(frame(uid_of(0, 1, 0)))
        writer.add(action_for(uid_of(0, 1, 1)), 1.0, frame(uid_of(0, 1, 1)), False, False, 0)
        with pytest.raises(ReplayFullError, match="maxmemory"):
            writer.flush()
        assert writer.pending == 1 and int(client.hget(STATE, "inserted")) == 3
    finally:
        client.config_set("maxmemory", maxmemory)
    assert writer.flush() == 1 and int(client.hget(STATE, "inserted")) == 4
    writer.close()


@pytest.mark.parametrize("appendfsync", ["everysec", "always"])
def test_kill_9_keeps_every_acknowledged_step(tmp_path: Path, appendfsync: str) -> None:
    cfg: ReplayConfig = replace(BASE_CFG, appendfsync=appendfsync, flush_every=3)
    server = RedisServer(tmp_path, cfg).start()
    reader = SequenceReplay(server.url, cfg, TASK, ACTION_DIM, sequence_length=3)
    writer = ReplayWriter(server.url, cfg, TASK, ACTION_DIM, "w")
    acked: list[int] = []
    for episode in range(4):
        acked += write_episode(writer, 0, episode, 7 + episode)  # returns after its final flush
    terminal = {uid_of(0, e, 7 + e) for e in range(4)}
    reader.sync()
    writer.begin_episode(frame(uid_of(0, 9, 0)))
    for step in (1, 2):  # buffered, not flushed: the crash must not see them half-written
        uid = uid_of(0, 9, step)
        writer.add(action_for(uid), reward_for(uid), frame(uid), False, False, 0)
    if appendfsync == "everysec":  # its documented hole waited out (process_tools.aof_written); "always" has none
        admin = connect(server.admin_url, 2.0)
        assert aof_written(admin, 10.0), "Redis kept acknowledged flushes out of its AOF for 10 s (it forces them at 2 s)"
        admin.close()
    server.kill()
    server.start()  # same data dir, same port: the reader's and writer's clients reconnect
    fresh = SequenceReplay(server.url, cfg, TASK, ACTION_DIM, sequence_length=3)
    for replay in (reader, fresh):
        replay.sync()
        assert replay.size == len(acked) and replay.num_inserted == len(acked)
        last = check_windows(replay.sample(512, torch.Generator().manual_seed(0)), 3, terminal)
        assert set(last.tolist()) == set(acked)  # 512 draws over 34 steps cover all; no strangers
    assert reader.stats()["resyncs"] == 0  # nothing lost, nothing to roll back
    writer.flush()
    write_episode(writer, 0, 10, 5)
    reader.sync()
    assert reader.size == len(acked) + 2 + 5 and reader.ring.head - reader.ring.tail == reader.size + 6
    server.stop()


def test_snapshot_restore_rollback_and_reset(tmp_path: Path) -> None:
    """A snapshot restores into a fresh data dir; a reader ahead of the restored data rolls back."""
    cfg = replace(BASE_CFG, flush_every=4)
    server = RedisServer(tmp_path / "a", cfg).start()
    reader = SequenceReplay(server.url, cfg, TASK, ACTION_DIM, sequence_length=2)
    with ReplayWriter(server.url, cfg, TASK, ACTION_DIM, "w0") as writer:
        kept = write_episode(writer, 0, 0, 10)
        snapshot = reader.snapshot(copy_to=tmp_path / "replay.rdb")
        write_episode(writer, 0, 1, 10)
    assert Path(snapshot).is_file() and reader.sync() == 22
    server.kill()
    restored_cfg = replace(cfg, port=server.port)  # same URL: the reader's client reconnects
    with pytest.raises(ValueError, match="already holds an AOF"):
        RedisServer(tmp_path / "a", restored_cfg, restore_from=snapshot).start()
    server = RedisServer(tmp_path / "b", restored_cfg, restore_from=snapshot).start()
    reader.sync()
    assert reader.size == 10 and reader.stats()["resyncs"] == 1  # rows 11.. are gone from the mirror
    with ReplayWriter(server.url, cfg, TASK, ACTION_DIM, "w1") as writer:  # reuses row indices 11..
        kept += write_episode(writer, 1, 0, 5)
    server.stop()
    server.start()  # the restored server persists through its AOF from now on
    reader.sync()
    last = check_windows(reader.sample(256, torch.Generator().manual_seed(0)), 2, {kept[9], kept[-1]})
    assert reader.size == 15 and set(last.tolist()) == set(kept)
    connect(server.url, 2.0).flushdb()  # the database is replaced: the mirror starts over
    assert reader.sync() == 0 and reader.size == 0 and reader.stats()["resyncs"] == 2
    server.stop()
