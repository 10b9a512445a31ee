"""deploy/run/fleet.py: the actor fleet's totals across actor lives and a resume."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_resumed_totals_count_on_from_the_checkpoint() -> None:
    """The known bug: the saved steps of actors that never died were in no base, so a resumed run's
    total stayed at the saved value until the new lives' own counts passed it."""
    from deploy.run.fleet import ActorFleet, RunState

    fleet = ActorFleet.__new__(ActorFleet)
    fleet.state = RunState(env_steps=64_996, agent_steps=16_249, env_errors=1)
    fleet.carried = {"env_steps": 64_996, "steps": 16_249, "env_errors": 1}
    fleet.actors = [None, None]
    fleet.last_seen = {0: {"env_steps": 8, "steps": 2, "env_errors": 0}, 1: {"env_steps": 4, "steps": 1}}
    fleet._update_totals()
    assert (fleet.state.env_steps, fleet.state.agent_steps, fleet.state.env_errors) == (65_008, 16_252, 1)
    fleet._bank(0, fleet.last_seen.pop(0))  # actor 0 dies; its new life starts from zero
    fleet.last_seen[0] = {"env_steps": 4, "steps": 1, "env_errors": 1}
    fleet._update_totals()
    assert (fleet.state.env_steps, fleet.state.agent_steps, fleet.state.env_errors) == (65_012, 16_253, 2)


@pytest.mark.integration
def test_a_poll_that_raises_costs_that_poll_until_too_many_in_a_row(tmp_path, monkeypatch) -> None:
    """An exception in a live actor's poll (seen: 'deque mutated during iteration') once ended a 70-minute run. Now
    it is skipped with its traceback in the run's logs; POLL_FAILURES_TOLERATED in a row end the run."""
    import shutil

    import ray

    from common.config import debug
    from deploy.run.errors import known_errors
    from deploy.run.fleet import POLL_FAILURES_TOLERATED, ActorFleet, ActorPollError, RunState
    from deploy.run.ray_runtime import connect_ray

    class FlakyPoller:  # defined here: Ray pickles it by value (workers cannot import tests/)
        """A Ray actor whose `poll` raises on the calls named in `failing` (1-based) and reports otherwise."""

        def __init__(self, failing: set[int]) -> None:
            self.calls, self.failing = 0, failing

        def ready(self) -> bool:
            return True

        def poll(self) -> dict:
            import os

            self.calls += 1
            if self.calls in self.failing:
                raise KeyError(f"bug in poll {self.calls}")
            return {"index": 0, "pid": os.getpid(), "node_id": "n", "counters": {"env_steps": 4 * self.calls,
                                                                                "steps": self.calls}}

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_dir = connect_ray(debug())
    try:
        # Calls 2 and 4..: one failure between successes, then failures in a row.
        failing = {2, *range(4, 5 + POLL_FAILURES_TOLERATED)}
        fleet = ActorFleet.__new__(ActorFleet)
        fleet.actors = [ray.remote(num_cpus=0)(FlakyPoller).remote(failing)]
        assert ray.get(fleet.actors[0].ready.remote(), timeout=120)  # started (the fleet's poll waits 10 s)
        fleet.run_dir, fleet.state, fleet.carried = tmp_path, RunState(), {}
        fleet.alive, fleet.restarting, fleet.poll_failures = [True], {}, [0]
        fleet.pids, fleet.last_pid, fleet.last_seen, fleet.nodes, fleet.restarts_before = {}, {}, {}, {}, 0
        fleet.state.actor_base = {}
        assert len(fleet.poll()) == 1 and fleet.state.agent_steps == 1
        assert fleet.poll() == [] and fleet.poll_failures == [1]  # skipped; the run goes on
        assert len(fleet.poll()) == 1 and fleet.state.agent_steps == 3 and fleet.poll_failures == [0]
        for in_a_row in range(1, POLL_FAILURES_TOLERATED + 1):
            assert fleet.poll() == [] and fleet.poll_failures == [in_a_row]
        with pytest.raises(ActorPollError, match=r"Actor 0's poll failed 4 times in a row \(last: .*bug in poll"):
            fleet.poll()
        assert isinstance(ActorPollError("x"), known_errors())  # one paragraph, not a traceback
        logs = list((tmp_path / "logs").glob("error-*.log"))
        assert logs and "KeyError" in logs[0].read_text()
    finally:
        ray.shutdown()
        if ray_dir:
            shutil.rmtree(ray_dir, ignore_errors=True)
