"""`make cluster-down`: stop Ray on an on-premise cluster's workers before `ray down` (deploy/cluster/cluster_down.py)."""

import sys

from deploy.cluster.cluster_down import main

if __name__ == "__main__":
    sys.exit(main())
