"""Throw-away network namespaces joined by a veth pair, for tests that need real packets.

Both ends of the pair live in namespaces this module creates (the veth is created inside the
first namespace and its peer placed straight into the second), there is no default route, and
only documentation addresses are used. Everything is removed on exit. `add_link` joins the
same two namespaces by a further veth pair (a server reachable two ways), under the same rules.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
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


def relink(pair: Pair, with_addresses: bool = True) -> None:
    """Delete the veth pair and create it again, as after a driver reload: same names, new
    interface indexes."""
    subprocess.run(["ip", "-n", pair.server, "link", "del", pair.server_if], capture_output=True)
    _wire(pair, with_addresses)


@dataclass(frozen=True)
class Link:
    """A further veth pair between a Pair's namespaces: its ends and their addresses (v4 in a
    /26 of 203.0.113.0/24, v6 in a /64 of 2001:db8::/32: documentation addresses only)."""

    server_if: str
    client_if: str
    server_v4: str
    client_v4: str
    server_v6: str
    client_v6: str
    prefix_v4: int = 26


SECOND_LINK = Link("knk2", "knk3", "203.0.113.1", "203.0.113.2", "2001:db8:1::1", "2001:db8:1::2")
THIRD_LINK = Link("knk4", "knk5", "203.0.113.65", "203.0.113.66", "2001:db8:2::1",
                  "2001:db8:2::2")
#: A tun device in the server namespace (a link without Ethernet header, like WireGuard): the
#: server's address on it, and the peer that the test's packets come from.
TUN_SERVER_V4, TUN_PEER_V4 = "203.0.113.129", "203.0.113.130"


def add_link(pair: Pair, link: Link) -> None:
    """Join the pair's namespaces by one more veth pair, addressed as `link` says."""
    _veth(pair, link.server_if, link.client_if)
    for ns, ifname, v4, v6 in ((pair.server, link.server_if, link.server_v4, link.server_v6),
                               (pair.client, link.client_if, link.client_v4, link.client_v6)):
        ip("-n", ns, "addr", "add", f"{v4}/{link.prefix_v4}", "dev", ifname)
        ip("-n", ns, "addr", "add", f"{v6}/64", "dev", ifname, "nodad")


def _wire(pair: Pair, with_addresses: bool) -> None:
    s, c = pair.server, pair.client
    _veth(pair, pair.server_if, pair.client_if)
    if with_addresses:
        ip("-n", s, "addr", "add", f"{SERVER_V4}/24", "dev", pair.server_if)
        ip("-n", c, "addr", "add", f"{CLIENT_V4}/24", "dev", pair.client_if)
        ip("-n", s, "addr", "add", f"{SERVER_V6}/64", "dev", pair.server_if, "nodad")
        ip("-n", c, "addr", "add", f"{CLIENT_V6}/64", "dev", pair.client_if, "nodad")


def _veth(pair: Pair, server_if: str, client_if: str) -> None:
    """A veth created in the server namespace with its peer put straight into the client's."""
    s, c = pair.server, pair.client
    ip("-n", s, "link", "add", server_if, "type", "veth", "peer", "name", client_if, "netns", c)
    for ns, ifname in ((s, server_if), (c, client_if)):
        # No DAD delay: IPv6 addresses must be usable at once.
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        f"net.ipv6.conf.{ifname}.accept_dad=0"], check=True)
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "set", ifname, "up")


# --- hand-made packets ----------------------------------------------------------------------
# For packets the knock client cannot (and should not) send: flag bytes with ECE/CWR, spoofed
# sources, frames pushed out of an interface by hand. Run inside a namespace as
# `python3 tests/support/netns.py send-tcp ...` (see send_raw_tcp), so nothing leaves the
# test's pair.


def link_mac(ns: str, ifname: str) -> str:
    """The MAC address of `ifname` in namespace `ns`."""
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", ifname],
                         check=True, capture_output=True, text=True).stdout
    return str(json.loads(out)[0]["address"])


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_tcp_packet(src: str, dst: str, sport: int, dport: int, flags: int,
                    seq: int = 1000) -> bytes:
    """A whole IPv4 packet carrying a bare 20-byte TCP header with exactly `flags`."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 8192, 0, 0)
    pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0x4242, 0, 64,
                         socket.IPPROTO_TCP, 0, s, d)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + tcp


def ipv4_udp_packet(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A whole IPv4 packet carrying an empty UDP datagram (checksum 0: none, as IPv4 allows)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    udp = struct.pack("!HHHH", sport, dport, 8, 0)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x4243, 0, 64,
                         socket.IPPROTO_UDP, 0, s, d)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


class Tun:
    """A tun device (no Ethernet header: what WireGuard and OpenVPN links look like) in the
    server namespace of `pair`, for as long as the context lasts. `send(packet)` makes the
    kernel receive a whole IP packet on it, as if it came out of a tunnel; nothing leaves the
    namespace. The device goes away when its helper process (started by us) ends."""

    def __init__(self, pair: Pair, name: str = "tnl0") -> None:
        self.pair, self.name = pair, name
        self._helper = pair.popen(pair.server, [sys.executable, os.path.abspath(__file__), "tun",
                                                name],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __enter__(self) -> Tun:
        assert self._helper.stdout is not None
        if self._helper.stdout.readline().strip() != "ready":
            self.__exit__()
            raise RuntimeError(f"could not create tun device {self.name}")
        subprocess.run(["ip", "netns", "exec", self.pair.server, "sysctl", "-qw",
                        f"net.ipv6.conf.{self.name}.disable_ipv6=1"], check=False)
        ip("-n", self.pair.server, "addr", "add", f"{TUN_SERVER_V4}/26", "dev", self.name)
        ip("-n", self.pair.server, "link", "set", self.name, "up")
        return self

    def send(self, packet: bytes) -> None:
        assert self._helper.stdin is not None
        self._helper.stdin.write(packet.hex() + "\n")
        self._helper.stdin.flush()

    def __exit__(self, *exc: object) -> None:
        if self._helper.stdin is not None:
            self._helper.stdin.close()
        try:
            self._helper.wait(10)
        except subprocess.TimeoutExpired:
            self._helper.kill()
            self._helper.wait()


def _tun_main(args: Sequence[str]) -> None:
    """Create tun device args[0] and write each hex line of stdin into it, until EOF."""
    import fcntl  # only here: the rest of this module is imported on any system

    tunsetiff, iff_tun, iff_no_pi = 0x400454CA, 0x0001, 0x1000
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, tunsetiff, struct.pack("16sH", args[0].encode(), iff_tun | iff_no_pi))
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip():
            os.write(fd, bytes.fromhex(line.strip()))
    os.close(fd)


def send_raw_tcp(pair: Pair, ns: str, src: str, dst: str, dport: int, flags: int, *,
                 sport: int = 40000, out_if: str | None = None,
                 dst_mac: str | None = None) -> None:
    """Send one IPv4 TCP packet with exactly `flags` from namespace `ns`.

    Without `out_if` it goes through the namespace's routing (a raw IP socket); with `out_if`
    and `dst_mac` it is written straight onto that link as an Ethernet frame, so even a packet
    to the sender's own address leaves through the veth.
    """
    argv = [sys.executable, os.path.abspath(__file__), "send-tcp", src, dst, str(sport),
            str(dport), str(flags)]
    if out_if is not None:
        if dst_mac is None:
            raise ValueError("out_if needs dst_mac")
        argv += [out_if, dst_mac]
    pair.run(ns, argv, check=True, capture_output=True)


def _send_tcp_main(args: Sequence[str]) -> None:
    src, dst, sport, dport, flags = args[:5]
    packet = ipv4_tcp_packet(src, dst, int(sport), int(dport), int(flags, 0))
    if len(args) == 7:
        out_if, dst_mac = args[5:]
        with open(f"/sys/class/net/{out_if}/address") as f:
            src_mac = f.read().strip()
        ether = (bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
                 + struct.pack("!H", 0x0800))
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((out_if, 0))
            s.send(ether + packet)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            s.sendto(packet, (dst, 0))


if __name__ == "__main__":
    if sys.argv[1:2] == ["send-tcp"]:
        _send_tcp_main(sys.argv[2:])
    elif sys.argv[1:2] == ["tun"] and len(sys.argv) == 3:
        _tun_main(sys.argv[2:])
    else:
        sys.exit("usage: netns.py send-tcp SRC DST SPORT DPORT FLAGS [OUT_IF DST_MAC]\n"
                 "       netns.py tun NAME  (then hex packets on stdin)")
