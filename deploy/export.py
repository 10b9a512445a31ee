"""`make export RUN=<run dir>`: the trained policy as one TorchScript or ONNX file (deploy/tools/export.py)."""

import sys

from deploy.tools.export import main

if __name__ == "__main__":
    sys.exit(main())
