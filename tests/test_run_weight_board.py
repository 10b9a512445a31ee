"""deploy/run/weight_board.py: the newest policy's version only moves forward, across a restarted board."""

from __future__ import annotations

import pytest

from deploy.run.weight_board import WeightBoard

pytestmark = pytest.mark.unit


def test_weight_board_only_moves_forward() -> None:
    board = WeightBoard()
    assert board.latest(0) is None
    board.publish(2, ["ref2"])
    assert board.latest(0) == (2, ["ref2"]) and board.latest(2) is None
    board.publish(1, ["stale"])
    assert board.latest(1) == (2, ["ref2"])


def test_a_restarted_board_does_not_lower_the_version_a_restarted_learner_starts_above(monkeypatch) -> None:
    """The board starts empty when Ray restarts it; the driver's floor (the newest version it saw) still holds."""
    from deploy.run import weight_board as weights

    class Board:
        class version:  # noqa: N801 - mimics an actor handle's method
            @staticmethod
            def remote() -> int:
                return 0

    monkeypatch.setattr(weights, "_board", lambda name: Board)
    monkeypatch.setattr(weights.ray, "get", lambda value: value)
    assert weights.RayWeightPublisher(floor=17).version() == 17 and weights.RayWeightPublisher().version() == 0
