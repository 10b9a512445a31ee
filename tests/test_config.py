"""Config: paper defaults, presets, CLI overrides and their errors, JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import PRESETS, Config, ConfigError, debug, paper, parse_cli, resume_conflicts

pytestmark = pytest.mark.unit


def test_defaults_are_the_papers_values() -> None:
    cfg = paper()
    assert cfg == Config()
    assert (cfg.model.z1_dim, cfg.model.z2_dim, cfg.model.hidden_dim, cfg.model.feature_dim) == (32, 256, 256, 256)
    assert cfg.model.conv_channels == (32, 64, 128, 256, 256)
    assert cfg.model.pixel_variance == "auto"  # the published per-task value (test below), appendix B's 0.1 elsewhere
    assert cfg.model.sequence_length == 8
    assert (cfg.model.lr, cfg.model.batch_size) == (1e-4, 32)
    assert (cfg.sac.actor_lr, cfg.sac.critic_lr, cfg.sac.batch_size) == (3e-4, 3e-4, 256)
    assert (cfg.sac.gamma, cfg.sac.target_update_coef, cfg.sac.auto_entropy) == (0.99, 0.005, True)
    assert cfg.replay.capacity == 100_000
    assert cfg.replay.samples_per_insert == 1.0
    assert (cfg.learner.initial_collection_agent_steps, cfg.learner.model_pretrain_steps) == (10_000, 100_000)


def test_debug_preset_is_tiny() -> None:
    cfg = debug()
    assert cfg.model.z2_dim < 32 and cfg.sac.batch_size <= 16 and cfg.run.env_steps <= 5_000


def test_cli_overrides_with_dotted_keys() -> None:
    cfg = parse_cli(["debug", "--sac.batch-size", "128", "--actors.num", "8", "--run.dir", "/tmp/run1",
                     "--run.task", "hopper", "--model.conv-channels", "1", "2", "3", "4", "5"])
    assert cfg.sac.batch_size == 128 and cfg.actors.num == 8 and cfg.run.dir == "/tmp/run1"
    assert cfg.run.task == "hopper" and cfg.model.conv_channels == (1, 2, 3, 4, 5)
    assert cfg.model.z1_dim == debug().model.z1_dim  # untouched fields keep the preset's values


def test_cli_default_preset_is_paper() -> None:
    assert parse_cli(["paper"]) == paper()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["paper", "--sac.batch-sise", "3"], "batch-sise"),
        (["paper", "--sac.batch-size", "many"], "batch-size"),
        (["paper", "--replay.appendfsync", "sometimes"], "appendfsync"),
        (["paper", "--run.task", "nonsense"], "nonsense"),
        (["paper", "--sac.gamma", "1.5"], "sac.gamma"),
        (["paper", "--model.pixel-variance", "0"], "model.pixel_variance"),
        (["nopreset"], "nopreset"),
    ],
)
def test_cli_errors_name_the_problem(args: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_cli(args)
    assert exc.value.code != 0
    captured = capsys.readouterr()
    assert named in (captured.err + captured.out).replace("\n", "").replace("│", "").replace(" ", "")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_json_round_trip(preset: str) -> None:
    cfg = PRESETS[preset][1]
    assert Config.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json()) == json.loads(json.dumps(cfg.to_dict()))


def test_from_dict_rejects_unknown_keys_and_bad_types() -> None:
    data = paper().to_dict()
    data["sac"]["learning_rate"] = 1.0
    with pytest.raises(ConfigError, match="sac.learning_rate"):
        Config.from_dict(data)
    data = paper().to_dict()
    data["model"]["z1_dim"] = "32"
    with pytest.raises(ConfigError, match="model.z1_dim"):
        Config.from_dict(data)
    data = paper().to_dict()
    data["model"]["conv_channels"] = [1, 2]
    with pytest.raises(ConfigError, match="model.conv_channels"):
        Config.from_dict(data)
    with pytest.raises(ConfigError, match="valid JSON"):
        Config.from_json("{not json")


def test_frozen_and_validated() -> None:
    cfg = paper()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sac.gamma = 0.5  # type: ignore[misc]
    with pytest.raises(ConfigError, match="model.batch_size"):
        dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, batch_size=512))


def test_task_aliases_are_canonicalised() -> None:
    assert parse_cli(["debug", "--run.task", "cheetah"]).run.task == "cheetah_run"


def test_initial_collection_counts_agent_steps() -> None:
    # Both reference implementations collect 10 000 agent steps (40 000 environment steps on cheetah_run)
    # whatever the action repeat; one transition per agent step; never less than one SAC batch.
    assert paper().initial_collection_size == 10_000
    assert parse_cli(["paper", "--run.task", "hopper"]).initial_collection_size == 10_000
    assert parse_cli(["paper", "--run.task", "half_cheetah"]).initial_collection_size == 10_000
    assert parse_cli(["debug", "--learner.initial-collection-agent-steps", "0"]).initial_collection_size == 8
    with pytest.raises(SystemExit):  # the old, unit-less name is gone
        parse_cli(["paper", "--learner.initial-collection-steps", "40000"])


def test_replay_every_is_a_number_or_auto() -> None:
    assert parse_cli(["paper"]).learner.replay_every == "auto"
    assert parse_cli(["paper", "--learner.replay-every", "25"]).learner.replay_every == 25
    cfg = parse_cli(["debug", "--learner.replay-every", "auto"])
    assert Config.from_json(cfg.to_json()).learner.replay_every == "auto"
    with pytest.raises(ConfigError, match="learner.replay_every must be a positive number or auto"):
        dataclasses.replace(cfg.learner, replay_every=0)


def _config_keys() -> list[str]:
    return [f"{group.name}.{f.name}".replace("_", "-") for group in dataclasses.fields(Config)
            for f in dataclasses.fields(group.default_factory())]


HOSTILE = ["abc", "-1", "-1e9", "0", "nan", "-nan", "inf", "-inf", "1e400", "", "99999999999999999999", "1e-320",
           "[1, 2]", "None", "true"]


@settings(max_examples=150, deadline=None)
@given(preset=st.sampled_from(sorted(PRESETS)), key=st.sampled_from(_config_keys()), value=st.sampled_from(HOSTILE))
def test_hostile_command_line_values_are_a_short_error_or_a_sound_config(preset: str, key: str, value: str) -> None:
    """Every real config key with a wrong type, a negative, NaN, inf, huge or empty value: what the entry point
    parses is either a config whose every number is finite, or an error of a few lines without a traceback."""
    import contextlib
    import io
    import math

    from deploy.run.config import MAX_ERROR_LINES
    from deploy.run.config import parse_quietly as _parse_quietly

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cfg = _parse_quietly([preset, f"--{key}", value])
    except ConfigError as exc:
        assert len(str(exc).splitlines()) <= 3, str(exc)
        return
    except SystemExit as exc:
        assert exc.code == 2, (key, value, err.getvalue())
        text = err.getvalue()
        assert 0 < len(text.splitlines()) <= MAX_ERROR_LINES + 1 and "Traceback" not in text, text
        return
    numbers = [v for group in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, group.name))
               for v in (lambda x: x if isinstance(x, tuple) else (x,))(getattr(getattr(cfg, group.name), f.name))
               if isinstance(v, float)]
    assert all(math.isfinite(v) for v in numbers), (key, value)


@pytest.mark.parametrize("garbage", [b'{"run": {"task": 12', b"[1, 2, 3]", b'{"model": {"z1_dim": "abc"}}', b"\xff\xfe\x00",
                                     b""])
def test_a_garbage_config_json_is_one_line_naming_it_and_is_left_alone(tmp_path, garbage: bytes) -> None:
    from deploy.run.config import parse_args

    (tmp_path / "config.json").write_bytes(garbage)
    with pytest.raises(ConfigError, match=r"its config.json is damaged \(.+\)\. Restore it") as info:
        parse_args(["--run.resume", str(tmp_path)])
    assert "\n" not in str(info.value) and (tmp_path / "config.json").read_bytes() == garbage


def test_resume_may_change_run_length_but_not_the_task() -> None:
    cfg = debug()
    longer = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, env_steps=10**6),
                                 actors=dataclasses.replace(cfg.actors, num=7))
    assert resume_conflicts(cfg, longer) == []
    other_task = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, task="hopper"))
    assert resume_conflicts(cfg, other_task) == ["run.task: saved 'cheetah_run', now 'hopper'"]


def test_the_command_line_names_a_resume_in_every_spelling() -> None:
    from common.config import flag_value, resume_dir

    for argv in (["--run.resume", "runs/a"], ["debug", "--run-resume", "runs/a"], ["--run.resume=runs/a", "--x", "1"]):
        assert resume_dir(argv) == "runs/a", argv
    assert resume_dir(["--run.dir", "runs/a"]) is None and resume_dir(["--run.resume"]) is None
    assert flag_value(["--run-dir=/tmp/r"], "run.dir") == "/tmp/r"


@pytest.mark.parametrize(("task", "variance"), [("cartpole_swingup", 0.1), ("walker", 0.4), ("ball_in_cup_catch", 0.04),
                                                ("finger_spin", 0.1), ("cheetah_run", 0.1), ("hopper", 0.1),
                                                ("dmc:reacher/hard", 0.1)])
def test_the_paper_preset_takes_the_published_decoder_variance_of_each_task(task: str, variance: float) -> None:
    cfg = parse_cli(["paper", "--run.task", task])
    run = cfg.with_task(cfg.task_spec)  # what a run records in config.json
    assert run.model.pixel_variance == variance and run.to_dict()["model"]["pixel_variance"] == variance
    assert cfg.with_model_resolved().model.pixel_variance == variance  # what a learner built from `cfg` uses
    chosen = parse_cli(["paper", "--run.task", task, "--model.pixel-variance", "0.2"])
    assert chosen.with_task(chosen.task_spec).model.pixel_variance == 0.2  # overridable
    small = parse_cli(["cpu", "--run.task", task])  # the small presets keep the 0.1 their results were run with
    assert small.model.pixel_variance == 0.1 and parse_cli(["debug", "--run.task", task]).model.pixel_variance == 0.1


def test_a_bad_decoder_variance_is_refused() -> None:
    with pytest.raises(ConfigError, match="model.pixel_variance must be a positive number or auto"):
        dataclasses.replace(paper().model, pixel_variance=0.0)
