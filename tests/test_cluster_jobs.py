"""deploy/cluster/jobs.py: the command line of a Ray job."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_a_cluster_job_runs_the_entry_point_with_a_run_dir_outside_rays_working_dir() -> None:
    from deploy.cluster.jobs import entrypoint

    command = entrypoint("paper", "hopper", "64", ["--run.seed", "3"], "~/slac-runs/hopper-1")
    assert command == "python -m deploy.train paper --run.task hopper --actors.num 64 --run.seed 3 --run.dir ~/slac-runs/hopper-1"
    # A run dir or a resume given by the user wins; odd characters are quoted for the job's shell.
    assert "slac-runs" not in entrypoint("", "", "", ["--run.resume", "/data/run 1"], "~/slac-runs/x")
    assert "'/data/run 1'" in entrypoint("", "", "", ["--run.resume", "/data/run 1"], "~/slac-runs/x")
    assert entrypoint("debug", "", "", ["--run.dir=/tmp/r"], "~/x").endswith("--run.dir=/tmp/r")


def test_a_cluster_jobs_run_directory_is_named_after_the_task_it_trains() -> None:
    """As on one box (`runs/<task>-<time>`): TASK, else --run.task in ARGS, else the preset's task, never the preset."""
    from deploy.cluster.jobs import run_task

    assert run_task("paper", "hopper", []) == "hopper"
    assert run_task("paper", "", ["--run.seed", "1", "--run.task=walker_walk"]) == "walker_walk"
    assert run_task("paper", "", []) == "cheetah_run" and run_task("cpu", "", []) == "cartpole_swingup"


def test_a_submission_asks_again_while_the_heads_job_agent_has_not_registered() -> None:
    """Ray answers 500 "No available agent to submit job, please try again later" for a few seconds after a head
    starts (a CI run's `make train` failed on it); other errors are not retried."""
    from deploy.cluster.jobs import _submit

    class Head:
        def __init__(self, refusals: int, error: str) -> None:
            self.refusals, self.error, self.calls = refusals, error, 0

        def submit_job(self, entrypoint: str, runtime_env: dict) -> str:
            self.calls += 1
            if self.calls <= self.refusals:
                raise RuntimeError(f"Request failed with status code 500: {self.error}.")
            return "raysubmit_1"

    waiting = Head(2, "No available agent to submit job, please try again later.")
    assert _submit(waiting, "python -m deploy.train", {}, wait_s=30) == "raysubmit_1" and waiting.calls == 3
    broken = Head(1, "runtime_env is invalid")
    with pytest.raises(RuntimeError, match="runtime_env is invalid"):
        _submit(broken, "python -m deploy.train", {}, wait_s=30)
    assert broken.calls == 1
