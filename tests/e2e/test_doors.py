"""Doors the daemon opens itself: its nftables table keeps a port closed until the knock,
opens it for the knocker alone, and the kernel closes it again, daemon or no daemon.

Everything runs in the test's own namespaces: the table is created in the server namespace
by the daemon (or by `tportknockd --doors/--remove-table` run there), never in the host's.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import DaemonRun, StartDaemon, child_env, daemon_argv, wait_until

from netns import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, Pair

pytestmark = pytest.mark.e2e

PORT = 2222
DOOR_TIMEOUT = 3
CONFIG = f"""
<ssh>
 sequence     = udp:7100 tcp:7101:fu udp:7102
 timeout      = 5
 door         = tcp:{PORT}
 door_timeout = {DOOR_TIMEOUT}
</ssh>
"""
#: A TCP service on PORT: greets, then echoes one line per line until the peer closes.
SERVICE = """
import socket, sys, threading
def serve(conn):
    with conn:
        conn.sendall(b"hello\\n")
        for line in conn.makefile("rb"):
            conn.sendall(line)
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
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""
CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5) as s:
        print(s.recv(16).decode().strip())
except OSError as exc:
    print("closed", exc)
"""
#: Connects, says "connected", then echoes each line of stdin through the connection.
HOLD = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
f = s.makefile("rb")
print(f.readline().decode().strip(), flush=True)
for line in sys.stdin:
    s.sendall(line.encode())
    print(f.readline().decode().strip(), flush=True)
"""


@pytest.fixture
def service(pair: Pair) -> Iterator[Pair]:
    proc = pair.popen(pair.server, [sys.executable, "-c", SERVICE, SERVER_V4, SERVER_V6,
                                    str(PORT)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        yield pair
    finally:
        proc.kill()
        proc.wait()


def answer(pair: Pair, host: str) -> str:
    result = pair.run(pair.client, [sys.executable, "-c", CONNECT, host, str(PORT)],
                      capture_output=True, timeout=10)
    return result.stdout.strip()


def opens(pair: Pair, host: str) -> bool:
    return answer(pair, host) == "hello"


def tportknockd(pair: Pair, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line, run in the server namespace (where the daemon's table is)."""
    return pair.run(pair.server, daemon_argv(*args), capture_output=True,
                    env=child_env(), timeout=30)


def knock_ssh(daemon: DaemonRun, host: str, client: str) -> None:
    daemon.knock(host, "udp:7100", "tcp:7101:fu", "udp:7102")
    daemon.wait_log(rf"door ssh opened for {client} \(tcp:{PORT}\) for {DOOR_TIMEOUT} s via ")


@pytest.mark.parametrize(("server", "client"), [(SERVER_V4, CLIENT_V4), (SERVER_V6, CLIENT_V6)],
                         ids=["ipv4", "ipv6"])
def test_closed_until_the_knock_then_closed_by_the_kernel(
    service: Pair, start_daemon: StartDaemon, server: str, client: str
) -> None:
    pair = service
    assert opens(pair, server)  # no table yet: the service answers everyone
    daemon = start_daemon(CONFIG)
    assert answer(pair, server).startswith("closed")
    knock_ssh(daemon, server, client)
    assert opens(pair, server)
    held = pair.popen(pair.client, [sys.executable, "-c", HOLD, server, str(PORT)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert held.stdout is not None and held.stdin is not None
        assert held.stdout.readline().strip() == "hello"
        # The kernel takes the element out at its timeout: new connections fail again...
        assert wait_until(lambda: answer(pair, server).startswith("closed"),
                          DOOR_TIMEOUT + 10), "the door did not close"
        # ...while the connection opened inside the window still carries data.
        held.stdin.write("still here\n")
        held.stdin.flush()
        assert held.stdout.readline().strip() == "still here"
    finally:
        held.kill()
        held.wait()


def test_a_door_outlives_the_daemon_and_closes_at_its_timeout(
    service: Pair, start_daemon: StartDaemon
) -> None:
    pair = service
    daemon = start_daemon(CONFIG)
    knock_ssh(daemon, SERVER_V4, CLIENT_V4)
    daemon.signal(signal.SIGKILL)
    daemon.wait_exit()
    assert opens(pair, SERVER_V4)  # no daemon, and the door is still open...
    listing = tportknockd(pair, "--doors")
    assert listing.returncode == 0
    assert f"ssh              {CLIENT_V4}/32" in listing.stdout
    assert f"tcp:{PORT}" in listing.stdout and "1 open door" in listing.stdout
    # ...until the kernel closes it; the port stays closed to everyone after.
    assert wait_until(lambda: answer(pair, SERVER_V4).startswith("closed"), DOOR_TIMEOUT + 10)
    assert tportknockd(pair, "--doors").stdout.strip().endswith("0 open doors")


def test_a_flushed_ruleset_gets_the_table_back(service: Pair, start_daemon: StartDaemon) -> None:
    pair = service
    daemon = start_daemon(CONFIG)
    pair.run(pair.server, ["nft", "flush", "ruleset"], check=True)
    daemon.wait_log("the nftables table tportknockd was removed: putting it back")
    assert answer(pair, SERVER_V4).startswith("closed")
    knock_ssh(daemon, SERVER_V4, CLIENT_V4)
    assert opens(pair, SERVER_V4)


def test_remove_table_opens_the_ports_to_everyone(service: Pair, start_daemon: StartDaemon) -> None:
    pair = service
    daemon = start_daemon(CONFIG)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert answer(pair, SERVER_V4).startswith("closed")  # the table stays after an exit
    removed = tportknockd(pair, "--remove-table")
    assert removed.returncode == 0 and "removed the nftables table" in removed.stdout
    assert opens(pair, SERVER_V4)
    assert "no table to remove" in tportknockd(pair, "--remove-table").stdout
