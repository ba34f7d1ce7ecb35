"""Frames for the fuzzer, from a seeded random generator: knocks in every shape the parsers
know, then broken.

A knock is wrapped in Ethernet (0-3 VLAN tags, any destination MAC, sometimes the wrong
ethertype), IPv4 (options, fragments, lengths that lie) or IPv6 (chains of extension headers,
known and unknown, short and past the snap length), TCP or UDP or something else. A share of
the frames is then cut, spliced, bit-flipped or has bytes put in or taken out; a few are
random bytes. Frames are only built, never sent: both engines run over bytes in memory.

Addresses are the documentation ranges and 198.18.0.0/15 (mutations may change any byte).
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import frames_raw as fr
from tportknockd.model import ACK, CWR, ECE, FIN, PROTO_TCP, PROTO_UDP, PSH, RST, SYN, URG, Frame

SERVER_V4, SERVER_V6, SERVER_LINK_LOCAL = "198.51.100.1", "2001:db8::1", "fe80::1"
#: The addresses both engines are told are ours (the link-local one with its scope, as the
#: daemon gives it).
LOCAL = [SERVER_V4, SERVER_V6, "fe80::1%lo"]  # test runs come in on lo
NOT_LOCAL_V4, NOT_LOCAL_V6, NOT_LOCAL_LINK = "198.51.100.9", "2001:db8::9", "fe80::2"
FIXED_SOURCES = ["198.51.100.7", "198.51.100.8", "2001:db8::7", "fe80::7"]
SPOOFED_V4 = ipaddress.ip_network("198.18.0.0/15")
DOCUMENTATION_V6 = ipaddress.ip_network("2001:db8::/32")

INTERESTING_FLAGS = [0, SYN, ACK, SYN | ACK, FIN | ACK, RST, PSH | ACK, URG | PSH, 0x3F, ECE,
                     CWR, SYN | ECE, 0xFF]  # fmt: skip
INTERESTING_BYTES = [0x00, 0x01, 0x04, 0x05, 0x06, 0x11, 0x2C, 0x32, 0x33, 0x3B, 0x3C, 0x40,
                     0x45, 0x46, 0x60, 0x7F, 0x80, 0x81, 0x86, 0xDD, 0xFF]  # fmt: skip
INTERESTING_WORDS = [0, 1, 8, 19, 20, 28, 40, 60, 0x0800, 0x86DD, 0x8100, 0x88A8, 0x2000,
                     0x1FFF, 0x7FFF, 0xFFFF]  # fmt: skip
OTHER_PROTOCOLS = [0, 1, 41, 43, 44, 50, 51, 58, 59, 60, 132, 255]
#: IPv6 extension headers: those the parsers walk, and those where they must stop.
WALKED = [fr.HOP_BY_HOP, fr.ROUTING, fr.DEST_OPTS, fr.FRAGMENT, fr.AUTH]
STOPPERS = [fr.ESP, 59, 135, 139, 253]
#: BPF_PROG_TEST_RUN takes at most about a page; a frame this long still fits.
MAX_FRAME = 3000


@dataclass(frozen=True)
class Step:
    """One frame of a stream, `dt` whole seconds after the one before; `probe` is an offset
    and a length for the extra parser calls (odd slices of the same bytes)."""

    frame: bytes
    dt: int
    probe: tuple[int, int]


def random_source(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.7:
        return rng.choice(FIXED_SOURCES)
    if roll < 0.85:
        return str(SPOOFED_V4[rng.randrange(SPOOFED_V4.num_addresses)])
    return str(DOCUMENTATION_V6[rng.randrange(1 << 32)])


class FrameMaker:
    """Frames for one config: mostly its own frames, some near misses, then broken."""

    def __init__(self, rng: random.Random, wanted: Sequence[Frame]) -> None:
        self.rng = rng
        self.wanted = list(wanted)
        self.recent: list[bytes] = []  # what splices take their tails from

    # -- what the frame says -----------------------------------------------------------------

    def fields_of(self, frame: Frame) -> tuple[int, int, int]:
        """(protocol, port, flag byte) of a packet for `frame`: its own flags, mostly."""
        flags = 0
        if frame.protocol == PROTO_TCP:
            exact = frame.flags is not None and self.rng.random() < 0.9
            flags = frame.flags if exact and frame.flags is not None else self.flag_byte()
        return frame.protocol, frame.port, flags

    def near_miss(self) -> tuple[int, int, int]:
        """Another protocol, a neighbouring port, other flags: what must not count."""
        rng = self.rng
        base = rng.choice(self.wanted)
        protocol = rng.choice([PROTO_TCP, PROTO_UDP, PROTO_TCP, PROTO_UDP, *OTHER_PROTOCOLS])
        port = rng.choice([base.port, base.port + 1, base.port - 1, rng.randrange(65536)])
        return protocol, port & 0xFFFF, self.flag_byte()

    def flag_byte(self) -> int:
        rng = self.rng
        return rng.choice(INTERESTING_FLAGS) if rng.random() < 0.8 else rng.randrange(256)

    # -- how it is wrapped -------------------------------------------------------------------

    def knock(self, source: str, fields: tuple[int, int, int]) -> bytes:
        """A frame from `source` carrying `fields`, in a random shape (plain, mostly)."""
        rng = self.rng
        protocol, port, flags = fields
        v6 = ":" in source
        destination = self.destination(source)
        body = self.transport(protocol, port, flags)
        if v6:
            packet = self.ipv6(source, destination, protocol, body)
        else:
            packet = self.ipv4(source, destination, protocol, body)
        if rng.random() < 0.06:
            packet = self.lying_length(packet, v6)
        frame = self.ethernet(packet, v6)
        if rng.random() < 0.1:  # Ethernet padding, or trailing bytes the IP length excludes
            frame += bytes(max(60 - len(frame), 0)) if rng.random() < 0.5 else self.noise(30)
        return frame[:MAX_FRAME]

    def destination(self, source: str) -> str:
        mine = self.rng.random() < 0.92
        if source.startswith("fe80"):
            return SERVER_LINK_LOCAL if mine else NOT_LOCAL_LINK
        if ":" in source:
            return SERVER_V6 if mine else NOT_LOCAL_V6
        return SERVER_V4 if mine else NOT_LOCAL_V4

    def transport(self, protocol: int, port: int, flags: int) -> bytes:
        rng = self.rng
        payload = self.noise(40) if rng.random() < 0.15 else b""
        if protocol == PROTO_TCP:
            header = bytearray(fr.transport(protocol, port, flags, payload))
            if rng.random() < 0.05:
                header[12] = rng.randrange(256)  # data offset: neither parser reads it
            return bytes(header)
        if protocol == PROTO_UDP:
            return fr.transport(protocol, port, 0, payload)
        return struct.pack("!HH", 40000, port) + self.noise(20)

    def ipv4(self, source: str, destination: str, protocol: int, body: bytes) -> bytes:
        rng = self.rng
        options = b""
        if rng.random() < 0.1:
            options = self.noise_exact(4 * rng.randint(1, 10))
        fragment, more = 0, False
        roll = rng.random()
        if roll < 0.04:
            more = True  # a first fragment: it carries the ports
        elif roll < 0.08:
            fragment = rng.choice([1, 5, 0x1000, 0x1FFF, rng.randrange(1, 0x2000)])
        elif roll < 0.12:
            fragment = 0x4000  # don't fragment
        return fr.ipv4(source, destination, protocol, body, options=options, fragment=fragment,
                       more_fragments=more)  # fmt: skip

    def ipv6(self, source: str, destination: str, protocol: int, body: bytes) -> bytes:
        """With a chain of extension headers before `body`, sometimes."""
        rng = self.rng
        exts: list[fr.Ext] = []
        if rng.random() < 0.3:
            for _ in range(rng.choice([1, 1, 2, 3, 5, 9, 10, 11, 12])):
                kind = rng.choice(WALKED) if rng.random() < 0.93 else rng.choice(STOPPERS)
                units = rng.choice([0, 0, 0, 1, 2, 4]) if rng.random() < 0.97 else 40
                offset = rng.choice([0, 0, 0, 1, 0x1FFF])
                exts.append(fr.Ext(kind, units, offset if kind == fr.FRAGMENT else 0))
        return fr.ipv6(source, destination, protocol, body, tuple(exts))

    def lying_length(self, packet: bytes, v6: bool) -> bytes:
        """The IP header's length field set to something else (short, long, zero)."""
        at = 4 if v6 else 2
        (true,) = struct.unpack_from("!H", packet, at)
        lie = self.rng.choice([0, 1, 19, 20, true - 1, true - 10, true + 1, true + 100, 0xFFFF])
        return packet[:at] + struct.pack("!H", lie & 0xFFFF) + packet[at + 2 :]

    def ethernet(self, packet: bytes, v6: bool) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.92:
            mac = fr.HOST_MAC
        else:
            mac = rng.choice([fr.MULTICAST_MAC, fr.OTHER_MAC, b"\xff" * 6, b"\x33\x33\0\0\0\1"])
        tags = rng.choices([0, 1, 2, 3], weights=[80, 12, 5, 3])[0]
        tag_bytes = b"".join(
            struct.pack("!HH", rng.choice([0x8100, 0x8100, 0x88A8]), rng.randrange(1 << 16))
            for _ in range(tags)
        )
        ethertype = 0x86DD if v6 else 0x0800
        if rng.random() < 0.03:
            ethertype = rng.choice([0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8, rng.randrange(65536)])
        return mac + fr.CLIENT_MAC + tag_bytes + struct.pack("!H", ethertype) + packet

    # -- breaking it -------------------------------------------------------------------------

    def mutate(self, frame: bytes) -> bytes:
        """One to four edits: bytes and bits changed (in the headers, mostly), 16-bit fields
        set to telling values, bytes cut, put in or taken out, a tail spliced from another."""
        rng = self.rng
        data = bytearray(frame)
        for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
            edit = rng.randrange(8)
            at = self.position(len(data))
            if edit <= 2 and at < len(data):
                value = rng.choice(INTERESTING_BYTES) if edit == 0 else rng.randrange(256)
                data[at] = value
            elif edit == 3 and at < len(data):
                data[at] ^= 1 << rng.randrange(8)
            elif edit == 4 and at + 2 <= len(data):
                data[at : at + 2] = struct.pack("!H", rng.choice(INTERESTING_WORDS))
            elif edit == 5:
                del data[rng.randrange(len(data) + 1) :]
            elif edit == 6:
                if rng.random() < 0.5:
                    del data[at : at + rng.randint(1, 8)]
                else:
                    data[at:at] = self.noise_exact(rng.randint(1, 8))
            elif self.recent:
                other = rng.choice(self.recent)
                data[at:] = other[rng.randrange(len(other) + 1) :]
        return bytes(data[:MAX_FRAME])

    def position(self, length: int) -> int:
        """Where to edit: the headers (the first 80 bytes) four times out of five."""
        if length == 0:
            return 0
        limit = min(length, 80) if self.rng.random() < 0.8 else length
        return self.rng.randrange(limit)

    def raw(self) -> bytes:
        """Random bytes, or random bytes behind our MAC and an IP ethertype."""
        rng = self.rng
        if rng.random() < 0.5:
            return self.noise(120)
        ethertype = rng.choice([b"\x08\x00", b"\x86\xdd", b"\x81\x00"])
        return fr.HOST_MAC + fr.CLIENT_MAC + ethertype + self.noise(100)

    def jumbo(self, source: str) -> bytes:
        """A knock with 9000 bytes behind it, or 9000 random bytes: more than
        BPF_PROG_TEST_RUN takes, so for the parser alone."""
        if self.rng.random() < 0.5:
            return self.noise_exact(self.rng.randint(9000, 9100))
        head = self.knock(source, self.fields_of(self.rng.choice(self.wanted)))
        return head + self.noise_exact(9000)

    def noise(self, most: int) -> bytes:
        return self.noise_exact(self.rng.randint(0, most))

    def noise_exact(self, count: int) -> bytes:
        return self.rng.randbytes(count)

    def remember(self, frame: bytes) -> None:
        self.recent.append(frame)
        if len(self.recent) > 16:
            del self.recent[0]
