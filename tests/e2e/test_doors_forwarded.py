"""A door guards a port that the server forwards (DNAT) to a container behind it, as Docker's
published ports do: the daemon's chain sits in prerouting before DNAT, so it judges the
connection by the address the client knocked at and connected to.

A third namespace plays the container: a veth from the server namespace into it (both ends
inside the test's namespaces), 203.0.113.0/24 between them, and a route back to the client's
network inside the container alone. The server forwards (ip_forward=1 in its namespace only)
and DNATs its port 8080 to the container's port 80 with a table of its own; all `nft` and
`sysctl` commands run in the test's namespaces.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from conftest import StartDaemon
from test_builtin_doors import answer

from netns import CLIENT_V4, SERVER_V4, Pair

pytestmark = pytest.mark.e2e

PUBLISHED_PORT = 8080  # on the server, forwarded
CONTAINER_PORT = 80  # in the container
SERVER_INNER_V4, CONTAINER_V4 = "203.0.113.1", "203.0.113.2"
INNER_IF, CONTAINER_IF = "knk6", "knk7"
CLIENT_NET = "198.51.100.0/24"
DOOR_TIMEOUT = 30
SEQUENCE = "udp:7100 tcp:7101:fu udp:7102"
CONFIG = f"""
<web>
 sequence     = {SEQUENCE}
 timeout      = 5
 door         = tcp:{PUBLISHED_PORT}
 door_timeout = {DOOR_TIMEOUT}
</web>
"""
#: The server's DNAT, in a table of its own (the daemon's table is `inet tportknockd`).
DNAT = f"""
table ip nat {{
  chain prerouting {{
    type nat hook prerouting priority -100;
    tcp dport {PUBLISHED_PORT} dnat to {CONTAINER_V4}:{CONTAINER_PORT}
  }}
}}
"""
#: The container's service: greets each connection with "container" and closes it.
SERVICE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("listening", flush=True)
while True:
    conn, _ = s.accept()
    with conn:
        conn.sendall(b"container\\n")
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def container(pair: Pair) -> Iterator[str]:
    """The container namespace behind the server, its service listening, the server
    forwarding PUBLISHED_PORT to it; its name. Removed (service first) at the end."""
    ns = f"tpk-f-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", ns)
    service: subprocess.Popen[str] | None = None
    try:
        # Born in the server namespace, its peer put straight into the container's.
        ip("-n", pair.server, "link", "add", INNER_IF, "type", "veth",
           "peer", "name", CONTAINER_IF, "netns", ns)
        for name, ifname, address in ((pair.server, INNER_IF, SERVER_INNER_V4),
                                      (ns, CONTAINER_IF, CONTAINER_V4)):
            ip("-n", name, "link", "set", "lo", "up")
            ip("-n", name, "link", "set", ifname, "up")
            ip("-n", name, "addr", "add", f"{address}/24", "dev", ifname)
        # The way back to the client, inside the container only.
        ip("-n", ns, "route", "add", CLIENT_NET, "via", SERVER_INNER_V4)
        pair.run(pair.server, ["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        pair.run(pair.server, ["nft", "-f", "-"], input=DNAT, check=True)
        service = pair.popen(ns, [sys.executable, "-c", SERVICE, CONTAINER_V4,
                                  str(CONTAINER_PORT)], stdout=subprocess.PIPE)
        assert service.stdout is not None and service.stdout.readline().strip() == "listening"
        yield ns
    finally:
        if service is not None:
            service.kill()
            service.wait()
        ip("netns", "del", ns)


def test_a_dnat_forwarded_port_is_closed_until_the_knock(
    pair: Pair, container: str, start_daemon: StartDaemon
) -> None:
    # The forward works: without the daemon's table the container answers everyone.
    assert answer(pair, SERVER_V4, PUBLISHED_PORT) == "container"
    daemon = start_daemon(CONFIG)
    assert answer(pair, SERVER_V4, PUBLISHED_PORT).startswith("closed")
    daemon.knock(SERVER_V4, *SEQUENCE.split())
    daemon.wait_log(rf"door web opened for {CLIENT_V4} \(tcp:{PUBLISHED_PORT}\) "
                    rf"for {DOOR_TIMEOUT} s via ")
    # The log line comes after the door is in the table: no waiting.
    assert answer(pair, SERVER_V4, PUBLISHED_PORT) == "container", daemon.log_text()
