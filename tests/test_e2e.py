"""End to end on CPU: real Ray, real redis-server, real rendering, W&B offline, TensorBoard, tiny networks.

The cheetah run goes through the real entry point (`python -m deploy.train`, what `make train` runs)
and is then resumed; the hopper run is driven in-process so the test can kill an actor mid-run and
inject an environment that raises.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from process_tools import thread_niceness
from tensorboard_files import event_files, images, read_events, scalars, values

from common.config import debug, parse_cli
from common.envs import make_env
from deploy.run.ray_runtime import resolve_processes
from deploy.tools.wandb_reader import find_offline_runs, read_config
from learner.checkpoint import read_checkpoint

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]


def _train_cli(args: list[str], timeout: int = 600) -> dict[str, Any]:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", RAY_ADDRESS="local")
    proc = subprocess.run([sys.executable, "-m", "deploy.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"training failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout[proc.stdout.index('{\n  "summary"'):])["summary"]


def test_cheetah_end_to_end_then_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "cheetah"
    common = ["debug", "--run.task", "cheetah", "--run.dir", str(run_dir), "--actors.num", "2",
              "--learner.checkpoint-every", "50", "--replay.samples-per-insert", "0.25"]
    # Two cheetah episodes (1000 env steps each) per actor; a quarter update per insert keeps it quick. The length is
    # a grid point (eval_every 1000): its evaluation is the final one, which the resume below must not repeat.
    summary = _train_cli([*common, "--run.env-steps", "4000"])
    cfg = parse_cli(common[:1] + common[5:])

    # The run reached its length, through all three phases.
    assert summary["env_steps"] >= 4000 and not summary["interrupted"]
    assert summary["pretrain_updates"] == cfg.learner.model_pretrain_steps
    assert summary["updates"] > 0 and summary["policy_version"] >= 1
    # Replay holds the steps the actors wrote (cheetah repeats each action 4 times)...
    replay = summary["replay"]
    assert abs(replay["inserted"] * 4 - summary["env_steps"]) <= 4 * cfg.replay.flush_every * 2
    # ...and the learner did one update per inserted transition beyond the initial collection,
    # within the limiter's tolerance (plus one flush per writer in flight).
    min_size = max(cfg.replay.min_size, cfg.initial_collection_size)
    expected = (replay["inserted"] - min_size) * cfg.replay.samples_per_insert
    slack = cfg.replay.spi_tolerance + 2 * cfg.replay.flush_every
    assert abs(summary["updates"] - expected) <= slack, (summary["updates"], expected)

    # The run directory holds everything a run should leave behind.
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["run"]["task"] == "cheetah_run" and saved["model"]["z1_dim"] == cfg.model.z1_dim
    assert (run_dir / "redis").is_dir()
    eval_rows = (run_dir / "eval.csv").read_text().splitlines()
    assert eval_rows[0].startswith("env_steps,scheduled_env_steps,updates") and len(eval_rows) >= 2
    checkpoints = sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))
    assert checkpoints, "no checkpoint written"

    # The metrics, read back from the TensorBoard files (what `make tensorboard` shows) with TensorBoard's reader.
    assert len(find_offline_runs(run_dir)) == 1 and len(event_files(run_dir)) == 1
    events = read_events(run_dir)
    for key in ("model/loss", "model/reconstruction", "model/kl", "critic/loss", "actor/loss", "alpha/value",
                "train/return", "eval/return", "perf/updates_per_s", "perf/env_steps_per_s",
                "replay/size", "actors/restarts", "counters/updates"):
        logged = values(events, key)
        assert logged, f"{key} never logged"
        assert all(np.isfinite(v) for v in logged), f"{key} has non-finite values"
    # Training rows advance along env steps (TensorBoard's step); eval rows carry the env step their evaluation started at.
    env_steps = [event.step for event in scalars(events, "counters/updates")]
    assert env_steps == sorted(env_steps) and env_steps[-1] >= 4000
    # Both step counts: agent steps are policy decisions, env steps = agent steps x cheetah's repeat of 4.
    last_env, last_agent = scalars(events, "counters/env_steps")[-1], scalars(events, "counters/agent_steps")[-1]
    assert last_env.value == 4 * last_agent.value == last_env.step and last_env.step == last_agent.step
    assert summary["env_steps"] == 4 * summary["agent_steps"]
    # The evaluation grid: the uniform random policy at step 0 (version 0), then a point every eval_every.
    evals = list(csv.DictReader((run_dir / "eval.csv").open()))
    assert evals[0]["scheduled_env_steps"] == "0" and evals[0]["policy_version"] == "0"
    scheduled = [int(r["scheduled_env_steps"]) for r in evals]
    # (a grid point passed while an evaluation was busy is skipped: deploy/run/evaluation_schedule.py)
    assert scheduled == sorted(set(scheduled)) and scheduled[-1] == 4000 and all(s % 1000 == 0 for s in scheduled)
    # Each evaluation's return at the env step it started at, as in eval.csv; its video (a GIF) and the figure-7 grid.
    assert [(e.step, e.value) for e in scalars(events, "eval/return")] == [
        (int(r["env_steps"]), pytest.approx(float(r["return_mean"]), abs=1e-4)) for r in evals]
    videos = images(events, "eval/video")
    assert videos and all(v.encoded_image_string.startswith(b"GIF89a") and v.width == v.height == cfg.model.image_size
                          for v in videos)
    assert {v.step for v in videos} <= {int(r["env_steps"]) for r in evals}
    assert images(events, "model/samples")
    # What W&B itself received: its config.
    runs = find_offline_runs(run_dir)
    assert read_config(runs[0])["model"]["z1_dim"] == cfg.model.z1_dim
    # The execution mode that really ran (after any CUDA-graph fallback) is in W&B's config and the summary.
    # With the learner's threads, Ray CPUs, the machine's cores and its niceness (`learner.cpus` auto, resolved as
    # deploy/run/ray_runtime.resolve_processes does for this machine: 1 with 2 actors on 2 cores).
    threads = resolve_processes(cfg, cluster=False, gpu=False).learner.cpus
    assert read_config(runs[0])["execution"] == summary["execution"] == {
        "compile": "none", "precision": "fp32", "cuda_graphs": False, "fallback": None,
        "threads": threads, "ray_cpus": threads, "cores": len(os.sched_getaffinity(0)),
        "nice": os.getpriority(os.PRIO_PROCESS, 0)}  # the driver's (this process's): the run's own niceness
    assert summary["learner_threads"] == threads
    # The OpenGL renderer each actor and the evaluator drew with (probed once per process), as W&B config.
    renderers = read_config(runs[0])["renderers"]
    assert renderers and all(r["backend"] in ("egl", "osmesa") and r["renderer"] for r in renderers), renderers

    # Resume: same W&B run id, counters continue, same replay data.
    resumed = _train_cli([*common, "--run.resume", str(run_dir), "--run.env-steps", "5200"])
    assert resumed["env_steps"] >= 5200 and resumed["updates"] > summary["updates"]
    assert resumed["pretrain_updates"] == summary["pretrain_updates"]  # no second pre-training
    assert resumed["replay"]["inserted"] > replay["inserted"]
    # The wall clock counts on from the first life's, as its final checkpoint saved it (the harness's updates/s).
    first_life_s = read_checkpoint(Path(summary["checkpoint"]))["extra"]["run_state"]["wall_clock_s"]
    assert 0 < first_life_s <= summary["wall_clock_s"] == summary["life_wall_clock_s"]
    assert resumed["wall_clock_s"] == pytest.approx(first_life_s + resumed["life_wall_clock_s"], abs=0.2)
    second_life_s = read_checkpoint(Path(resumed["checkpoint"]))["extra"]["run_state"]["wall_clock_s"]
    assert first_life_s < second_life_s <= resumed["wall_clock_s"]  # a third life would count on from both
    runs = find_offline_runs(run_dir)
    assert len(runs) == 2 and len({r.name.split("-")[-1] for r in runs}) == 1, runs
    # TensorBoard: the resumed driver's events in a second file of the same folder (one TensorBoard run).
    assert len(event_files(run_dir)) == 2
    resumed_events = read_events(run_dir, file=1)
    steps = [e.step for tag in resumed_events.Tags()["scalars"] for e in resumed_events.Scalars(tag)]
    assert steps and min(steps) >= summary["env_steps"] - 200
    # The first life's final evaluation (grid point 4000) is in its checkpoint's state: not evaluated again.
    scheduled = [int(r["scheduled_env_steps"]) for r in csv.DictReader((run_dir / "eval.csv").open())]
    assert scheduled == sorted(set(scheduled)) and scheduled[-1] == 5200, scheduled
    assert all(s % 1000 == 0 for s in scheduled[:-1]) and scheduled.count(4000) == 1, scheduled

    # A resume of the finished run at its own length is refused in one paragraph, before anything starts.
    kept = {p: p.read_bytes() for p in (run_dir / "config.json", run_dir / "eval.csv")}
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    again = subprocess.run([sys.executable, "-m", "deploy.train", *common, "--run.resume", str(run_dir)], cwd=REPO,
                           env=dict(os.environ, WANDB_MODE="offline"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "this run is finished" in again.stderr and re.search(r"--run.env-steps \d{5}\b", again.stderr), again.stderr
    assert {p: p.read_bytes() for p in kept} == kept and sorted((run_dir / "checkpoints").iterdir()) == checkpoints


def test_resume_with_incompatible_config_is_a_clear_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(debug().to_json())
    env = dict(os.environ, WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-m", "deploy.train", "debug", "--run.resume", str(run_dir),
                           "--model.z2-dim", "12"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "model.z2_dim: saved 8, now 12" in proc.stderr


class FlakyEnv:
    """A real hopper env that raises on every `fail_every`-th step, like a MuJoCo instability."""

    def __init__(self, seed: int, fail_every: int = 97) -> None:
        self._env = make_env("hopper", seed)
        self.spec, self.action_dim = self._env.spec, self._env.action_dim
        self._fail_every, self._steps = fail_every, 0

    def reset(self) -> np.ndarray:
        return self._env.reset()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._steps += 1
        if self._steps % self._fail_every == 0:
            raise RuntimeError("simulated MuJoCo instability: mj_step produced NaN qacc")
        return self._env.step(action)

    def close(self) -> None:
        self._env.close()


def _kill_first_actor_mid_run(info: dict[str, Any], killed: threading.Event) -> None:
    def kill() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                actor = ray.get_actor("slac-actor-0")
                counters = ray.get(actor.poll.remote(), timeout=10)["counters"]
            except Exception:  # noqa: BLE001 - the actor may not exist yet
                time.sleep(0.5)
                continue
            if counters["steps"] >= 150:
                ray.kill(actor, no_restart=False)
                killed.set()
                return
            time.sleep(0.5)

    threading.Thread(target=kill, daemon=True).start()


def _read_priorities(seen: dict[str, Any]) -> None:
    """From a thread beside a run: each Ray process's pid, the niceness of all its threads, and the learner's torch
    threads, read inside the processes (`__ray_call__`) and from /proc, once the actors are acting."""
    def read() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                handles = {name: ray.get_actor(f"slac-{name}") for name in ("learner", "evaluator", "actor-0", "actor-1")}
                pids = {name: ray.get(h.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
                        for name, h in handles.items()}
                if ray.get(handles["actor-0"].poll.remote(), timeout=10)["counters"]["steps"] < 20:
                    raise LookupError("the actors have not acted yet")
                seen["learner_threads"] = ray.get(handles["learner"].__ray_call__.remote(
                    lambda self: __import__("torch").get_num_threads()), timeout=10)
            except Exception:  # noqa: BLE001 - a process may not exist yet
                time.sleep(0.5)
                continue
            seen["niceness"] = {name: thread_niceness(pid) for name, pid in pids.items()}
            return

    threading.Thread(target=read, daemon=True).start()


def test_hopper_survives_a_killed_actor_and_a_raising_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also: the learner takes the cores it was given (`--learner.cpus 2`) at the run's niceness (the driver's,
    this process's: 0, or 19 on `make test`'s second lane), the actors and the evaluator run at `actors.nice` (19)
    in every thread, read from the processes of the real run."""
    import ray.cloudpickle

    from common.batch import padding_mask
    from deploy.run.launch import train
    from replay_service import RedisServer, SequenceReplay

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ship FlakyEnv to the Ray workers
    monkeypatch.setenv("RAY_ADDRESS", "local")
    cfg = parse_cli(["debug", "--run.task", "hopper", "--run.dir", str(tmp_path / "hopper"),
                     "--actors.num", "2", "--run.env-steps", "1600", "--run.eval-episodes", "1",
                     "--learner.cpus", "2"])
    killed, seen = threading.Event(), {}
    summary = train(cfg, env_factory=FlakyEnv, on_started=lambda info: (
        _read_priorities(seen), _kill_first_actor_mid_run(info, killed)))
    assert killed.is_set(), "the test never got to kill the actor"
    assert seen.get("niceness"), "the test never read the processes' priorities"
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    assert seen["niceness"]["learner"] == {nice} and seen["learner_threads"] == 2, seen
    assert all(seen["niceness"][name] == {cfg.actors.nice} for name in ("evaluator", "actor-0", "actor-1")), seen
    assert summary["learner_threads"] == summary["execution"]["threads"] == 2
    assert summary["execution"]["ray_cpus"] == 2 and summary["execution"]["nice"] == nice
    assert summary["env_steps"] >= 1600 and not summary["interrupted"]
    assert summary["actor_restarts"] >= 1
    assert summary["env_errors"] >= 1

    # No sampled window is torn: every window sits inside one episode, padded correctly at its start.
    with RedisServer(tmp_path / "hopper" / "redis", cfg.replay) as server:
        replay = SequenceReplay(server.url, cfg.replay, "hopper", 3, cfg.model.sequence_length)
        replay.sync()
        assert replay.size == min(replay.num_inserted, cfg.replay.capacity) >= summary["replay"]["inserted"]
        for _ in range(20):
            batch = replay.sample(64)
            pad = padding_mask(batch.first)
            assert (batch.first.sum(1) <= 1).all()
            start = batch.first.float().argmax(1)
            for b in np.flatnonzero(pad.any(1).numpy()):
                s = int(start[b])
                assert (batch.obs[b, :s] == batch.obs[b, s]).all(), "padding is not the first frame"
                assert (batch.action[b, :s] == 0).all() and (batch.reward[b, :s] == 0).all()
            assert (batch.terminated[:, :-1] == 0).all(), "a window runs past a terminal step"
        replay.close()


def test_make_train_with_an_unknown_task_fails_at_once() -> None:
    start = time.monotonic()
    proc = subprocess.run(["make", "-s", "train", "TASK=nonsense"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    output = (proc.stdout + proc.stderr).replace("\n", " ").replace("│", " ")
    assert "nonsense" in output and "cheetah_run" in output and "hopper" in output
    assert time.monotonic() - start < 60


def _two_node_cluster(temp_dir: str) -> Any:
    """Two raylets of 2 CPUs each (`ray.cluster_utils`), in Ray directory `temp_dir` and on dashboard ports of their
    own, so that nothing else on the machine (runs of other test files side by side, `make test`'s second lane) can
    take what it needs. If it does not come up, the error carries the tails of Ray's own logs: a CI run once
    failed here inside Ray's `Node` with the cause cut from its output."""
    from ray.cluster_utils import Cluster

    from replay_service.server import free_port

    # cluster_utils writes the head's address to Ray's default directory whatever temp_dir says
    # (/tmp/ray/ray_current_cluster), and fails on a machine where nothing has made that directory yet (a CI run did).
    Path(ray._private.utils.get_ray_address_file(None)).parent.mkdir(parents=True, exist_ok=True)
    cluster = Cluster()
    try:
        cluster.add_node(num_cpus=2, temp_dir=temp_dir, dashboard_port=free_port(),
                         dashboard_agent_listen_port=free_port())
        cluster.add_node(num_cpus=2, dashboard_agent_listen_port=free_port())
        cluster.wait_for_nodes()
    except Exception as error:
        logs = [f for f in sorted(Path(temp_dir).glob("session_latest/logs/*")) if f.is_file() and f.stat().st_size
                and (f.name.startswith(("gcs_server", "raylet", "dashboard")) or f.suffix == ".err")]
        tails = "\n".join(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:])
                          for f in logs)
        cluster.shutdown()
        raise AssertionError(f"the two-node Ray cluster did not start: {error!r}\n{tails[-12000:]}") from error
    return cluster


def test_two_node_cluster_spreads_actors_and_shares_the_replay(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A real multi-node Ray cluster (two raylets) of the user's own, without the node resources of
    deploy/cluster*.yaml (so `--learner.node-resource '' --actors.node-resource ''`): the launcher joins it
    through RAY_ADDRESS, starts Redis on this node's address, and spreads the actors over both nodes."""
    from deploy.run.launch import train
    from deploy.run.ray_runtime import private_ray_dir

    temp_dir = private_ray_dir()
    cluster = _two_node_cluster(temp_dir)
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    try:
        cfg = parse_cli(["debug", "--run.task", "finger_spin", "--run.dir", str(tmp_path / "cluster"),
                         "--actors.num", "2", "--run.env-steps", "1200", "--run.eval-episodes", "0",
                         "--learner.node-resource", "", "--actors.node-resource", ""])
        summary = train(cfg)
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert summary["env_steps"] >= 1200 and summary["updates"] > 0
    assert summary["actor_nodes"] == 2, "SPREAD should put the two actors on different nodes"
    assert not summary["replay_url"].startswith("redis://127.0.0.1"), summary["replay_url"]


def test_ctrl_c_stops_everything_and_writes_a_checkpoint(tmp_path: Path) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it, mid joint training."""
    import signal

    run_dir, log = tmp_path / "run", tmp_path / "stdout.log"
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", RAY_ADDRESS="local")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "deploy.train", "debug", "--run.task", "finger",
                                 "--run.dir", str(run_dir), "--run.env-steps", "1000000", "--run.eval-episodes", "0"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while "[train]" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.5)
            assert "[train]" in log.read_text(), "never reached joint training"
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    summary = json.loads(text[text.index('{\n  "summary"'):])["summary"]
    assert summary["interrupted"] is True and summary["updates"] > 0
    assert Path(summary["checkpoint"]).exists()
    from replay_service import ReplayConnectionError, connect

    with pytest.raises(ReplayConnectionError):  # the embedded redis-server must not outlive the run
        connect(summary["replay_url"], timeout_s=1.0)
