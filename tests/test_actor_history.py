"""actors/history.py: an actor's history of frames and actions, padded at an episode's start."""

from __future__ import annotations

import numpy as np
import pytest

from actors.history import History, stack_histories

pytestmark = pytest.mark.unit


def _frame(value: int) -> np.ndarray:
    return np.full((3, 64, 64), value, dtype=np.uint8)


def test_history_pads_with_first_frame_and_zero_actions() -> None:
    history = History(sequence_length=4, action_dim=2)
    history.reset(_frame(7))
    assert (history.obs == 7).all() and (history.actions == 0).all()
    history.push(np.array([0.5, -0.5], np.float32), _frame(8))
    assert [int(f[0, 0, 0]) for f in history.obs] == [7, 7, 7, 8]
    np.testing.assert_array_equal(history.actions, [[0, 0], [0, 0], [0.5, -0.5]])
    for t in range(9, 12):
        history.push(np.full(2, t / 10, np.float32), _frame(t))
    assert [int(f[0, 0, 0]) for f in history.obs] == [8, 9, 10, 11]
    np.testing.assert_allclose(history.actions[:, 0], [0.9, 1.0, 1.1])  # a[t] sits between x[t] and x[t+1]
    obs, actions = stack_histories([history, history])
    assert obs.shape == (2, 4, 3, 64, 64) and actions.shape == (2, 3, 2)
