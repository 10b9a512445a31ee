"""A run directory can be shared: its checkpoints run no code when opened, and it holds no replay password.

A checkpoint is a pickle, and unpickling can call anything the file names. A run directory made by a real
learner on a secured replay (the embedded redis-server with ACL users, as on a cluster) gets a crafted
newest checkpoint, with its SHA-256 written beside it as an attacker would; every command that opens a run
(`make eval`, `make export`, `--run.resume`) must refuse it in one paragraph, with no traceback, and the file
its pickle would create must never appear. `python -m deploy.audit` never opens a checkpoint at all. The
checkpoint that today's learner writes must still load through the same loader (weights_only=True).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

import pytest
import torch
from replay_fixtures import ACTION_DIM, TASK, write_episode
from torch.serialization import get_unsafe_globals_in_checkpoint

from common.config import Config, debug
from common.run_files import RunFiles
from deploy.run.run_dir import prepare_run_dir
from deploy.run.run_state import RunState
from deploy.tools.export import export
from deploy.tools.trained import load_trained
from learner.checkpoint import latest_checkpoint, load_checkpoint
from learner.learner import Learner
from learner.process import LearnerProcess
from replay_service import RedisServer, ReplayWriter

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
REFUSED = "was refused unread: it holds objects other than tensors and plain containers (it asks for io.open)"


class _Publisher:
    def publish(self, version: int, blob: dict) -> None:
        pass

    def version(self) -> int:
        return 0


class _CreatesFile:
    """Unpickled by `torch.load(weights_only=False)`, opens `path` for writing: the file appears. What a crafted
    checkpoint would do instead is up to its author."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return open, (str(self.path), "w")


class Run(NamedTuple):
    path: Path
    cfg: Config
    checkpoint: Path
    passwords: tuple[str, str]
    """The secured replay's `replay` and `admin` passwords."""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """A run directory as a short cluster-style run leaves it: config.json, the writers' audit records, the
    secured embedded replay's data, and a checkpoint by `LearnerProcess.checkpoint` with the driver's `extra`
    after a few joint updates (so every optimiser holds its Adam moments)."""
    base = debug()
    cfg = dataclasses.replace(
        base, run=dataclasses.replace(base.run, task=TASK, dir=str(tmp_path_factory.mktemp("shared") / "run")),
        replay=dataclasses.replace(base.replay, audit=True),
        learner=dataclasses.replace(base.learner, publish_every=1_000, figure_every=1_000_000))
    opened = prepare_run_dir(cfg)  # config.json as a new run writes it
    opened.release()
    cfg, files = opened.cfg, opened.files
    with RedisServer(files.redis, cfg.replay, host="127.0.0.1", secure=True) as server:
        passwords = (unquote(urlsplit(server.url).password or ""), unquote(urlsplit(server.admin_url).password or ""))
        assert all(passwords)
        with ReplayWriter(server.url, cfg.replay, TASK, ACTION_DIM, "w", audit_dir=files.audit) as writer:
            for episode in range(4):
                write_episode(writer, 0, episode, length=50, terminated=False)
        process = LearnerProcess(cfg, ACTION_DIM, server.url, _Publisher(), str(files.root))
        thread = threading.Thread(target=process.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while process.counters["updates"] < 3 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.stop()
        thread.join(60)
        assert process.counters["updates"] >= 3, process.counters
        run_state = RunState(env_steps=800, agent_steps=200, episodes=4, actor_base={0: {"env_steps": 4, "steps": 1}})
        path = Path(process.checkpoint({"wandb_run_id": "abcd1234", "run_state": dataclasses.asdict(run_state)}))
        process.replay.close()
    yield Run(files.root, cfg, path, passwords)


def _plant(run: Run, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of the run whose newest checkpoint is crafted, with a matching .sha256; the copy, the crafted
    file and the path its pickle would create."""
    shared = tmp_path / "shared-run"
    shutil.copytree(run.path, shared)
    created = tmp_path / "created-by-the-checkpoint"
    crafted = RunFiles(shared).checkpoints / "ckpt_9999999999.pt"
    torch.save({"learner": {}, "counters": {"updates": 1}, "config": run.cfg.to_dict(), "x": _CreatesFile(created)},
               crafted)
    # The digest as slac-dist writes it (hex and a newline): the attacker knows the format too.
    crafted.with_name(crafted.name + ".sha256").write_text(hashlib.sha256(crafted.read_bytes()).hexdigest() + "\n")
    assert latest_checkpoint(RunFiles(shared).checkpoints) == crafted
    return shared, crafted, created


def test_the_crafted_checkpoint_would_run_its_code_if_unpickled(run: Run, tmp_path: Path) -> None:
    """The control: what the commands below refuse is a working payload, not a file that fails anyway."""
    _, crafted, created = _plant(run, tmp_path)
    torch.load(crafted, weights_only=False)
    assert created.exists()


@pytest.mark.parametrize("command", [
    ["deploy.evaluation", "{run}", "--episodes", "1", "--no-video"],
    ["deploy.export", "{run}"],
    ["deploy.train", "--run.resume", "{run}"],
], ids=["eval", "export", "resume"])
def test_every_command_refuses_a_crafted_checkpoint_in_one_paragraph(run: Run, tmp_path: Path,
                                                                    command: list[str]) -> None:
    shared, crafted, created = _plant(run, tmp_path)
    config_before = RunFiles(shared).config.read_bytes()
    proc = subprocess.run([sys.executable, "-m", *(a.format(run=shared) for a in command)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    message = errors[0]
    assert f"checkpoint {crafted} {REFUSED}" in message, message
    assert "Do not load checkpoints or run directories from sources you do not trust" in message
    assert "an older slac-dist's checkpoint loads as it is" in message and f"mv {crafted} {crafted}.refused" in message
    assert not created.exists()
    assert RunFiles(shared).config.read_bytes() == config_before  # a refused resume rewrites nothing


def test_audit_never_opens_a_checkpoint(run: Run, tmp_path: Path) -> None:
    """`python -m deploy.audit` checks the replay against the writers' records and reads no checkpoint: with a
    crafted one in place it audits the run as before."""
    shared, _, created = _plant(run, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "deploy.audit", str(shared)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] and report["checked_rows"] == report["acknowledged_rows"] > 200, report
    assert "Traceback" not in proc.stderr
    assert not created.exists()


def test_a_checkpoint_written_by_todays_learner_loads_with_weights_only(run: Run) -> None:
    """What LearnerProcess.checkpoint and the driver's `extra` hold today (module and Adam states, generator
    states, counters, config, RunState) is plain: it loads through the one loader and resumes every part."""
    assert get_unsafe_globals_in_checkpoint(run.checkpoint) == []
    state = load_checkpoint(run.checkpoint, run.cfg)
    assert all(state["learner"]["optimizers"][name]["state"] for name in ("model", "critic", "actor", "alpha"))
    Learner(run.cfg, ACTION_DIM).load_state_dict(state["learner"])
    assert RunState(**state["extra"]["run_state"]).actor_base == {0: {"env_steps": 4, "steps": 1}}
    assert state["extra"]["wandb_run_id"] == "abcd1234" and state["replay_snapshot"].endswith(".rdb")
    assert load_trained(run.path).checkpoint == run.checkpoint


def test_a_secured_run_directory_and_its_export_hold_no_replay_password(run: Run) -> None:
    """On a cluster the replay's passwords live in the launcher's memory and in the URL handed to its processes:
    none reaches config.json, a checkpoint, the replay's files, the audit records, or `make export`'s file."""
    exported = export(run.path)
    files = [p for p in run.path.rglob("*") if p.is_file()]
    assert exported in files and run.checkpoint in files and RunFiles(run.path).config in files
    for password in run.passwords:
        leaked = [p for p in files if password.encode() in p.read_bytes()]
        assert not leaked, f"a replay password is in {leaked}"


def test_an_export_holds_no_password_even_when_the_config_does(run: Run, tmp_path: Path) -> None:
    """`make export`'s file carries the policy and the metadata a user needs to run it, never the run's config:
    a password in a replay.url the user gave (in config.json as an older slac-dist wrote it; today's keeps it out,
    see below) stays out of it."""
    password = "s3cret-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    shared = tmp_path / "run"
    shutil.copytree(run.path, shared)
    older = run.cfg.to_dict()
    older["replay"]["url"] = f"redis://replay:{password}@10.0.0.5:6379/0"
    RunFiles(shared).config.write_text(json.dumps(older))
    assert password in RunFiles(shared).config.read_text()
    exported = export(shared, out=tmp_path / "policy.pt")
    assert exported.stat().st_size > 0 and password.encode() not in exported.read_bytes()


def test_a_password_in_a_given_replay_url_stays_out_of_config_json(tmp_path: Path) -> None:
    """config.json, and the checkpoints' and W&B's copies of the config (Config.to_dict), hold the URL as
    `***`; the config the run's processes are handed keeps the real one. tests/test_config_secrets.py covers the
    resume, which asks for the password again, and `.slac-job`."""
    password = "s3cret-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    base = debug()
    cfg = dataclasses.replace(base, run=dataclasses.replace(base.run, dir=str(tmp_path / "run")),
                              replay=dataclasses.replace(base.replay, url=f"redis://replay:{password}@10.0.0.5:6379/0"))
    opened = prepare_run_dir(cfg)
    opened.release()
    assert password not in opened.files.config.read_text()
    assert "redis://replay:***@10.0.0.5:6379/0" in opened.files.config.read_text()
    assert password not in json.dumps(opened.cfg.to_dict())  # what a checkpoint and W&B record
    assert opened.cfg.replay.url == cfg.replay.url  # what the learner and the actors connect with


def test_a_password_on_the_command_line_stays_out_of_the_wandb_files(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B's copy of the config holds `***` (Config.to_dict); its own record of the command line must too."""
    from deploy.run.logger import RunLogger

    password = "s3cret-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    url = f"redis://replay:{password}@10.0.0.5:6379/0"
    monkeypatch.setattr(sys, "argv", ["deploy/train.py", "--replay.url", url])
    base = debug()
    RunLogger(dataclasses.replace(base, replay=dataclasses.replace(base.replay, url=url)), tmp_path).finish({})
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written), written
    leaked = [p for p in written if password.encode() in p.read_bytes()]
    assert not leaked, f"the replay password is in {leaked}"


def test_play_exported_given_a_training_checkpoint_or_no_file_says_what_to_pass(run: Run, tmp_path: Path) -> None:
    """examples/play_exported.py takes `make export`'s file; a training checkpoint (same name, other folder), a
    crafted one or a missing path is one line naming `make export`, exit 2, and the crafted pickle never runs."""
    _shared, crafted, created = _plant(run, tmp_path)
    for path in (run.checkpoint, crafted, tmp_path / "export" / run.checkpoint.name):
        proc = subprocess.run([sys.executable, str(REPO / "examples" / "play_exported.py"), str(path)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"play_exported: {path}") and "make export RUN=runs/<run>" in line, line
    assert not created.exists()
