"""The one way clients (actors' writers, the learner's mirror, the driver, `python -m deploy.audit`) connect to
a replay Redis server, embedded or external: wait until it answers, then keep retrying a dropped connection
for as long as a restart of the server takes; a refused password fails at once with what to set."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

# redact: re-exported for the replay's clients (writer, driver); it lives beside the config whose records it cleans.
from common.config import redact

RECONNECT_S = 30.0
"""Seconds a client keeps retrying a dropped connection: covers a restart of the embedded server."""
_RECONNECT_TRIES = 6 + int(RECONNECT_S)  # 0.05 s doubling to 1 s in 5 tries, then 1 s each

PASSWORD_ENV = "SLAC_REPLAY_PASSWORD"
"""The `replay` user's password when set (the same value on every node); else a random one per RedisServer."""


class ReplayConnectionError(ConnectionError):
    """A replay Redis server did not answer in time, or refused the client's password."""


def _auth_refused(url: str, exc: Exception) -> ReplayConnectionError:
    parts = urlsplit(url)
    who = f"the password of user '{parts.username}'" if parts.username else (
        "the password" if parts.password else "a client without a password")
    return ReplayConnectionError(
        f"the replay Redis at {redact(url)} refused {who} ({exc}). A secured replay (a cluster run) has ACL "
        f"users: connect with the replay URL the launcher hands out (it carries the `replay` user's password), "
        f"and if the server was started with {PASSWORD_ENV}, set the same {PASSWORD_ENV} on every node.")


def connect(url: str, timeout_s: float, name: str | None = None) -> redis.Redis:
    """A client for `url` once the server answers PING; ReplayConnectionError after `timeout_s`.

    `name` is shown by CLIENT LIST (writers use "writer:<id>", the learner "replay-mirror").

    The returned client retries dropped connections for about `RECONNECT_S` seconds (a server restarted
    by the launcher's watchdog, AOF reload included, is picked up again); writes stay exactly-once
    because every flush carries a sequence number (see ReplayWriter).
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    probe = None
    while True:
        left = deadline - time.monotonic()
        try:
            probe = redis.Redis.from_url(url, socket_connect_timeout=max(min(left, 2.0), 0.05),
                                         socket_timeout=max(min(left, 2.0), 0.05), retry=Retry(NoBackoff(), 0))
            probe.ping()
            break
        except redis.BusyLoadingError as exc:  # the server is loading its AOF: keep waiting
            last_error = exc
        except (redis.AuthenticationError, redis.AuthenticationWrongNumberOfArgsError) as exc:
            raise _auth_refused(url, exc) from exc  # waiting longer cannot fix a password
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            last_error = exc
        finally:
            if probe is not None:
                probe.close()
        if time.monotonic() + 0.05 >= deadline:
            raise ReplayConnectionError(
                f"cannot reach the replay Redis at {redact(url)} within {timeout_s:.1f} s ({last_error}). Start the "
                "server (an empty replay.url makes `make train` start an embedded one), check the host and "
                "port in replay.url, or raise replay.connect_timeout_s.")
        time.sleep(0.05)  # the server is not up yet; nothing to wait on but time
    return redis.Redis.from_url(url, socket_connect_timeout=max(timeout_s, 1.0), socket_timeout=max(10 * timeout_s, 60.0),
                                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), _RECONNECT_TRIES),
                                health_check_interval=30, client_name=name)


def run_script(script: Script, keys: list[str], args: list[Any], tries: int = 5) -> Any:
    """Run a registered Lua script. redis-py loads it again once after NOSCRIPT (a restarted server forgot it);
    a second restart between that load and its retry (a server killed again during its AOF reload) would
    raise NOSCRIPT once more, so this loads it again up to `tries` times. Safe to repeat: every script here
    is idempotent (sequence numbers)."""
    for attempt in range(tries):
        try:
            return script(keys=keys, args=args)
        except redis.exceptions.NoScriptError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")
