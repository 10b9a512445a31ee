"""What a Ray job ships besides the working tree: the folder of a user's own task module (`TASK=my_envs:make`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from common.tasks import SHIPPED_MODULES, TaskError, parse_task

REPO = Path(__file__).resolve().parents[2]


def task_modules(task: str, scratch: Path) -> list[str]:
    """What a `<module>:<callable>` task must ship with the job, as Ray's `py_modules`, so that the driver, the actors
    and the evaluator import it on every node: its top-level package's folder, or for a single-file module a folder
    `scratch/<SHIPPED_MODULES>` holding a copy of that file alone (Ray's job client ships folders only;
    common/tasks.import_factory looks inside it). Nothing for other tasks, for modules at this repository's top
    (the working_dir carries them) or for installed packages (they must be installed on the nodes as here)."""
    import importlib.util

    if not task:
        return []
    spec = parse_task(task)
    if spec.suite != "custom":
        return []
    top = spec.env_id.split(":")[0].split(".")[0]
    found = importlib.util.find_spec(top)
    if found is None or not (found.submodule_search_locations or found.origin):
        raise TaskError(f"task {task!r}: module {top!r} is not importable here, so it cannot be shipped to the "
                        "cluster. Put its folder on PYTHONPATH (`PYTHONPATH=path/to/folder make train TASK=...`) or "
                        "install its package here and on the cluster's nodes.")
    path = Path(list(found.submodule_search_locations)[0] if found.submodule_search_locations else str(found.origin))
    if path.resolve().parent == REPO or "site-packages" in path.parts:
        return []
    if path.is_dir():
        return [str(path.resolve())]
    folder = scratch / SHIPPED_MODULES
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, folder / path.name)
    return [str(folder)]
