"""Several interfaces and `-i any`: a server reachable over two veth pairs (a third one added
while the daemon runs), real knocks over each."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SSH_SEQUENCE, StartDaemon, block, child_env, config_with_sentinel, daemon_argv

from netns import (
    CLIENT_V4,
    CLIENT_V6,
    SECOND_LINK,
    SERVER_V4,
    THIRD_LINK,
    TUN_PEER_V4,
    TUN_SERVER_V4,
    Pair,
    Tun,
    add_link,
    ip,
    ipv4_tcp_packet,
    ipv4_udp_packet,
)
from tportknockd.config import parse_frame
from tportknockd.model import PROTO_TCP, SYN

pytestmark = pytest.mark.e2e

FIRST_IF = "knk0"  # the pair's own link (netns.Pair's default names)
SECOND = SECOND_LINK
FRAMES = SSH_SEQUENCE.split()


@pytest.fixture
def two_links(pair: Pair) -> Iterator[Pair]:
    """The pair, joined a second way: knk0/knk1 (198.51.100.0/24) and knk2/knk3
    (203.0.113.0/26)."""
    add_link(pair, SECOND)
    yield pair


def opened(address: str) -> str:
    return f"ssh open {address}"


def accepted_on(address: str, interface: str) -> str:
    return rf"ssh: knock from {re.escape(address)} accepted: opening \(on {interface}\)"


# --- named interfaces -----------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["knk0,knk2", "knk0 -i knk2"], ids=["comma", "repeated"])
def test_knocks_on_each_listed_interface_open(
    start_daemon: StartDaemon, two_links: Pair, spelling: str
) -> None:
    first, *rest = spelling.split(" -i ")
    options = tuple(arg for name in rest for arg in ("-i", name))
    daemon = start_daemon(block("ssh", SSH_SEQUENCE), *options, interfaces=first)
    daemon.wait_log(r"listening on knk0 ")
    daemon.wait_log(r"listening on knk2 ")
    daemon.knock(SERVER_V4, *FRAMES)
    daemon.wait_action(opened(CLIENT_V4))
    daemon.wait_log(accepted_on(CLIENT_V4, FIRST_IF))
    daemon.knock(SECOND.server_v4, *FRAMES)
    daemon.wait_action(opened(SECOND.client_v4))
    daemon.wait_log(accepted_on(SECOND.client_v4, SECOND.server_if))
    daemon.knock(SECOND.server_v6, *FRAMES, options=("-6",))
    daemon.wait_action(opened(SECOND.client_v6))


def test_a_knock_on_an_interface_not_listed_does_not_count(
    start_daemon: StartDaemon, two_links: Pair
) -> None:
    daemon = start_daemon(config_with_sentinel(block("ssh", SSH_SEQUENCE)), interfaces=FIRST_IF)
    # To the second link's own address...
    daemon.knock(SECOND.server_v4, *FRAMES)
    # ...and to the listened interface's address, but coming in over the second link.
    ip("-n", two_links.client, "route", "add", f"{SERVER_V4}/32", "dev", SECOND.client_if)
    daemon.knock(SERVER_V4, *FRAMES, options=("-s", SECOND.client_v4))
    ip("-n", two_links.client, "route", "del", f"{SERVER_V4}/32", "dev", SECOND.client_if)
    daemon.sentinel()
    daemon.assert_not_fired("ssh")


def test_a_sequence_over_both_interfaces_fires_once(
    start_daemon: StartDaemon, two_links: Pair
) -> None:
    """A host reachable two ways: half the frames over each link, from one source address."""
    daemon = start_daemon(config_with_sentinel(block("ssh", SSH_SEQUENCE)),
                          interfaces="knk0,knk2")
    source = ("-s", CLIENT_V4)
    daemon.knock(SERVER_V4, *FRAMES[:3], options=source)
    daemon.knock(SECOND.server_v4, *FRAMES[3:], options=source)  # routed over knk3 -> knk2
    daemon.wait_action(opened(CLIENT_V4))
    daemon.wait_log(accepted_on(CLIENT_V4, SECOND.server_if))
    daemon.sentinel()
    assert daemon.action_lines().count(opened(CLIENT_V4)) == 1


@pytest.mark.parametrize("spelling", ["knk0,knk2", "any"])
def test_deleting_one_interface_leaves_the_other_working(
    start_daemon: StartDaemon, two_links: Pair, spelling: str
) -> None:
    daemon = start_daemon(block("ssh", SSH_SEQUENCE), interfaces=spelling)
    daemon.wait_log(r"listening on knk2 ")
    ip("-n", two_links.server, "link", "del", SECOND.server_if)
    daemon.wait_log(r"interface knk2 is gone")
    daemon.knock(SERVER_V4, *FRAMES)
    daemon.wait_action(opened(CLIENT_V4))
    daemon.wait_log(accepted_on(CLIENT_V4, FIRST_IF))
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_start_up_fails_in_one_line_for_a_missing_named_interface(
    two_links: Pair, tmp_path: Path
) -> None:
    config = tmp_path / "knock.conf"
    config.write_text(block("ssh", SSH_SEQUENCE).replace("{out}", str(tmp_path / "out")))
    result = two_links.run(
        two_links.server,
        daemon_argv("-c", str(config), "-i", "knk0,nosuchdev", "--state-file", "none"),
        capture_output=True, env=child_env(), timeout=30,
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 1
    # The log's first line (the version and what it listens on), then what is wrong.
    assert len(lines) == 2 and lines[0].endswith(f" starting: {config} on knk0, nosuchdev")
    assert lines[1] == "tportknockd: no interface 'nosuchdev' (see tportknockd -l)"


def test_lo_named_is_listened_on_but_loopback_addresses_never_count(
    start_daemon: StartDaemon, pair: Pair
) -> None:
    daemon = start_daemon(config_with_sentinel(block("ssh", SSH_SEQUENCE)),
                          interfaces=f"lo,{FIRST_IF}")
    daemon.knock("127.0.0.1", *FRAMES, ns=pair.server)
    daemon.sentinel()
    daemon.assert_not_fired("ssh")
    # The server knocking at its own knk0 address: the packets go over lo, which is named.
    daemon.knock(SERVER_V4, *FRAMES, ns=pair.server)
    daemon.wait_action(opened(SERVER_V4))
    daemon.wait_log(accepted_on(SERVER_V4, "lo"))


# --- -i any ---------------------------------------------------------------------------------


def test_any_sees_both_links_and_one_added_later_but_never_lo(
    start_daemon: StartDaemon, two_links: Pair
) -> None:
    daemon = start_daemon(config_with_sentinel(block("ssh", SSH_SEQUENCE)), interfaces="any")
    daemon.knock(SERVER_V4, *FRAMES)
    daemon.wait_action(opened(CLIENT_V4))
    daemon.knock(SECOND.server_v4, *FRAMES)
    daemon.wait_action(opened(SECOND.client_v4))
    daemon.wait_log(accepted_on(SECOND.client_v4, SECOND.server_if))
    # An interface that appears while the daemon runs is listened on once up, without -r.
    add_link(two_links, THIRD_LINK)
    daemon.wait_log(rf"listening on {THIRD_LINK.server_if} ")
    daemon.knock(THIRD_LINK.server_v4, *FRAMES)
    daemon.wait_action(opened(THIRD_LINK.client_v4))
    daemon.wait_log(accepted_on(THIRD_LINK.client_v4, THIRD_LINK.server_if))
    daemon.knock(THIRD_LINK.server_v6, *FRAMES, options=("-6",))
    daemon.wait_action(opened(THIRD_LINK.client_v6))
    # The server knocking at itself goes over lo: never part of any.
    daemon.knock(SERVER_V4, *FRAMES, ns=two_links.server)
    daemon.sentinel()
    assert opened(SERVER_V4) not in daemon.action_lines()
    assert "listening on lo " not in daemon.log_text()
    assert daemon.action_lines().count(opened(CLIENT_V4)) == 1
    assert opened(CLIENT_V6) not in daemon.action_lines()


def test_list_shows_what_any_listens_on(two_links: Pair) -> None:
    ip("-n", two_links.server, "link", "set", SECOND.server_if, "down")
    result = two_links.run(two_links.server, daemon_argv("-l"), env=child_env(),
                           capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "-i any listens on: knk0; once up: knk2; and on interfaces added later (never lo)"
    )


# --- a link without Ethernet header (tun; WireGuard and OpenVPN look the same) ---------------


def tunnel_knock(tun: Tun, sequence: str, dst: str = TUN_SERVER_V4) -> None:
    """The frames of `sequence` as whole IP packets from the tunnel's peer, received on `tun`."""
    for frame in (parse_frame(text) for text in sequence.split()):
        if frame.protocol == PROTO_TCP:
            flags = SYN if frame.flags is None else frame.flags
            tun.send(ipv4_tcp_packet(TUN_PEER_V4, dst, 40001, frame.port, flags))
        else:
            tun.send(ipv4_udp_packet(TUN_PEER_V4, dst, 40001, frame.port))


def test_a_knock_over_a_tunnel_interface_opens(start_daemon: StartDaemon, pair: Pair) -> None:
    with Tun(pair) as tun:
        daemon = start_daemon(config_with_sentinel(block("ssh", SSH_SEQUENCE)),
                              interfaces=f"{FIRST_IF},{tun.name}")
        tunnel_knock(tun, SSH_SEQUENCE)
        daemon.wait_action(opened(TUN_PEER_V4))
        daemon.wait_log(accepted_on(TUN_PEER_V4, tun.name))
        # The tunnel's packets to the Ethernet link's address count as well...
        daemon.knock(SERVER_V4, *FRAMES)
        daemon.wait_action(opened(CLIENT_V4))
        # ...while a wrong one, and one to an address the host does not have, do not.
        tunnel_knock(tun, "udp:7001 tcp:7002:s udp:7004")
        tunnel_knock(tun, "udp:7001 tcp:7002:s udp:7003", dst="203.0.113.131")
        daemon.sentinel()
        assert not any(line.startswith("sentinel open 203.0.113")
                       for line in daemon.action_lines())


def test_any_picks_up_a_tunnel_interface_that_comes_up_later(
    start_daemon: StartDaemon, pair: Pair
) -> None:
    daemon = start_daemon(block("ssh", SSH_SEQUENCE), interfaces="any")
    with Tun(pair) as tun:
        daemon.wait_log(rf"listening on {tun.name} ")
        tunnel_knock(tun, SSH_SEQUENCE)
        daemon.wait_action(opened(TUN_PEER_V4))
        daemon.wait_log(accepted_on(TUN_PEER_V4, tun.name))
    daemon.wait_log(rf"interface {tun.name} is gone")
    daemon.knock(SERVER_V4, *FRAMES)
    daemon.wait_action(opened(CLIENT_V4))
