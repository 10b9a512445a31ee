"""`make train TASK=... PRESET=... ARGS=...`: parse the config and run (training loop: a later issue)."""

from __future__ import annotations

import sys

from common.config import parse_cli


def main() -> int:
    cfg = parse_cli()
    print(cfg.to_json())
    print("slac-dist: the distributed training loop is not built yet (issue 5).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
