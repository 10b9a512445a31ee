"""The replay's Redis keys, its binary row format and the schema check every client runs first.

One row is one frame with the transition that produced it (see the package docstring for the layout).
A row is a single Redis string: a fixed little-endian header, the action (A float32) and the frame
(raw 3x64x64 uint8, or an lz4 block when that is smaller).
"""

from __future__ import annotations

import math
import secrets
import struct
from dataclasses import dataclass, field

import lz4.block
import numpy as np
import redis

from common.config import ReplayConfig

SCHEMA_VERSION = 1
FRAME_SHAPE = (3, 64, 64)
FRAME_BYTES = int(np.prod(FRAME_SHAPE))

PREFIX = "replay:"
META = PREFIX + "meta"
STATE = PREFIX + "state"
ACKS = PREFIX + "acks"
NEXT_EPISODE = PREFIX + "next_episode"
ROW = PREFIX + "row:"

KIND_START, KIND_STEP = 0, 1
FLAG_TERMINATED, FLAG_TRUNCATED, FLAG_COMPRESSED = 1, 2, 4
# `prev` of a row: the global index of the previous frame of its episode, or one of these markers
# (the writer cannot know its rows' indices before the flush script allocates them).
PREV_IS_ROW_BEFORE = -1  # the row just before this one (same flush)
PREV_IS_SELF = -2  # a first frame: windows reaching back before it repeat it (the padding convention)

# kind, flags, pad, step, episode, prev, policy_version, reward
HEADER = struct.Struct("<BBHiqqqf")


class ReplaySchemaError(RuntimeError):
    """The Redis database holds replay data of another schema version, task or shape."""


def frame_capacity(cfg: ReplayConfig) -> int:
    """Frames kept: capacity transitions plus the reserve for episodes' first frames."""
    return cfg.capacity + math.ceil(cfg.capacity * cfg.frame_reserve)


def row_key(index: int) -> str:
    """The Redis key of ring slot `index`."""
    return f"{ROW}{index}"


def encode_frame(obs: np.ndarray, compress: bool) -> tuple[bytes, int]:
    """The frame's bytes as stored, and FLAG_COMPRESSED when they are an lz4 block (only if smaller)."""
    raw = obs.tobytes()
    if compress:
        packed = lz4.block.compress(raw, store_size=False)
        if len(packed) < len(raw):
            return packed, FLAG_COMPRESSED
    return raw, 0


def encode_row(kind: int, flags: int, step: int, episode: int, prev: int, version: int, reward: float,
               action: np.ndarray, frame: bytes) -> bytes:
    """One stored row: the fixed header, the action's float32 bytes, then the (maybe compressed) frame."""
    return HEADER.pack(kind, flags, 0, step, episode, prev, version, reward) + action.tobytes() + frame


@dataclass
class DecodedRows:
    """Rows [start, start + n) as arrays; `present[i]` is False where a row was already evicted, or is corrupt
    (then its index is in `corrupt`: refused, never sampled)."""

    start: int
    present: np.ndarray  # bool [n]
    kind: np.ndarray  # uint8 [n]
    flags: np.ndarray  # uint8 [n]
    step: np.ndarray  # int64 [n]
    episode: np.ndarray  # int64 [n]
    prev: np.ndarray  # int64 [n], markers resolved to global indices
    version: np.ndarray  # int64 [n]
    reward: np.ndarray  # float32 [n]
    action: np.ndarray  # float32 [n, A]
    frames: np.ndarray  # uint8 [n, 3, 64, 64]
    corrupt: list[tuple[int, str]] = field(default_factory=list)
    """(row index, what is wrong with it) for each row refused."""


def _row_fault(index: int, blob: bytes, action_dim: int) -> str | None:
    """Why row `index` cannot be a row of this replay (None if its header and sizes are sound)."""
    body = HEADER.size + 4 * action_dim
    if len(blob) < body:
        return f"{len(blob)} bytes, shorter than a header and an action ({body})"
    kind, flags, _, step, _, prev, _, reward = HEADER.unpack_from(blob)
    if kind not in (KIND_START, KIND_STEP) or flags & ~(FLAG_TERMINATED | FLAG_TRUNCATED | FLAG_COMPRESSED):
        return f"kind {kind} / flags {flags} are not a row's"
    if not (prev in (PREV_IS_ROW_BEFORE, PREV_IS_SELF) or 0 <= prev < index) or step < 0:
        return f"prev {prev} / step {step} point nowhere"
    action = np.frombuffer(blob, np.float32, action_dim, HEADER.size)
    if not (np.isfinite(reward) and np.isfinite(action).all()):
        return "a NaN or infinite reward or action"
    if not flags & FLAG_COMPRESSED and len(blob) - body != FRAME_BYTES:
        return f"a {len(blob) - body}-byte frame, expected {FRAME_BYTES}"
    return None


def decode_rows(start: int, blobs: list[bytes | None], action_dim: int,
                frames: np.ndarray | None = None) -> DecodedRows:
    """Parse MGET results for rows start, start + 1, ...; `frames` may be a (pinned) staging buffer."""
    n = len(blobs)
    out = DecodedRows(
        start=start, present=np.zeros(n, bool), kind=np.zeros(n, np.uint8), flags=np.zeros(n, np.uint8),
        step=np.zeros(n, np.int64), episode=np.zeros(n, np.int64), prev=np.zeros(n, np.int64),
        version=np.zeros(n, np.int64), reward=np.zeros(n, np.float32),
        action=np.zeros((n, action_dim), np.float32),
        frames=frames[:n] if frames is not None else np.empty((n, *FRAME_SHAPE), np.uint8))
    action_bytes = 4 * action_dim
    flat = out.frames.reshape(n, FRAME_BYTES)
    for i, blob in enumerate(blobs):
        if blob is None:
            continue
        index = start + i
        fault = _row_fault(index, blob, action_dim)
        body = HEADER.size + action_bytes
        if fault is None and blob[1] & FLAG_COMPRESSED:
            try:
                data = lz4.block.decompress(memoryview(blob)[body:], uncompressed_size=FRAME_BYTES)
            except lz4.block.LZ4BlockError:
                data = b""
            fault = None if len(data) == FRAME_BYTES else "an lz4 frame that does not decompress to 3x64x64"
        else:
            data = memoryview(blob)[body:]
        if fault is not None:  # garbage in the replay's keys: refused here, so never sampled or learned from
            out.corrupt.append((index, fault))
            continue
        kind, flags, _, step, episode, prev, version, reward = HEADER.unpack_from(blob)
        flat[i] = np.frombuffer(data, np.uint8)
        out.action[i] = np.frombuffer(blob, np.float32, action_dim, HEADER.size)
        out.present[i] = True
        out.kind[i], out.flags[i], out.step[i], out.episode[i] = kind, flags, step, episode
        out.prev[i] = index - 1 if prev == PREV_IS_ROW_BEFORE else index if prev == PREV_IS_SELF else prev
        out.version[i], out.reward[i] = version, reward
    return out


_ENSURE_SCHEMA = """#!lua
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {'orphan'} end
  redis.call('HSET', KEYS[1], unpack(ARGV))
  return {'created'}
end
return redis.call('HGETALL', KEYS[1])
"""


def ensure_schema(client: redis.Redis, cfg: ReplayConfig, task: str, action_dim: int) -> dict[str, str]:
    """Record this replay's schema on first use, else check it matches; returns the stored metadata.

    Raises ReplaySchemaError, without touching the stored data, when the database holds another
    schema version, task, shape or capacity (which would make its rows unreadable or its windows wrong).
    """
    expected = {
        "schema_version": str(SCHEMA_VERSION), "task": task, "obs_shape": "x".join(map(str, FRAME_SHAPE)),
        "action_dim": str(action_dim), "capacity": str(cfg.capacity), "frame_capacity": str(frame_capacity(cfg)),
    }
    # Rate-limit settings are recorded for writers to read; the learner (SequenceReplay) owns them.
    limits = {"min_size": str(cfg.min_size), "samples_per_insert": repr(float(cfg.samples_per_insert)),
              "spi_tolerance": repr(float(cfg.spi_tolerance)), "run_id": secrets.token_hex(8)}
    args = [item for pair in {**expected, **limits}.items() for item in pair]
    reply = [x.decode() if isinstance(x, bytes) else x for x in client.eval(_ENSURE_SCHEMA, 2, META, STATE, *args)]
    where = describe(client)
    if reply == ["orphan"]:
        raise ReplaySchemaError(
            f"Redis at {where} holds replay counters ({STATE}) but no schema record ({META}); it was not "
            "written by this version of slac-dist. Nothing was changed. Point replay.url at another "
            "database, or FLUSHDB it deliberately if the data is not needed.")
    if reply == ["created"]:
        return {**expected, **limits}
    stored = dict(zip(reply[0::2], reply[1::2], strict=True))
    wrong = [f"{k}: stored {stored.get(k)!r}, this run {v!r}" for k, v in expected.items() if stored.get(k) != v]
    if wrong:
        raise ReplaySchemaError(
            f"Redis at {where} holds replay data of another schema, task or shape ({'; '.join(wrong)}). "
            "The stored data was not touched. Use a fresh data dir or another replay.url database for "
            "this run, or resume with the settings the data was written with.")
    return stored


def describe(client: redis.Redis) -> str:
    """redis://host:port/db of a client, for error messages."""
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
