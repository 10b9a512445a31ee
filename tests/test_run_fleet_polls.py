"""deploy/run/fleet.py on a real local Ray: an actor whose `poll` raises while its process lives on (a bug; seen:
'deque mutated during iteration', which once ended a 70-minute run)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from common.config import debug
from deploy.run.errors import known_errors
from deploy.run.fleet import POLL_FAILURES_TOLERATED, ActorFleet, ActorPollError
from deploy.run.ray_runtime import connect_ray
from deploy.run.run_state import RunState

pytestmark = pytest.mark.integration


def test_a_poll_that_raises_costs_that_poll_until_too_many_in_a_row(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A raising poll is skipped with its traceback in the run's logs, up to POLL_FAILURES_TOLERATED in a row; the
    next one ends the run with a known error (one paragraph). A restarted actor's first poll counts the same way."""

    class FlakyPoller:  # defined here: Ray pickles it by value (workers cannot import tests/)
        """A Ray actor whose `poll` raises on the calls named in `failing` (1-based) and reports otherwise."""

        def __init__(self, failing: set[int]) -> None:
            self.calls, self.failing = 0, failing

        def ready(self) -> bool:
            return True

        def poll(self) -> dict[str, Any]:
            import os

            self.calls += 1
            if self.calls in self.failing:
                raise KeyError(f"bug in poll {self.calls}")
            return {"index": 0, "pid": os.getpid(), "node_id": "n", "counters": {"env_steps": 4 * self.calls,
                                                                                "steps": self.calls}}

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_dir = connect_ray(debug())
    try:
        # Call 2 fails between successes; calls 4 on fail in a row (the last through _resume).
        ends_run = POLL_FAILURES_TOLERATED + 1
        failing = {2, *range(4, 5 + ends_run)}
        fleet = ActorFleet.__new__(ActorFleet)
        fleet.actors = [ray.remote(num_cpus=0)(FlakyPoller).remote(failing)]
        assert ray.get(fleet.actors[0].ready.remote(), timeout=120)  # started (the fleet's poll waits 10 s)
        fleet.run_dir, fleet.state, fleet.carried = tmp_path, RunState(), {}
        fleet.alive, fleet.restarting, fleet.poll_failures = [True], {}, [0]
        fleet.pids, fleet.last_pid, fleet.last_seen, fleet.nodes, fleet.restarts_before = {}, {}, {}, {}, 0
        assert len(fleet.poll()) == 1 and fleet.state.agent_steps == 1
        assert fleet.poll() == [] and fleet.poll_failures == [1]  # skipped; the run goes on
        assert len(fleet.poll()) == 1 and fleet.state.agent_steps == 3 and fleet.poll_failures == [0]
        for in_a_row in range(1, ends_run):
            assert fleet.poll() == [] and fleet.poll_failures == [in_a_row]
        with pytest.raises(ActorPollError, match=rf"Actor 0's poll failed {ends_run} times in a row \(last: .*bug in poll"):
            fleet.poll()
        assert isinstance(ActorPollError("x"), known_errors())  # one paragraph, not a traceback
        # Every failure's traceback, appended to one file.
        saved = (tmp_path / "logs" / "actor-poll-errors.log").read_text()
        headers = re.findall(r"^--- .* actor 0, failure (\d+) in a row$", saved, re.MULTILINE)
        assert headers == ["1", *map(str, range(1, ends_run + 1))] and saved.count("KeyError: 'bug in poll") == len(headers)
        # A restarted actor whose first poll raises: asked again next tick, counted, not ended.
        fleet.poll_failures, fleet.restarting = [0], {0: time.monotonic()}
        fleet._resume(0, fleet.restarting[0])
        assert fleet.poll_failures == [1] and 0 in fleet.restarting
    finally:
        ray.shutdown()
        if ray_dir:
            shutil.rmtree(ray_dir, ignore_errors=True)


def test_the_episodes_the_last_poll_hands_over_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll hands an actor's finished episodes over once: `stop`'s last poll counted only the counters, so the
    episodes that ended since the tick before were lost to the run's count and train_return (a review saw a
    summary of 1 episode where the replay held 3)."""

    class Finisher:  # defined here: Ray pickles it by value
        def run(self) -> None:
            return None

        def stop(self) -> None:
            return None

        def poll(self) -> dict[str, Any]:
            return {"index": 0, "counters": {"env_steps": 2000, "steps": 500},
                    "episodes": [{"return": 3.0, "length": 250}, {"return": 5.0, "length": 250}]}

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_dir = connect_ray(debug())
    try:
        fleet = ActorFleet.__new__(ActorFleet)
        actor = ray.remote(num_cpus=0)(Finisher).remote()
        fleet.actors, fleet.runs = [actor], {actor.run.remote(): 0}
        fleet.cfg, fleet.replay_url = debug(), "redis://127.0.0.1:1/0"  # no replay: its count is skipped
        fleet.state, fleet.carried, fleet.last_seen, fleet.train_return = RunState(episodes=4), {}, {}, None
        fleet.stop()
        assert fleet.state.episodes == 6 and fleet.train_return == 4.0 and fleet.state.agent_steps == 500
    finally:
        ray.shutdown()
        if ray_dir:
            shutil.rmtree(ray_dir, ignore_errors=True)
