"""Task strings (common/tasks.py) and envs of any kind (common/envs.py): forms, registration, settings, rendering
of envs that are not MuJoCo, and the errors a bad task gets. Unit tier: real envs, no Ray, no Redis."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from actors.evaluator import Evaluator
from actors.worker import ActorWorker
from common import tasks
from common.config import Config, parse_cli, resume_conflicts
from common.envs import make_env
from common.frames import area_resize, checked_frame
from common.tasks import TaskError, UnknownTaskError, parse_task, register, resolve_task, task_names
from deploy.cluster.shipping import task_modules

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # task_factories, as a user's module on PYTHONPATH


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test are forgotten after it."""
    monkeypatch.setattr(tasks, "TASKS", dict(tasks.TASKS))
    monkeypatch.setattr(tasks, "_ALIASES", dict(tasks._ALIASES))
    monkeypatch.setattr(tasks, "_entry_points_loaded", False)


def test_the_four_forms_and_their_defaults() -> None:
    assert parse_task("cheetah") == tasks.TASKS["cheetah_run"]
    dmc = parse_task("dmc:reacher/hard")
    assert (dmc.suite, dmc.env_id, dmc.action_repeat, dmc.episode_length, dmc.camera) == ("dmc", "reacher/hard", 4, 1000, 0)
    pusher = resolve_task("gym:Pusher-v5")  # gymnasium's own time limit for the id: 100 steps
    assert (pusher.suite, pusher.env_id, pusher.action_repeat, pusher.episode_length) == ("gym", "Pusher-v5", 1, 100)
    own = parse_task("my_pkg.envs:make_reach")
    assert (own.suite, own.env_id, own.action_repeat, own.camera) == ("custom", "my_pkg.envs:make_reach", 1, None)
    assert resolve_task("dmc:reacher/hard", action_repeat=2, episode_length=500, camera=1,
                        render="antialiased").settings() == {
        "task": "dmc:reacher/hard", "suite": "dmc", "env_id": "reacher/hard", "action_repeat": 2,
        "episode_length": 500, "camera": 1, "render": "antialiased"}
    assert parse_task("dmc:reacher/hard").slug == "dmc-reacher-hard"


@pytest.mark.parametrize(("name", "said"), [("cheeta_run", "Did you mean 'cheetah_run'"), ("dmc:reacher", "dmc:<domain>/<task>"),
                                             ("gym:", "gym:<id>"), ("what is this", "gym:<id>")])
def test_an_unknown_task_string_names_the_forms(name: str, said: str) -> None:
    with pytest.raises(UnknownTaskError, match=said):
        parse_task(name)


def test_register_and_entry_points_add_named_tasks(registry: None, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec = register("my_box", "task_factories:box", action_repeat=3)
    assert parse_task("my_box") == spec and spec.suite == "custom" and spec.action_repeat == 3
    import task_factories

    assert register("my_box2", task_factories.box).env_id == "task_factories:box"
    with pytest.raises(UnknownTaskError, match="importable by other processes"):
        register("inline", lambda: None)
    # An installed package's entry point (a dist-info folder on sys.path, as pip leaves it).
    dist = tmp_path / "slac_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: slac-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[slac_dist.tasks]\nplugged_box = task_factories:box\n"
                                          "broken = no_such_module_anywhere:make\ncheetah = task_factories:box\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugged_box" in task_names()  # a broken plug-in beside it is a warning, not the end of every lookup
    assert parse_task("plugged_box").env_id == "task_factories:box"
    assert parse_task("cheetah").name == "cheetah_run"  # a built-in alias keeps its meaning


def test_task_settings_reach_the_config_and_a_resolved_config_needs_no_registry(registry: None) -> None:
    cfg = parse_cli(["debug", "--run.task", "dmc:reacher/easy", "--task.action-repeat", "3",
                     "--task.render", "antialiased"])
    assert cfg.task.action_repeat == 3 and cfg.task_spec.action_repeat == 3 and cfg.task_spec.episode_length == 1000
    resolved = cfg.with_task(cfg.task_spec)
    assert resolved.task.resolved and Config.from_json(resolved.to_json()) == resolved
    assert resolved.to_dict()["task"] == {"action_repeat": 3, "episode_length": 1000, "camera": 0,
                                          "render": "antialiased", "suite": "dmc", "env_id": "reacher/easy"}
    assert resolved.task_spec.render == "antialiased"
    register("elsewhere", "task_factories:box", action_repeat=2)
    mine = parse_cli(["debug", "--run.task", "elsewhere"])
    mine = mine.with_task(mine.task_spec)
    del tasks.TASKS["elsewhere"], tasks._ALIASES["elsewhere"]  # another process: it never saw the register call
    assert mine.task_spec.env_id == "task_factories:box" and mine.task_spec.action_repeat == 2
    assert Config.from_json(mine.to_json()) == mine  # its config.json there: `make eval`, `make export`, a resume
    assert parse_task("elsewhere").env_id == "task_factories:box"


def test_resume_refuses_another_action_repeat_but_not_a_config_from_before_task_settings() -> None:
    saved = parse_cli(["debug", "--run.task", "cartpole"])
    saved = saved.with_task(saved.task_spec)
    other = parse_cli(["debug", "--run.task", "cartpole", "--task.action-repeat", "4"])
    assert resume_conflicts(saved, other.with_task(other.task_spec)) == ["task.action_repeat: saved 8, now 4"]
    old = saved.to_dict()
    del old["task"]  # a config.json written before the task group existed
    assert resume_conflicts(Config.from_dict(old), saved) == []
    before_render = saved.to_dict()
    del before_render["task"]["render"]  # written before --task.render: those runs drew fast
    assert resume_conflicts(Config.from_dict(before_render), saved) == []
    drawn = parse_cli(["debug", "--run.task", "cartpole", "--task.render", "full"])
    assert resume_conflicts(saved, drawn.with_task(drawn.task_spec)) == ["task.render: saved 'fast', now 'full'"]


def test_render_quality_sets_what_mujoco_draws_with() -> None:
    frames = {}
    for render, quality in [("fast", {"shadowsize": 0, "offsamples": 0}),
                            ("antialiased", {"shadowsize": 0, "offsamples": 4})]:
        env = make_env(resolve_task("cartpole_swingup", render=render), seed=0)
        assert env.render_quality() == quality
        frames[render] = env.reset(seed=1)
        env.close()
    full = make_env(resolve_task("cartpole_swingup", render="full"), seed=0)
    assert full.render_quality()["shadowsize"] > 0  # the model's own shadow map, left as it is
    full.close()
    # Multisampling shades the one-pixel pole and the rail by coverage: the same state, other pixels.
    assert np.abs(frames["fast"].astype(int) - frames["antialiased"]).max() > 20
    with pytest.raises(UnknownTaskError, match="render must be one of fast, antialiased, full"):
        resolve_task("cartpole_swingup", render="pretty")


def test_the_action_repeat_and_episode_length_set_the_env_steps() -> None:
    env = make_env(resolve_task("dmc:reacher/easy", action_repeat=3), seed=0)
    env.reset()
    assert env.step(np.zeros(env.action_dim))[4]["env_steps"] == 3
    env.close()
    env = make_env(resolve_task("task_factories:box", action_repeat=2, episode_length=5), seed=0)
    env.reset()
    steps = [env.step(np.zeros(2)) for _ in range(3)]
    assert [s[4]["env_steps"] for s in steps] == [2, 2, 1] and [s[3] for s in steps] == [False, False, True]
    assert not any(s[2] for s in steps)  # a time limit is truncation, never termination
    env.close()


def test_area_resize_averages_what_each_pixel_covers() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    blocks = frame.reshape(64, 2, 64, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(area_resize(frame, 64).astype(np.float64) - blocks).max() <= 0.5
    flat = np.full((100, 150, 3), 77, np.uint8)  # not a multiple of 64: weights still sum to one
    out = area_resize(flat, 64)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3) and np.all(out == 77)
    assert np.array_equal(area_resize(frame[:64, :64], 64), frame[:64, :64])  # the model's size: untouched


def test_frames_of_another_size_are_resized_with_their_channels_in_order() -> None:
    env = make_env("task_factories:box", seed=3)  # draws 48 x 80: red = time, blue = top half
    obs = env.reset()
    assert obs.shape == (3, 64, 64) and obs.dtype == np.uint8
    t = env._env.unwrapped.t
    assert np.all(obs[0] == t % 256) and np.all(obs[1] == 0)
    assert np.all(obs[2, :31] == 200) and np.all(obs[2, 33:] == 0)  # the edge row mixes both halves
    obs = env.step(np.zeros(2))[0]
    assert np.all(obs[0] == (t + 1) % 256)
    env.close()


@pytest.mark.parametrize("frame", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8),
                                   np.zeros((8, 8, 4), np.uint8), None])
def test_a_frame_of_the_wrong_kind_is_a_task_error(frame: np.ndarray | None) -> None:
    with pytest.raises(TaskError, match=r"uint8 array of shape \(height, width, 3\)"):
        checked_frame(frame, "mine", 64)


@pytest.mark.parametrize(("task", "said"), [
    ("gym:CartPole-v1", "SLAC needs continuous actions"),
    ("task_factories:discrete", "SLAC needs continuous actions"),
    ("task_factories:no_rgb_array", "render_mode='rgb_array'"),
    ("task_factories:unbounded", "bounds must be finite"),
    ("task_factories:integer_actions", "SLAC needs continuous actions, a 1-D gymnasium.spaces.Box of floats"),
    ("task_factories:raises", "licence file is missing"),
    ("task_factories:not_callable", "not a callable"),
    ("task_factories:nothing_here", "has no 'nothing_here'"),
    ("no_such_module_anywhere:make", "PYTHONPATH"),
    ("gym:InvertedPendulm-v5", "InvertedPendulum"),  # gymnasium's own suggestion
    ("dmc:reachr/easy", "its domains are: .*reacher"),
    ("dmc:reacher/impossible", "its tasks are: easy, hard"),
    ("cartpole", "--task.camera 9 is not a camera of its model, which has 2"),
    ("hopper", "--task.camera 9 is not a camera of its model, which has 1"),  # MuJoCo would abort the process
])
def test_a_task_that_cannot_work_is_a_task_error_naming_it(task: str, said: str) -> None:
    with pytest.raises(TaskError, match=said) as caught:
        make_env(resolve_task(task, camera=9) if "camera" in said else task, seed=0)
    assert task.split(":")[-1].split("/")[0][:6] in str(caught.value) or task in str(caught.value)


def test_actor_and_evaluator_draw_the_same_frames() -> None:
    cfg = parse_cli(["debug", "--run.task", "task_factories:box", "--task.action-repeat", "2"])
    cfg = cfg.with_task(cfg.task_spec)
    actor = ActorWorker(cfg, 0, "redis://127.0.0.1:1/0", weights=None)  # type: ignore[arg-type]  # never connects
    runs = []
    for factory in (actor.env_factory, Evaluator(cfg).env_factory):
        env = factory(11)
        runs.append(np.stack([env.reset(), *(env.step(np.full(2, 0.5))[0] for _ in range(3))]))
        env.close()
    np.testing.assert_array_equal(runs[0], runs[1])


def test_a_gymnasium_mujoco_task_outside_the_registry_renders_at_the_model_size() -> None:
    env = make_env(resolve_task("gym:InvertedDoublePendulum-v5"), seed=0)
    assert env.draws_with_mujoco and env.spec.episode_length == 1000
    obs = env.reset()
    assert obs.shape == (3, 64, 64) and obs.std() > 5.0
    env.close()


def test_a_cluster_job_ships_the_module_of_a_task_of_ones_own(tmp_path: Path) -> None:
    assert task_modules("hopper", tmp_path) == [] and task_modules("dmc:reacher/hard", tmp_path) == []
    shipped = task_modules("task_factories:box", tmp_path)  # a single-file module: copied alone into a folder
    assert shipped == [str(tmp_path / tasks.SHIPPED_MODULES)]
    assert [p.name for p in (tmp_path / tasks.SHIPPED_MODULES).iterdir()] == ["task_factories.py"]
    package = tmp_path / "pkg" / "my_envs"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("def make():\n    return None\n")
    sys.path.insert(0, str(package.parent))
    try:
        assert task_modules("my_envs:make", tmp_path) == [str(package)]
    finally:
        sys.path.remove(str(package.parent))
    with pytest.raises(TaskError, match="PYTHONPATH"):
        task_modules("not_importable_here:make", tmp_path)


@pytest.mark.parametrize(("task", "said"), [
    ("task_factories:old_gym_step", "step\\(\\) returned 4 values; gymnasium's API returns 5"),
    ("task_factories:vector_reward", "SLAC needs one number per step"),
])
def test_an_env_that_breaks_gymnasiums_step_is_a_task_error_naming_it(task: str, said: str) -> None:
    env = make_env(task, seed=0)
    env.reset()
    with pytest.raises(TaskError, match=said):
        env.step(np.zeros(2))
    env.close()


def test_a_one_element_reward_is_a_number_and_a_nested_time_limit_is_found() -> None:
    env = make_env("task_factories:one_element_reward", seed=0)
    env.reset()
    _, reward, *_ = env.step(np.zeros(2))
    assert type(reward) is float and reward == 1.5 * env.spec.action_repeat
    env.close()
    env = make_env("task_factories:nested_time_limit", seed=0)
    assert env.own_time_limit == 37
    env.close()


def test_a_factorys_mujoco_env_is_drawn_at_the_models_size_not_its_own() -> None:
    """gym.make("Hopper-v5", render_mode="rgb_array") in a factory draws 480 x 480 by default; slac-dist draws it at
    64 x 64 directly, as the registered hopper (an agent step 7.1 ms against 21.2 ms drawn large and shrunk, on
    the 2-core VM with EGL)."""
    env = make_env("task_factories:hopper", seed=0)
    assert env.draws_with_mujoco
    frame = env.reset()
    raw = env._env.render()
    assert frame.shape == (3, 64, 64) and raw.shape == (64, 64, 3) and frame.std() > 5.0
    env.close()
