"""deploy/run/supervisor.py without real processes: the Redis watchdog's outage record, and the restart counts of
the actors Ray brings back by itself (evaluator, weight board), with stand-ins for the server and for Ray."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from deploy.run.run_state import RunState
from deploy.run.supervisor import RayRestarts, RedisWatchdog

pytestmark = pytest.mark.unit


def _process(code: int) -> SimpleNamespace:
    """A Popen stand-in that has exited with `code` (negative: ended by that signal)."""
    return SimpleNamespace(returncode=code, poll=lambda: code)


class _Server:
    """A redis-server stand-in that dies once; its first restart fails (killed during its AOF load: a new process
    whose return code is a signal's), its second too (exited by itself), its third comes up."""

    def __init__(self) -> None:
        self.running, self.port, self.data_dir, self.starts = True, 1, Path("/nowhere"), 0
        self.process = _process(-9)  # the server that dies: not a failed start's

    def start(self) -> None:
        self.starts += 1
        if self.starts <= 2:
            self.process = _process(-9 if self.starts == 1 else 1)
            raise RuntimeError(f"redis-server exited with code {self.process.returncode} while starting; its log "
                               "ends with:\nfirst line\nlast line\nAddress already in use")
        self.running = True


def test_each_outage_is_recorded_with_its_window_and_failed_starts() -> None:
    server = _Server()
    with RedisWatchdog(server, poll_s=0.01) as watchdog:  # type: ignore[arg-type]
        time.sleep(0.05)
        died = time.time()
        server.running = False
        deadline = time.monotonic() + 10
        while watchdog.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    summary = RedisWatchdog.summary_of(watchdog)
    (outage,) = summary["replay_server_outages"]
    assert outage["failed_starts"] == 2 and watchdog.failed_starts == 2 and watchdog.restarts == 1
    # The killed start is counted as such; the other is explained by its error's first line and the log's last.
    assert outage["killed_starts"] == summary["replay_server_killed_starts"] == 1, outage
    assert outage["causes"] == ["redis-server exited with code 1 while starting; its log ends with: last line "
                                "Address already in use"], outage
    # Seen dead within a poll or so; back after the failed starts' one-second waits.
    assert died <= outage["down_at"] + 0.01 and outage["down_at"] - died < 1.0, (died, outage)
    assert outage["up_at"] - outage["down_at"] >= 1.99, outage
    assert RedisWatchdog.summary_of(None)["replay_server_outages"] == []


def test_ray_restarts_count_on_from_a_resumed_run_and_keep_the_last_count_ray_gave() -> None:
    state = RunState(evaluator_restarts=2)  # two in the run's earlier lives
    evaluator, board = SimpleNamespace(name="evaluator"), SimpleNamespace(name="board")
    counts: dict[str, int | None] = {"evaluator": 0, "board": 0}
    restarts = RayRestarts(state, {"evaluator_restarts": evaluator, "weight_board_restarts": board},
                           lookup=lambda handle: counts[handle.name])
    restarts.check()
    assert (state.evaluator_restarts, state.weight_board_restarts) == (2, 0)
    counts.update(evaluator=1, board=2)
    restarts.check()
    assert (state.evaluator_restarts, state.weight_board_restarts) == (3, 2)
    counts.update(evaluator=None)  # Ray's record unreadable this tick: the count stays
    restarts.check()
    assert state.summary()["evaluator_restarts"] == 3 and state.summary()["weight_board_restarts"] == 2
