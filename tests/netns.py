"""Throw-away network namespaces joined by a veth pair, for tests that need real packets.

Both ends of the pair live in namespaces this module creates (the veth is created inside the
first namespace and its peer placed straight into the second), there is no default route, and
only documentation addresses are used. Everything is removed on exit.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

SERVER_V4 = "198.51.100.1"
CLIENT_V4 = "198.51.100.2"
SERVER_V6 = "2001:db8::1"
CLIENT_V6 = "2001:db8::2"


def is_root() -> bool:
    return os.geteuid() == 0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Pair:
    """Two namespaces: `server` holds interface `server_if`, `client` holds `client_if`."""

    server: str
    client: str
    server_if: str = "knk0"
    client_if: str = "knk1"

    def run(self, ns: str, argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], text=True, **kw)  # type: ignore[call-overload, no-any-return]

    def popen(self, ns: str, argv: Sequence[str], **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], text=True, **kw)  # type: ignore[call-overload, no-any-return]


@contextmanager
def veth_pair(with_addresses: bool = True) -> Iterator[Pair]:
    tag = uuid.uuid4().hex[:8]
    pair = Pair(server=f"tpk-s-{tag}", client=f"tpk-c-{tag}")
    ip("netns", "add", pair.server)
    try:
        ip("netns", "add", pair.client)
        try:
            _wire(pair, with_addresses)
            yield pair
        finally:
            ip("netns", "del", pair.client)
    finally:
        ip("netns", "del", pair.server)


def _wire(pair: Pair, with_addresses: bool) -> None:
    s, c = pair.server, pair.client
    ip("-n", s, "link", "add", pair.server_if, "type", "veth",
       "peer", "name", pair.client_if, "netns", c)
    for ns, ifname in ((s, pair.server_if), (c, pair.client_if)):
        # No DAD delay: IPv6 addresses must be usable at once.
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        f"net.ipv6.conf.{ifname}.accept_dad=0"], check=True)
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "set", ifname, "up")
    if with_addresses:
        ip("-n", s, "addr", "add", f"{SERVER_V4}/24", "dev", pair.server_if)
        ip("-n", c, "addr", "add", f"{CLIENT_V4}/24", "dev", pair.client_if)
        ip("-n", s, "addr", "add", f"{SERVER_V6}/64", "dev", pair.server_if, "nodad")
        ip("-n", c, "addr", "add", f"{CLIENT_V6}/64", "dev", pair.client_if, "nodad")
