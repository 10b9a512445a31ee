"""Redis-backed sequence replay: actors append episodes, the learner samples windows from a device mirror.

Redis layout (one logical database; every key starts with `replay:`)
--------------------------------------------------------------------
replay:meta          hash  schema_version, task, obs_shape ("3x64x64"), action_dim, capacity,
                           frame_capacity, run_id (random, new when the database is re-created), and the
                           rate limiter's min_size, samples_per_insert, spi_tolerance (the learner's values).
replay:state         hash  head (next row index), tail (oldest live row), stored (live transitions),
                           inserted (transitions ever), sampled (learner updates recorded).
replay:row:<g>       string one row = one frame, for every g in [tail, head): a 36-byte header
                           (kind: 0 first frame / 1 transition, flags: terminated, truncated,
                           lz4-compressed; step in episode; episode id; prev; policy version; reward),
                           the action (A float32; zeros on a first frame) and the frame (raw 3x64x64
                           uint8, or an lz4 block when smaller). A transition row holds (a[t], r[t],
                           x[t+1]); its x[t] is the row `prev`, the previous frame of the same episode.
replay:next_episode  int   INCR source of episode ids (unique across all writers and nodes).
replay:acks          hash  writer token -> "seq:base" of its last applied flush, learner token -> seq of its last
                           counted record_samples (exactly-once retries).

Writes: a writer's flush is ONE Lua script (atomic; AOF records its effects as MULTI/EXEC): check the
rate limiter, append the rows of one episode at [head, head + n) (so an episode's rows are contiguous
within a flush, and episodes of different writers interleave only between flushes), bump the
counters, then evict the oldest rows (FIFO, in row order) while stored > capacity or
head - tail > frame_capacity. frame_capacity = capacity * (1 + frame_reserve) leaves room for one first
frame per episode; when episodes are so short that first frames exceed the reserve, FIFO keeps fewer
than `capacity` transitions. An episode's first frame is written with its first transition, never alone.

Reads: `SequenceReplay.sync()` MGETs rows [its head, head) in chunks into a device ring (slot = g mod
frame_capacity) and rebuilds the sampling index; sampling follows `prev` on the device. Near the FIFO
tail an episode may have lost its early frames: a transition is sampleable only while every frame of
its window is stored (no window is ever padded with a frame that is not its episode's first frame).

Rate limiting (limiter.py): Reverb's SampleToInsertRatio on the shared `inserted` / `sampled`
counters; the flush script refuses a flush whole when inserts are too far ahead, and the writer then
polls the counters (backoff) for up to replay.writer_timeout_s before raising RateLimitTimeout.

Failures: a writer killed mid-episode leaves its whole flushes (sampleable; the episode just has no
final flag) and nothing half-written; a flush retried after a lost reply is dropped by its ack.

Durability: the embedded server runs AOF (appendfsync = replay.appendfsync, default everysec). Redis
write()s a command's effects to the AOF before it replies, so a flush that returned survives a kill -9
of redis-server (the kernel holds the written file; tested). Two holes remain under everysec: a power
loss or kernel crash loses up to ~1 s of acknowledged flushes, and while a background fsync stalls on
a slow disk Redis postpones the write (up to 2 s), so a crash then loses those flushes too. With
appendfsync=always neither can happen (one fsync per flush; the bench quotes its cost). Redis 7.0 has
no WAITAOF, so a per-flush durability wait is not offered.

Memory: used_memory stays near 1.17x capacity x 12.3 KB with raw frames (jemalloc's 14 KiB class)
and lower with lz4; outside it, the AOF buffer may briefly hold up to 2 s of writes during an fsync,
and the AOF file is rewritten automatically when it doubles (disk: ~2-3x the dataset).

A torn AOF tail (a MULTI without EXEC) is dropped on reload, so no flush is ever half-present. After
a restart the reader re-syncs from its head; if Redis came back with fewer rows than it had seen, or
the database was re-created (new run_id), it resets the mirror and pulls everything again.
"""

from replay_service.client import ReplayConnectionError, connect
from replay_service.limiter import RateLimit
from replay_service.replay import SequenceReplay
from replay_service.schema import SCHEMA_VERSION, ReplaySchemaError, ensure_schema, frame_capacity
from replay_service.server import RedisNotInstalledError, RedisServer, maxmemory_bytes
from replay_service.writer import RateLimitTimeout, ReplayFullError, ReplayWriter

__all__ = [
    "SCHEMA_VERSION", "RateLimit", "RateLimitTimeout", "RedisNotInstalledError", "RedisServer",
    "ReplayConnectionError", "ReplayFullError", "ReplaySchemaError", "ReplayWriter", "SequenceReplay", "connect",
    "ensure_schema", "frame_capacity", "maxmemory_bytes",
]
