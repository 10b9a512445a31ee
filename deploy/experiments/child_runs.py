"""Running a reproduce's seeds: each an ordinary `deploy.train` run in a child process, k at a time.

Each child has its own private Ray, embedded Redis, W&B run and run directory (deploy/run/ray_runtime.py), so
seeds side by side never see each other. With one at a time the child's progress passes through to the
terminal; with several, each child's output goes to `<run dir>/logs/train.log` and the harness prints one
line per seed every `status_every_s`. A finished seed (done.json) is skipped, an interrupted one resumed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from common.config import Config, parse_cli
from common.run_files import RunFiles
from deploy.run.ray_runtime import OVERHEAD_CPUS, learner_on_gpu, resolve_processes
from deploy.run.run_dir import finished_at
from deploy.run.signals import STOP_WITH_PARENT, StopSignals
from learner.checkpoint import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    latest_checkpoint,
    read_checkpoint,
)

log = logging.getLogger(__name__)

GPU_GIB_PER_LEARNER = 8.0
"""GPU memory one learner is assumed to need when choosing how many seeds share a GPU. Not measured yet
(no GPU was lent to this project so far): an upper guess for the paper preset, whose networks, Adam state
and batches of 256 x 9 frames take a few GiB."""


class SeedFailed(RuntimeError):
    """A seed's training run did not finish; the message says how to continue."""


def default_parallel(cfg: Config, seeds: int) -> int:
    """How many seeds fit on this machine at once: the cores each run's processes need (its actors, a learner
    thread, the evaluator) and, with a GPU, the learners' memory; at least 1 (1 on a 2-core CPU)."""
    actors = 1 if cfg.actors.num == "auto" else cfg.actors.num  # auto shares what is left (`per_seed_overrides`)
    learner = 1 if cfg.learner.cpus == "auto" else cfg.learner.cpus
    per_run = actors * cfg.actors.num_cpus + learner + OVERHEAD_CPUS - 1  # Redis and the driver mostly wait
    k = max(1, math.floor((os.cpu_count() or 1) / per_run))
    import torch

    if cfg.learner.device != "cpu" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        k = min(k, max(1, int(free / 2**30 // GPU_GIB_PER_LEARNER)))
    return max(1, min(k, seeds))


def per_seed_overrides(cfg: Config, parallel: int) -> list[str]:
    """With seeds side by side, each seed's share of the cores for what is `auto` (its actors, its learner's
    threads: `resolve_processes` on cores / parallel), as overrides; none for one seed at a time, which resolves
    auto itself (deploy/run/ray_runtime.py)."""
    if parallel <= 1:
        return []
    share = resolve_processes(cfg, cluster=False, cpus=max(1, (os.cpu_count() or 1) // parallel),
                              gpu=learner_on_gpu(cfg))
    return ([] if cfg.actors.num != "auto" else ["--actors.num", str(share.actors.num)]) + (
        [] if cfg.learner.cpus != "auto" else ["--learner.cpus", str(share.learner.cpus)])


@dataclass
class SeedRun:
    """One seed's child process (or its finished summary)."""

    seed: int
    run_dir: Path
    argv: list[str]
    commit: str = ""
    """The code this harness runs (git commit); done.json keeps it, so a later harness that only collects the
    finished seed does not put its own commit on it."""
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[str] | None = None
    summary: dict[str, Any] | None = None
    started: float = field(default_factory=time.monotonic)
    started_at: float = 0.0
    """Unix time the child started (summary: harness_started_at), to tell seeds that overlapped."""

    @property
    def log_path(self) -> Path:
        return RunFiles(self.run_dir).train_log

    @property
    def stdout_path(self) -> Path:
        return RunFiles(self.run_dir).train_stdout

    def start(self, quiet: bool) -> None:
        """Start the child; `quiet` sends its progress to logs/train.log instead of the terminal."""
        done = RunFiles(self.run_dir).done
        if done.exists():
            log.info("seed %d already finished in %s; skipping it", self.seed, self.run_dir)
            self.summary = json.loads(done.read_text())
            return
        if (summary := self._finished_unrecorded()) is not None:
            log.info("seed %d finished in %s before its harness recorded it; taking its summary", self.seed, self.run_dir)
            self.summary = summary
            done.write_text(json.dumps(summary, indent=2, default=str))
            return
        resume = RunFiles(self.run_dir).is_run()
        where = ["--run.resume", str(self.run_dir)] if resume else ["--run.dir", str(self.run_dir)]
        log.info("%s seed %d in %s", "resuming" if resume else "starting", self.seed, self.run_dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        stderr = self.log_file = self.log_path.open("a") if quiet else None
        self.started, self.started_at = time.monotonic(), time.time()
        self.record_path.write_text(json.dumps({"harness_commit": self.commit, "harness_started_at": round(self.started_at, 1)}))
        # stdout carries the run's JSON summary (a file, not a pipe nobody drains while the run lasts);
        # progress and logs go to stderr. The child has a session of its own: a terminal's Ctrl-C reaches
        # only the harness, which passes it on once (`run_seeds`), and it stops with the harness however
        # that dies (`stop_with_parent`).
        with self.stdout_path.open("w") as stdout:
            self.process = subprocess.Popen([sys.executable, "-m", "deploy.train", *self.argv, *where],
                                            stdout=stdout, stderr=stderr, start_new_session=True,
                                            env=dict(os.environ, **{STOP_WITH_PARENT: str(os.getpid())}))

    @property
    def record_path(self) -> Path:
        """The harness's commit and start time for the child it starts, kept in case it dies before done.json."""
        return self.log_path.parent / "harness.json"

    def _printed_summary(self) -> dict[str, Any] | None:
        """The JSON summary the child printed last (train.stdout), None when it printed none."""
        try:
            out = self.stdout_path.read_text()
            return json.loads(out[out.index('{\n  "summary"'):])["summary"]
        except (OSError, ValueError, KeyError):
            return None

    def _finished_unrecorded(self) -> dict[str, Any] | None:
        """The summary of a seed whose run finished while its harness died before writing done.json: a resume would
        be refused (deploy/run/run_dir.finished_at). None when the run has work left. SeedFailed when it finished
        but its summary was lost with it (a hard kill between its final checkpoint and its printed summary)."""
        newest = latest_checkpoint(RunFiles(self.run_dir).checkpoints)
        try:
            if newest is None or finished_at(read_checkpoint(newest), parse_cli(self.argv)) is None:
                return None
        except (CheckpointMismatchError, UnsafeCheckpointError):
            return None  # the resume refuses that checkpoint in its own paragraph
        summary = self._printed_summary()
        if summary is None or summary.get("interrupted", True) or Path(summary.get("checkpoint") or "") != newest:
            raise SeedFailed(f"seed {self.seed}'s run in {self.run_dir} is finished (its newest checkpoint, {newest.name}, "
                             "is its final one), but it was stopped before it printed its summary, so this harness "
                             f"cannot collect it. Evaluate it with `make eval RUN={self.run_dir}`, or move the directory "
                             f"away to train seed {self.seed} again.")
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            record = {}
        finished = round(self.stdout_path.stat().st_mtime, 1)
        started = record.get("harness_started_at")
        return {**summary, **record, "harness_finished_at": finished,
                "harness_wall_clock_s": round(finished - started, 1) if started else None}

    def finish(self) -> dict[str, Any]:
        """Wait for the child; its summary (also written to done.json), or SeedFailed."""
        if self.summary is not None:
            return self.summary
        assert self.process is not None
        self.process.wait()
        if self.log_file:
            self.log_file.close()
        where = f"its log is {self.log_path}" if self.log_file else "its messages are above"
        summary = self._printed_summary()
        if self.process.returncode != 0 or summary is None:
            raise SeedFailed(f"seed {self.seed} stopped with exit code {self.process.returncode} ({where}; its run "
                             f"directory is {self.run_dir}); run the same command again to resume it")
        if summary["interrupted"]:
            raise SeedFailed(f"seed {self.seed} was interrupted; run the same command again to resume it")
        summary["harness_wall_clock_s"] = round(time.monotonic() - self.started, 1)
        summary["harness_started_at"], summary["harness_finished_at"] = round(self.started_at, 1), round(time.time(), 1)
        summary["harness_commit"] = self.commit
        RunFiles(self.run_dir).done.write_text(json.dumps(summary, indent=2, default=str))
        self.summary = summary
        return summary

    def last_line(self) -> str:
        """The newest line of the child's log (its progress line), for the harness's status."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        progress = [ln for ln in lines if ln.startswith("[")]  # the progress line: `[phase] env ... | ETA`
        return (progress or lines or [""])[-1].strip()


def run_seeds(runs: list[SeedRun], parallel: int, status_every_s: float = 30.0) -> list[dict[str, Any]]:
    """Run every seed, `parallel` at a time; their summaries in seed order.

    A failing seed stops new ones from starting; those running finish, then SeedFailed names the first
    failure. A SIGINT (Ctrl-C) or SIGTERM to the harness is passed on to every running child, which
    checkpoints and stops; the harness waits for them (later signals are acknowledged and ignored, as in a
    run), then raises KeyboardInterrupt with the signal's name.
    """

    with StopSignals() as signals:
        try:
            failures = _schedule(runs, parallel, status_every_s, signals)
        except KeyboardInterrupt:
            alive = [r.process for r in runs if r.process is not None and r.process.poll() is None]
            sig = signal.SIGTERM if signals.received == "SIGTERM" else signal.SIGINT
            if alive:
                log.warning("%s: stopping %d running seed(s); each writes a checkpoint", sig.name, len(alive))
            for process in alive:
                process.send_signal(sig)
            for process in alive:
                process.wait()
            raise
    if failures:
        raise failures[0]
    return [run.summary for run in runs if run.summary is not None]


def _schedule(runs: list[SeedRun], parallel: int, status_every_s: float,
              signals: StopSignals) -> list[SeedFailed]:
    """Start the seeds `parallel` at a time and wait for them all; the failures, in the order they ended."""
    quiet = parallel > 1
    pending, running, failures = list(runs), [], []
    last_status = time.monotonic()
    while pending or running:
        signals.check()  # a signal whose KeyboardInterrupt was swallowed (raised inside a __del__) still stops
        while pending and len(running) < parallel and not failures:
            run = pending.pop(0)
            try:
                run.start(quiet)
            except SeedFailed as exc:
                failures.append(exc)
                continue
            if run.summary is None:
                running.append(run)
        if not running:
            break
        for run in [r for r in running if r.process is not None and r.process.poll() is not None]:
            running.remove(run)
            try:
                run.finish()
                log.info("seed %d finished (%.0f s)", run.seed, run.summary["harness_wall_clock_s"])
            except SeedFailed as exc:
                failures.append(exc)
        if quiet and running and time.monotonic() - last_status >= status_every_s:
            for run in running:
                print(f"seed {run.seed}: {run.last_line()}", file=sys.stderr, flush=True)
            last_status = time.monotonic()
        time.sleep(0.5)
    return failures
