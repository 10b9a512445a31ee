"""`make tasks`: every registered task name with its settings, and the task-string forms beyond them.

    python -m deploy.tasks
"""

from __future__ import annotations

import sys

from common.tasks import DEFAULTS, ENTRY_POINT_GROUP, TASKS, TaskError, task_names


def listing() -> str:
    """The registry as a table, then the other forms with their defaults."""
    try:
        names = task_names()
    except TaskError as exc:  # a broken plug-in: the built-in tasks are still worth listing
        print(f"warning: {exc}", file=sys.stderr)
        names = list(TASKS)
    rows = [("name", "from", "action repeat", "episode", "camera", "aliases")]
    for name in names:
        spec = TASKS[name]
        rows.append((name, f"{spec.suite}:{spec.env_id}", str(spec.action_repeat), str(spec.episode_length),
                     "default" if spec.camera is None else str(spec.camera), ", ".join(spec.aliases)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    d = DEFAULTS
    lines += [
        "",
        "Any other task, with `make train TASK=...` (or --run.task):",
        f"  dmc:<domain>/<task>    any dm_control suite task (action repeat {d['dmc']['action_repeat']}, "
        f"{d['dmc']['episode_length']} steps, camera 0), e.g. dmc:reacher/hard",
        f"  gym:<id>               a gymnasium id with a continuous Box action space and rgb_array frames (action repeat "
        f"{d['gym']['action_repeat']}, the id's own time limit), e.g. gym:InvertedDoublePendulum-v5",
        "  <module>:<callable>    your own factory returning a gymnasium.Env (action repeat 1, the env's own time limit "
        "or 1000 steps), e.g. PYTHONPATH=examples/custom_task TASK=reach:make_env",
        "Settings: --task.action-repeat N, --task.episode-length N, --task.camera ID (ARGS=\"...\").",
        f"Packages register names under the `{ENTRY_POINT_GROUP}` entry-point group; Python code with "
        "common.tasks.register(name, 'module:callable', ...).",
    ]
    return "\n".join(lines)


def main() -> int:
    print(listing())
    return 0

