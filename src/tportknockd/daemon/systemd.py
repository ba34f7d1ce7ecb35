"""Telling systemd how the daemon is doing (sd_notify), with no library."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("tportknockd")


def notify_systemd(message: str) -> bool:
    """Tell systemd our state (sd_notify protocol) when it runs us as Type=notify.

    The protocol is one datagram on the unix socket named by $NOTIFY_SOCKET ('@' means the
    abstract namespace); no library needed. Returns False when there is no one to tell.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address.lstrip("\0"), exc)
        return False
    return True
