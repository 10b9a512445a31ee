"""The embedded replay Redis in secure mode (a cluster's): ACL users, an explicit allowlist, no leaked password."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from replay_fixtures import ACTION_DIM, BASE_CFG, TASK, check_windows, write_episode

from replay_service import (
    RateLimitTimeout,
    RedisServer,
    ReplayConnectionError,
    ReplayWriter,
    SequenceReplay,
    connect,
)
from replay_service.client import PASSWORD_ENV, redact
from replay_service.limiter import poll_until
from replay_service.schema import STATE

pytestmark = pytest.mark.integration

CFG = replace(BASE_CFG, capacity=200, appendfsync="always")


def _password(url: str) -> str:
    from urllib.parse import unquote, urlsplit

    password = urlsplit(url).password
    assert password, f"no password in {redact(url)}"
    return unquote(password)


def _raw(server: RedisServer, **auth: str) -> redis.Redis:
    """A plain redis-py client that does not retry (its default retries refusals for seconds)."""
    return redis.Redis(host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0), **auth)


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("secure"), CFG, secure=True).start()
    yield server
    server.stop()


@pytest.fixture
def server(module_server: RedisServer) -> RedisServer:
    """The module's secure server on 127.0.0.1, emptied for this test (by the admin: the replay user may not)."""
    admin = connect(module_server.admin_url, 5.0)
    admin.flushall()
    admin.close()
    return module_server


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[RedisServer]:
    """A secure server of this test's own, which the test may kill, orphan or stop (stopped again after it)."""
    server = RedisServer(tmp_path / "redis", CFG, secure=True).start()
    yield server
    server.stop()


def test_secure_server_refuses_clients_without_the_right_password(server: RedisServer) -> None:
    assert server.secure and server.url.startswith("redis://replay:") and server.admin_url.startswith("redis://admin:")
    assert not RedisServer(server.data_dir / "unused", CFG).secure, "loopback stays open by default (the tests' servers)"
    anonymous = _raw(server)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        anonymous.get("replay:meta")
    wrong = _raw(server, username="replay", password="not-the-password")
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    # The `default` user is off: not even the replay password opens it.
    with pytest.raises(redis.AuthenticationError):
        _raw(server, password=_password(server.url)).ping()
    # connect() gives up at once with the fix, not after its timeout with "cannot reach".
    for url in (f"redis://127.0.0.1:{server.port}/0", f"redis://replay:not-the-password@127.0.0.1:{server.port}/0",
                server.url.replace("redis://replay:", "redis://admin:")):
        with pytest.raises(ReplayConnectionError, match="refused") as info:
            connect(url, 20.0)
        assert PASSWORD_ENV in str(info.value) and "URL the launcher hands out" in str(info.value)
        assert "not-the-password" not in str(info.value) and _password(server.url) not in str(info.value)


REFUSED = [("CONFIG", "GET", "dir"), ("CONFIG", "SET", "appendonly", "no"), ("FLUSHALL",), ("FLUSHDB",),
           ("DEBUG", "SLEEP", "0"), ("SHUTDOWN", "NOSAVE"), ("MODULE", "LIST"), ("KEYS", "*"), ("SCAN", "0"),
           ("ACL", "LIST"), ("ACL", "SETUSER", "replay", "+@all"), ("SELECT", "1"), ("CLIENT", "KILL", "TYPE", "normal"),
           ("SCRIPT", "FLUSH"), ("GET", "other"), ("SET", "other", "x"), ("GET", "replayx"), ("DEL", "other"),
           ("MGET", "replay:probe", "other")]


def test_replay_user_is_refused_admin_commands_and_keys_outside_replay(server: RedisServer) -> None:
    admin = connect(server.admin_url, 5.0)
    admin.set("other", "kept")
    client = connect(server.url, 5.0, name="acl-test")
    client.set("replay:probe", "kept")
    for command in REFUSED:
        # DRYRUN answers for every command, DEBUG and MODULE included (which Redis also refuses to anyone
        # by enable-*-command, before it checks the ACL).
        verdict = admin.execute_command("ACL", "DRYRUN", "replay", *command)
        assert verdict != b"OK" and b"no permissions" in verdict, (command, verdict)
        with pytest.raises(redis.ResponseError) as info:
            client.execute_command(*command)
        if command[0] != "DEBUG":
            assert isinstance(info.value, redis.exceptions.NoPermissionError), (command, info.value)
    # A script's redis.call is checked too (EVAL itself is allowed), keys it builds itself included.
    with pytest.raises(redis.ResponseError, match="can't access"):
        client.eval("return redis.call('SET', 'rep' .. 'lay', 'x')", 0)
    with pytest.raises(redis.ResponseError, match="can't run this command"):
        client.eval("return redis.call('FLUSHALL')", 0)
    assert client.eval("return redis.call('SET', 'replay:row:' .. 7, 'x')", 0) == b"OK"
    # Nothing above changed anything: FLUSHALL, FLUSHDB, SHUTDOWN did nothing.
    assert client.ping() and client.get("replay:probe") == b"kept"
    assert admin.get("other") == b"kept" and admin.dbsize() == 3
    assert admin.config_get("appendonly") == {"appendonly": "yes"}


def test_the_whole_replay_path_works_with_only_the_replay_url(server: RedisServer) -> None:
    # Limiter: inserts stop 8 transitions ahead of min_size * spi; the 4th 4-step episode must wait.
    cfg = replace(CFG, min_size=4, samples_per_insert=1.0, spi_tolerance=4.0, writer_timeout_s=0.3)
    replay = SequenceReplay(server.url, cfg, TASK, ACTION_DIM, sequence_length=2)
    writer = ReplayWriter(server.url, cfg, TASK, ACTION_DIM, writer_id="acl")
    terminal = set()
    for episode in range(3):
        terminal.add(write_episode(writer, 0, episode, 4)[-1])
    with pytest.raises(RateLimitTimeout):  # the refusal and the writer's polling ran as the replay user
        terminal.add(write_episode(writer, 0, 3, 4)[-1])
    assert writer.pending == 4
    assert replay.wait_for_sample(timeout_s=10.0)
    check_windows(replay.sample(16), 2, terminal)
    replay.record_samples(8)
    assert replay.stats()["sampled"] == 8
    assert writer.flush() == 4 and writer.inserted == 16
    replay.sync()
    assert replay.size == 16 and replay.can_sample()
    client = connect(server.url, 5.0)
    assert int(client.hget(STATE, "inserted")) == 16  # deploy.run.ray_runtime.replay_inserts
    # SequenceReplay.snapshot's BGSAVE and INFO (its CONFIG GET is the admin's).
    saves = client.info("persistence")["rdb_saves"]
    client.bgsave()
    assert poll_until(lambda: client.info("persistence")["rdb_saves"] > saves, 30.0)
    writer.close()
    replay.close()
    client.close()


def test_admin_configures_stops_and_a_restart_keeps_passwords_and_data(fresh: RedisServer) -> None:
    admin = connect(fresh.admin_url, 5.0)
    conf = {k: v for key in ("protected-mode", "bind") for k, v in admin.config_get(key).items()}
    assert conf == {"protected-mode": "yes", "bind": "127.0.0.1"}
    assert len(admin.acl_users()) == 3
    url, admin_url, port = fresh.url, fresh.admin_url, fresh.port
    connect(url, 5.0).set("replay:probe", "kept")
    os.kill(fresh.process.pid, signal.SIGKILL)  # a crash; the watchdog then calls start() on the same object
    assert poll_until(lambda: not fresh.running, 10.0)
    fresh.start()
    assert (fresh.url, fresh.admin_url, fresh.port) == (url, admin_url, port)
    client = connect(url, 5.0)
    assert client.get("replay:probe") == b"kept"
    # A snapshot (the replay user's BGSAVE) restored into a new secure server: its admin turns the AOF on.
    saves = client.info("persistence")["rdb_saves"]
    client.bgsave()

    def saved() -> bool:  # the counter alone once raced the file in CI (an AOF rewrite's save counted too, seemingly)
        info = client.info("persistence")
        return info["rdb_saves"] > saves and not info["rdb_bgsave_in_progress"] and fresh.rdb_path.exists()

    assert poll_until(saved, 30.0)
    restored = RedisServer(fresh.data_dir.parent / "restored", CFG, secure=True, restore_from=fresh.rdb_path).start()
    try:
        assert connect(restored.url, 5.0).get("replay:probe") == b"kept"
        assert connect(restored.admin_url, 5.0).config_get("appendonly") == {"appendonly": "yes"}
    finally:
        restored.stop()
    pid = fresh.process.pid
    fresh.stop()  # SHUTDOWN as the admin
    assert fresh.process is None and not Path(f"/proc/{pid}").exists()
    assert "User requested shutdown" in fresh.log_path.read_text()
    with pytest.raises(ReplayConnectionError, match="cannot reach"):
        connect(url, 0.3)


def test_a_new_server_stops_the_secure_orphan_on_its_data_dir(fresh: RedisServer) -> None:
    orphan = fresh.process
    connect(fresh.url, 5.0).set("replay:probe", "kept")
    fresh._finalizer.detach()  # the driver that owned it died with -9
    fresh.process = None
    successor = RedisServer(fresh.data_dir, CFG, secure=True).start()
    try:
        assert orphan.wait(10) == 0, "SIGTERM: the orphan fsyncs its AOF and exits cleanly"
        assert successor.url != fresh.url, "a new server object has its own passwords"
        assert connect(successor.url, 5.0).get("replay:probe") == b"kept"
    finally:
        successor.stop()


def test_slac_replay_password_is_used_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = "p@ss/w:rd%-from-env"  # URL-special characters reach redis-py intact
    monkeypatch.setenv(PASSWORD_ENV, password)
    # The server's environment (readable in /proc until Redis overwrites it with its title) goes without it.
    environments, popen = [], subprocess.Popen

    def spy(args: list[str], **kwargs: object) -> subprocess.Popen:
        if "--port" in args:
            environments.append(kwargs.get("env"))
        return popen(args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    server = RedisServer(tmp_path / "a", CFG, secure=True).start()
    try:
        assert _password(server.url) == password and _password(server.admin_url) != password
        assert _raw(server, username="replay", password=password).ping()
        assert connect(server.url, 5.0).ping()
        assert len(environments) == 1 and environments[0] is not None and PASSWORD_ENV not in environments[0]
    finally:
        server.stop()
    for bad, why in (("", "empty"), ("two words", "contains whitespace"), ("tab\there", "contains whitespace")):
        monkeypatch.setenv(PASSWORD_ENV, bad)
        with pytest.raises(ValueError, match=f"{PASSWORD_ENV} is set but {why}") as info:
            RedisServer(tmp_path / "b", CFG, secure=True)
        assert not bad or bad not in str(info.value)
    assert not RedisServer(tmp_path / "c", CFG).secure, "a loopback server has no users: the variable is unused"


def test_no_password_in_the_command_line_the_log_the_files_or_redacted_urls(fresh: RedisServer) -> None:
    secrets = [_password(fresh.url), _password(fresh.admin_url)]
    with pytest.raises(ReplayConnectionError):
        connect(fresh.url.replace("redis://replay:", "redis://admin:"), 5.0)  # a refusal Redis may log
    client = connect(fresh.url, 5.0)
    client.set("replay:probe", "kept")
    cmdline = Path(f"/proc/{fresh.process.pid}/cmdline").read_bytes()
    started_with = " ".join(fresh.process.args)  # what ps showed before Redis rewrote its title
    for secret in secrets:
        assert secret not in started_with and secret.encode() not in cmdline
        assert secret not in redact(fresh.url) and secret not in redact(fresh.admin_url)
    fresh.stop()
    files = [p for p in fresh.data_dir.rglob("*") if p.is_file()]
    assert fresh.log_path in files and any(p.suffix == ".aof" for p in files)
    for path in files:
        data = path.read_bytes()
        assert not any(secret.encode() in data for secret in secrets), path
    assert redact(fresh.url) == f"redis://replay:***@127.0.0.1:{fresh.port}/0"


def test_redact_hides_every_form_of_password() -> None:
    assert redact("redis://replay:s3cret@10.0.0.5:6379/0") == "redis://replay:***@10.0.0.5:6379/0"
    assert redact("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("redis://u:p@ss@host:6379/0") == "redis://u:***@host:6379/0"
    assert redact("redis://host:6379/0?password=s3cret&x=1") == "redis://host:6379/0?password=***&x=1"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_garbage_a_replay_client_writes_into_rows_is_refused_by_the_sampler(server: RedisServer) -> None:
    """A client holding the `replay` password (anyone on a cluster's nodes) overwrites rows with garbage: wrong
    lengths, a frame of the wrong size, a NaN reward, an lz4 block that does not decompress, a prev pointing
    ahead. The learner's mirror refuses each of them, and no window it samples touches them; the other rows
    are learned from as before."""
    import struct

    import numpy as np

    from replay_service.schema import FLAG_COMPRESSED, HEADER, encode_row, row_key

    replay = SequenceReplay(server.url, CFG, TASK, ACTION_DIM, sequence_length=2)
    writer = ReplayWriter(server.url, CFG, TASK, ACTION_DIM, writer_id="honest")
    terminal = set()
    for episode in range(6):
        terminal.add(write_episode(writer, 0, episode, 8)[-1])
    writer.close()
    hostile = connect(server.url, 5.0)
    frame = bytes(3 * 64 * 64)
    action = np.zeros(ACTION_DIM, np.float32)
    garbage = {
        3: b"short",
        12: encode_row(1, 0, 3, 1, -1, 0, 0.0, action, frame[:100]),  # a 100-byte frame
        21: encode_row(1, 0, 3, 2, -1, 0, float("nan"), action, frame),  # a NaN reward
        30: encode_row(1, FLAG_COMPRESSED, 3, 3, -1, 0, 0.0, action, b"\xff" * 40),  # not an lz4 block
        39: encode_row(1, 0, 3, 4, 10_000, 0, 0.0, action, frame),  # prev ahead of the row itself
        48: struct.pack("<B", 9) + bytes(HEADER.size + 4 * ACTION_DIM + len(frame) - 1),  # kind 9
    }
    for row, blob in garbage.items():
        hostile.set(row_key(row), blob)
    intact = {i: hostile.get(row_key(i)) for i in range(54) if i not in garbage}
    assert replay.wait_for_sample(timeout_s=10.0)
    stats = replay.stats()
    assert stats["corrupt_rows"] == len(garbage)
    for _ in range(20):
        last = check_windows(replay.sample(64), 2, terminal)  # frames, actions and rewards of honest rows only
        assert not {int(u) % 1_000 for u in last} & {3}  # episode 0's step 3 was overwritten: never the last
    assert replay.sampleable == 6 * 5  # steps 1, 2, 6, 7, 8 of each episode: windows through step 3 are gone too
    assert {i: hostile.get(row_key(i)) for i in intact} == intact  # nothing else was touched
    replay.close()
    hostile.close()
