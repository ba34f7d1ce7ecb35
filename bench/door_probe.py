"""The door port's two ends, for the door figures (bench.doors); standard library only, run
as a script inside a namespace of the test bed.

    door_probe.py listen ADDRESS PORT
        The service behind the door (server namespace): accepts every connection and closes
        it at once. Prints "ready" once listening.

    door_probe.py probe SOURCE SERVER PORT INTERVAL_US SECONDS
        The knocker's first connection (client namespace): from SOURCE, a new non-blocking
        connect(2) to SERVER:PORT every INTERVAL_US microseconds, each on its own socket (its
        own source port, so its own conntrack entry), until one completes or SECONDS have
        passed. Prints "ready" before the first attempt, then one JSON line: "opened" (the
        CLOCK_REALTIME time just before the connect(2) of the first attempt that completed,
        or null), "attempts", "first" and "last" (the times of the first and last attempt).

A SYN that the door drops gets no answer (its retransmission would come a second later), so
an attempt either completes within the round trip of the veth (tens of µs) or never: each
one is given up after GIVE_UP_S. The first attempt that completes is the first SYN sent
after the door opened; the door opened between the attempt before it and that one, so the
time is late by at most one interval.
"""

from __future__ import annotations

import ctypes
import errno
import json
import select
import socket
import sys
import time

GIVE_UP_S = 0.005  # an attempt unanswered this long was dropped (a veth round trip: ~50 µs)
PR_SET_TIMERSLACK = 29


def listen(address: str, port: int) -> None:
    server = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(4096)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        conn.close()


def probe(source: str, server: str, port: int, interval_s: float, seconds: float) -> dict[
        str, float | int | None]:
    # Sleeps of 100 µs wake within a few µs rather than the default 50 µs of slack.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    poller = select.poll()
    pending: dict[int, tuple[socket.socket, float]] = {}
    attempts, opened, first, last = 0, None, None, 0.0
    print("ready", flush=True)
    start = time.monotonic()
    deadline, next_at = start + seconds, start
    while opened is None:
        now = time.monotonic()
        if now > deadline:
            break
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((source, 0))
        at = time.time()
        err = sock.connect_ex((server, port))
        attempts += 1
        first = at if first is None else first
        last = at
        if err not in (0, errno.EINPROGRESS):
            sock.close()
        else:
            pending[sock.fileno()] = (sock, at)
            poller.register(sock, select.POLLOUT)
        for fd, _ in poller.poll(0):
            done, began = pending.pop(fd)
            poller.unregister(fd)
            if done.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and (
                    opened is None or began < opened):
                opened = began
            done.close()
        for fd, (old, began) in list(pending.items()):
            if at - began > GIVE_UP_S:
                poller.unregister(fd)
                del pending[fd]
                old.close()
        # Every interval_s; when late, the next attempt at once (never a burst to catch up).
        next_at = max(next_at + interval_s, time.monotonic())
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    for old, _ in pending.values():
        old.close()
    return {"opened": opened, "attempts": attempts, "first": first, "last": last}


def main(argv: list[str]) -> int:
    if argv[:1] == ["listen"] and len(argv) == 3:
        listen(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["probe"] and len(argv) == 6:
        result = probe(argv[1], argv[2], int(argv[3]), int(argv[4]) / 1e6, float(argv[5]))
        print(json.dumps(result), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
