"""Ethernet frames built byte by byte, for the kernel engine's tests and benchmark.

Only built, never sent: BPF_PROG_TEST_RUN runs a program over bytes in memory. Checksums are
left zero (no one on the knock path reads them). Addresses are the documentation ranges.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

HOST_MAC = bytes(6)  # BPF_PROG_TEST_RUN's device (loopback) has MAC 0: PACKET_HOST
MULTICAST_MAC = bytes.fromhex("01005e000001")  # PACKET_MULTICAST
OTHER_MAC = bytes.fromhex("020000000099")  # PACKET_OTHERHOST
CLIENT_MAC = bytes.fromhex("020000000002")

TCP = 6
UDP = 17
HOP_BY_HOP, ROUTING, FRAGMENT, ESP, AUTH, DEST_OPTS = 0, 43, 44, 50, 51, 60


@dataclass(frozen=True)
class Ext:
    """An IPv6 extension header: `kind`, `units` of length (the header's own length field),
    and for a fragment header its offset (in 8-byte units)."""

    kind: int
    units: int = 0
    offset: int = 0

    def build(self, next_header: int) -> bytes:
        if self.kind == FRAGMENT:
            return struct.pack("!BBHI", next_header, 0, self.offset << 3 | 1, 0x1234)
        if self.kind == AUTH:
            return struct.pack("!BB", next_header, self.units).ljust((self.units + 2) * 4, b"\0")
        return struct.pack("!BB", next_header, self.units).ljust((self.units + 1) * 8, b"\0")


def transport(protocol: int, port: int, flags: int = 0, payload: bytes = b"") -> bytes:
    if protocol == TCP:
        return struct.pack("!HHIIBBHHH", 40000, port, 1, 0, 5 << 4, flags, 1024, 0, 0) + payload
    body = payload
    return struct.pack("!HHHH", 40000, port, 8 + len(body), 0) + body


def ipv4(src: str, dst: str, protocol: int, body: bytes, *, options: bytes = b"",
         fragment: int = 0, more_fragments: bool = False) -> bytes:
    header_len = 20 + len(options)
    flags_offset = (0x2000 if more_fragments else 0) | fragment
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | header_len // 4, 0, header_len + len(body), 1, flags_offset, 64,
        protocol, 0, ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return header + options + body


def ipv6(src: str, dst: str, protocol: int, body: bytes, exts: tuple[Ext, ...] = ()) -> bytes:
    chain = b""
    kinds = [ext.kind for ext in exts] + [protocol]
    for ext, following in zip(exts, kinds[1:], strict=True):
        chain += ext.build(following)
    payload = chain + body
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, len(payload), kinds[0], 64,
        ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed,
    )  # fmt: skip
    return header + payload


def ether(ip_packet: bytes, *, dst_mac: bytes = HOST_MAC, vlan_tags: int = 0,
          ethertype: int | None = None) -> bytes:
    """An Ethernet frame; the ethertype follows the IP version unless given."""
    if ethertype is None:
        ethertype = 0x86DD if ip_packet[0] >> 4 == 6 else 0x0800
    tags = b"".join(struct.pack("!HH", 0x8100, 5 + i) for i in range(vlan_tags))
    return dst_mac + CLIENT_MAC + tags + struct.pack("!H", ethertype) + ip_packet


def knock(src: str, dst: str, protocol: int, port: int, flags: int = 0) -> bytes:
    """A plain knock frame: Ethernet, IPv4 or IPv6 by the source's family, TCP or UDP."""
    body = transport(protocol, port, flags)
    if ":" in src:
        return ether(ipv6(src, dst, protocol, body))
    return ether(ipv4(src, dst, protocol, body))
