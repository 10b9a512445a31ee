"""A password in a replay.url the user gives stays out of every record of the config, and a resume asks for it again.

The records are config.json, each checkpoint's and W&B's copy of the config (all `Config.to_dict`) and the
`.slac-job` file of a cluster job; the running processes get the Config object itself, real URL and all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.config import Config, ConfigError, ReplayConfig, debug, redact
from common.config_groups import is_redacted
from common.run_files import RunFiles

pytestmark = pytest.mark.unit

PASSWORD = "s3cret-pw"
URL = f"redis://replay:{PASSWORD}@10.0.0.5:6379/0"


def _with_url(cfg: Config, url: str) -> Config:
    return dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, url=url))


def test_every_record_of_the_config_holds_the_url_without_its_password() -> None:
    cfg = _with_url(debug(), URL)
    for record in (json.dumps(cfg.to_dict()), cfg.to_json()):
        assert PASSWORD not in record and "redis://replay:***@10.0.0.5:6379/0" in record
    assert cfg.replay.url == URL  # what the processes are handed
    query = _with_url(debug(), f"redis://10.0.0.5:6379/0?password={PASSWORD}")
    assert PASSWORD not in query.to_json()
    plain = _with_url(debug(), "redis://10.0.0.5:6379/0")
    assert Config.from_json(plain.to_json()) == plain  # no password: the round trip is exact
    assert not is_redacted(plain.replay.url) and is_redacted(redact(URL)) and not is_redacted(URL)


def test_a_malformed_url_is_named_without_its_password() -> None:
    with pytest.raises(ConfigError, match=r"got 'rediss://replay:\*\*\*@h:6379/0'") as info:
        ReplayConfig(url=f"rediss://replay:{PASSWORD}@h:6379/0")
    assert PASSWORD not in str(info.value)


def _saved_run(tmp_path: Path) -> Path:
    cfg = _with_url(debug(), URL)
    RunFiles(tmp_path).write_config(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(tmp_path))))
    assert PASSWORD not in RunFiles(tmp_path).config.read_text()
    return tmp_path


def test_a_resume_without_the_password_stops_in_one_paragraph_naming_the_fix(tmp_path: Path) -> None:
    from deploy.run.config import parse_args

    run = _saved_run(tmp_path)
    before = RunFiles(run).config.read_bytes()
    for argv in (["--run.resume", str(run)], ["--run.resume", str(run), "--replay.url", redact(URL)]):
        with pytest.raises(ConfigError) as info:
            parse_args(argv)
        message = str(info.value)
        assert "\n" not in message and f"--run.resume {run}:" in message, message
        assert "redis://replay:***@10.0.0.5:6379/0" in message and "without its password" in message, message
        assert f"--run.resume {run} --replay.url 'redis://<user>:<password>@<host>:<port>/<db>'" in message
    assert RunFiles(run).config.read_bytes() == before


def test_a_resume_that_gives_the_url_again_runs_with_it(tmp_path: Path) -> None:
    from deploy.run.config import parse_args

    run = _saved_run(tmp_path)
    cfg = parse_args(["--run.resume", str(run), "--replay.url", URL])
    assert cfg.replay.url == URL and cfg.run.resume == str(run)


class _Client:
    def __init__(self) -> None:
        self.entrypoints: list[str] = []

    def submit_job(self, entrypoint: str, runtime_env: dict[str, Any]) -> str:
        self.entrypoints.append(entrypoint)
        return "raysubmit_1"


def test_a_cluster_job_gets_the_real_url_and_slac_job_records_it_without_its_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.cluster import jobs

    client = _Client()

    @contextlib.contextmanager
    def server() -> Iterator[str]:
        yield "http://127.0.0.1:8265"

    monkeypatch.setattr(jobs, "job_server", server)
    monkeypatch.setattr(jobs, "_client", lambda url: client)
    monkeypatch.setattr(jobs, "JOB_FILE", tmp_path / ".slac-job")
    record = jobs.submit("debug", "", "", ["--replay.url", URL, "--replay-url=" + URL])
    assert client.entrypoints[0].count(URL) == 2
    for text in (jobs.JOB_FILE.read_text(), record["entrypoint"], capsys.readouterr().out):
        assert PASSWORD not in text and text.count("redis://replay:***@10.0.0.5:6379/0") == 2, text


def test_an_audit_of_a_run_on_an_external_redis_asks_for_the_password(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """config.json keeps the URL without its password, so `deploy.audit` needs `--replay-url`: without it, one line
    naming the flag (nothing connects with `***`)."""
    from deploy.tools.audit import main

    run = _saved_run(tmp_path)
    (RunFiles(run).audit).mkdir(parents=True, exist_ok=True)
    (RunFiles(run).audit / "writer-0.log").write_text("")
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--replay-url 'redis://<user>:<password>@<host>:<port>/<db>'" in err, err
    assert PASSWORD not in err
