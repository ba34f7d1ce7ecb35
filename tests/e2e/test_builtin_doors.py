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
from pathlib import Path

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
import selectors
sel = selectors.DefaultSelector()
for family, address in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    for port in sys.argv[3].split(","):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, int(port)))
        s.listen()
        sel.register(s, selectors.EVENT_READ, "tcp")
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.bind((address, int(sys.argv[4])))
    sel.register(u, selectors.EVENT_READ, "udp")
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        if key.data == "udp":
            data, peer = key.fileobj.recvfrom(64)
            key.fileobj.sendto(data, peer)
            continue
        conn, _ = key.fileobj.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""
CONNECT = """
import socket, sys
source = (sys.argv[3], 0) if len(sys.argv) > 3 else None
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.5, source) as s:
        print(s.recv(16).decode().strip())
except OSError as exc:
    print("closed", exc)
"""
#: One datagram to the UDP echo port; "hello" when it comes back.
DATAGRAM = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
with socket.socket(family, socket.SOCK_DGRAM) as s:
    s.settimeout(0.5)
    s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recv(16).decode())
    except OSError as exc:
        print("closed", exc)
"""
OTHER_PORT = PORT + 1
UDP_PORT = 60005
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
                                    f"{PORT},{OTHER_PORT}", str(UDP_PORT)],
                      stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        yield pair
    finally:
        proc.kill()
        proc.wait()


def answer(pair: Pair, host: str, port: int = PORT, source: str | None = None) -> str:
    argv = [sys.executable, "-c", CONNECT, host, str(port), *([source] if source else [])]
    return pair.run(pair.client, argv, capture_output=True, timeout=10).stdout.strip()


def opens(pair: Pair, host: str, port: int = PORT, source: str | None = None) -> bool:
    return answer(pair, host, port, source) == "hello"


def udp_answer(pair: Pair, host: str, port: int = UDP_PORT) -> str:
    argv = [sys.executable, "-c", DATAGRAM, host, str(port)]
    return pair.run(pair.client, argv, capture_output=True, timeout=10).stdout.strip()


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


def test_a_prefix_door_opens_for_the_knockers_network(
    service: Pair, start_daemon: StartDaemon
) -> None:
    pair = service
    neighbour = "198.51.100.77"  # same /24 as the client, which knocks from CLIENT_V4
    pair.run(pair.client, ["ip", "addr", "add", f"{neighbour}/24", "dev", pair.client_if],
             check=True)
    daemon = start_daemon(CONFIG.replace("door_timeout", "door_prefix  = 24 64\n door_timeout"))
    assert not opens(pair, SERVER_V4, source=neighbour)
    knock_ssh(daemon, SERVER_V4, CLIENT_V4)
    assert opens(pair, SERVER_V4, source=neighbour)
    assert "198.51.100.0/24" in tportknockd(pair, "--doors").stdout


def test_a_udp_range_and_a_port_shared_by_two_events(
    service: Pair, start_daemon: StartDaemon
) -> None:
    pair = service
    config = CONFIG + f"""
<mosh>
 sequence     = udp:7200 udp:7201
 timeout      = 5
 door         = udp:60000-61000, tcp:{PORT}
 door_timeout = {DOOR_TIMEOUT}
</mosh>
"""
    daemon = start_daemon(config)
    assert udp_answer(pair, SERVER_V4).startswith("closed")
    assert answer(pair, SERVER_V4).startswith("closed")
    daemon.knock(SERVER_V4, "udp:7200", "udp:7201")
    daemon.wait_log(rf"door mosh opened for {CLIENT_V4} \(udp:60000-61000 tcp:{PORT}\)")
    assert udp_answer(pair, SERVER_V4) == "hello"
    assert opens(pair, SERVER_V4)  # the port ssh guards too opens for a knocker of mosh
    assert answer(pair, SERVER_V4, OTHER_PORT) == "hello"  # never guarded


def test_a_restart_keeps_an_open_door(service: Pair, start_daemon: StartDaemon) -> None:
    pair = service
    config = CONFIG.replace(f"door_timeout = {DOOR_TIMEOUT}", "door_timeout = 60")
    daemon = start_daemon(config)
    daemon.knock(SERVER_V4, "udp:7100", "tcp:7101:fu", "udp:7102")
    daemon.wait_log(rf"door ssh opened for {CLIENT_V4}")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    start_daemon(config)
    assert opens(pair, SERVER_V4)
    assert answer(pair, SERVER_V4, source=None) == "hello"
    [row] = [r for r in tportknockd(pair, "--doors").stdout.splitlines() if r.startswith("ssh")]
    assert int(row.split()[3]) <= 60


def test_sighup_moves_the_door_to_another_port(service: Pair, start_daemon: StartDaemon) -> None:
    pair = service
    daemon = start_daemon(CONFIG)
    assert answer(pair, SERVER_V4, OTHER_PORT) == "hello"
    daemon.config.write_text(CONFIG.replace(f"tcp:{PORT}", f"tcp:{OTHER_PORT}"))
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("configuration reloaded: 1 events")
    assert answer(pair, SERVER_V4, OTHER_PORT).startswith("closed")
    assert opens(pair, SERVER_V4)  # no longer named: no longer guarded
    knock_ssh_on(daemon, OTHER_PORT)
    assert answer(pair, SERVER_V4, OTHER_PORT) == "hello"


def knock_ssh_on(daemon: DaemonRun, port: int) -> None:
    daemon.knock(SERVER_V4, "udp:7100", "tcp:7101:fu", "udp:7102")
    daemon.wait_log(rf"door ssh opened for {CLIENT_V4} \(tcp:{port}\)")


def test_the_admins_policy_drop_firewall_lets_the_door_decide(
    service: Pair, start_daemon: StartDaemon
) -> None:
    pair = service
    ruleset = f"""
table inet filter {{
  chain input {{
    type filter hook input priority 0; policy drop;
    ct state established,related accept
    iifname "lo" accept
    tcp dport {PORT} accept
  }}
}}
"""
    pair.run(pair.server, ["nft", "-f", "-"], input=ruleset, check=True)
    daemon = start_daemon(CONFIG)
    assert answer(pair, SERVER_V4).startswith("closed")
    assert answer(pair, SERVER_V4, OTHER_PORT).startswith("closed")  # the admin's drop
    knock_ssh(daemon, SERVER_V4, CLIENT_V4)
    assert opens(pair, SERVER_V4)
    assert answer(pair, SERVER_V4, OTHER_PORT).startswith("closed")


def test_without_cap_net_admin_one_clear_line(pair: Pair, tmp_path: Path) -> None:
    config = tmp_path / "k.conf"
    config.write_text(CONFIG)
    drop = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"]
    argv = [*drop, *daemon_argv("-c", str(config), "-i", pair.server_if, "--state-file", "none")]
    result = pair.run(pair.server, argv, env=child_env(), capture_output=True, timeout=30)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "starting" not in line]
    assert errors == [
        "tportknockd: cannot install the nftables table: Operation not permitted "
        "(needs CAP_NET_ADMIN)"
    ], result.stderr
    tables = pair.run(pair.server, ["nft", "list", "tables"], capture_output=True, check=True)
    assert "tportknockd" not in tables.stdout  # nothing left half-installed
