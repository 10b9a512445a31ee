"""`make eval RUN=<run dir>`: play a trained run's policies, write a JSON report and GIFs (deploy/tools/evaluation.py)."""

import sys

from deploy.tools.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
