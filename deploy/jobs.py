"""`make train/logs/stop/status` on a Ray cluster: the driver as a Ray job (deploy/cluster/jobs.py)."""

import sys

from deploy.cluster.jobs import main

if __name__ == "__main__":
    sys.exit(main())
