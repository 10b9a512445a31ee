"""Property tests of the replay against a small in-memory model of episodes, writers and FIFO eviction.

The model follows the spec, not the code: writers buffer steps and flush every `flush_every`
transitions, at episode end and on demand; a flush appends its rows (the episode's first frame goes
with its first transition) to one global log; the oldest rows go while transitions > capacity or
frames > frame capacity; a transition is sampleable iff every frame of its window is still stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import redis
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from replay_fixtures import (
    ACTION_DIM,
    BASE_CFG,
    TASK,
    action_for,
    check_windows,
    flush_db,
    frame,
    frame_uids,
    reward_for,
    uid_of,
    write_episode,
)

from common.config import ReplayConfig
from replay_service import RedisServer, ReplayWriter, SequenceReplay, connect, frame_capacity
from replay_service.schema import STATE

pytestmark = pytest.mark.integration


@dataclass
class _WriterModel:
    episode: int = -1
    step: int = 0
    in_episode: bool = False
    open: list[int] = field(default_factory=list)  # uids not yet in a batch
    queue: list[list[int]] = field(default_factory=list)


class ReferenceReplay:
    """What the replay must hold after a sequence of writer calls (uids only)."""

    def __init__(self, cfg: ReplayConfig, n_writers: int, sequence_length: int) -> None:
        self.cfg, self.T = cfg, sequence_length + 1
        self.fcap = frame_capacity(cfg)
        self.writers = [_WriterModel() for _ in range(n_writers)]
        self.log: list[int] = []
        self.index: dict[int, int] = {}
        self.tail = self.stored = 0
        self.terminal: set[int] = set()

    def pending(self, w: _WriterModel) -> int:
        return sum(u % 1_000 > 0 for rows in [*w.queue, w.open] for u in rows)

    def freeze(self, w: _WriterModel) -> None:
        if any(u % 1_000 > 0 for u in w.open):
            w.queue.append(w.open)
            w.open = []

    def begin(self, k: int) -> None:
        w = self.writers[k]
        self.freeze(w)
        w.episode, w.step, w.in_episode = w.episode + 1, 0, True
        w.open = [uid_of(k, w.episode, 0)]

    def add(self, k: int, terminated: bool, truncated: bool) -> int:
        w = self.writers[k]
        w.step += 1
        uid = uid_of(k, w.episode, w.step)
        w.open.append(uid)
        if terminated:
            self.terminal.add(uid)
        w.in_episode = not (terminated or truncated)
        if not w.in_episode or self.pending(w) >= self.cfg.flush_every:
            self.flush(k)
        return uid

    def flush(self, k: int) -> None:
        w = self.writers[k]
        self.freeze(w)
        for rows in w.queue:
            for uid in rows:
                self.index[uid] = len(self.log)
                self.log.append(uid)
                self.stored += uid % 1_000 > 0
            while self.stored > self.cfg.capacity or len(self.log) - self.tail > self.fcap:
                self.stored -= self.log[self.tail] % 1_000 > 0
                self.tail += 1
        w.queue = []

    def sampleable(self) -> set[int]:
        out = set()
        for uid in self.log[self.tail:]:
            step = uid % 1_000
            window = [uid - step + max(step - j, 0) for j in range(self.T)]
            if step > 0 and all(self.index.get(u, -1) >= self.tail for u in window):
                out.add(uid)
        return out


def _check(replay: SequenceReplay, ref: ReferenceReplay, client: redis.Redis, seed: int, cover: bool) -> None:
    replay.sync()
    stored, head, tail = (int(x or 0) for x in client.hmget(STATE, "stored", "head", "tail"))
    assert (stored, head, tail) == (ref.stored, len(ref.log), ref.tail)
    assert replay.size == ref.stored <= ref.cfg.capacity and head - tail <= ref.fcap
    expected = ref.sampleable()
    assert replay.sampleable == len(expected)
    if not expected:
        return
    batch = replay.sample(2048 if cover else 64, torch.Generator().manual_seed(seed))
    last = set(check_windows(batch, ref.T - 1, ref.terminal).tolist())
    assert last <= expected
    if cover and len(expected) <= 64:
        assert last == expected  # P(missing one of <= 64 in 2048 draws) < 1e-12


OPS = ["step"] * 5 + ["end_terminated", "end_truncated", "abandon", "flush", "sync"]


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(n_writers=st.integers(1, 3), capacity=st.integers(2, 100), reserve=st.sampled_from([0.0, 0.25, 1.0]),
       sequence_length=st.integers(1, 4), flush_every=st.integers(1, 5),
       ops=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(OPS)), min_size=30, max_size=200),
       seed=st.integers(0, 2**16))
def test_replay_matches_reference_model(redis_server: RedisServer, n_writers: int, capacity: int, reserve: float,
                                        sequence_length: int, flush_every: int, ops: list[tuple[int, str]],
                                        seed: int) -> None:
    flush_db(redis_server.url)
    cfg = replace(BASE_CFG, capacity=capacity, frame_reserve=reserve, flush_every=flush_every)
    ref = ReferenceReplay(cfg, n_writers, sequence_length)
    writers = [ReplayWriter(redis_server.url, cfg, TASK, ACTION_DIM, f"w{k}") for k in range(n_writers)]
    replay = SequenceReplay(redis_server.url, cfg, TASK, ACTION_DIM, sequence_length)
    client = connect(redis_server.url, 2.0)
    for i, (k, op) in enumerate(ops):
        k %= n_writers
        writer, model = writers[k], ref.writers[k]
        if op == "sync":
            _check(replay, ref, client, seed + i, cover=False)
            continue
        if op == "flush":
            writer.flush()
            ref.flush(k)
            continue
        if not model.in_episode or op == "abandon":
            ref.begin(k)
            writer.begin_episode(frame(uid_of(k, model.episode, 0)))
        if op != "abandon":
            terminated, truncated = op == "end_terminated", op == "end_truncated"
            uid = ref.add(k, terminated, truncated)
            writer.add(action_for(uid), reward_for(uid), frame(uid), terminated, truncated, policy_version=i)
        assert writer.pending == ref.pending(model)
    _check(replay, ref, client, seed, cover=True)
    event(f"evicted: {ref.tail > 0}")
    for writer in writers:
        writer.close()
    replay.close()


def test_sampling_is_uniform_over_sampleable_transitions(url: str) -> None:
    """Chi-square over last-transition uids, with FIFO eviction making the oldest windows unsampleable."""
    cfg = replace(BASE_CFG, capacity=150, flush_every=8)
    with ReplayWriter(url, cfg, TASK, ACTION_DIM, "w") as writer:
        written = [u for e, n in enumerate([40, 70, 25, 60]) for u in write_episode(writer, 0, e, n)]
    replay = SequenceReplay(url, cfg, TASK, ACTION_DIM, sequence_length=8)
    replay.sync()
    # 195 transitions written, 150 kept: episode 0 and episode 1's first frame and steps 1..5 were
    # evicted, so episode 1's windows ending at steps up to 5 + 8 lack frames.
    sampleable = [u for u in written[40:] if not (u // 1_000 == 1 and u % 1_000 <= 5 + 8)]
    assert replay.size == 150 and replay.sampleable == len(sampleable) == 142
    n = 200 * len(sampleable)
    generator = torch.Generator().manual_seed(3)
    check_windows(replay.sample(2_000, generator), 8, {written[i] for i in (39, 109, 134, 194)})
    last = np.concatenate([frame_uids(replay.sample(2_000, generator).obs[:, -1]) for _ in range(n // 2_000)])
    counts = np.array([np.sum(last == u) for u in sampleable])
    assert counts.sum() == len(last), "a window ended at a transition that is not sampleable"
    expected = len(last) / len(sampleable)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    df = len(sampleable) - 1
    z = 3.29  # chi-square 99.95% quantile, Wilson-Hilferty
    bound = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    assert chi2 < bound, f"chi2 {chi2:.1f} >= {bound:.1f} with {df} degrees of freedom"
