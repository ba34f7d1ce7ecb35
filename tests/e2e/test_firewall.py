"""The point of it all: a firewalled port stays closed until the right knock, then closes again.

The server namespace gets examples/knock.nft (sets of allowed sources in front of a drop rule
for port 22), a TCP service on that port, and the daemon with examples/door-nft as its
commands, which add and remove the knocker in the set of its family. The client tries to
connect before, after and later.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartDaemon, wait_until

from netns import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, Pair

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RULESET = REPO / "examples" / "knock.nft"  # the README's recipe, tested as shipped
DOOR = REPO / "examples" / "door-nft"
PORT = 22
SEQUENCE = "udp:7100 tcp:7101:fu udp:7102"
CONFIG = f"""
<ssh4>
 sequence      = {SEQUENCE}
 timeout       = 5
 start_command = {DOOR} open %IP%
 stop_command  = {DOOR} close %IP%
 command_delay = 2
</ssh4>
<ssh6>
 sequence      = tcp:7200:fu udp:7201
 timeout       = 5
 start_command = {DOOR} open %IP%
 stop_command  = {DOOR} close %IP%
 command_delay = 2
</ssh6>
"""
SERVICE = """
import socket, sys
listeners = []
for family, address in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, int(sys.argv[3])))
    s.listen()
    listeners.append(s)
print("listening", flush=True)
import selectors
sel = selectors.DefaultSelector()
for s in listeners:
    sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.sendall(b"hello\\n")
        conn.close()
"""
CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5) as s:
        print(s.recv(16).decode().strip())
except OSError as exc:
    print("closed", exc)
"""


@pytest.fixture
def firewalled(pair: Pair) -> Iterator[Pair]:
    if subprocess.run(["sh", "-c", "command -v nft"], capture_output=True).returncode != 0:
        message = "nft (Debian package nftables) is needed; `make deps` installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pair.run(pair.server, ["nft", "-f", str(RULESET)], check=True)
    service = pair.popen(pair.server, [sys.executable, "-c", SERVICE, SERVER_V4, SERVER_V6,
                                       str(PORT)], stdout=subprocess.PIPE)
    try:
        assert service.stdout is not None and service.stdout.readline().strip() == "listening"
        yield pair
    finally:
        service.kill()
        service.wait()


def answer(pair: Pair, host: str) -> str:
    result = pair.run(pair.client, [sys.executable, "-c", CONNECT, host, str(PORT)],
                      capture_output=True, timeout=10)
    return result.stdout.strip()


@pytest.mark.parametrize(
    "server, client, event, frames",
    [
        (SERVER_V4, CLIENT_V4, "ssh4", SEQUENCE.split()),
        (SERVER_V6, CLIENT_V6, "ssh6", ["tcp:7200:fu", "udp:7201"]),
    ],
    ids=["ipv4", "ipv6"],
)
def test_port_stays_closed_until_the_knock_and_closes_again(
    firewalled: Pair, start_daemon: StartDaemon, server: str, client: str, event: str,
    frames: list[str],
) -> None:
    pair = firewalled
    assert answer(pair, server).startswith("closed")
    daemon = start_daemon(CONFIG)

    daemon.knock(server, *frames[:-1])  # not the whole sequence: still closed
    assert answer(pair, server).startswith("closed")

    daemon.knock(server, frames[-1])
    daemon.wait_log(rf"{event}: knock from {client} accepted")
    assert wait_until(lambda: answer(pair, server) == "hello"), "the door did not open"

    daemon.wait_log(rf"{event}: closing for {client}")
    assert wait_until(lambda: answer(pair, server).startswith("closed")), "it did not close"
    assert "exit status 0" in daemon.log_text()


def test_wrong_knock_leaves_the_port_closed(firewalled: Pair, start_daemon: StartDaemon) -> None:
    daemon = start_daemon(CONFIG)
    daemon.knock(SERVER_V4, "udp:7100", "tcp:7101:f", "udp:7102")  # FIN alone, not FIN+URG
    daemon.knock(SERVER_V4, "udp:7102", "tcp:7101:fu", "udp:7100")  # wrong order
    assert answer(firewalled, SERVER_V4).startswith("closed")
    # The right knock right after still works: the wrong ones were seen and ignored.
    daemon.knock(SERVER_V4, *SEQUENCE.split())
    assert wait_until(lambda: answer(firewalled, SERVER_V4) == "hello")
