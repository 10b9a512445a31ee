"""Task strings: which environment a run trains on, with its action repeat, episode length and camera.

A task string (`--run.task`, `make train TASK=...`) takes one of four forms, parsed here and nowhere else:
- a registered name or alias: the paper's eight tasks (table 1's action repeats), two cartpole tasks, any
  name an installed package registers under the `slac_dist.tasks` entry-point group, and any name given to
  `register(...)` in this process;
- `dmc:<domain>/<task>`: any dm_control suite task (`dmc:reacher/hard`);
- `gym:<id>`: any registered gymnasium id with a continuous Box action space and rgb_array rendering;
- `<module>:<callable>`: the user's own factory, a callable of no arguments that returns a `gymnasium.Env`
  rendering `rgb_array` frames; every process that builds envs imports it.

Tasks outside the registry get documented defaults (`DEFAULTS`): action repeat 4 for dm_control (the
official SLAC's and PlaNet's most common), 1 for gymnasium and custom envs (their own frame skip already
sets the control step); 1000 environment steps per episode (dm_control's episodes), or a gymnasium id's own
time limit when it registers one, or a factory's env's own (a TimeLimit wrapper), found when the run builds
its first env; camera 0 for dm_control, the env's own for the others. `--task.action-repeat`, `--task.episode-length`
and `--task.camera` override any of them.

`cartpole_swingup` and `cartpole_balance` are not among the paper's tasks. The first is the PlaNet
benchmark's easiest pixel task (action repeat 8 as in PlaNet), added so that learning can be shown
within an hour on a 2-core CPU machine (the `cpu` preset, `results/cartpole_swingup/cpu`, the `learning`
test tier); the second is dm_control's easier cartpole task, the pole starting upright, kept for quick checks.
The gymnasium tasks use the current v5 versions of the paper's v2 environments; their own `frame_skip`
already gives table 1's original control time step (Hopper-v5: 0.008 s), so the action repeat below
multiplies it exactly as in the paper.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal

log = logging.getLogger(__name__)
Suite = Literal["dmc", "gym", "custom"]
ENTRY_POINT_GROUP = "slac_dist.tasks"
"""Installed packages register named tasks here: `[project.entry-points."slac_dist.tasks"] reach =
"mypkg.envs:make_reach"` (a factory, with DEFAULTS) or a `TaskSpec` object (its own settings)."""

DEFAULTS: dict[str, dict[str, int | None]] = {
    "dmc": {"action_repeat": 4, "episode_length": 1000, "camera": 0},
    "gym": {"action_repeat": 1, "episode_length": 1000, "camera": None},
    "custom": {"action_repeat": 1, "episode_length": 1000, "camera": None},
}
"""Settings of a task outside the registry (a gymnasium id's own time limit replaces its episode_length)."""


class TaskError(ValueError):
    """A task cannot be trained on (no such env, discrete actions, no rgb_array frames, ...); the message names
    the task string and the fix."""


class UnknownTaskError(TaskError):
    """The task string names no task; the message says which forms exist and what is registered."""


RENDER_QUALITIES = ("fast", "antialiased", "full")
"""How MuJoCo draws a task's frames (`--task.render`). fast: no shadows, no multisampling (what slac-dist has
always trained with; the cheapest on a CPU). antialiased: 4x multisampling, no shadows: thin parts (cartpole's
pole is about one pixel wide at 64x64) shade by how much of a pixel they cover instead of snapping to whole
pixels, at about 2x fast's cost per frame. full: the model's own settings, shadows included, as dm_control and
gymnasium draw by default (about 6x fast's cost). Measured on a 2-core AMD EPYC VM, cartpole at 64x64: 2.9,
6.4 and 16.7 ms per frame."""


@dataclass(frozen=True)
class TaskSpec:
    """One task, fully resolved: where its env comes from and how it is stepped and drawn."""

    name: str
    """The task string as recorded: a registry name, `dmc:domain/task`, `gym:id` or `module:callable`."""
    suite: Suite
    env_id: str
    """dm_control `domain/task`, the gymnasium id, or the factory's `module:callable`."""
    action_repeat: int
    """Environment steps per agent step, with rewards summed (table 1)."""
    episode_length: int = 1000
    """Environment steps per episode: the time limit, ending an episode as truncation."""
    camera: int | None = None
    """Camera id to render from; None: the env's own default (dm_control: 0)."""
    aliases: tuple[str, ...] = ()
    render: str = "fast"
    """How a MuJoCo env draws its frames (RENDER_QUALITIES); other envs draw with their own render()."""

    def __post_init__(self) -> None:
        if self.render not in RENDER_QUALITIES:
            raise UnknownTaskError(f"task {self.name}: render must be one of {', '.join(RENDER_QUALITIES)}, got "
                                   f"{self.render!r}")
        if self.action_repeat < 1 or self.episode_length < 1:
            raise UnknownTaskError(f"task {self.name}: action_repeat and episode_length must be >= 1, got "
                                   f"{self.action_repeat} and {self.episode_length}")

    def describe(self) -> str:
        """One line for the run's first lines: every setting and where the env comes from."""
        camera = "the env's default" if self.camera is None else self.camera
        return (f"task {self.name} ({self.suite} {self.env_id}): action repeat {self.action_repeat}, "
                f"{self.episode_length} environment steps per episode, camera {camera}, {self.render} rendering")

    @property
    def slug(self) -> str:
        """The name as a file name (run directories, result folders): `dmc:reacher/hard` -> `dmc-reacher-hard`."""
        return slug(self.name)

    def settings(self) -> dict[str, Any]:
        """What config.json, W&B and an exported policy record of the task."""
        return {"task": self.name, "suite": self.suite, "env_id": self.env_id, "action_repeat": self.action_repeat,
                "episode_length": self.episode_length, "camera": self.camera, "render": self.render}


_BUILTIN: tuple[TaskSpec, ...] = (
    TaskSpec("cheetah_run", "dmc", "cheetah/run", 4, camera=0, aliases=("cheetah",)),
    TaskSpec("walker_walk", "dmc", "walker/walk", 2, camera=0, aliases=("walker",)),
    TaskSpec("ball_in_cup_catch", "dmc", "ball_in_cup/catch", 4, camera=0, aliases=("ball_in_cup", "cup")),
    TaskSpec("finger_spin", "dmc", "finger/spin", 2, camera=0, aliases=("finger",)),
    TaskSpec("half_cheetah", "gym", "HalfCheetah-v5", 1, aliases=("halfcheetah", "HalfCheetah")),
    TaskSpec("walker2d", "gym", "Walker2d-v5", 4, aliases=("Walker2d",)),
    TaskSpec("hopper", "gym", "Hopper-v5", 2, aliases=("Hopper",)),
    TaskSpec("ant", "gym", "Ant-v5", 4, aliases=("Ant",)),
    TaskSpec("cartpole_swingup", "dmc", "cartpole/swingup", 8, camera=0, aliases=("cartpole",)),
    TaskSpec("cartpole_balance", "dmc", "cartpole/balance", 8, camera=0),
)
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _BUILTIN}
"""The built-in registry (the paper's tasks and two cartpole tasks); `register` adds to it."""
_ALIASES: dict[str, str] = {alias: spec.name for spec in _BUILTIN for alias in (spec.name, *spec.aliases)}
SHIPPED_MODULES = "slac_task_modules"
"""A folder of single-file task modules that a Ray job ships (deploy/cluster/shipping.task_modules); searched on import."""
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_entry_points_loaded = False


def register(name: str, factory: str | Callable[[], Any], action_repeat: int | None = None,
             episode_length: int | None = None, camera: int | None = None) -> TaskSpec:
    """Name a custom env for this process: `register("reach", "mypkg.envs:make_reach", action_repeat=2)`.

    `factory` is a `module:callable` string or a module-level callable (recorded by its import path, since
    actors and evaluators import it in their own processes). The run records the resolved factory, so the
    actors need the module importable, not this call.
    """
    if callable(factory):
        module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
        if not module or module == "__main__" or "<" in qualname:
            raise UnknownTaskError(f"register({name!r}): the factory must be importable by other processes; pass a "
                                   "function defined at the top of a module (or a 'module:callable' string)")
        factory = f"{module}:{qualname}"
    if not _FACTORY.match(factory):
        raise UnknownTaskError(f"register({name!r}): {factory!r} is not 'module:callable'")
    defaults = DEFAULTS["custom"]
    spec = TaskSpec(name, "custom", factory, action_repeat or int(defaults["action_repeat"] or 1),
                    episode_length or int(defaults["episode_length"] or 1000), camera)
    TASKS[name] = spec
    _ALIASES[name] = name
    return spec


def remember_custom(name: Any, factory: Any) -> None:
    """Know `name` as the custom task `factory` in this process, if it is a plain name not known yet (a resolved
    config.json records both): nothing is imported, and a name that means something else is left alone."""
    if not (isinstance(name, str) and isinstance(factory, str) and _FACTORY.match(factory)):
        return
    if name in _ALIASES or _FACTORY.match(name) or name.startswith(("dmc:", "gym:")):
        return
    register(name, factory)


def _load_entry_points() -> None:
    """Register the named tasks of installed packages (once per process)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in _ALIASES:  # a built-in name or alias keeps its meaning
            log.warning("the %s entry point %r is ignored: the name is taken", ENTRY_POINT_GROUP, entry.name)
            continue
        try:
            target = entry.load() if ":" in entry.value else None
            if isinstance(target, TaskSpec):
                TASKS[entry.name] = dataclasses.replace(target, name=entry.name)
                _ALIASES[entry.name] = entry.name
            else:
                register(entry.name, entry.value)
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not stop the other tasks
            log.warning("the %s entry point %r (%s) is ignored: %s: %s", ENTRY_POINT_GROUP, entry.name, entry.value,
                        type(exc).__name__, exc)


def slug(task: str) -> str:
    """A task string as a file name: every run of characters other than letters, digits, `.`, `_` becomes `-`."""
    return re.sub(r"[^\w.]+", "-", task).strip("-") or "task"


def task_names() -> list[str]:
    """Every registered name: built-in, installed packages' entry points, `register` calls."""
    _load_entry_points()
    return list(TASKS)


def _unknown(name: str) -> UnknownTaskError:
    names = task_names()
    close = difflib.get_close_matches(name, list(_ALIASES), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return UnknownTaskError(
        f"unknown task {name!r}.{hint} A task is a registered name ({', '.join(names)}; `make tasks` lists them), "
        "dmc:<domain>/<task> (any dm_control suite task, e.g. dmc:reacher/hard), gym:<id> (a gymnasium id, e.g. "
        "gym:InvertedDoublePendulum-v5) or <module>:<callable> (your own factory returning a gymnasium.Env, e.g. "
        "mypkg.envs:make_env, its folder on PYTHONPATH).")


def parse_task(name: str) -> TaskSpec:
    """The spec of a task string with its defaults, without importing any simulator (see the module docstring).

    The name of a spec from a `dmc:`/`gym:`/factory string is the string itself; a registry alias becomes its name.
    """
    name = name.strip()
    if name.startswith("dmc:"):
        domain_task = name[4:]
        if not re.fullmatch(r"[\w]+/[\w]+", domain_task):
            raise UnknownTaskError(f"task {name!r}: a dm_control task is dmc:<domain>/<task>, e.g. dmc:reacher/hard")
        return TaskSpec(name, "dmc", domain_task, **DEFAULTS["dmc"])  # type: ignore[arg-type]
    if name.startswith("gym:"):
        if not name[4:]:
            raise UnknownTaskError(f"task {name!r}: a gymnasium task is gym:<id>, e.g. gym:Pusher-v5")
        return TaskSpec(name, "gym", name[4:], **DEFAULTS["gym"])  # type: ignore[arg-type]
    canonical = _ALIASES.get(name) or _ALIASES.get(name.replace("-", "_"))
    if canonical is None and not _FACTORY.match(name):
        _load_entry_points()
        canonical = _ALIASES.get(name)
    if canonical is not None:
        return TASKS[canonical]
    if _FACTORY.match(name):
        return TaskSpec(name, "custom", name, **DEFAULTS["custom"])  # type: ignore[arg-type]
    raise _unknown(name)


def resolve_task(name: str, action_repeat: int | None = None, episode_length: int | None = None,
                 camera: int | None | Literal["auto"] = "auto", render: str = "fast") -> TaskSpec:
    """`parse_task` with any given setting replacing the default (None / "auto": keep the default)."""
    spec = parse_task(name)
    changes: dict[str, Any] = {"render": render} if render != spec.render else {}
    if action_repeat is not None:
        changes["action_repeat"] = action_repeat
    if episode_length is not None:
        changes["episode_length"] = episode_length
    elif spec.suite == "gym" and spec.name not in TASKS:
        changes["episode_length"] = _gym_time_limit(spec.env_id)
    if camera != "auto":
        changes["camera"] = camera
    return dataclasses.replace(spec, **changes) if changes else spec


def _gym_time_limit(env_id: str) -> int:
    """A gymnasium id's own time limit (its registered max_episode_steps), else DEFAULTS' 1000."""
    try:
        import gymnasium
    except ImportError:
        return int(DEFAULTS["gym"]["episode_length"] or 1000)
    entry = gymnasium.envs.registry.get(env_id)
    limit = getattr(entry, "max_episode_steps", None)
    return int(limit) if limit else int(DEFAULTS["gym"]["episode_length"] or 1000)


def _import(module_name: str) -> Any:
    """importlib.import_module, then once more with a shipped SHIPPED_MODULES folder on sys.path (a Ray job's)."""
    try:
        return importlib.import_module(module_name)
    except ImportError:
        shipped = importlib.util.find_spec(SHIPPED_MODULES)
        if shipped is None or not shipped.submodule_search_locations:
            raise
        sys.path.extend(p for p in shipped.submodule_search_locations if p not in sys.path)
        return importlib.import_module(module_name)


def import_factory(path: str) -> Callable[..., Any]:
    """The callable named by `module:callable`, imported here (the module must be on this process's path)."""
    module_name, _, attr = path.partition(":")
    try:
        module = _import(module_name)
    except ImportError as exc:
        raise UnknownTaskError(
            f"task {path!r}: module {module_name!r} does not import ({exc}). Put the directory that holds it on "
            "PYTHONPATH (e.g. `PYTHONPATH=$PWD make train TASK=...`), or install its package.") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UnknownTaskError(f"task {path!r}: module {module_name!r} has no {attr!r}; name a callable that "
                                   "returns a gymnasium.Env")
        target = getattr(target, part)
    if not callable(target):
        raise UnknownTaskError(f"task {path!r}: {attr!r} is a {type(target).__name__}, not a callable")
    return target
