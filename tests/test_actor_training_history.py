"""The actor trains on the histories it acts on, including the all-first-frame history of t = 0.

A real redis-server and the learner's replay: windows sampled for training, turned into the SAC losses'
inputs by `latent_transition`, must contain the history an actor holds at the first step of an episode
(actors/history.py), or pi would never be trained on the input it meets at every episode's start.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from replay_fixtures import ACTION_DIM, BASE_CFG, TASK, frame, frame_uids, uid_of, write_episode

from actors.history import History
from learner.losses import latent_transition
from replay_service import ReplayWriter, SequenceReplay

pytestmark = pytest.mark.integration
TAU = 4


def test_sampled_actor_histories_include_the_episode_start(url: str) -> None:
    cfg = replace(BASE_CFG, capacity=1_000)
    with ReplayWriter(url, cfg, TASK, ACTION_DIM, "w") as writer:
        for episode in range(4):
            write_episode(writer, 0, episode, length=12)
    replay = SequenceReplay(url, cfg, TASK, ACTION_DIM, sequence_length=TAU)
    replay.sync()
    batch = replay.sample(512, generator=torch.Generator().manual_seed(0))
    # Features that are the frames' identities, so the actor input can be read back frame by frame.
    uids = frame_uids(batch.obs)
    features = torch.from_numpy(uids).float().unsqueeze(-1)
    transition = latent_transition(batch, features, torch.zeros(*uids.shape, 3))
    history_frames = transition.history[:, :TAU].long().numpy()
    history_actions = transition.history[:, TAU:].reshape(-1, TAU - 1, ACTION_DIM).numpy()

    # What an actor holds at t = 0 of episode e: tau copies of the first frame, zero actions.
    acting = History(TAU, ACTION_DIM)
    starts = 0
    for episode in range(4):
        acting.reset(frame(uid_of(0, episode, 0)))
        start_uids = frame_uids(torch.from_numpy(acting.obs)).tolist()
        rows = (history_frames == np.array(start_uids)).all(1)
        starts += int(rows.sum())
        np.testing.assert_array_equal(history_actions[rows], np.broadcast_to(acting.actions, history_actions[rows].shape))
    # 48 transitions, 4 of them out of a first frame: about 512 / 12 ~ 43 such rows are expected.
    assert starts >= 15, f"only {starts} of 512 training histories are an episode's t = 0 history"
    # The next-step history (the critic's target) can never be one: x[tau+1] is not a first frame.
    next_frames = transition.history_next[:, :TAU].long().numpy()
    assert not any((next_frames == next_frames[:, :1]).all(1) & (next_frames[:, 0] % 1_000 == 0))
