"""The test bed: two network namespaces joined by one veth pair, and the processes we start.

The veth is created inside the server namespace and its peer put straight into the client
namespace, so nothing is ever attached to the root namespace. There is no default route.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from typing import Any

from bench.settings import (
    CLIENT_V4,
    CLIENT_V6,
    KNOCK_V4,
    KNOCK_V6,
    REPO,
    SERVER_V4,
    SERVER_V6,
)


class Processes:
    """Every process this bench starts, so the finally block can end exactly those."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def start(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(list(argv), **kw)
        self._procs.append(proc)
        return proc

    def end_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                signal_quietly(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        for proc in self._procs:
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_quietly(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()


def signal_quietly(pid: int, signum: int) -> None:
    """Signal one of our processes by its PID; it may have ended already."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def project_env() -> dict[str, str]:
    """The environment for `python -m tportknockd...`: this checkout's src first."""
    existing = os.environ.get("PYTHONPATH")
    src = str(REPO / "src")
    return dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{existing}" if existing else src)


class Testbed:
    """Two namespaces joined by a veth pair, with one source address per knock on the client."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.server, self.client = f"tpkb-s-{tag}", f"tpkb-c-{tag}"
        self.server_if, self.client_if = "tkb0", "tkb1"
        self.server_mac = ""
        self._made: list[str] = []

    def __enter__(self) -> Testbed:
        try:
            for ns in (self.server, self.client):
                sh("ip", "netns", "add", ns)
                self._made.append(ns)
            self._wire()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()

    def _wire(self) -> None:
        s, c = self.server, self.client
        sh("ip", "-n", s, "link", "add", self.server_if, "type", "veth",
           "peer", "name", self.client_if, "netns", c)
        for ns, ifname in ((s, self.server_if), (c, self.client_if)):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        sh("ip", "-n", s, "addr", "add", f"{SERVER_V4}/24", "dev", self.server_if)
        sh("ip", "-n", s, "addr", "add", f"{SERVER_V6}/64", "dev", self.server_if, "nodad")
        sh("ip", "-n", c, "addr", "add", f"{CLIENT_V4}/24", "dev", self.client_if)
        sh("ip", "-n", c, "addr", "add", f"{CLIENT_V6}/64", "dev", self.client_if, "nodad")
        # The primary goes first: the knock addresses are its secondaries.
        for address in KNOCK_V4:
            sh("ip", "-n", c, "addr", "add", f"{address}/24", "dev", self.client_if)
        for address in KNOCK_V6:
            sh("ip", "-n", c, "addr", "add", f"{address}/64", "dev", self.client_if, "nodad")
        link = json.loads(sh("ip", "-n", s, "-j", "link", "show", "dev", self.server_if))
        self.server_mac = str(link[0]["address"])

    def in_server(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.server, *argv]

    def in_client(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.client, *argv]

    def rx_packets(self) -> int:
        link = json.loads(sh("ip", "-n", self.server, "-s", "-j", "link", "show",
                             "dev", self.server_if))
        return int(link[0]["stats64"]["rx"]["packets"])
