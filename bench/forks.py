"""Counting the processes a daemon forks, by the kernel's process events connector.

The proc connector (NETLINK_CONNECTOR, CN_IDX_PROC; root, in the initial network namespace
where the bench runs) sends one event per fork(2)/clone(2) on the system, naming the parent
and the child. A new process has child pid == child tgid (a new thread has not): those whose
parent tgid is the daemon's are the processes it forked. Nothing is sampled, so a child that
lives a few µs is counted as well as one that lives seconds.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
from collections import Counter
from pathlib import Path

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
PROC_EVENT_FORK = 1
NLMSG_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
EVENT_HEADER = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
FORK = struct.Struct("=IIII")  # parent pid, parent tgid, child pid, child tgid


def listen_message(port_id: int) -> bytes:
    """The netlink message that subscribes to the process events."""
    op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
    body = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), NLMSG_DONE, 0, 0, port_id) + body


def forked_process(message: bytes) -> tuple[int, int] | None:
    """(parent tgid, child pid) of a message that tells of a new process; None otherwise
    (another event, or a new thread)."""
    offset = NLMSG_HEADER.size + CN_MSG.size
    if len(message) < offset + EVENT_HEADER.size + FORK.size:
        return None
    what = EVENT_HEADER.unpack_from(message, offset)[0]
    if what != PROC_EVENT_FORK:
        return None
    _, parent_tgid, child_pid, child_tgid = FORK.unpack_from(message, offset + EVENT_HEADER.size)
    return (parent_tgid, child_pid) if child_pid == child_tgid else None


class ForkCounter:
    """Processes forked, by parent, while it runs (a thread reads the events)."""

    def __init__(self) -> None:
        self.forks: Counter[int] = Counter()
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind((0, CN_IDX_PROC))
        self._sock.send(listen_message(self._sock.getsockname()[0]))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.05)
            if not ready:
                continue
            try:
                message = self._sock.recv(65536)
            except OSError:  # ENOBUFS: events lost; the count is then a lower bound
                self.forks[-1] += 1
                continue
            found = forked_process(message)
            if found:
                self.forks[found[0]] += 1

    def of(self, pid: int) -> int:
        """How many processes `pid` has forked so far."""
        return self.forks[pid]

    @property
    def overruns(self) -> int:
        """Receive buffer overruns (events lost): 0 for an exact count."""
        return self.forks[-1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


def children_cpu_seconds(pid: int) -> float:
    """cutime+cstime of a process: the CPU of its children that it waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
