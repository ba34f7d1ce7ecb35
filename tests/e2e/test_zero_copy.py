"""A knock whose packets come from a zero-copy sender (PACKET_TX_RING): over veth they arrive
with only the Ethernet header in the linear part of the buffer. Both engines must see it (the
kernel engine cannot read such headers: it hands the packets to user space whole)."""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

import pytest
from conftest import StartDaemon, block, child_env

from flood import frame
from netns import CLIENT_V4, SERVER_V4, Pair, link_mac

pytestmark = pytest.mark.e2e

TXRING = Path(__file__).resolve().parents[1] / "support" / "txring.py"
PORTS = (7301, 7302, 7303)


def test_a_knock_from_a_tx_ring_opens(start_daemon: StartDaemon, pair: Pair, engine: str) -> None:
    daemon = start_daemon(block("zc", " ".join(f"udp:{port}" for port in PORTS)))
    src_mac = bytes.fromhex(link_mac(pair.client, pair.client_if).replace(":", ""))
    dst_mac = bytes.fromhex(link_mac(pair.server, pair.server_if).replace(":", ""))
    source = struct.unpack("!I", socket.inet_aton(CLIENT_V4))[0]
    frames = [frame(src_mac, dst_mac, source, socket.inet_aton(SERVER_V4), port).hex()
              for port in PORTS]
    result = pair.run(pair.client, [sys.executable, str(TXRING), pair.client_if, *frames],
                      env=child_env(), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    daemon.wait_action(f"zc open {CLIENT_V4}")
    if engine == "kernel":
        stats = daemon.statistics()
        assert stats["kernel_passed"] >= len(PORTS), stats
