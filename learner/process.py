"""The learner process: sync the replay mirror, sample, update, publish weights, checkpoint.

Phases follow the official SLAC implementation: (1) wait for the initial random collection
(`learner.initial_collection_agent_steps` agent steps, one stored transition each), compiling the update
meanwhile (`Learner.warm_up`), (2) pre-train the model alone for
`learner.model_pretrain_steps` updates, (3) publish the first policy and train model, critics and actor
jointly, one update per inserted transition (the replay's rate limiter enforces the ratio). The driver
(deploy/) wraps this class in `ray.remote(num_gpus=..., max_concurrency=3)` so `poll` and `stop` answer while
`run` loops and a `checkpoint` is being written; a lock keeps a checkpoint from interleaving with an update.

The loop keeps the device busy: metrics are summed on the device and fetched (with the finiteness
check) every `learner.metrics_every` updates; Redis is visited once per block of `learner.replay_every`
updates (mirror sync, rate-limit check for the whole block, one `record_samples`); the next batch is
sampled while the current update runs (`BatchPrefetcher`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import ray
import torch

from common.config import Config
from common.priority import node_niceness, set_niceness
from common.run_files import RunFiles
from learner.checkpoint import save_checkpoint
from learner.learner import Learner
from learner.pipeline import BatchPrefetcher, MetricSums, SectionClock
from replay_service import SequenceReplay
from replay_service.server import RDB_FILE

log = logging.getLogger(__name__)


class WeightPublisher(Protocol):
    """Makes a weights blob available to every actor (deploy passes a Ray object-store one)."""

    def publish(self, version: int, blob: dict[str, Any]) -> None: ...

    def version(self) -> int:
        """The newest version published so far, by this learner or an earlier life of it (0 if none)."""
        ...


def resolve_device(requested: str) -> torch.device:
    """`learner.device` as a torch device: auto takes CUDA when torch sees one; cuda without one is refused."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("learner.device=cuda but torch sees no CUDA device; use --learner.device cpu")
    return torch.device(requested)


def host_info() -> dict[str, Any]:
    """What this process runs on: torch's intra-op threads, Ray's CPUs for it, the machine's cores, its niceness
    (the run's W&B config and summary carry it, under `execution`)."""
    assigned = ray.get_runtime_context().get_assigned_resources() if ray.is_initialized() else {}
    return {"threads": torch.get_num_threads(), "ray_cpus": assigned.get("CPU"),
            "cores": len(os.sched_getaffinity(0)), "nice": os.getpriority(os.PRIO_PROCESS, 0)}


class LearnerProcess:
    """Owns the `Learner` and the replay mirror; runs SLAC's three phases until stopped."""

    def __init__(self, cfg: Config, action_dim: int, replay_url: str, publisher: WeightPublisher,
                 run_dir: str, resume_state: dict[str, Any] | None = None) -> None:
        self.cfg, self.publisher, self.run_dir = cfg, publisher, Path(run_dir)
        if isinstance(cfg.learner.cpus, int):
            torch.set_num_threads(cfg.learner.cpus)  # Ray set OMP_NUM_THREADS to its CPUs; a 1-CPU actor gets 1
        set_niceness(node_niceness())  # above the actors' and the evaluator's (common/priority.py)
        self.host = host_info()
        self.device = resolve_device(cfg.learner.device)
        if self.device.type == "cpu":
            log.warning("learner running on CPU (torch sees no CUDA device)")
        self.learner = Learner(cfg, action_dim, device=self.device, seed=cfg.run.seed)
        self.replay = SequenceReplay(replay_url, cfg.replay, cfg.run.task, action_dim,
                                     cfg.model.sequence_length, device=self.device)
        self.counters: dict[str, int] = {"pretrain_updates": 0, "updates": 0, "version": 0}
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(cfg.run.seed)
        if resume_state is not None:
            self.learner.load_state_dict(resume_state["learner"])
            self.counters.update(resume_state["counters"])
            self._generator.set_state(resume_state["sample_generator"].to(self._generator.get_state().device))
        # Publish above whatever the actors may hold: a learner restarted from an older checkpoint, or from
        # scratch after it had published, would otherwise publish versions the board ignores (and the
        # actors would act on the dead learner's weights, their version lag meaningless) until it caught up.
        self.counters["version"] = max(self.counters["version"], publisher.version())
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._device_sums = MetricSums()
        self._unrecorded_samples = 0
        self._clock = SectionClock()  # joint training: where the learner's time goes (W&B time/learner_*)
        self._figure: np.ndarray | None = None
        self._phase = "collect"
        self._node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        # The embedded server's snapshot, in the run dir on the head (the `replay` user may not CONFIG GET it).
        self._rdb_path = None if cfg.replay.url else RunFiles(self.run_dir).redis / RDB_FILE
        limit = cfg.replay
        # A block may not take more than a quarter of the limiter's slack, so writers never stall on it.
        every = cfg.learner.replay_every
        every = (100 if self.device.type == "cuda" else 10) if every == "auto" else every
        self.block = max(1, min(every, int(limit.samples_per_insert * limit.spi_tolerance / 4)))
        sample_generator = self._generator
        self._prefetch = {size: BatchPrefetcher(lambda n=size: self.replay.sample(n, generator=sample_generator),
                                                sample_generator, self.device)
                          for size in {cfg.model.batch_size, cfg.sac.batch_size}}

    # --- called from the driver while `run` loops -------------------------------------------------
    def poll(self) -> dict[str, Any]:
        """Mean metrics since the last poll, counters, phase, replay stats and any new figure."""
        with self._lock:
            metrics = {k: self._sums[k] / self._counts[k] for k in self._sums}
            self._sums.clear()
            self._counts.clear()
            figure, self._figure = self._figure, None
            counters = dict(self.counters)
            compile_s = self.learner.compile_seconds
        if compile_s:
            metrics["learner/first_update_s"] = sum(compile_s.values())  # compilation, when learner.compile is on
        shares = self._clock.fractions()
        if self._phase == "train":
            metrics.update({f"time/learner_{name}": share for name, share in shares.items()})
            metrics["bound/learner_wait_fraction"] = shares.get("replay", 0.0)
        return {"metrics": metrics, "counters": counters, "phase": self._phase, "figure": figure, "node_id": self._node_id,
                "execution": {**self.learner.execution, **self.host},
                "replay": self.replay.stats(current_version=counters["version"])}

    def stop(self) -> None:
        self._stop.set()

    def checkpoint(self, extra: dict[str, Any], replay: bool = True) -> str:
        """Write an atomic checkpoint (learner, counters, config, replay snapshot and `extra`).

        Only the snapshot to host memory, the sample count and the start of the replay's BGSAVE (a fork: the
        replay as of this instant) hold the update lock; waiting for the BGSAVE, `torch.save` and the fsync
        run after it on this thread (one of Ray's three) while the loop goes on updating. A several-second write
        every checkpoint interval would otherwise stall a fast learner for that long.

        `replay=False` (the replay's server is lost for good) touches no Redis: no sample count, no snapshot
        (`replay_snapshot` is None; the replay's data stays in its AOF), so the learner's work is kept.
        """
        with self._lock:
            self._fetch_metrics()  # raises rather than save networks stepped on a non-finite loss
            if replay:
                self._record_samples()
            pending = [p.generator_state() for p in self._prefetch.values() if p.pending]
            state = {"learner": self.learner.state_dict(), "counters": dict(self.counters),
                     "config": self.cfg.to_dict(), "extra": extra,
                     # The state before any batch drawn ahead: a resumed run samples that batch again.
                     "sample_generator": pending[0] if pending else self._generator.get_state()}
            updates = self.counters["pretrain_updates"] + self.counters["updates"]
            snapshot = self.replay.begin_snapshot() if replay else None
        state["replay_snapshot"] = (None if snapshot is None else
                                    self.replay.finish_snapshot(snapshot, rdb_path=self._rdb_path))
        return str(save_checkpoint(RunFiles(self.run_dir).checkpoints, updates, state))

    # --- the loop ---------------------------------------------------------------------------------
    def run(self) -> dict[str, int]:
        """Run the phases until `stop()`; returns the final counters."""
        try:
            if self._wait_for_initial_collection():
                self._pretrain_model()
            if not self._stop.is_set():
                self._publish()  # the first policy, or the resumed one for the fresh actor processes
            self._train_jointly()
        finally:
            # A last look at Redis so the final stats count the actors' last flushes. The connection
            # stays open: the driver's final checkpoint still snapshots the replay through it.
            with self._lock:
                self._record_samples()
            self.replay.sync()
            self.replay.can_sample()
        with self._lock:
            self._fetch_metrics()
        return dict(self.counters)

    def _wait_for_initial_collection(self) -> bool:
        """Compile the update while the actors collect (`Learner.warm_up`), then wait for the initial collection."""
        self._phase = "collect"
        if self.counters["pretrain_updates"] == 0 and self.counters["updates"] == 0:
            self.learner.warm_up()
        while not self._stop.is_set():
            self.replay.sync()
            if self.replay.size >= self.cfg.initial_collection_size:
                return True
            self._stop.wait(0.1)
        return False

    def _pretrain_model(self) -> None:
        """Model-only updates on the initial data (no `record_samples`: actors stay held back)."""
        self._phase = "pretrain"
        prefetch = self._prefetch[self.cfg.model.batch_size]
        while self.counters["pretrain_updates"] < self.cfg.learner.model_pretrain_steps and not self._stop.is_set():
            if self.counters["pretrain_updates"] % self.block == 0:
                prefetch.fence()
                self.replay.sync()
            batch = prefetch.next()
            with self._lock:
                self._device_sums.add(self.learner.update_model(batch))
                self.counters["pretrain_updates"] += 1
                self._after_update(self.counters["pretrain_updates"])
            self._maybe_figure(batch, self.counters["pretrain_updates"])
        prefetch.discard()
        with self._lock:
            self._fetch_metrics()  # the joint phase's metrics have other keys

    def _train_jointly(self) -> None:
        """Blocks of `self.block` updates, each admitted whole by the rate limiter and recorded once."""
        self._phase = "train"
        prefetch = self._prefetch[self.cfg.sac.batch_size]
        clock = self._clock
        while not self._stop.is_set():
            # Syncs the mirror while it waits; the block's last sample must be within the limiter's bounds.
            with clock.section("replay"):
                prefetch.fence()
                admitted = self.replay.wait_for_sample(timeout_s=0.2, samples=self.block)
            if not admitted:
                continue  # the actors are behind the samples-per-insert target: wait for inserts
            for _ in range(self.block):
                with clock.section("sample"):
                    batch = prefetch.next()
                with clock.section("update"), self._lock:
                    self._device_sums.add(self.learner.update(batch))
                    self.counters["updates"] += 1
                    self._unrecorded_samples += 1
                    self._after_update(self.counters["updates"])
                updates = self.counters["updates"]
                if updates % self.cfg.learner.publish_every == 0:
                    with clock.section("publish"):
                        self._publish()
                with clock.section("figure"):
                    self._maybe_figure(batch, updates)
                if self._stop.is_set():
                    break
            with clock.section("replay"), self._lock:
                self._record_samples()

    def _after_update(self, updates: int) -> None:
        if updates % self.cfg.learner.metrics_every == 0:
            self._fetch_metrics()

    def _fetch_metrics(self) -> None:
        """Check finiteness, then move the device-side metric sums to the host ones `poll` reads (one sync)."""
        self.learner.check_finite()
        for key, (total, count) in self._device_sums.fetch().items():
            self._sums[key] += total
            self._counts[key] += count

    def _record_samples(self) -> None:
        if self._unrecorded_samples:
            self.replay.record_samples(self._unrecorded_samples)
            self._unrecorded_samples = 0

    def _publish(self) -> None:
        with self._lock:
            self.counters["version"] += 1
            blob = self.learner.actor_weights(self.counters["version"])
        self.publisher.publish(blob["version"], blob)

    def _maybe_figure(self, batch: Any, updates: int) -> None:
        if updates % self.cfg.learner.figure_every == 0:
            figure = self.learner.figure(batch)
            with self._lock:
                self._figure = figure
