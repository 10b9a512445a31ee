"""tests/chaos.py's own confirmations, on made-up records: a Redis restart hit twice must sit inside one outage of
the watchdog's record with a killed start, and the evaluator is killed under a logged evaluation until the driver
logs one cut off."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from chaos import Chaos, check_redis_restarts_hit

pytestmark = pytest.mark.unit

KILLS = [{"event": 3, "component": "redis", "pid": 10, "note": "before the restart", "at": 100.0},
         {"event": 3, "component": "redis", "pid": 11, "note": "during its restart, before it was ready", "at": 100.3},
         {"event": 3, "component": "learner", "pid": 12, "note": "while Redis restarts", "at": 100.4}]


def _chaos(kills: list[dict], log: Path | None = None) -> Chaos:
    chaos = Chaos(SimpleNamespace(log=log), Path("/nowhere"), random.Random(0))  # type: ignore[arg-type]
    chaos.kills = list(kills)
    return chaos


def _outage(down: float, up: float | None, failed: int, killed: int) -> dict:
    return {"down_at": down, "up_at": up, "failed_starts": failed, "killed_starts": killed}


def test_a_redis_restart_hit_twice_is_confirmed_only_by_one_outage_with_a_killed_start() -> None:
    check_redis_restarts_hit("seed 0", _chaos(KILLS), [_outage(100.2, 101.5, 1, 1)])
    for outages in ([_outage(100.2, 101.5, 0, 0)],  # the new server was ready at once: no hit
                    [_outage(100.2, 101.5, 1, 0)],  # a start that failed by itself (port taken), not by the kill
                    [_outage(100.2, 100.35, 0, 0), _outage(100.5, 100.7, 0, 0)],  # back before the learner's kill
                    [_outage(100.2, None, 3, 3)]):  # never back
        with pytest.raises(AssertionError, match="not inside one outage"):
            check_redis_restarts_hit("seed 0", _chaos(KILLS), outages)


def test_the_evaluator_is_killed_under_logged_evaluations_until_one_is_cut_off(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    chaos = _chaos([], log)
    killed: list[str] = []
    chaos.pids = lambda component: [7]  # type: ignore[method-assign]
    chaos._kill = lambda component, pid, note: killed.append(note) or pid  # type: ignore[method-assign]
    lines = ["INFO deploy.run.evaluation_schedule: evaluating policy version 0 at 0 env steps (grid point 0)",
             "INFO deploy.run.evaluation_schedule: evaluating policy version 3 at 2404 env steps (grid point 2400)",
             "INFO deploy.run.evaluation_schedule: evaluating policy version 5 at 4804 env steps (grid point 48"]
    log.write_text("\n".join(lines))  # the last line is still being written
    chaos.watch_evaluations()
    assert killed == ["evaluating grid point 2400"] and chaos.targeted == [2400]
    with log.open("a") as f:  # 2400 had finished: no cut-off; the next one is killed too, and is cut off
        f.write("00)\nWARNING deploy.run.evaluation_schedule: the evaluation at grid point 4800 was cut off "
                "(ActorDiedError); it runs again at that grid point\n"
                "INFO deploy.run.evaluation_schedule: evaluating policy version 5 at 4810 env steps (grid point 4800)\n"
                "INFO deploy.run.evaluation_schedule: evaluating policy version 6 at 7200 env steps (grid point 7200)\n")
    chaos.watch_evaluations()
    assert chaos.targeted == [2400, 4800] and chaos.cut_off == [4800]
    assert killed == ["evaluating grid point 2400", "evaluating grid point 4800"]  # none once one was cut off
