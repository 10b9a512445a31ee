"""The one-way data flow of STYLE.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "common": {"learner", "actors", "replay_service", "deploy", "ray", "redis"},
    "replay_service": {"learner", "actors", "deploy", "ray"},
    "learner": {"actors", "deploy"},
    "actors": {"learner", "deploy"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_rules(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"package {package} is empty"
    violations = {str(f.relative_to(REPO)): sorted(_imports(f) & FORBIDDEN[package]) for f in files}
    assert not {k: v for k, v in violations.items() if v}, violations
