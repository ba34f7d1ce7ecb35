"""Signals, taken in by their handler and handled by the loop.

A handler runs between two bytecodes of whatever the loop was doing, so it does nothing but
note the signal and write a byte to a socket the loop polls; the loop then takes the signals
in the order they came and acts on them at a quiet moment.
"""

from __future__ import annotations

import errno
import signal
import socket
from collections.abc import Iterable


class SignalInbox:
    def __init__(self) -> None:
        self._pending: list[int] = []
        self._read_end, self._write_end = socket.socketpair()
        self._read_end.setblocking(False)
        self._write_end.setblocking(False)

    def install(self, signums: Iterable[int]) -> None:
        for signum in signums:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)
        try:
            self._write_end.send(b"\0")
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise

    def fileno(self) -> int:
        """Readable when a signal has come in."""
        return self._read_end.fileno()

    def take(self) -> list[int]:
        """The signals that came in since the last call, oldest first."""
        try:
            while self._read_end.recv(256):
                pass
        except BlockingIOError:
            pass
        taken = []
        while self._pending:
            taken.append(self._pending.pop(0))
        return taken

    def close(self) -> None:
        self._read_end.close()
        self._write_end.close()
