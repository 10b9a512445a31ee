"""deploy/run/checkpoint_schedule.py: when the driver asks the learner for a checkpoint."""

from __future__ import annotations

import pytest

from common.config import debug

pytestmark = pytest.mark.unit


def test_checkpoints_are_also_written_by_time_and_after_pretraining() -> None:
    """`learner.checkpoint_every_s` bounds the learner work a restart loses, however slow the updates; the
    first checkpoint comes as soon as the first policy is published (the end of the model pre-training)."""
    import dataclasses

    from deploy.run.checkpoint_schedule import CheckpointSchedule

    cfg = dataclasses.replace(debug().learner, checkpoint_every=1000, checkpoint_every_s=30.0)
    schedule = CheckpointSchedule(cfg, {"updates": 0, "pretrain_updates": 0, "version": 0})
    written: list[int] = []
    counters = {"updates": 5, "pretrain_updates": 20, "version": 1}
    schedule.tick(counters, lambda: written.append(1))
    assert len(written) == 1  # the first policy is out: the pre-training is saved at once
    schedule.last_updates = 0
    schedule.tick(counters, lambda: written.append(1))
    assert len(written) == 1  # 25 updates, far below checkpoint_every, and no time has passed
    schedule.last_time -= 31
    schedule.tick(counters, lambda: written.append(1))
    assert len(written) == 2 and schedule.last_updates == 25
    schedule.last_time -= 31
    schedule.tick(counters, lambda: written.append(1))
    assert len(written) == 2  # nothing new to save
