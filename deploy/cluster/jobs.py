"""`make train` / `make logs` / `make stop` against a Ray cluster: the driver runs there as a Ray job.

The driver (`python -m deploy.train`) is submitted with `ray job submit` semantics (the working tree as the
job's working_dir), so it lives on the head and survives the laptop disconnecting. Where the cluster is:
`RAY_ADDRESS=http://host:8265` (a job server you can reach), or `CLUSTER=deploy/cluster.yaml` (the YAML of
`make cluster-up`): the job server then listens only on the head's 127.0.0.1 and is reached through
`ray dashboard`'s SSH port-forward, opened for the duration of the command. The last job's id and address
are kept in `.slac-job` (or $SLAC_JOB_FILE), so `make logs` and `make stop` need no arguments.

    python -m deploy.jobs submit --preset paper --task hopper --actors 64 -- <extra deploy.train args>
    python -m deploy.jobs logs [JOB_ID]        # follows until the job ends
    python -m deploy.jobs stop [JOB_ID]        # SIGTERM: the driver checkpoints, then stops
    python -m deploy.jobs status [JOB_ID]      # the cluster's nodes by role, the job, its progress, W&B
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common.config import PRESETS, flag_value, redact, resume_dir
from common.tasks import slug
from deploy.cluster.shipping import task_modules
from replay_service.server import free_port

REPO = Path(__file__).resolve().parents[2]
JOB_FILE = Path(os.environ.get("SLAC_JOB_FILE", REPO / ".slac-job"))
# Never shipped with the job: the venv, runs, git history, local results (the job builds what it needs).
EXCLUDES = [".venv", ".git", "runs", "results", "bench/results", "wandb", "**/__pycache__", ".slac-job", ".cluster"]
# Seconds Ray lets a stopped job's driver take before SIGKILL: enough to write the final checkpoint.
STOP_WAIT_S = 300
# Forwarded to the job when set here: W&B goes online with the user's account.
FORWARDED_ENV = ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_BASE_URL")


class JobError(RuntimeError):
    """A job command that cannot work as asked (no cluster configured, no job recorded, tunnel failed)."""


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (401 included: Ray's token check is the SDK's business)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@contextlib.contextmanager
def job_server(address: str = "", cluster: str = "") -> Iterator[str]:
    """The job server's http address: `address` itself, or a `ray dashboard` tunnel to `cluster`'s head."""
    address = address or os.environ.get("RAY_ADDRESS", "")
    cluster = cluster or os.environ.get("CLUSTER", "")
    if address.startswith(("http://", "https://")):
        yield address.rstrip("/")
        return
    if not cluster:
        raise JobError("no cluster to submit to: set CLUSTER=deploy/cluster.yaml (after `make cluster-up`) or "
                       "RAY_ADDRESS=http://<head>:8265; without either, `make train` runs on this machine.")
    if not Path(cluster).is_file():
        raise JobError(f"CLUSTER={cluster}: no such cluster YAML; use one of deploy/cluster*.yaml")
    port = free_port()
    tunnel = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "dashboard", "--port", str(port), "--remote-port", "8265", cluster],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(url):
            if tunnel.poll() is not None or time.monotonic() > deadline:
                err = (tunnel.stderr.read().decode(errors="replace") if tunnel.stderr else "")[-800:]
                raise JobError(f"could not reach the job server of {cluster} through `ray dashboard` (is the cluster "
                               f"up? `make cluster-up`; `ray status` on the head with `ray attach {cluster}`): {err}")
            time.sleep(0.5)
        yield url
    finally:
        # The whole process group: `ray dashboard` runs ssh as its child, and a SIGTERM to it alone leaves that
        # ssh running, and with it the `while true; do sleep 86400; done` it keeps open on the head.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(tunnel.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            tunnel.wait(10)


def use_token() -> None:
    """The cluster's nodes run with Ray's token auth and this machine's token (deploy/cluster*.yaml ship
    ~/.ray/auth_token): send it. Must run before Ray is imported, which reads the mode once."""
    if os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file():
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def _client(url: str) -> Any:
    use_token()
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(url)


def wandb_url(run_id: str) -> str:
    """Where the run will show up in W&B (the entity is the API key's default unless WANDB_ENTITY says)."""
    project = os.environ.get("WANDB_PROJECT", "slac-dist")
    entity = os.environ.get("WANDB_ENTITY", "<your-entity>")
    return f"https://wandb.ai/{entity}/{project}/runs/{run_id}"


def entrypoint(preset: str, task: str, actors: str, extra: Sequence[str], run_dir: str) -> str:
    """The job's command line: deploy.train, with a run directory outside Ray's temporary working_dir."""
    args = [preset] if preset else []
    args += ["--run.task", task] if task else []
    args += ["--actors.num", actors] if actors else []
    args += list(extra)
    command = "python -m deploy.train " + " ".join(shlex.quote(a) for a in args)
    if flag_value(args, "run.dir") is None and resume_dir(args) is None:
        command += f" --run.dir {run_dir}"  # unquoted: the job's shell expands its `~` to the head's home
    return command


AGENT_WAIT_S = 120.0
"""How long a submission waits for the head's job agent, which registers some seconds after the cluster answers."""


def _submit(client: Any, command: str, runtime_env: dict[str, Any], wait_s: float = AGENT_WAIT_S) -> str:
    """submit_job, asking again while Ray answers "No available agent to submit job, please try again later" (a
    head whose dashboard agent has not registered yet: a CI run's `make train` came seconds after the cluster)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=command, runtime_env=runtime_env)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def run_task(preset: str, task: str, extra: Sequence[str]) -> str:
    """The task the job will train, for its run directory's name as on one box (`<task>-<time>`): TASK, else
    `--run.task` in ARGS, else the preset's own task."""
    return task or flag_value(extra, "run.task") or (PRESETS[preset][1].run.task if preset in PRESETS else "run")


def submit(preset: str, task: str, actors: str, extra: Sequence[str]) -> dict[str, str]:
    """Submit the driver as a Ray job; returns what `.slac-job` records."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env.update(WANDB_MODE="online" if "WANDB_API_KEY" in env else "offline",
               RAY_JOB_STOP_WAIT_TIME_S=str(STOP_WAIT_S), PYTHONUNBUFFERED="1")
    # A new run gets its W&B id here, so its URL can be printed now; a resumed run keeps its checkpoint's.
    resuming = resume_dir(extra) is not None
    run_id = "" if resuming else os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
    if run_id:
        env["WANDB_RUN_ID"] = run_id
    # `~` is the head's home: the job's shell expands it. Runs outlive Ray's per-session working_dir there.
    run_dir = f"~/slac-runs/{slug(run_task(preset, task, extra))}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = entrypoint(preset, task, actors, extra, run_dir)
    # The job gets the real command; `.slac-job` and the terminal keep it with any --replay.url password as ***.
    shown = entrypoint(preset, task, actors, [redact(a) for a in extra], run_dir)
    logging.getLogger("ray").setLevel(logging.ERROR)  # not a line per file Ray's packaging skips
    runtime_env: dict[str, Any] = {"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": env}
    with job_server() as url, tempfile.TemporaryDirectory() as scratch:
        if modules := task_modules(task or flag_value(extra, "run.task") or "", Path(scratch)):
            runtime_env["py_modules"] = modules
        job_id = _submit(_client(url), command, runtime_env)
    record = {"job_id": job_id, "address": os.environ.get("RAY_ADDRESS", ""), "cluster": os.environ.get("CLUSTER", ""),
              "wandb_run_id": run_id, "entrypoint": shown}
    JOB_FILE.write_text(json.dumps(record, indent=1) + "\n")
    if env["WANDB_MODE"] == "offline":
        where = "offline (set WANDB_API_KEY to watch it online); files in the run dir on the head"
    else:
        where = wandb_url(run_id) if run_id else "the resumed run's own W&B run (its URL is in `make logs`)"
    print(f"submitted job {job_id}\n  driver: {shown}\n  W&B:    {where}\n"
          f"  follow: make logs    stop (checkpoints first): make stop", flush=True)
    return record


def _recorded(job_id: str) -> tuple[str, dict[str, str]]:
    record = json.loads(JOB_FILE.read_text()) if JOB_FILE.is_file() else {}
    job_id = job_id or record.get("job_id", "")
    if not job_id:
        raise JobError(f"no job to act on: none recorded in {JOB_FILE} (submit one with `make train` on a cluster) "
                       "and no JOB=<id> given")
    return job_id, record


def _recorded_server(record: dict[str, str]) -> contextlib.AbstractContextManager[str]:
    """The job server of a recorded job: RAY_ADDRESS or CLUSTER when set now, else where it was submitted."""
    return job_server(os.environ.get("RAY_ADDRESS") or record.get("address", ""),
                      os.environ.get("CLUSTER") or record.get("cluster", ""))


def logs(job_id: str = "", follow: bool = True) -> str:
    """Print the job's logs (following them until it ends); returns its final status."""
    job_id, record = _recorded(job_id)
    with _recorded_server(record) as url:
        client = _client(url)
        if follow:
            async def tail() -> None:
                async for chunk in client.tail_job_logs(job_id):
                    print(chunk, end="", flush=True)

            asyncio.run(tail())
        else:
            print(client.get_job_logs(job_id), end="", flush=True)
        status = str(client.get_job_status(job_id))
    print(f"\njob {job_id}: {status}", flush=True)
    return status


def stop(job_id: str = "") -> None:
    """Stop the job: the driver gets SIGTERM, writes a checkpoint and stops every process."""
    job_id, record = _recorded(job_id)
    with _recorded_server(record) as url:
        _client(url).stop_job(job_id)
        print(f"stopping job {job_id}: the driver writes a checkpoint first (up to {STOP_WAIT_S} s)", flush=True)


PROGRESS = re.compile(r"\[(?:collect|pretrain|train)\] env [^\n]*")
"""The driver's progress line (deploy/run/progress.progress_line), wherever a log line it shares starts."""


def node_roles(nodes: list[dict[str, Any]]) -> dict[str, int]:
    """Alive nodes counted by role: `learner` / `actor` (the custom resources of deploy/cluster*.yaml), else head
    or other; a node with both (one machine doing everything) counts under each."""
    roles: dict[str, int] = {}
    for node in nodes:
        if node.get("state", "ALIVE") != "ALIVE":
            continue
        resources = node.get("resources_total") or {}
        names = [r for r in ("learner", "actor") if resources.get(r, 0) > 0]
        for name in names or ["head" if node.get("is_head_node") else "other"]:
            roles[name] = roles.get(name, 0) + 1
    return roles


def status(job_id: str = "", nodes_only: bool = False) -> dict[str, Any]:
    """Print the cluster's nodes by role and, unless `nodes_only`, the recorded (or given) job: its status, its
    driver's last progress line and its W&B run."""
    use_token()
    from ray.util.state import list_nodes

    record = json.loads(JOB_FILE.read_text()) if JOB_FILE.is_file() else {}
    job_id = job_id or ("" if nodes_only else record.get("job_id", ""))
    with _recorded_server(record) as url:
        nodes = [n if isinstance(n, dict) else vars(n) for n in list_nodes(address=url, limit=1000, raise_on_missing_output=False)]
        roles = node_roles(nodes)
        print("nodes: " + ", ".join(f"{count} {role}" for role, count in sorted(roles.items())), flush=True)
        out: dict[str, Any] = {"nodes": roles}
        if job_id:
            client = _client(url)
            out["job"] = str(client.get_job_status(job_id))
            lines = PROGRESS.findall(client.get_job_logs(job_id))
            out["progress"] = lines[-1] if lines else "(no progress line yet)"
            run_id = record.get("wandb_run_id", "") if record.get("job_id") == job_id else ""
            out["wandb"] = wandb_url(run_id) if run_id else "(the run's W&B URL is in `make logs`)"
            print(f"job {job_id}: {out['job']}\n  {out['progress']}\n  W&B: {out['wandb']}", flush=True)
        elif not nodes_only:
            print("no job recorded (`make train` on the cluster submits one)", flush=True)
    return out
