"""The learner's device-resident copy of the replay: a ring of frames indexed by global row index.

Row g lives in slot g % R (R = frame capacity). Every row carries `prev`, the global index of its
episode's previous frame (a first frame points at itself), so a window is found by following `prev`
T - 1 times from its last frame; at an episode's first frame the chain stays put, which produces
exactly the padding convention of common/batch.py. Everything here is tensor arithmetic on `device`.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from common.batch import Batch
from replay_service.schema import FLAG_TERMINATED, FRAME_SHAPE, KIND_START, DecodedRows


class DeviceRing:
    """Frames and per-row data of the live rows [tail, head) on one device, plus the sampling index."""

    def __init__(self, frames: int, action_dim: int, sequence_length: int, device: torch.device) -> None:
        self.R, self.A, self.T = frames, action_dim, sequence_length + 1
        self.device = device
        self.frames = torch.zeros((frames, *FRAME_SHAPE), dtype=torch.uint8, device=device)
        self.gidx = torch.full((frames,), -1, dtype=torch.int64, device=device)  # global index held per slot
        self.prev = torch.zeros(frames, dtype=torch.int64, device=device)
        self.anc = torch.full((frames,), -1, dtype=torch.int64, device=device)  # oldest frame its window needs
        self.action = torch.zeros((frames, action_dim), dtype=torch.float32, device=device)
        self.reward = torch.zeros(frames, dtype=torch.float32, device=device)
        self.terminated = torch.zeros(frames, dtype=torch.float32, device=device)
        self.is_start = torch.zeros(frames, dtype=torch.bool, device=device)
        self.version = torch.zeros(frames, dtype=torch.int64, device=device)
        self.head = 0
        self.tail = 0
        self._cum = torch.zeros(frames, dtype=torch.int64, device=device)
        self.sampleable = 0
        self.transitions = 0
        self.version_mean = 0.0
        # Summed by sample() (on the prefetcher's side stream, in the update loop's thread) and taken by
        # stats() (the poll thread): swapped under a lock, read after the event that follows its last add.
        self._sampled_version_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._sampled_count = 0
        self._sampled_event: torch.cuda.Event | None = None
        self._stat_lock = threading.Lock()
        # Per-row metadata crosses to the device as two packed copies (int64 and float32 columns) instead of
        # eight; pinned on CUDA so the copies are asynchronous (one event then waits for all of them).
        self._pinned = device.type == "cuda"
        self._ints = self._floats = None

    def reset(self) -> None:
        """Forget every row (the Redis database was replaced)."""
        self.gidx.fill_(-1)
        self.head = self.tail = 0
        self.refresh(0)

    def write(self, rows: DecodedRows) -> None:
        """Copy decoded rows into their slots: three host-to-device copies per chunk (frames, integer and float
        columns), asynchronous from pinned memory on CUDA and waited for once at the end, since the caller
        refills its staging buffer for the next chunk right after."""
        n = len(rows.present)
        index = np.arange(rows.start, rows.start + n, dtype=np.int64)
        ints, floats = self._staging(n)
        ints[:, 0] = np.where(rows.present, index, -1)
        ints[:, 1] = rows.prev
        ints[:, 2] = rows.version
        ints[:, 3] = rows.kind == KIND_START
        ints[:, 4] = index % self.R  # the rows' slots
        floats[:, 0] = rows.reward
        floats[:, 1] = (rows.flags & FLAG_TERMINATED) > 0
        floats[:, 2:] = rows.action
        dev = self.device
        frames = torch.from_numpy(rows.frames[:n]).to(dev, non_blocking=True)
        ints_d = torch.from_numpy(ints).to(dev, non_blocking=True)
        floats_d = torch.from_numpy(floats).to(dev, non_blocking=True)
        slots = ints_d[:, 4]
        self.frames[slots] = frames
        self.gidx[slots], self.prev[slots], self.version[slots] = ints_d[:, 0], ints_d[:, 1], ints_d[:, 2]
        self.is_start[slots] = ints_d[:, 3].bool()
        self.reward[slots], self.terminated[slots], self.action[slots] = floats_d[:, 0], floats_d[:, 1], floats_d[:, 2:]
        if self._pinned:
            event = torch.cuda.Event()
            event.record()
            event.synchronize()  # the staging buffers (frames included) may be overwritten from here on
        self.head = max(self.head, rows.start + n)

    def _staging(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Host buffers for n rows' integer and float columns (pinned on CUDA), grown as needed."""
        if self._ints is None or len(self._ints) < n:
            ints = torch.empty((n, 5), dtype=torch.int64)
            floats = torch.empty((n, 2 + self.A), dtype=torch.float32)
            if self._pinned:
                ints, floats = ints.pin_memory(), floats.pin_memory()
            self._ints, self._floats = ints.numpy(), floats.numpy()
        return self._ints[:n], self._floats[:n]

    def link(self, start: int, tail: int) -> None:
        """Compute, for rows [start, head), the oldest frame their window needs; then refresh."""
        self.tail = max(tail, self.head - self.R, self.tail)
        if start < self.head:
            new = torch.arange(start, self.head, dtype=torch.int64, device=self.device)
            x = new.clone()
            for _ in range(self.T - 1):
                s = x % self.R
                live = (x >= self.tail) & (self.gidx[s] == x)
                x = torch.where(live, self.prev[s], x)
            # A chain that met an evicted row stops there, below tail, and one that met a row refused as corrupt
            # (live index, nothing stored) stops on it: either way the window is not sampleable.
            held = (x >= self.tail) & (self.gidx[x % self.R] == x)
            self.anc[new % self.R] = torch.where(held, x, torch.full_like(x, -1))
        self.refresh(self.tail)

    def refresh(self, tail: int) -> None:
        """Rebuild the sampling index: a transition is sampleable iff every frame of its window is live."""
        self.tail = max(self.tail, tail)
        live = (self.gidx >= self.tail) & (self.gidx >= 0)
        step = live & ~self.is_start
        valid = step & (self.anc >= self.tail)
        torch.cumsum(valid, 0, out=self._cum)
        counts = torch.stack([self._cum[-1], step.sum(), (self.version * step).sum()]).tolist()
        self.sampleable, self.transitions = int(counts[0]), int(counts[1])
        self.version_mean = counts[2] / self.transitions if self.transitions else 0.0

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """B windows whose last transition is uniform over all sampleable transitions."""
        if self.sampleable == 0:
            raise RuntimeError("SequenceReplay.sample: no sampleable transitions in the mirror yet; call sync() "
                               "(or wait_for_sample()) after actors have written steps")
        # The generator may live on another device than the mirror (e.g. a CPU generator, CUDA mirror).
        where = generator.device if generator is not None else self.device
        u = torch.randint(0, self.sampleable, (batch_size,), device=where, generator=generator).to(self.device)
        last = self.gidx[torch.searchsorted(self._cum, u, right=True)]
        chain = [last]  # chain[k] = global index of frame T - 1 - k
        for _ in range(self.T - 1):
            chain.append(self.prev[chain[-1] % self.R])
        g = torch.stack(chain[::-1], dim=1)  # [B, T], oldest first
        s = g % self.R
        after = s[:, 1:]  # slot of frame t + 1 carries transition t; a first frame carries zeros
        first = self.is_start[s] & torch.cat([g[:, 1:] != g[:, :-1], torch.ones_like(g[:, :1], dtype=torch.bool)], 1)
        with self._stat_lock:
            self._sampled_version_sum += self.version[s[:, -1]].sum()
            self._sampled_count += batch_size
            if self.device.type == "cuda":
                self._sampled_event = torch.cuda.Event()
                self._sampled_event.record()  # on the stream sample() runs on (the prefetcher's side stream)
        # index_select on the [R, 12288] view copies whole frames (memcpy), ~2x faster than frames[s] on CPU
        obs = self.frames.view(self.R, -1).index_select(0, s.reshape(-1)).view(batch_size, self.T, *FRAME_SHAPE)
        return Batch(obs=obs, action=self.action[after], reward=self.reward[after],
                     terminated=self.terminated[after], first=first)

    def take_sampled_version_mean(self) -> float:
        """Mean policy version of the sampled last transitions since the previous call (NaN if none); safe to call
        from another thread than sample()'s."""
        with self._stat_lock:
            total, count, event = self._sampled_version_sum, self._sampled_count, self._sampled_event
            if count == 0:
                return float("nan")
            self._sampled_version_sum = torch.zeros_like(total)
            self._sampled_count, self._sampled_event = 0, None
        if event is not None:
            event.synchronize()
        return float(total) / count
