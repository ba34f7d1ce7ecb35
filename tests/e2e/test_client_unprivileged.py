"""Knocking without root (issue 16): `tportknock` without CAP_NET_RAW sends `tcp:s` frames
by connect() and UDP frames as datagrams, and the daemon opens the door, with either engine,
over IPv4 and IPv6. A frame that needs a raw socket is refused before anything is sent.

The client runs in the client namespace with CAP_NET_RAW gone from its bounding and inheritable
sets (setpriv), so even as root it cannot open a raw socket.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import StartDaemon, block, child_env, client_argv, config_with_sentinel

from netns import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, Pair

pytestmark = pytest.mark.e2e

DROP_NET_RAW = ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw"]
SEQUENCE = "udp:7000 tcp:7011:s udp:7022"


def knock_without_raw(pair: Pair, *args: str) -> subprocess.CompletedProcess[str]:
    return pair.run(pair.client, [*DROP_NET_RAW, *client_argv(*args)], env=child_env(),
                    capture_output=True, timeout=60)


@pytest.mark.parametrize(("server", "source"), [(SERVER_V4, CLIENT_V4), (SERVER_V6, CLIENT_V6)],
                         ids=["ipv4", "ipv6"])
def test_a_knock_without_cap_net_raw_opens_the_door(
        pair: Pair, start_daemon: StartDaemon, server: str, source: str) -> None:
    daemon = start_daemon(config_with_sentinel(block("ssh", SEQUENCE)))
    result = knock_without_raw(pair, "-v", server, *SEQUENCE.split())
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        f"sent udp/7000 to {server} (udp)",
        f"sent tcp/7011 SYN to {server} (connect)",
        f"sent udp/7022 to {server} (udp)",
    ]
    daemon.wait_action(f"ssh open {source}")


@pytest.mark.parametrize("options", [(), ("--connect",)], ids=["default", "--connect"])
def test_a_frame_that_needs_a_raw_socket_is_refused_before_anything_is_sent(
        pair: Pair, start_daemon: StartDaemon, options: tuple[str, ...]) -> None:
    daemon = start_daemon(config_with_sentinel(block("ssh", SEQUENCE)))
    # Had the two frames before the refused one gone out, udp:7022 alone would complete them.
    result = knock_without_raw(pair, *options, SERVER_V4, "udp:7000", "tcp:7011:s",
                               "tcp:7001:fu")
    assert result.returncode == 1
    reason = "--connect sends only SYN frames" if options else "root or CAP_NET_RAW"
    assert result.stderr == (f"tportknock: tcp:7001:fu needs a raw socket ({reason}); only "
                             "tcp:s and udp frames can be sent without\n")
    assert result.stdout == ""
    finish = knock_without_raw(pair, SERVER_V4, "udp:7022")
    assert finish.returncode == 0, finish.stderr
    daemon.sentinel()
    daemon.assert_not_fired("ssh")
