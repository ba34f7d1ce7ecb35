"""Signals noted by their handler, taken by the loop."""

from __future__ import annotations

import select
import signal

from tportknockd.daemon.signals import SignalInbox


def test_signals_are_taken_in_order_by_the_loop() -> None:
    inbox = SignalInbox()
    previous = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        inbox.install(previous)
        poller = select.poll()
        poller.register(inbox.fileno(), select.POLLIN)
        assert poller.poll(0) == []
        signal.raise_signal(signal.SIGUSR2)
        signal.raise_signal(signal.SIGUSR1)
        assert [fd for fd, _ in poller.poll(1000)] == [inbox.fileno()]
        assert inbox.take() == [signal.SIGUSR2, signal.SIGUSR1]
        assert poller.poll(0) == [] and inbox.take() == []
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        inbox.close()
