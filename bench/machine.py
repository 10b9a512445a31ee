"""What every benchmark's JSON names (the machine's CPU, the commit that was measured: deploy/experiments/provenance.py)
and how it is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploy.experiments.provenance import commit, cpu_name, dirty

__all__ = ["commit", "cpu_name", "dirty", "write_report"]


def write_report(report: dict[str, Any], out: Path | None) -> None:
    """Print the JSON report and, with `out`, also write it there (bench/results/<host>-<date>-<bench>.json)."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
