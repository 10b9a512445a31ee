"""`make tasks`: the registered task names and the task strings beyond them (deploy/tools/tasks.py)."""

import sys

from deploy.tools.tasks import main

if __name__ == "__main__":
    sys.exit(main())
