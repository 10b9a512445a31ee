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
