"""deploy/run/fleet.py: the actor fleet's totals across actor lives and a resume."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_resumed_totals_count_on_from_the_checkpoint() -> None:
    """The known bug: the saved steps of actors that never died were in no base, so a resumed run's
    total stayed at the saved value until the new lives' own counts passed it."""
    from deploy.run.fleet import ActorFleet
    from deploy.run.run_state import RunState

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

