"""SequenceReplay: the learner's side of the replay (incremental sync, sampling, rate limit, snapshots)."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import redis
import torch

from common.batch import Batch
from common.config import ReplayConfig
from replay_service.client import connect, run_script
from replay_service.limiter import RateLimit, poll_until
from replay_service.mirror import DeviceRing
from replay_service.schema import (
    ACKS,
    FRAME_SHAPE,
    META,
    STATE,
    decode_rows,
    describe,
    ensure_schema,
    frame_capacity,
    row_key,
)

log = logging.getLogger(__name__)

SYNC_CHUNK = 128
"""Rows per MGET during sync (~1.6 MB per reply with raw frames)."""

# Atomically: count n samples unless this (learner token, seq) was counted already (a call retried after
# its reply was lost, which redis-py's reconnect does by itself), as the writers' flushes do. Replies the
# `sampled` total either way.
_RECORD = """#!lua
local state, acks = KEYS[1], KEYS[2]
local token, seq, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local last = tonumber(redis.call('HGET', acks, token))
if last and last >= seq then return tonumber(redis.call('HGET', state, 'sampled') or 0) end
redis.call('HSET', acks, token, seq)
return redis.call('HINCRBY', state, 'sampled', n)
"""


class SequenceReplay:
    """Mirror of the Redis replay on `device`, sampled as common/batch.py windows of sequence_length + 1 frames.

    `sync()` pulls rows new since the last sync (each frame crosses the wire and the host-device link
    once); `sample()` touches only device tensors. The learner owns the rate limiter's settings: it
    records them in Redis on connect, and `record_samples()` advances the shared `sampled` counter.
    """

    def __init__(self, url: str, cfg: ReplayConfig, task: str, action_dim: int, sequence_length: int,
                 device: str | torch.device = "cpu") -> None:
        if sequence_length < 1:
            raise ValueError(f"SequenceReplay: sequence_length must be >= 1, got {sequence_length}")
        self.url, self.cfg, self.task, self.action_dim = url, cfg, task, action_dim
        self.sequence_length = sequence_length
        self.device = torch.device(device)
        self.limit = RateLimit.from_config(cfg)
        self._client = connect(url, cfg.connect_timeout_s, name="replay-mirror")
        meta = ensure_schema(self._client, cfg, task, action_dim)
        self._client.hset(META, mapping={"min_size": str(cfg.min_size),
                                         "samples_per_insert": repr(float(cfg.samples_per_insert)),
                                         "spi_tolerance": repr(float(cfg.spi_tolerance))})
        self._run_id = meta["run_id"]
        self._record = self._client.register_script(_RECORD)
        self._record_token = f"learner:{uuid.uuid4().hex}"  # one per mirror: a restarted learner counts afresh
        self._record_seq = 0
        self.ring = DeviceRing(frame_capacity(cfg), action_dim, sequence_length, self.device)
        self._staging = np.empty((SYNC_CHUNK, *FRAME_SHAPE), np.uint8)
        if self.device.type == "cuda":  # pinned staging makes the host-to-device copy direct
            self._staging = torch.empty((SYNC_CHUNK, *FRAME_SHAPE), dtype=torch.uint8).pin_memory().numpy()
        self._inserted = 0
        self._sampled = 0
        self._synced_rows = 0
        self._sync_s = 0.0
        self._resyncs = 0
        self._corrupt_rows = 0

    # --- sync -------------------------------------------------------------------------------------
    def sync(self) -> int:
        """Pull rows written since the last sync into the mirror; returns how many rows were new."""
        t0 = time.perf_counter()
        pipe = self._client.pipeline(transaction=True)
        pipe.hmget(STATE, "head", "tail", "inserted", "sampled")
        pipe.hget(META, "run_id")
        (head, tail, inserted, sampled), run_id = pipe.execute()
        head, tail = int(head or 0), int(tail or 0)
        self._inserted, self._sampled = int(inserted or 0), int(sampled or 0)
        ring = self.ring
        run_id = run_id.decode() if run_id else None
        if run_id != self._run_id:  # the database was flushed and re-created: start over
            ensure_schema(self._client, self.cfg, self.task, self.action_dim)
            self._run_id = self._client.hget(META, "run_id").decode()
            ring.reset()
            self._resyncs += 1
            return self.sync()
        if head < ring.head:
            # Redis came back with fewer rows than we saw (an older snapshot, or a power loss under
            # appendfsync everysec); rows from head on will be rewritten with other content. Rare:
            # start over rather than patch the mirror.
            ring.reset()
            self._resyncs += 1
            return self.sync()
        if head == ring.head and tail <= ring.tail:
            return 0  # nothing new and nothing evicted: the sampling index stands
        start = max(ring.head, tail, head - ring.R)
        for lo in range(start, head, SYNC_CHUNK):
            hi = min(lo + SYNC_CHUNK, head)
            blobs = self._client.mget([row_key(i) for i in range(lo, hi)])
            rows = decode_rows(lo, blobs, self.action_dim, self._staging)
            if rows.corrupt:  # garbage written into the replay's keys: those rows are never sampled
                self._corrupt_rows += len(rows.corrupt)
                log.warning("refused %d corrupt replay rows (row %d: %s); %d refused so far", len(rows.corrupt),
                            *rows.corrupt[0], self._corrupt_rows)
            ring.write(rows)
        if head > start:
            tail = int(self._client.hget(STATE, "tail") or 0)  # rows evicted while we read
        ring.head = max(ring.head, head)
        ring.link(start, tail)
        self._synced_rows += max(head - start, 0)
        self._sync_s += time.perf_counter() - t0
        return max(head - start, 0)

    # --- sampling ---------------------------------------------------------------------------------
    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """B windows (common/batch.py), last transition uniform over the sampleable transitions.

        A transition is sampleable when every frame its window needs is still stored: near the FIFO
        tail, windows whose earlier frames were evicted are skipped rather than padded.
        """
        return self.ring.sample(batch_size, generator)

    @property
    def size(self) -> int:
        """Transitions in the mirror (as of the last sync)."""
        return self.ring.transitions

    @property
    def sampleable(self) -> int:
        """Transitions whose whole window is in the mirror (as of the last sync)."""
        return self.ring.sampleable

    @property
    def num_inserted(self) -> int:
        """Transitions ever inserted by all writers (read from Redis)."""
        return int(self._client.hget(STATE, "inserted") or 0)

    def can_sample(self, samples: int = 1) -> bool:
        """Whether the rate limiter lets the learner take `samples` samples now (the last of them included)
        and the mirror has something to sample."""
        inserted, sampled = self._client.hmget(STATE, "inserted", "sampled")
        self._inserted, self._sampled = int(inserted or 0), int(sampled or 0)
        return self._admits(samples)

    def wait_for_sample(self, timeout_s: float, samples: int = 1) -> bool:
        """Sync until the limiter admits `samples` samples (below min size, or too far ahead of inserts:
        wait); False on timeout. One Redis round trip per try: sync() reads the limiter's counters too."""
        def ready() -> bool:
            self.sync()
            return self._admits(samples)

        return poll_until(ready, timeout_s)

    def _admits(self, samples: int) -> bool:
        return self.ring.sampleable > 0 and self.limit.can_sample(self._inserted, self._sampled + samples - 1)

    def record_samples(self, n: int = 1) -> None:
        """Count n learner updates against the samples-per-insert ratio (shared with all writers), exactly once:
        each call carries a sequence number, so a retry whose first reply was lost is not counted again."""
        self._record_seq += 1
        self._sampled = int(run_script(self._record, [STATE, ACKS], [self._record_token, self._record_seq, n]))

    # --- reporting and checkpoints ----------------------------------------------------------------
    def stats(self, current_version: int | None = None) -> dict[str, float]:
        """Sizes, counters, the samples-per-insert ratio and policy-version staleness (always the same keys).

        size/frames/sampleable: the mirror as of the last sync; inserted/sampled: the shared counters;
        stored_version_mean: over stored transitions; sampled_version_mean: over the last transitions
        of windows sampled since the previous stats() call (NaN if none); staleness_* = current_version
        minus those means (only with current_version).
        """
        ring = self.ring
        out = {
            "size": float(ring.transitions), "frames": float(ring.head - ring.tail), "sampleable": float(ring.sampleable),
            "inserted": float(self._inserted), "sampled": float(self._sampled),
            "samples_per_insert": self._sampled / max(self._inserted, 1),
            "synced_rows": float(self._synced_rows), "sync_s": self._sync_s, "resyncs": float(self._resyncs),
            "corrupt_rows": float(self._corrupt_rows),
            "stored_version_mean": ring.version_mean,
        }
        out["sampled_version_mean"] = ring.take_sampled_version_mean()  # since the last stats(); NaN if none
        if current_version is not None:
            out["staleness_stored"] = current_version - ring.version_mean
            out["staleness_sampled"] = current_version - out["sampled_version_mean"]
        return out

    def snapshot(self, copy_to: str | Path | None = None, timeout_s: float = 600.0,
                 rdb_path: str | Path | None = None) -> str:
        """BGSAVE and wait for it; returns the RDB path (on the server's host), or `copy_to` after copying.

        The path comes from CONFIG GET; a client the server's ACL refuses CONFIG (the `replay` user of a
        secure RedisServer) passes `rdb_path`, the server's `RedisServer.rdb_path`, instead.
        `RedisServer(data_dir, cfg, restore_from=path)` starts a server on that snapshot.
        """
        return self.finish_snapshot(self.begin_snapshot(), copy_to, timeout_s, rdb_path)

    def begin_snapshot(self) -> tuple[int, str]:
        """Start a BGSAVE (Redis forks: the snapshot holds the replay as of this call) and return at once; pass
        the result (the server's save count and run id) to `finish_snapshot`."""
        info = self._client.info()
        try:
            self._client.bgsave()
        except redis.ResponseError:  # an AOF rewrite or a save is running: save as soon as it ends
            self._client.bgsave(schedule=True)
        return int(info["rdb_saves"]), str(info["run_id"])

    def finish_snapshot(self, started: tuple[int, str], copy_to: str | Path | None = None, timeout_s: float = 600.0,
                        rdb_path: str | Path | None = None) -> str:
        """Wait for the BGSAVE `begin_snapshot` started; the RDB path or `copy_to`, as `snapshot` says. Raises at
        once if the server restarted meanwhile (its fork died with it: that save never ends)."""
        done = poll_until(lambda: self._bgsave_done(*started), timeout_s, max_delay_s=0.2)
        info = self._client.info("persistence")
        if not done or info.get("rdb_last_bgsave_status") != "ok":
            raise RuntimeError(f"replay snapshot: BGSAVE on {describe(self._client)} did not succeed within "
                               f"{timeout_s} s (status {info.get('rdb_last_bgsave_status')}); check the server's "
                               "log and free disk space")
        try:
            conf = self._client.config_get("dir")
            conf.update(self._client.config_get("dbfilename"))
            path = Path(conf["dir"]) / conf["dbfilename"]
        except redis.exceptions.NoPermissionError:
            if rdb_path is None:
                raise
            path = Path(rdb_path)
        if copy_to is None:
            return str(path)
        copy_to = Path(copy_to)
        tmp = copy_to.with_name(copy_to.name + ".tmp")
        shutil.copyfile(path, tmp)
        tmp.replace(copy_to)
        return str(copy_to)

    def _bgsave_done(self, saves_before: int, run_id: str) -> bool:
        info = self._client.info()
        if info["run_id"] != run_id:
            raise RuntimeError(f"replay snapshot: the server at {describe(self._client)} restarted during its BGSAVE; "
                               "this snapshot is lost (the next checkpoint takes a new one)")
        return info["rdb_saves"] > saves_before and info["rdb_bgsave_in_progress"] == 0

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SequenceReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
