"""The eight pixel tasks on real headless rendering: shapes, real frames, seeding, action repeat, flags."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.envs import GymnasiumEnv, make_env
from common.tasks import TASKS, UnknownTaskError, resolve_task

pytestmark = pytest.mark.unit

ALL_TASKS = sorted(TASKS)


def _actions(action_dim: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, action_dim))


@pytest.mark.parametrize("task", ALL_TASKS)
def test_frames_shapes_and_content(task: str) -> None:
    env = make_env(task, seed=1)
    obs = env.reset()
    assert obs.shape == (3, 64, 64) and obs.dtype == np.uint8
    assert obs.std() > 5.0, "frame is (nearly) constant: rendering produced no image"
    frames = [obs]
    for action in _actions(env.action_dim, 6):
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs.shape == (3, 64, 64) and obs.dtype == np.uint8
        assert isinstance(reward, float) and np.isfinite(reward)
        assert isinstance(terminated, bool) and isinstance(truncated, bool)
        assert 1 <= info["env_steps"] <= env.spec.action_repeat
        frames.append(obs)
        if terminated or truncated:
            break
    assert any(np.abs(f.astype(int) - frames[0]).sum() > 0 for f in frames[1:]), "frames never change"
    env.close()


@pytest.mark.parametrize("task", ALL_TASKS)
def test_same_seed_same_frames(task: str) -> None:
    runs = []
    for _ in range(2):
        env = make_env(task, seed=7)
        frames = [env.reset()] + [env.step(a)[0] for a in _actions(env.action_dim, 3)]
        runs.append(np.stack(frames))
        env.close()
    np.testing.assert_array_equal(runs[0], runs[1])


def _raw_rewards(task: str, seed: int, raw_actions: np.ndarray) -> list[float]:
    """Rewards of the unwrapped benchmark env, one per raw (non-repeated) step."""
    spec = resolve_task(task)
    if spec.suite == "dmc":
        from dm_control import suite

        domain, name = spec.env_id.split("/")
        env = suite.load(domain, name, task_kwargs={"random": seed})
        env.reset()
        return [float(env.step(a).reward) for a in raw_actions]
    import gymnasium as gym

    env = gym.make(spec.env_id)
    env.reset(seed=seed)
    rewards = []
    for a in raw_actions:
        _, r, terminated, truncated, _ = env.step(a.astype(np.float32))
        rewards.append(float(r))
        if terminated or truncated:
            break
    return rewards


@pytest.mark.parametrize("task", ALL_TASKS)
def test_action_repeat_sums_raw_rewards(task: str) -> None:
    env = make_env(task, seed=3)
    env.reset()
    repeat = env.spec.action_repeat
    actions = _actions(env.action_dim, 4, seed=5) * 0.3  # gentle, so gym robots stay up
    ours, raw_actions = [], []
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        ours.append(reward)
        raw_actions += [env.rescale(action)] * info["env_steps"]
        if terminated or truncated:
            break
    raw = _raw_rewards(task, 3, np.array(raw_actions))
    expected = [sum(raw[i * repeat:(i + 1) * repeat]) for i in range(len(ours))]
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-9)
    env.close()


def test_actions_are_rescaled_to_bounds() -> None:
    env = make_env("finger_spin", seed=0)
    np.testing.assert_allclose(env.rescale(np.ones(env.action_dim)), env._high)
    np.testing.assert_allclose(env.rescale(-np.ones(env.action_dim)), env._low)
    with pytest.raises(ValueError, match="entries"):
        env.rescale(np.zeros(env.action_dim + 1))
    with pytest.raises(ValueError, match="NaN"):
        env.rescale(np.full(env.action_dim, np.nan))
    env.close()


def test_hopper_falls_as_termination_not_truncation() -> None:
    env = make_env("hopper", seed=0)
    env.reset()
    flags = []
    for _ in range(500):
        _, _, terminated, truncated, _ = env.step(np.ones(env.action_dim))
        flags.append((terminated, truncated))
        if terminated or truncated:
            break
    assert flags[-1] == (True, False), f"hopper driven at full torque should fall (terminate), got {flags[-1]}"
    env.close()


def test_hopper_time_limit_is_truncation_not_termination() -> None:
    spec = resolve_task("hopper", episode_length=20)
    env = GymnasiumEnv(spec, seed=0)
    env.reset()
    steps = 0
    for _ in range(10):
        _, _, terminated, truncated, info = env.step(np.zeros(env.action_dim))
        steps += info["env_steps"]
        if terminated or truncated:
            break
    assert (terminated, truncated, steps) == (False, True, 20)
    env.close()


def test_dm_control_episode_is_1000_env_steps() -> None:
    env = make_env("finger_spin", seed=0)
    env.reset()
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, info = env.step(np.zeros(env.action_dim))
        steps += info["env_steps"]
        done = terminated or truncated
    assert (steps, terminated, truncated) == (1000, False, True)
    env.close()


def test_unknown_task_lists_the_names() -> None:
    with pytest.raises(UnknownTaskError, match="cheetah_run.*hopper"):
        make_env("nonsense", seed=0)
    assert resolve_task("cheetah").name == "cheetah_run" and resolve_task("Hopper").name == "hopper"


def test_action_repeats_match_table_1() -> None:
    repeats = {name: spec.action_repeat for name, spec in TASKS.items()}
    assert repeats == {"cheetah_run": 4, "walker_walk": 2, "ball_in_cup_catch": 4, "finger_spin": 2,
                       "half_cheetah": 1, "walker2d": 4, "hopper": 2, "ant": 4,
                       "cartpole_swingup": 8, "cartpole_balance": 8}  # not the paper's: PlaNet's repeat, quick checks


@pytest.mark.parametrize("task", ["hopper", "cheetah_run"])
def test_each_env_renders_its_own_frames_beside_others(task: str) -> None:
    """Several envs in one process (actors.envs_per_actor > 1): closing one must not blank the others' frames."""
    a, b = make_env(task, seed=0), make_env(task, seed=1)
    a.reset()
    b.reset()
    a.step(np.zeros(a.action_dim))
    frame = a.render()
    assert not np.array_equal(frame, b.render())
    b.close()
    after_close = a.render()
    del b
    gc.collect()  # the closed env's render context is freed now, as when an actor replaces a broken env
    after_collect = a.render()
    a.close()
    for after in (after_close, after_collect):
        assert after.max() > 0, "a frame came out black after another env was closed"
        np.testing.assert_array_equal(after, frame)


def test_gl_backend_choice_prefers_egl_on_nvidia_machines() -> None:
    from common.rendering import preferred_gl_backend

    def no_gpu() -> bool:
        return False

    def gpu() -> bool:
        return True

    assert preferred_gl_backend({}, gpu) == "egl"
    assert preferred_gl_backend({}, no_gpu) is None  # no preference: probe EGL, then OSMesa, as before
    assert preferred_gl_backend({"MUJOCO_GL": "osmesa"}, gpu) == "osmesa"  # the user's choice wins
    assert preferred_gl_backend({"MUJOCO_GL": ""}, gpu) == "egl"


def test_select_gl_backend_exports_egl_on_an_nvidia_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import common.rendering

    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.setattr(common.rendering, "nvidia_gpu_present", lambda: True)
    assert common.rendering.select_gl_backend() == "egl"
    assert os.environ["MUJOCO_GL"] == "egl" and os.environ["PYOPENGL_PLATFORM"] == "egl"


def test_egl_that_cannot_start_falls_back_to_osmesa_with_one_warning() -> None:
    """A process where EGL cannot start (here: glvnd finds no EGL vendor; on a GPU machine: a Ray actor whose
    CUDA_VISIBLE_DEVICES hides the GPU) renders with OSMesa, says so once, and reports what draws."""
    code = ("import logging, json; logging.basicConfig(level=logging.INFO)\n"
            "from common.envs import make_env\nfrom common.rendering import process_renderer\n"
            "envs = [make_env('cartpole_balance', seed=i) for i in range(2)]\n"
            "frames = [e.reset() for e in envs]\n"
            "print(json.dumps({**process_renderer(), 'mean': float(frames[0].mean())}))\n")
    env = dict(os.environ, MUJOCO_GL="egl", PYOPENGL_PLATFORM="egl", __EGL_VENDOR_LIBRARY_FILENAMES="/nonexistent.json")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == "osmesa" and report["renderer"] and report["mean"] > 0, report
    assert proc.stderr.count("EGL cannot start in this process") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("rendering with osmesa") == 1


def test_dm_controls_settotalmass_deprecation_is_not_said_per_env(caplog: pytest.LogCaptureFixture) -> None:
    """MuJoCo 3 deprecates the `settotalmass` of dm_control's own cheetah model, and absl relayed it once per env
    built: ten identical warnings for `make eval`'s ten episodes, in every training process too."""
    with caplog.at_level("WARNING"):
        for seed in (0, 1):
            make_env("cheetah_run", seed).close()
    assert "settotalmass" not in caplog.text
