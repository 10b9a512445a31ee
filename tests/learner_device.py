"""The device the learner unit tests build their learners on: CPU unless SLAC_TEST_DEVICE says otherwise.

`bench/gpu_check.sh` sets SLAC_TEST_DEVICE=cuda to run tests/test_learner.py and tests/test_execution.py with
the learner on the GPU; CI and `make test` never do (they have no GPU).
"""

from __future__ import annotations

import functools
import os

from learner.learner import Learner as _Learner

TEST_DEVICE = os.environ.get("SLAC_TEST_DEVICE", "cpu")

Learner = functools.partial(_Learner, device=TEST_DEVICE)
"""`learner.learner.Learner` on TEST_DEVICE (a test may still pass device= itself)."""
