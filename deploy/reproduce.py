"""`make reproduce` / `python -m deploy.reproduce <preset> --seeds N`: seeds, curves, results tables (deploy/experiments/harness.py)."""

import sys

from deploy.experiments.harness import main

if __name__ == "__main__":
    sys.exit(main())
