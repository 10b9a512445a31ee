"""Pixel environments for any task string: 64x64 RGB frames rendered headless.

`make_env(task, seed)` hides where a task comes from (dm_control, gymnasium, the user's own factory):
actions in [-1, 1] are rescaled to the env's bounds, each action is repeated (the task's action repeat)
with rewards summed, the episode is truncated at the task's episode length, and termination (a gym robot
falling) stays distinct from truncation (the time limit), because only termination may zero the critic's
bootstrap (eq. 10). MuJoCo envs render through MuJoCo's offscreen context at the model's size with shadows
and multisampling off (fast on a CPU); any other env renders through its own `render()`, and frames of
another size are resized to the model's by area averaging, once per agent step.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from common.frames import check_camera, checked_frame, set_render_quality
from common.joint_state import JointState
from common.rendering import process_renderer
from common.tasks import TaskError, TaskSpec, import_factory, parse_task


def _not_settotalmass(record: logging.LogRecord) -> bool:
    """MuJoCo 3's deprecation of `settotalmass`, which dm_control's own cheetah model uses: relayed through absl once
    per env built (ten lines for `make eval`'s ten episodes), about a file no user edits."""
    return "settotalmass" not in record.getMessage()


logging.getLogger("absl").addFilter(_not_settotalmass)


class PixelEnv(Protocol):
    """What every slac-dist environment offers."""

    spec: TaskSpec
    action_dim: int

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode and return its first frame; with `seed`, the episode a fresh env built with that
        seed would play first (the evaluator reuses one env per episode slot this way)."""
        ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]: ...

    def close(self) -> None: ...


class _RepeatedActionEnv:
    """Shared action checking, rescaling, repeat and time limit; subclasses provide one raw step and a render."""

    spec: TaskSpec
    action_dim: int
    _low: np.ndarray
    _high: np.ndarray

    def __init__(self, spec: TaskSpec, image_size: int) -> None:
        self.spec = spec
        self.image_size = image_size
        self._t = 0  # environment steps in this episode
        self._joint_state: JointState | None = None  # built on first use: the model is fixed for the env's life

    def _raw_step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        raise NotImplementedError

    def _raw_reset(self, seed: int | None) -> None:
        raise NotImplementedError

    def render(self) -> np.ndarray:
        """The current frame as uint8 (3, H, W)."""
        raise NotImplementedError

    def _mujoco_state(self) -> tuple[Any, Any] | None:
        """The simulator's (mujoco.MjModel, mujoco.MjData), or None where the env does not expose one."""
        return None

    @property
    def state_names(self) -> tuple[str, ...] | None:
        """Names of `state()`'s entries (common/joint_state.py), or None for an env without a known simulator
        state (a user's own env): the latent probe (common/probe.py) skips those."""
        handles = self._mujoco_state()
        if handles is None:
            return None
        if self._joint_state is None:
            self._joint_state = JointState(handles[0])
        return self._joint_state.names

    def state(self) -> np.ndarray | None:
        """The true simulator state now, float64 [len(state_names)] (joint positions with hinges as cos and
        sin, then velocities), or None (see `state_names`). What the latent probe regresses the latents on."""
        handles = self._mujoco_state()
        if handles is None or self.state_names is None:
            return None
        assert self._joint_state is not None
        return self._joint_state.read(handles[1])

    @property
    def draws_with_mujoco(self) -> bool:
        """Whether frames come from MuJoCo's offscreen context at the model's size (else the env's own render())."""
        return True

    def render_quality(self) -> dict[str, int] | None:
        """The MuJoCo drawing settings this env's frames use (`set_render_quality`), None for another renderer."""
        handles = self._mujoco_state()
        return set_render_quality(handles[0], self.spec.render) if handles is not None else None

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode; returns its first frame. With `seed`, the initial state is the one a fresh env
        built with that seed starts its first episode in (tests/test_actor_evaluator.py checks it)."""
        self._raw_reset(seed)
        self._t = 0
        return self.render()

    @property
    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of the env's own action space, which `rescale` maps [-1, 1]^A onto."""
        return self._low, self._high

    def _set_bounds(self, low: Any, high: Any) -> None:
        low, high = np.asarray(low, dtype=np.float64).reshape(-1), np.asarray(high, dtype=np.float64).reshape(-1)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise TaskError(f"task {self.spec.name}: the action space's bounds must be finite with high > low (got "
                            f"low {low.tolist()}, high {high.tolist()}); SLAC's tanh policy acts in [-1, 1] and is "
                            "rescaled to them. Give the env's Box action space finite bounds.")
        self._low, self._high, self.action_dim = low, high, int(low.shape[0])

    def rescale(self, action: np.ndarray) -> np.ndarray:
        """Map an action in [-1, 1]^A to the env's bounds."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (self.action_dim,):
            raise ValueError(f"{self.spec.name}: action must have {self.action_dim} entries, got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.spec.name}: action contains NaN or inf: {action}")
        action = np.clip(action, -1.0, 1.0)
        return self._low + (action + 1.0) * 0.5 * (self._high - self._low)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Repeat `action` spec.action_repeat times, summing rewards; stop early at the episode's end (a
        termination, the env's own truncation, or the task's episode length)."""
        raw_action = self.rescale(action)
        total, terminated, truncated, steps = 0.0, False, False, 0
        for _ in range(self.spec.action_repeat):
            reward, terminated, truncated = self._raw_step(raw_action)
            total += reward
            steps += 1
            self._t += 1
            truncated = truncated or (not terminated and self._t >= self.spec.episode_length)
            if terminated or truncated:
                break
        return self.render(), total, terminated, truncated, {"env_steps": steps}


class DmControlEnv(_RepeatedActionEnv):
    """A dm_control suite task; its episodes end at the task's episode length (dm_control's 1000 steps by
    default), or earlier where a task marks a terminal state with discount 0."""

    def __init__(self, spec: TaskSpec, seed: int, image_size: int = 64) -> None:
        super().__init__(spec, image_size)
        process_renderer()
        from dm_control import suite

        domain, task = spec.env_id.split("/")
        if (domain, task) not in suite.ALL_TASKS:
            raise TaskError(_unknown_dmc(spec.name, domain, task, suite.ALL_TASKS))
        # The time limit is the wrapper's (spec.episode_length), so the suite's own is lifted.
        self._env = suite.load(domain, task, task_kwargs={"random": seed, "time_limit": float("inf")})
        action_spec = self._env.action_spec()
        self._set_bounds(action_spec.minimum, action_spec.maximum)
        check_camera(spec, self._env.physics.model)
        set_render_quality(self._env.physics.model, spec.render)

    def _raw_reset(self, seed: int | None) -> None:
        if seed is not None:
            # dm_control draws the initial state from the task's RandomState (suite.load's task_kwargs random):
            # re-seeding it in place gives the stream of a task built with `seed`; reset() resets the physics.
            self._env.task.random.seed(seed)
        self._env.reset()

    def _mujoco_state(self) -> tuple[Any, Any]:
        return self._env.physics.model.ptr, self._env.physics.data.ptr

    def _raw_step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        time_step = self._env.step(action)
        # dm_control marks a true terminal state with discount 0; the time limit keeps discount 1.
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        return float(time_step.reward or 0.0), terminated, bool(time_step.last() and not terminated)

    def render(self) -> np.ndarray:
        camera = 0 if self.spec.camera is None else self.spec.camera
        frame = self._env.physics.render(self.image_size, self.image_size, camera_id=camera)
        return np.ascontiguousarray(frame.transpose(2, 0, 1))

    def close(self) -> None:
        # dm_control's close() does nothing: free the render contexts here, on the thread that rendered with
        # them. Left to the garbage collector they are freed on whatever thread runs it (a restarted actor
        # loop runs on another of Ray's threads), where freeing them raises inside __del__.
        self._env.physics.free()
        self._env.close()


def _unknown_dmc(name: str, domain: str, task: str, all_tasks: Any) -> str:
    domains = sorted({d for d, _ in all_tasks})
    if domain not in domains:
        return f"task {name!r}: dm_control has no domain {domain!r}; its domains are: {', '.join(domains)}"
    tasks = sorted(t for d, t in all_tasks if d == domain)
    return f"task {name!r}: dm_control's {domain} domain has no task {task!r}; its tasks are: {', '.join(tasks)}"


class GymnasiumEnv(_RepeatedActionEnv):
    """A gymnasium env: a registered id (`gym:` and the registry's gym tasks) or what a user's factory returns.

    MuJoCo envs render offscreen at the model's size, with MuJoCo's fast settings; any other env renders through
    its own `render()` and its frames are checked and resized (`common.frames.checked_frame`)."""

    def __init__(self, spec: TaskSpec, seed: int, image_size: int = 64) -> None:
        super().__init__(spec, image_size)
        import gymnasium as gym

        if spec.suite == "custom":
            self._env = _from_factory(spec)
        else:
            self._env = _make_registered(spec, image_size)
        space = self._env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1 \
                or not np.issubdtype(space.dtype, np.floating):
            raise TaskError(f"task {spec.name}: its action space is {space}; SLAC needs continuous actions, a 1-D "
                            "gymnasium.spaces.Box of floats (for discrete or integer actions use a discrete-action "
                            "method, or wrap the env with continuous actions).")
        render_mode = getattr(self._env, "render_mode", None)
        if render_mode != "rgb_array":
            raise TaskError(f"task {spec.name}: the env renders with render_mode={render_mode!r}; SLAC "
                            "learns from its frames and needs render_mode='rgb_array' (build the env with "
                            "render_mode='rgb_array' in your factory).")
        self._mujoco = hasattr(self._env.unwrapped, "mujoco_renderer")
        if self._mujoco:
            process_renderer()
            check_camera(spec, self._env.unwrapped.model)
            if spec.suite == "custom":  # a factory's MuJoCo env draws at 64 x 64 too, not at its 480 x 480 default
                renderer = self._env.unwrapped.mujoco_renderer
                renderer.width = renderer.height = image_size
        self._seed: int | None = seed
        space.seed(seed)
        self._set_bounds(space.low, space.high)
        self._visuals_set = False

    @property
    def draws_with_mujoco(self) -> bool:
        return self._mujoco

    def _mujoco_state(self) -> tuple[Any, Any] | None:
        return (self._env.unwrapped.model, self._env.unwrapped.data) if self._mujoco else None

    @property
    def own_time_limit(self) -> int | None:
        """The env's own time limit (a gymnasium TimeLimit wrapper, or its spec's max_episode_steps), if any."""
        try:  # a TimeLimit under other wrappers too (gymnasium passes no attribute up through them)
            limit = self._env.get_wrapper_attr("_max_episode_steps")
        except AttributeError:
            limit = getattr(self._env, "_max_episode_steps", None)
        limit = limit or getattr(getattr(self._env, "spec", None), "max_episode_steps", None)
        return int(limit) if limit else None

    def _raw_reset(self, seed: int | None) -> None:
        # Seed the first reset with the env's seed, and any reset that is given one (gymnasium re-seeds its
        # np_random then); other resets continue the env's own RNG stream.
        self._env.reset(seed=self._seed if seed is None else seed)
        self._seed = None
        if self._mujoco and not self._visuals_set:
            set_render_quality(self._env.unwrapped.model, self.spec.render)
            self._visuals_set = True

    def _raw_step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        out = self._env.step(action.astype(self._env.action_space.dtype))
        if not isinstance(out, tuple) or len(out) != 5:
            got = f"{len(out)} values" if isinstance(out, tuple) else type(out).__name__
            raise TaskError(f"task {self.spec.name}: step() returned {got}; gymnasium's API returns 5, (obs, reward, "
                            "terminated, truncated, info). An old gym env returns (obs, reward, done, info): split "
                            "done into terminated and truncated (shimmy's GymV21CompatibilityV0 does it).")
        _, reward, terminated, truncated, _ = out
        return _scalar_reward(reward, self.spec.name), bool(terminated), bool(truncated)

    def render(self) -> np.ndarray:
        # gymnasium's offscreen viewer draws into whichever GL context is current: with several envs in
        # one process (actors.envs_per_actor > 1) that is the newest env's, and after one is closed there
        # is none, so frames come out black. Make this env's own context current first.
        viewer = self._viewer()
        if viewer is not None:
            viewer.make_context_current()
        return checked_frame(self._env.render(), self.spec.name, self.image_size)

    def _viewer(self) -> Any:
        if not self._mujoco:
            return None
        return self._env.unwrapped.mujoco_renderer._viewers.get("rgb_array")

    def close(self) -> None:
        # Free MuJoCo's render context with its own GL context current. Left to the garbage collector,
        # it deletes its GL objects by id in whichever context is current then: another env's, whose
        # frames are black from then on.
        viewer = self._viewer()
        if viewer is not None:
            viewer.make_context_current()
            viewer.con.free()
        self._env.close()


def _scalar_reward(reward: Any, task: str) -> float:
    """step()'s reward as a float: a number, or an array of one element (a (1,)-shaped reward is common)."""
    try:
        value = None if reward is None else np.asarray(reward, dtype=np.float64)
    except (TypeError, ValueError):
        value = None
    if value is None or value.size != 1:
        raise TaskError(f"task {task}: step() returned the reward {reward!r}; SLAC needs one number per step "
                        "(sum or pick the components of a vector reward in your env).")
    return float(value.reshape(()))


def _make_registered(spec: TaskSpec, image_size: int) -> Any:
    """gym.make of a registered id, drawn at the model's size and camera when it is a MuJoCo env."""
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    try:
        entry = gym.spec(spec.env_id)
    except gym.error.Error as exc:
        raise TaskError(f"task {spec.name!r}: {exc} (gymnasium's ids: `python -c \"import gymnasium; "
                        "gymnasium.pprint_registry()\"`; an id of another package needs that package imported, "
                        "e.g. through a <module>:<callable> factory)") from None
    kwargs: dict[str, Any] = {"render_mode": "rgb_array", "max_episode_steps": spec.episode_length}
    creator = load_env_creator(entry.entry_point) if isinstance(entry.entry_point, str) else entry.entry_point
    if _is_mujoco_env(creator):
        kwargs.update(width=image_size, height=image_size)
        if spec.camera is not None:
            kwargs["camera_id"] = spec.camera
    elif spec.camera is not None:
        raise TaskError(f"task {spec.name}: --task.camera applies to MuJoCo envs only; {spec.env_id} draws its own view")
    try:
        return gym.make(spec.env_id, **kwargs)
    except gym.error.DependencyNotInstalled as exc:
        raise TaskError(f"task {spec.name!r}: {exc}") from None


def _is_mujoco_env(creator: Any) -> bool:
    try:
        from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
    except ImportError:
        return False
    return isinstance(creator, type) and issubclass(creator, MujocoEnv)


def _from_factory(spec: TaskSpec) -> Any:
    """The env a user's `module:callable` returns, checked to be a gymnasium-style env."""
    factory = import_factory(spec.env_id)
    if spec.camera is not None:
        raise TaskError(f"task {spec.name}: --task.camera applies to MuJoCo and dm_control tasks; a factory's env "
                        "draws its own view (give your factory the camera instead)")
    try:
        env = factory()
    except Exception as exc:
        raise TaskError(f"task {spec.name}: the factory raised {type(exc).__name__}: {exc}") from exc
    missing = [name for name in ("reset", "step", "render", "action_space") if not hasattr(env, name)]
    if missing:
        raise TaskError(f"task {spec.name}: the factory returned a {type(env).__name__}, which has no "
                        f"{', '.join(missing)}; it must return a gymnasium.Env")
    return env


def make_env(task: str | TaskSpec, seed: int, image_size: int = 64) -> DmControlEnv | GymnasiumEnv:
    """Build the pixel env of a task string (common/tasks.py) or a resolved `TaskSpec` (Config.task_spec)."""
    spec = parse_task(task) if isinstance(task, str) else task
    cls = DmControlEnv if spec.suite == "dmc" else GymnasiumEnv
    return cls(spec, seed, image_size)
