"""How a run is told to stop: SIGINT and SIGTERM in the driver, and a harness's death in its child runs.

- `StopSignals`: SIGINT and SIGTERM (a preempted machine, `ray stop`) both stop the run gracefully; a
  second signal during that stop only prints "stopping, writing a checkpoint", so the checkpoint is
  always written.
- `stop_with_parent`: a run started by `make reproduce`'s harness (deploy/experiments/child_runs.py) stops
  with a checkpoint when the harness dies, however it dies.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)


class StopSignals:
    """Within `with StopSignals():` the first SIGINT or SIGTERM stops the run gracefully; later ones are
    acknowledged and ignored, so an impatient second Ctrl-C (or a SIGINT delivered twice) cannot abort the
    checkpoint.

    Until `defer()` the first signal raises KeyboardInterrupt in the main thread, which cuts off a long
    start-up. Raising from a signal handler is not safe everywhere, though: an exception raised while a
    garbage-collected object's `__del__` runs (redis-py's ConnectionPool, say) is printed and dropped, and the
    stop was lost (found in a test: two SIGINTs, a run that went on to its end). So every signal is also
    recorded, and a polling loop calls `check()` each round, which raises for a recorded signal that no
    handler raised or whose exception was swallowed; after `defer()` (the driver's main loop) signals are only
    recorded, and the loop stops between two rounds, never in the middle of a write."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: str | None = None  # the first signal's name
        self._stopping = False  # a graceful stop began for another reason (the run's end, a lost Redis)
        self._raise = True
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None and not self._stopping:
            self.received = signal.Signals(signum).name
            if self._raise:
                raise KeyboardInterrupt(self.received)
            return
        print(f"\n{signal.Signals(signum).name} received: stopping, writing a checkpoint (this finishes on its own)",
              file=sys.stderr, flush=True)

    def defer(self) -> None:
        """From now on a signal is only recorded; the caller's loop acts on it through `check()`."""
        self._raise = False

    def check(self) -> None:
        """Raise KeyboardInterrupt (with the signal's name) if a stop signal came and no stop began yet."""
        if self.received is not None and not self._stopping:
            raise KeyboardInterrupt(self.received)

    def stopping(self) -> None:
        """A graceful stop began (for a signal or another reason): later signals must not abort it."""
        self._stopping = True

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            for sig in self._SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


STOP_WITH_PARENT = "SLAC_STOP_WITH_PARENT"
"""Set by the harness in its children's environment (its own pid): `stop_with_parent` in the child then asks
Linux for a SIGTERM when the harness dies, so even a harness killed with SIGKILL leaves no seed training
on without it; the child checkpoints and stops as for any SIGTERM, and the same command resumes it."""


def stop_with_parent() -> None:
    """In a harness's child: receive SIGTERM when the harness dies, however it dies (prctl PR_SET_PDEATHSIG).

    Does nothing outside a harness (STOP_WITH_PARENT unset; a `make train` run outlives its shell as before)
    or off Linux. The variable is removed, so the run's own children do not inherit it.
    """
    parent = os.environ.pop(STOP_WITH_PARENT, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM)) != 0:
        log.warning("could not ask to be stopped with the reproduce harness (prctl failed); a harness killed "
                    "with SIGKILL would leave this seed running")
        return
    if os.getppid() != int(parent):  # the harness died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)
