"""The one-way data flow of STYLE.md, checked on the source: who may import whom, between the top-level packages
and between deploy/'s rooms (arrows point into deploy/run/, never out of it; deploy/cluster/ needs nothing of it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "common": {"learner", "actors", "replay_service", "deploy", "ray", "redis"},
    "replay_service": {"learner", "actors", "deploy", "ray"},
    "learner": {"actors", "deploy"},
    "actors": {"learner", "deploy"},
    "deploy/run": {"deploy.experiments", "deploy.tools", "deploy.cluster"},
    "deploy/experiments": {"deploy.tools", "deploy.cluster"},
    "deploy/tools": {"deploy.experiments", "deploy.cluster"},
    "deploy/cluster": {"deploy.run", "deploy.experiments", "deploy.tools"},
}
"""Package folder: the modules (a top-level name, or deploy.<room>) none of its files may import."""
ENTRY_POINTS_ONLY = REPO / "deploy"
"""deploy/'s top level holds the command-line entry points (`python -m deploy.<name>`) and nothing else."""


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, as its top-level name and, for deploy's rooms, `deploy.<room>`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "deploy" else [])
        for name in names:
            parts = name.split(".")
            found.add(parts[0])
            if len(parts) > 1:
                found.add(".".join(parts[:2]))
    return found


def violations(root: Path, package: str, forbidden: set[str]) -> dict[str, list[str]]:
    """{file: forbidden modules it imports} for the .py files under root/package."""
    found = {str(f.relative_to(root)): sorted(_imports(f) & forbidden) for f in sorted((root / package).rglob("*.py"))}
    return {k: v for k, v in found.items() if v}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_rules(package: str) -> None:
    assert list((REPO / package).rglob("*.py")), f"package {package} is empty"
    assert not violations(REPO, package, FORBIDDEN[package])


@pytest.mark.parametrize(("room", "planted"), [("deploy/run", "from deploy.experiments.harness import main"),
                                               ("deploy/run", "import deploy.tools.trained"),
                                               ("deploy/run", "from deploy import tools"),
                                               ("deploy/cluster", "from deploy.run.run_dir import RunDir")])
def test_a_planted_import_against_the_arrows_is_caught(tmp_path: Path, room: str, planted: str) -> None:
    (tmp_path / room).mkdir(parents=True)
    (tmp_path / room / "ok.py").write_text("from common.config import Config\n")
    (tmp_path / room / "bad.py").write_text(f"{planted}\n")
    assert list(violations(tmp_path, room, FORBIDDEN[room])) == [f"{room}/bad.py"]


def test_every_import_is_absolute() -> None:
    """A relative import (`from ..tools import x`) would slip past the rules above: none is allowed."""
    relative = [str(f.relative_to(REPO)) for package in ("common", "replay_service", "learner", "actors", "deploy")
                for f in sorted((REPO / package).rglob("*.py"))
                if any(isinstance(n, ast.ImportFrom) and n.level > 0 for n in ast.walk(ast.parse(f.read_text())))]
    assert not relative, relative


def test_deploys_top_level_holds_only_entry_points() -> None:
    """Each top-level module is a command (`python -m deploy.<name>`): a `__main__` guard, and short."""
    for path in sorted(ENTRY_POINTS_ONLY.glob("*.py")):
        if path.name == "__init__.py":
            continue
        text = path.read_text()
        assert 'if __name__ == "__main__":' in text, f"{path.name} is not an entry point; move it into a room"
        assert len(text.splitlines()) <= 160, f"{path.name}: an entry point parses and dispatches, nothing more"


def test_no_module_of_deploy_is_over_300_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in (REPO / "deploy").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 300}
    assert not long, long
