"""deploy/run/signals.py: a stop by signal, and a second signal during the graceful stop."""

from __future__ import annotations

import os
import signal
import time

import pytest

pytestmark = pytest.mark.unit


def test_a_second_signal_does_not_interrupt_the_graceful_stop(capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.run.signals import StopSignals

    with StopSignals() as signals:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, at once
        assert signals.received == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)  # during the checkpoint: acknowledged, not raised
        os.kill(os.getpid(), signal.SIGINT)
    assert capsys.readouterr().err.count("stopping, writing a checkpoint") == 2
    assert signal.getsignal(signal.SIGTERM) != signals._handle  # the previous handlers are back


class _SignalsItselfWhenCollected:
    """Sends SIGINT from its own __del__, so the handler runs inside __del__, where Python prints a raised
    exception ("Exception ignored in ...") and drops it: what a garbage-collected redis-py ConnectionPool did
    to a run's first Ctrl-C."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # bytecode after the signal: the handler runs here, still inside __del__
            pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception, on purpose
def test_a_stop_raised_inside_a_finaliser_is_not_lost() -> None:
    from deploy.run.signals import StopSignals

    with StopSignals() as signals:
        _SignalsItselfWhenCollected()  # collected at once; its KeyboardInterrupt is swallowed
        assert signals.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            signals.check()  # the driver's loop and the harness call this every round


def test_deferred_signals_stop_the_loop_between_rounds_only(capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.run.signals import StopSignals

    with StopSignals() as signals:
        signals.defer()
        signals.check()  # nothing received: no stop
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs, records, raises nothing
        assert signals.received == "SIGTERM"
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            signals.check()
        signals.stopping()
        signals.check()  # the graceful stop began: no second stop
        os.kill(os.getpid(), signal.SIGINT)
    assert capsys.readouterr().err.count("stopping, writing a checkpoint") == 1


def test_a_signal_after_the_run_ended_on_its_own_only_prints(capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.run.signals import StopSignals

    with StopSignals() as signals:
        signals.stopping()  # the run reached its length and is writing its last checkpoint
        os.kill(os.getpid(), signal.SIGINT)
        signals.check()
    assert signals.received is None and "stopping, writing a checkpoint" in capsys.readouterr().err
