"""Shows the one hole of `appendfsync everysec` that replay_service/__init__.py documents, and what closes it.

Redis answers a write before its AOF holds it when a background fsync is still running: it postpones the AOF
write (up to 2 s) rather than wait. A kill -9 in that window loses writes the client saw acknowledged. CI's busy
disk once did this to `tests/test_replay_server.py::test_kill_9_keeps_every_acknowledged_step[everysec]` (every
step lost); a fast disk never shows it, so this script slows Redis' fsync thread with strace's delay injection
(`fdatasync` takes 3 s), writes for 2.5 s, kills redis-server with SIGKILL and counts what a restart reloads:

    .venv/bin/python scripts/everysec_hole.py            # plain, slow fsync, slow fsync + waiting the buffer out

Needs redis-server and strace. The third case is what the tests do before a kill (tests/process_tools.py
`aof_written`: wait until `aof_buffer_length` is 0), so they check the promise rather than the hole.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from process_tools import aof_written  # noqa: E402

from replay_service.server import stable_port  # noqa: E402

SLOW_FSYNC = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync,fsync",
              "-e", "inject=fdatasync:delay_enter=3000000"]


def trial(slow: bool, wait: bool) -> tuple[int, int, int]:
    """(writes acknowledged, writes a restart reloads, AOF buffer bytes just before the kill)."""
    data = Path(tempfile.mkdtemp(prefix="everysec-"))
    port = stable_port()
    args = ["redis-server", "--port", str(port), "--dir", str(data), "--appendonly", "yes", "--appendfsync",
            "everysec", "--save", "", "--daemonize", "no", "--logfile", str(data / "log")]
    server = subprocess.Popen([*(SLOW_FSYNC if slow else []), *args], stderr=subprocess.DEVNULL)  # strace chatter
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    acked, start = 0, time.monotonic()
    while time.monotonic() - start < 2.5:  # spans two of Redis' once-a-second fsyncs
        client.set(f"k{acked}", "v")
        acked += 1
        time.sleep(0.01)
    if wait:
        aof_written(client, 10.0)
    buffered = client.info("persistence")["aof_buffer_length"]
    pid = int(subprocess.check_output(["pgrep", "-f", f"redis-server.*:{port}"]).split()[-1])
    os.kill(pid, signal.SIGKILL)
    server.wait()
    again = subprocess.Popen(args)
    reader = redis.Redis(port=port)
    for _ in range(200):
        try:
            kept = reader.dbsize()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    reader.shutdown(nosave=True)
    again.wait()
    shutil.rmtree(data)
    return acked, kept, buffered


def main() -> None:
    for slow, wait, name in ((False, False, "plain fsync"), (True, False, "3 s fsync"),
                             (True, True, "3 s fsync, buffer waited out")):
        acked, kept, buffered = trial(slow, wait)
        print(f"{name:30s} acknowledged {acked:4d}, reloaded after kill -9 {kept:4d} "
              f"(lost {acked - kept}), AOF buffer at the kill {buffered} bytes")


if __name__ == "__main__":
    main()
