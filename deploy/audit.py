"""`python -m deploy.audit <run dir>`: check every acknowledged replay row against the writers' records (deploy/tools/audit.py)."""

import sys

from deploy.tools.audit import main

if __name__ == "__main__":
    sys.exit(main())
