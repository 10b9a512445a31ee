"""ReplayWriter: what an actor uses to append its episodes to the replay, one atomic flush at a time."""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from common.config import ReplayConfig
from replay_service.client import connect, redact, run_script
from replay_service.limiter import RateLimit, poll_until
from replay_service.schema import (
    ACKS,
    FLAG_TERMINATED,
    FLAG_TRUNCATED,
    FRAME_SHAPE,
    KIND_START,
    KIND_STEP,
    META,
    NEXT_EPISODE,
    PREV_IS_ROW_BEFORE,
    PREV_IS_SELF,
    ROW,
    STATE,
    encode_frame,
    encode_row,
    ensure_schema,
)

# Atomically: drop a replayed flush (same writer token and seq: its reply was lost), refuse it whole
# if the rate limiter says inserts are too far ahead, else append its rows at `head`, count its
# transitions and evict the oldest rows (FIFO) while over capacity (transitions) or frame capacity.
# Replies {1, base, duplicate, inserted} when written (inserted: the replay's total after it, which the
# actors compare with the run's length), {0, inserted, sampled} when refused.
_FLUSH = """#!lua
local meta, state, acks = KEYS[1], KEYS[2], KEYS[3]
local rowp, token, seq, ntrans = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local ack = redis.call('HGET', acks, token)
if ack then
  local last_seq, last_base = string.match(ack, '(%d+):(%d+)')
  if tonumber(last_seq) >= seq then
    return {1, tonumber(last_base), 1, tonumber(redis.call('HGET', state, 'inserted') or 0)}
  end
end
local m = redis.call('HMGET', meta, 'capacity', 'frame_capacity', 'min_size', 'samples_per_insert', 'spi_tolerance')
local cap, fcap, minsz, spi, tol = tonumber(m[1]), tonumber(m[2]), tonumber(m[3]), tonumber(m[4]), tonumber(m[5])
if not cap then
  return redis.error_reply('NOSCHEMA replay:meta is gone (the database was flushed or replaced); recreate the writer')
end
local s = redis.call('HMGET', state, 'head', 'tail', 'stored', 'inserted', 'sampled')
local head, tail, stored = tonumber(s[1]) or 0, tonumber(s[2]) or 0, tonumber(s[3]) or 0
local inserted, sampled = tonumber(s[4]) or 0, tonumber(s[5]) or 0
if inserted * spi - sampled > minsz * spi + spi * tol then return {0, inserted, sampled} end
local base = head
for i = 5, #ARGV do
  redis.call('SET', rowp .. head, ARGV[i])
  head = head + 1
end
stored = stored + ntrans
while stored > cap or head - tail > fcap do
  local key = rowp .. tail
  if redis.call('GETRANGE', key, 0, 0) == '\\1' then stored = stored - 1 end
  redis.call('DEL', key)
  tail = tail + 1
end
redis.call('HSET', state, 'head', head, 'tail', tail, 'stored', stored, 'inserted', inserted + ntrans)
redis.call('HSET', acks, token, seq .. ':' .. base)
return {1, base, 0, inserted + ntrans}
"""


class ReplayFullError(RuntimeError):
    """Redis refused a flush (maxmemory reached, noeviction); the steps stay buffered."""


class RateLimitTimeout(TimeoutError):
    """A flush waited `writer_timeout_s` for the learner; the steps stay buffered, call flush() again."""


@dataclass
class _Episode:
    episode_id: int | None = None  # from INCR replay:next_episode at its first flush
    last_index: int | None = None  # global index of its last written row


@dataclass
class _Row:
    kind: int
    step: int
    frame: bytes
    frame_flags: int
    action: np.ndarray
    reward: float = 0.0
    flags: int = 0
    version: int = 0


@dataclass
class _Batch:
    """Rows of one episode, sent whole; seq and payload are fixed at the first attempt so retries dedupe."""

    seq: int
    episode: _Episode
    rows: list[_Row]
    payload: list[bytes] | None = None

    @property
    def transitions(self) -> int:
        return sum(r.kind == KIND_STEP for r in self.rows)


@dataclass
class _Stats:
    flushes: int = 0
    steps_written: int = 0
    bytes_written: int = 0
    blocked_events: int = 0
    blocked_s: float = 0.0
    timeouts: int = 0
    duplicate_flushes: int = 0
    episodes: int = 0


class ReplayWriter:
    """Buffers one actor's steps and appends them to the replay in atomic, rate-limited flushes.

    `begin_episode(first_obs)` then `add(...)` per step. Steps are flushed every `cfg.flush_every`
    transitions, at episode end, and on `flush()` / `close()`. A flush blocked by the rate limiter for
    `cfg.writer_timeout_s` raises RateLimitTimeout and keeps its steps buffered: call `flush()` again.
    """

    def __init__(self, url: str, cfg: ReplayConfig, task: str, action_dim: int, writer_id: str,
                 audit_dir: str | Path | None = None) -> None:
        self.url, self.cfg, self.task, self.action_dim = url, cfg, task, action_dim
        self.writer_id = writer_id
        self._client = connect(url, cfg.connect_timeout_s, name=f"writer:{writer_id}")
        ensure_schema(self._client, cfg, task, action_dim)
        self._script = self._client.register_script(_FLUSH)
        # Unique per writer object, so a restarted actor with the same writer_id never collides.
        self._token = f"{writer_id}:{secrets.token_hex(6)}"
        self._seq = 0
        # The writer's own record of what the replay acknowledged (replay.audit; deploy/tools/audit.py reads it).
        self._audit: int | None = None
        if audit_dir is not None:
            Path(audit_dir).mkdir(parents=True, exist_ok=True)
            path = Path(audit_dir) / f"{self._token.replace(':', '-')}.log"
            self._audit = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._episode: _Episode | None = None
        self._ended = True
        self._step = 0
        self._open: list[_Row] = []  # rows of the current episode not yet in a batch
        self._queue: deque[_Batch] = deque()
        # Transitions in `_open` and in `_queue`, kept as they change: `pending` is read from the driver's thread
        # (an actor's `poll`) while the actor's loop appends and flushes, and iterating the queue there raised
        # "deque mutated during iteration".
        self._open_steps = 0
        self._queued_steps = 0
        self._stats = _Stats()
        self._zero_action = np.zeros(action_dim, np.float32)
        self.inserted = 0
        """The replay's total of inserted transitions (every writer's) as of this writer's last flush."""

    # --- the actor's calls ------------------------------------------------------------------------
    def begin_episode(self, first_obs: np.ndarray) -> None:
        """Start an episode at `first_obs` (uint8 3x64x64); pending steps of the last one stay queued."""
        frame, frame_flags = encode_frame(self._check_frame(first_obs, "begin_episode(first_obs)"), self.cfg.compress)
        self._freeze()
        self._open, self._open_steps = [], 0  # a first frame with no transition after it is never written
        self._episode, self._ended, self._step = _Episode(), False, 0
        self._open.append(_Row(KIND_START, 0, frame, frame_flags, self._zero_action))
        self._stats.episodes += 1

    def add(self, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool, truncated: bool,
            policy_version: int) -> None:
        """Buffer the transition (action, reward, next_obs); flush when the buffer or the episode is full."""
        if self._episode is None or self._ended:
            raise ValueError("ReplayWriter.add: no episode in progress (call begin_episode(first_obs) first, "
                             "and again after a step with terminated or truncated)")
        act = np.asarray(action)
        if act.shape != (self.action_dim,) or not np.issubdtype(act.dtype, np.floating):
            raise ValueError(f"ReplayWriter.add: action must be a float array of shape ({self.action_dim},), got "
                             f"{act.dtype} {act.shape}; check the task's action dim")
        act = act.astype(np.float32)
        if not np.isfinite(act).all():
            raise ValueError(f"ReplayWriter.add: action has NaN/inf entries {act.tolist()}; the policy diverged")
        if not _is_finite_number(reward):
            raise ValueError(f"ReplayWriter.add: reward must be a finite number, got {reward!r}")
        if not isinstance(terminated, (bool, np.bool_)) or not isinstance(truncated, (bool, np.bool_)):
            raise ValueError(f"ReplayWriter.add: terminated and truncated must be bools, got {terminated!r}, "
                             f"{truncated!r}")
        if isinstance(policy_version, (bool, np.bool_)) or not isinstance(policy_version, (int, np.integer)) \
                or policy_version < 0:
            raise ValueError(f"ReplayWriter.add: policy_version must be an int >= 0, got {policy_version!r}")
        frame, frame_flags = encode_frame(self._check_frame(next_obs, "add(next_obs)"), self.cfg.compress)
        self._step += 1
        flags = FLAG_TERMINATED * bool(terminated) | FLAG_TRUNCATED * bool(truncated)
        self._open.append(_Row(KIND_STEP, self._step, frame, frame_flags, act, float(reward), flags,
                               int(policy_version)))
        self._open_steps += 1
        self._ended = bool(terminated or truncated)
        if self._ended or self.pending >= self.cfg.flush_every:
            self.flush()

    @property
    def pending(self) -> int:
        """Transitions buffered and not yet written (safe to read from another thread: two counters)."""
        return self._queued_steps + self._open_steps

    def flush(self) -> int:
        """Write every buffered transition (blocking while rate-limited); returns how many were written."""
        self._freeze()
        written = 0
        deadline = time.monotonic() + self.cfg.writer_timeout_s
        while self._queue:
            try:
                written += self._send(self._queue[0], deadline)
            except redis.OutOfMemoryError as exc:
                raise ReplayFullError(
                    f"ReplayWriter {self.writer_id}: Redis at {redact(self.url)} refused the flush: used_memory is over "
                    f"its maxmemory ({exc}). Eviction keeps the replay within capacity, so another program is "
                    "using this database or maxmemory is too low for replay.capacity. The steps stay "
                    "buffered; free memory or raise maxmemory, then call flush() again.") from exc
            self._queued_steps -= self._queue.popleft().transitions
        return written

    def close(self) -> None:
        """Flush what is buffered, then disconnect (even if the flush raises)."""
        try:
            self.flush()
        finally:
            self._client.close()
            if self._audit is not None:
                os.close(self._audit)
                self._audit = None

    def stats(self) -> dict[str, float]:
        """The writer's counters; read from any thread (the actor's `poll` runs beside its loop)."""
        s = self._stats
        return {"flushes": s.flushes, "steps_written": s.steps_written, "bytes_written": s.bytes_written,
                "blocked_events": s.blocked_events, "blocked_s": s.blocked_s, "timeouts": s.timeouts,
                "duplicate_flushes": s.duplicate_flushes, "episodes": s.episodes, "pending": self.pending}

    # --- internals --------------------------------------------------------------------------------
    def _check_frame(self, obs: np.ndarray, where: str) -> np.ndarray:
        if not isinstance(obs, np.ndarray) or obs.dtype != np.uint8 or obs.shape != FRAME_SHAPE:
            got = f"{obs.dtype} {obs.shape}" if isinstance(obs, np.ndarray) else type(obs).__name__
            raise ValueError(f"ReplayWriter.{where}: expected a uint8 array of shape {FRAME_SHAPE} (C, H, W), got "
                             f"{got}; pass the environment's observation unchanged")
        return obs

    def _freeze(self) -> None:
        """Move the current episode's open transitions into a batch (its first frame goes with them)."""
        if self._episode is not None and self._open_steps:
            self._queue.append(_Batch(self._seq, self._episode, self._open))
            self._queued_steps += self._open_steps
            self._seq += 1
            self._open, self._open_steps = [], 0

    def _encode(self, batch: _Batch) -> list[bytes]:
        episode = batch.episode
        if episode.episode_id is None:
            episode.episode_id = int(self._client.incr(NEXT_EPISODE))
        payload = []
        for i, r in enumerate(batch.rows):
            if r.kind == KIND_START:
                prev = PREV_IS_SELF
            elif i > 0:
                prev = PREV_IS_ROW_BEFORE
            else:
                assert episode.last_index is not None, "a continuing batch follows a written one"
                prev = episode.last_index
            payload.append(encode_row(r.kind, r.flags | r.frame_flags, r.step, episode.episode_id, prev,
                                      r.version, r.reward, r.action, r.frame))
        return payload

    def _send(self, batch: _Batch, deadline: float) -> int:
        if batch.payload is None:
            batch.payload = self._encode(batch)
        blocked_since = None
        while True:
            reply = run_script(self._script, [META, STATE, ACKS],
                               [ROW, self._token, batch.seq, batch.transitions, *batch.payload])
            if int(reply[0]) == 1:
                break
            if blocked_since is None:
                blocked_since = time.monotonic()
                self._stats.blocked_events += 1
            admitted = poll_until(self._may_insert, max(deadline - time.monotonic(), 0.0))
            if not admitted:
                self._stats.blocked_s += time.monotonic() - blocked_since
                self._stats.timeouts += 1
                raise RateLimitTimeout(
                    f"ReplayWriter {self.writer_id}: the rate limiter held this flush for {self.cfg.writer_timeout_s} s "
                    f"(inserted {int(reply[1])}, sampled {int(reply[2])}): the learner is behind or pre-training. "
                    f"{self.pending} steps stay buffered; call flush() again to keep waiting.")
        if blocked_since is not None:
            self._stats.blocked_s += time.monotonic() - blocked_since
        base, duplicate = int(reply[1]), int(reply[2])
        self.inserted = max(self.inserted, int(reply[3]))
        batch.episode.last_index = base + len(batch.rows) - 1
        self._stats.flushes += 1
        self._stats.duplicate_flushes += duplicate
        self._stats.steps_written += batch.transitions
        self._stats.bytes_written += sum(map(len, batch.payload))
        if self._audit is not None:  # one write() per acknowledged flush: a kill never leaves half a line
            digests = " ".join(hashlib.sha1(row).hexdigest() for row in batch.payload)
            os.write(self._audit, f"{base} {batch.transitions} {digests}\n".encode())
        return batch.transitions

    def _may_insert(self) -> bool:
        pipe = self._client.pipeline(transaction=False)
        pipe.hmget(STATE, "inserted", "sampled")
        pipe.hmget(META, "min_size", "samples_per_insert", "spi_tolerance")
        (inserted, sampled), (min_size, spi, tol) = pipe.execute()
        limit = RateLimit(int(min_size), float(spi), float(tol))
        return limit.can_insert(int(inserted or 0), int(sampled or 0))

    def __enter__(self) -> ReplayWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_finite_number(x: object) -> bool:
    if isinstance(x, (bool, np.bool_, str, bytes)):
        return False
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
