"""Pull the knock-relevant fields (addresses, protocol, destination port, TCP flags) out of a frame.

This runs for every captured packet, so it reads fields with precompiled structs, allocates
nothing but the result (addresses stay packed: see model.Packet), and answers None (never
raises) for anything it cannot or should not read: truncated or malformed headers, non-first
fragments, ESP, unknown IPv6 extension headers. Payloads are never needed, so a short snap
length is fine.
"""

from __future__ import annotations

import mmap
import struct
from typing import TypeAlias

from tportknockd.model import PROTO_TCP, PROTO_UDP, Packet

# The capture hands over its mmap'ed ring directly: no copy per packet.
Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100

#: A crafted chain of IPv6 extension headers must not cost more than this many steps.
MAX_IPV6_EXT_HEADERS = 10

# IPv6 extension headers in the generic "next header, length in 8-octet units - 1" layout.
_IPV6_HOP_BY_HOP = 0
_IPV6_ROUTING = 43
_IPV6_FRAGMENT = 44
_IPV6_AUTH = 51
_IPV6_DEST_OPTS = 60
_IPV6_GENERIC_EXT = frozenset({_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_DEST_OPTS})

_ETH_HEADER_LEN = 14
_ETH_TYPE = struct.Struct("!H")  # the ethertype, also the one after a VLAN tag
_VLAN_TAG_LEN = 4

# version/IHL, total length, flags/fragment offset, protocol, source, destination
_IPV4 = struct.Struct("!B x H 2x H x B 2x 4s 4s")
# version/class, payload length, next header, source, destination
_IPV6 = struct.Struct("!B 3x H B x 16s 16s")
_IPV6_EXT = struct.Struct("!B B")  # next header, length
_IPV6_FRAG = struct.Struct("!B x H")  # next header, offset/flags
_IPV6_FRAG_LEN = 8

# The common case in one read: an untagged Ethernet frame with an option-less IPv4 header
# (ethertype, version/IHL, total length, flags/fragment offset, protocol, source, destination).
_ETH_IPV4_PLAIN = struct.Struct("!12x H B x H 2x H x B 2x 4s 4s")
_PLAIN_VER_IHL = 0x45
_PLAIN_L4_OFFSET = _ETH_IPV4_PLAIN.size  # the TCP/UDP header follows right after
# Packet(...) goes through a Python-level __new__; the tuple constructor is one C call.
_new_packet = tuple.__new__

# destination port and the flag byte (byte 13); the rest of the header is not needed
_TCP = struct.Struct("!2x H 9x B")
_UDP = struct.Struct("!2x H")


def parse_ethernet(buf: Buffer, offset: int = 0, length: int | None = None) -> Packet | None:
    """Parse an Ethernet II frame carrying IPv4 or IPv6 TCP/UDP, behind at most one 802.1Q tag:
    what the classic filter and the kernel program pass (the kernel takes the outer tag of a
    QinQ frame into metadata before either sees it)."""
    end = len(buf) if length is None else min(len(buf), offset + max(length, 0))
    if offset >= 0 and offset + _ETH_IPV4_PLAIN.size <= end:
        ethertype, ver_ihl, total_len, frag, protocol, src, dst = _ETH_IPV4_PLAIN.unpack_from(
            buf, offset
        )
        if ethertype == ETH_P_IP and ver_ihl == _PLAIN_VER_IHL:
            # The common case, read here without further calls: it is what floods are made of.
            if frag & 0x1FFF or total_len < 20:
                return None
            l4 = offset + _PLAIN_L4_OFFSET
            l4_end = min(end, offset + _ETH_HEADER_LEN + total_len)
            if protocol == PROTO_UDP and l4 + _UDP.size <= l4_end:
                return _new_packet(Packet, (src, dst, protocol, _UDP.unpack_from(buf, l4)[0], 0))
            if protocol == PROTO_TCP and l4 + _TCP.size <= l4_end:
                port, flags = _TCP.unpack_from(buf, l4)
                return _new_packet(Packet, (src, dst, protocol, port, flags))
            return None
    pos = offset + 12
    if offset < 0 or pos + 2 > end:
        return None
    (ethertype,) = _ETH_TYPE.unpack_from(buf, pos)
    if ethertype == ETH_P_8021Q:
        pos += _VLAN_TAG_LEN
        if pos + 2 > end:
            return None
        (ethertype,) = _ETH_TYPE.unpack_from(buf, pos)
    pos += 2
    if ethertype == ETH_P_IP:
        return _parse_ipv4(buf, pos, end)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(buf, pos, end)
    return None


def parse_ip(buf: Buffer, offset: int = 0, length: int | None = None) -> Packet | None:
    """Parse a packet that starts at its IP header; the version nibble picks IPv4 or IPv6."""
    end = _end_of(buf, offset, length)
    if offset < 0 or offset >= end:
        return None
    version = buf[offset] >> 4
    if version == 4:
        return _parse_ipv4(buf, offset, end)
    if version == 6:
        return _parse_ipv6(buf, offset, end)
    return None


def _end_of(buf: Buffer, offset: int, length: int | None) -> int:
    if length is None:
        return len(buf)
    return min(len(buf), offset + max(length, 0))


def _parse_ipv4(buf: Buffer, pos: int, end: int) -> Packet | None:
    if pos + _IPV4.size > end:
        return None
    ver_ihl, total_len, frag, protocol, src, dst = _IPV4.unpack_from(buf, pos)
    header_len = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or header_len < _IPV4.size or total_len < header_len:
        return None
    if frag & 0x1FFF:
        return None  # only the first fragment carries the ports
    # Ethernet padding may follow the datagram and the snap length may cut it: honour both.
    l4_end = min(end, pos + total_len)
    return _parse_l4(buf, pos + header_len, l4_end, protocol, src, dst)


def _parse_ipv6(buf: Buffer, pos: int, end: int) -> Packet | None:
    if pos + _IPV6.size > end:
        return None
    version, payload_len, next_header, src, dst = _IPV6.unpack_from(buf, pos)
    if version >> 4 != 6:
        return None
    l4_end = min(end, pos + _IPV6.size + payload_len)
    pos += _IPV6.size
    for _ in range(MAX_IPV6_EXT_HEADERS + 1):
        if next_header in (PROTO_TCP, PROTO_UDP):
            return _parse_l4(buf, pos, l4_end, next_header, src, dst)
        if next_header in _IPV6_GENERIC_EXT:
            if pos + _IPV6_EXT.size > l4_end:
                return None
            next_header, units = _IPV6_EXT.unpack_from(buf, pos)
            pos += (units + 1) * 8
        elif next_header == _IPV6_FRAGMENT:
            if pos + _IPV6_FRAG_LEN > l4_end:
                return None
            next_header, offset_flags = _IPV6_FRAG.unpack_from(buf, pos)
            if offset_flags >> 3:
                return None  # only the first fragment carries the ports
            pos += _IPV6_FRAG_LEN
        elif next_header == _IPV6_AUTH:
            if pos + _IPV6_EXT.size > l4_end:
                return None
            next_header, units = _IPV6_EXT.unpack_from(buf, pos)
            pos += (units + 2) * 4
        else:
            return None  # ESP (encrypted ports), no next header, or something unknown
    return None


def _parse_l4(
    buf: Buffer, pos: int, end: int, protocol: int, src: bytes, dst: bytes
) -> Packet | None:
    if protocol == PROTO_TCP:
        if pos + _TCP.size > end:
            return None
        port, flags = _TCP.unpack_from(buf, pos)
    elif protocol == PROTO_UDP:
        if pos + _UDP.size > end:
            return None
        (port,) = _UDP.unpack_from(buf, pos)
        flags = 0
    else:
        return None
    return Packet(src, dst, protocol, port, flags)
