"""The knock matcher as an eBPF socket filter, and the layout of the maps it shares with us.

The program implements rules 1 to 5 of tportknockd.conf(5) (the matching rules; the Python
engine, matching/engine.py, is their reference implementation) for every packet the capture
socket sees, so that only completed sequences reach user space. It is generated once per set
of maps; the sequences, their frames and the local addresses live in maps, so a new config, a
new one-time window or a changed address is a map update, never a new program.

Per packet:

1. Only packets addressed to this host (pkt_type PACKET_HOST) count, as in capture/ring.py
   (rule 2 of tportknockd.conf(5)).
2. Parse exactly as the Python engine's pipeline does (the classic filter of
   capture/knock_filter.py, then capture/packet.py):
   Ethernet with at most one 802.1Q tag in the data; IPv4 (version 4, IHL >= 5, total length
   >= header length, no fragment offset); IPv6 walking at most ten hop-by-hop, routing,
   destination options, fragment (first fragments only) and authentication headers; TCP with
   14 header bytes present (for the flag byte), UDP with 4; all within the IP length and the
   classic filter's 512-byte snap length.
3. Look the (protocol, destination port, flag byte) up in the *frame table*: for every
   sequence that has such a frame, its number, frame mask (bit k: frame k), length and
   timeout; a miss ends the program. Then the destination must be in the *local address* map.
4. For each sequence of the entry, in order, rules 3 and 4 of tportknockd.conf(5) for the
   attempt of (source, sequence): expired → gone; next frame → advance (the last one
   completes); the frame just matched → retransmission, ignored; any other frame → broken,
   and frame 0 restarts.
5. A completion is written to the ring buffer as (family, sequence number, source address).

The generator has the same two halves: _HeaderParser writes steps 1 and 2 and leaves what it
parsed on the stack; _KnockRules writes steps 3 to 5 from there.

Time is the kernel's coarse monotonic clock (bpf_ktime_get_coarse_ns, Linux 5.11+: CLOCK_MONOTONIC
as of the last tick, a few ms old), which is much cheaper to read than the precise one.
Timeouts are seconds; the Python engine's own clock is read when a ring block is handed over,
itself a millisecond or more after the packet.

Attempts live in two maps: *fresh* ones (one frame matched) and *advanced* ones (two or more).
A flood of spoofed first frames only ever inserts fresh attempts, so it can only evict fresh
attempts; an attempt that got its second frame in is out of its reach.

Advanced attempts are few and live in an LRU hash map. Fresh attempts are what a flood
churns, one insert per spoofed packet, so they live in a table of our own that costs no lock
and no allocation: an array of buckets of FRESH_WAYS slots, the bucket chosen by a hash of
(family, sequence, source) under a random seed drawn at load time (so that nobody can aim
packets at the bucket of a given address). A new attempt takes a free slot of its bucket, or
else the slot of the oldest attempt there. Expired attempts are left in place: they are
the oldest of their bucket, and go first. A fresh attempt found by a packet is taken out of
its slot at once and put back only if the rules keep it (a retransmission of frame 0).

The program returns 0 for every packet it can read: nothing is queued on the socket (one it
cannot read is handed over whole, see _pass_unreadable). Statistics are counted in a per-CPU
array.

Packet bytes are read relative to SKF_LL_OFF (the link-layer header). A socket filter on an
AF_PACKET socket sees data from the Ethernet header, BPF_PROG_TEST_RUN from the network
header; SKF_LL_OFF reads the same bytes in both, so the tests run the very program the daemon
attaches. (On the kernels these loads were written for, they reach only the linear part of
a packet, where drivers and GRO leave the headers of a small packet such as a knock.)

Several CPUs may run the program for one source at once; attempts are updated without locks,
so two frames of one knock arriving within the same microsecond on two CPUs may be counted as
one. A knock is sent one frame at a time, so this does not arise. Two CPUs that write one
fresh slot at once may leave a slot that mixes two attempts: a fresh attempt says no more than
"this source sent frame 0 at that time", which any spoofer can make the program believe, so a
mixed slot grants nothing a spoofed packet could not.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass
from enum import IntEnum

from tportknockd.bpf.ebpf_assembler import (
    FP,
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    Assembler,
    Helper,
    Label,
    Reg,
)
from tportknockd.capture.knock_filter import SNAPLEN
from tportknockd.capture.packet import ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6
from tportknockd.model import PROTO_TCP, PROTO_UDP, address_bytes, is_link_local_v6

SKF_LL_OFF = -0x200000
PACKET_HOST = 0
BPF_HDR_START_MAC = 0


#: IPv6 extension headers walked, as packet.py does.
IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_AUTH, IPV6_DEST_OPTS = 0, 43, 44, 51, 60
MAX_IPV6_EXT_HEADERS = 10

FAMILY_IPV4 = 4
FAMILY_IPV6 = 6

#: The longest sequence a frame mask (u64) can describe.
MAX_FRAMES = 64

# --- what the maps hold (host byte order, as the program reads them) ------------------------

#: Frame table key: protocol << 24 | flag byte << 16 | destination port (flags 0 for UDP).
FRAME_KEY = struct.Struct("=I")
#: Frame table value: how many hits follow, then `max_hits` of HIT.
FRAME_VALUE_HEAD = struct.Struct("=I4x")
#: timeout (ns), frame mask, sequence number, sequence length.
HIT = struct.Struct("=QQII")
#: Attempt key, also the ring buffer record: family, sequence number, source address
#: (network byte order, an IPv4 address in its first 4 bytes, the rest zero).
ATTEMPT_KEY = struct.Struct("=II16s")
#: Attempt value: when frame 0 arrived (ktime ns), frames matched.
ATTEMPT_VALUE = struct.Struct("=QI4x")
#: A slot of the fresh table: when frame 0 arrived (ktime ns, signed), then the ATTEMPT_KEY.
#: A slot whose family and number (the key's first 8 bytes) are zero is free.
FRESH_SLOT = struct.Struct("=q24s")
#: Slots per bucket of the fresh table: enough that attempts of a few hundred sources do not
#: crowd one bucket (the engines then agree exactly), few enough to scan in a few ns.
FRESH_WAYS = 8
FRESH_BUCKET_SIZE = FRESH_SLOT.size * FRESH_WAYS
#: Fibonacci hashing's multiplier (2**64 / the golden ratio): the top bits of a product mix
#: every bit of the hashed words.
HASH_MULTIPLIER = 0x9E3779B97F4A7C15
#: The clock map's value: nanoseconds added to the kernel's clock (0 in the daemon; the tests
#: move it forward, since the kernel's clock cannot be set).
CLOCK_VALUE = struct.Struct("=q")
#: Local address key: address (as in ATTEMPT_KEY), family, interface index: 0 for an address
#: that counts on every interface, the index of its own for an IPv6 link-local one.
LOCAL_KEY = struct.Struct("=16sII")
LOCAL_VALUE = struct.Struct("=I")


class Counter(IntEnum):
    """Slots of the per-CPU statistics array (u64 each)."""

    PACKETS = 0  # every packet the program saw
    KNOCKS = 1  # packets to a local address that match some frame
    STARTED = 2  # fresh attempts inserted
    PROMOTED = 3  # attempts moved from fresh to advanced (second frame matched)
    ADVANCED = 4  # further frames matched
    RETRANSMISSIONS = 5
    BROKEN = 6
    EXPIRED = 7
    COMPLETED = 8
    RING_FULL = 9  # completions lost because user space did not read the ring in time
    FRESH_DELETED = 10  # fresh attempts that ended by the rules (broken, expired, completed)
    ADVANCED_DELETED = 11  # the same for advanced attempts
    PASSED = 12  # handed to user space whole: headers not in the linear part
    FRESH_EVICTED = 13  # fresh attempts whose slot a new attempt took (its bucket was full)


COUNTERS_VALUE = struct.Struct(f"={len(Counter)}Q")


def frame_key(protocol: int, port: int, flags: int) -> bytes:
    return FRAME_KEY.pack(protocol << 24 | flags << 16 | port)


def frame_value(hits: list[tuple[int, int, int, int]], max_hits: int) -> bytes:
    """A frame table value from (timeout ns, mask, number, length) hits, in sequence order."""
    if len(hits) > max_hits:
        raise ValueError(f"{len(hits)} sequences share a frame; the program handles {max_hits}")
    body = b"".join(HIT.pack(*hit) for hit in hits)
    return FRAME_VALUE_HEAD.pack(len(hits)) + body.ljust(HIT.size * max_hits, b"\0")


def frame_value_size(max_hits: int) -> int:
    return FRAME_VALUE_HEAD.size + HIT.size * max_hits


def address_key(packed: bytes) -> tuple[bytes, int]:
    """(16 bytes, family) for a packed IPv4 or IPv6 address."""
    family = FAMILY_IPV4 if len(packed) == 4 else FAMILY_IPV6
    return packed.ljust(16, b"\0"), family


def local_key(text: str) -> bytes:
    """The local address map key of an address in text. An IPv6 link-local address counts on
    the interface its zone names (`fe80::1%eth0` or `%2`), on every one without a zone; other
    addresses' zones are ignored. ValueError for a zone that names no interface."""
    bare, _, zone = text.partition("%")
    packed = address_bytes(bare)
    ifindex = _interface_index(zone) if zone and is_link_local_v6(packed) else 0
    return LOCAL_KEY.pack(*address_key(packed), ifindex)


def _interface_index(zone: str) -> int:
    if zone.isdigit():
        return int(zone)
    try:
        return socket.if_nametoindex(zone)
    except OSError:
        raise ValueError(f"no interface {zone!r}") from None


def attempt_key(number: int, source: bytes) -> bytes:
    address, family = address_key(source)
    return ATTEMPT_KEY.pack(family, number, address)


#: Ring buffer record: the attempt key, then the index of the interface the last frame came
#: in on (for the log), and padding.
RECORD_TAIL = struct.Struct("=I4x")
RECORD_SIZE = ATTEMPT_KEY.size + RECORD_TAIL.size
#: struct __sk_buff's ifindex (include/uapi/linux/bpf.h): the interface the packet came in on.
SKB_IFINDEX = 40


def decode_record(record: bytes) -> tuple[int, bytes, int]:
    """(sequence number, packed source address, interface index) of a ring buffer record."""
    family, number, address = ATTEMPT_KEY.unpack_from(record)
    ifindex = (
        RECORD_TAIL.unpack_from(record, ATTEMPT_KEY.size)[0] if len(record) >= RECORD_SIZE else 0
    )
    return number, address[:4] if family == FAMILY_IPV4 else address, ifindex


# --- the program -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MapFds:
    """The maps the program uses, by file descriptor (the kernel takes its own references)."""

    frames: int  # hash: FRAME_KEY -> frame_value
    local: int  # hash: LOCAL_KEY -> LOCAL_VALUE
    fresh: int  # array: bucket number -> FRESH_WAYS FRESH_SLOTs, one frame matched
    advanced: int  # LRU hash: ATTEMPT_KEY -> ATTEMPT_VALUE, two or more frames matched
    clock: int  # array of one CLOCK_VALUE
    ring: int  # ring buffer of completions (ATTEMPT_KEY records)
    counters: int  # per-CPU array, one COUNTERS_VALUE


# Stack layout (offsets from the frame pointer). KEY.address is followed by LOCAL.address so
# that an IPv6 source and destination, adjacent in the header, arrive with one load.
_KEY = -48  # ATTEMPT_KEY: family -48, number -44, address -40..-25
_KEY_FAMILY, _KEY_NUMBER, _KEY_ADDRESS = -48, -44, -40
_LOCAL = -24  # LOCAL_KEY: address -24..-9, family -8, interface index -4 (0 but for fe80::/10)
_LOCAL_ADDRESS, _LOCAL_FAMILY, _LOCAL_IFINDEX = -24, -8, -4
_FRAME_KEY = -56
_VALUE = -72  # ATTEMPT_VALUE: started -72, matched -64, padding -60
_ZERO = -76  # u32 0: the key of the counters array
_IPV4_ADDRESSES = -88  # 8 bytes: an IPv4 source and destination as loaded
_COUNTERS = -96  # spilled pointer to this CPU's counters
_RECORD = -128  # ring buffer record: ATTEMPT_KEY -128..-105, ifindex -104, padding -100
_PROBE = -128 - 64  # PROBE_BYTES read to see whether the headers are in the linear part
_HASH = -200  # u64: the source address hashed (each sequence's number is mixed in per hit)
_BUCKET_NUMBER = -204  # u32: the fresh table key (bucket number) of the current hit
#: How much of a packet must be linear for the program to read it (see _pass_unreadable).
PROBE_BYTES = 58
#: What the program returns to hand a packet to user space whole.
PASS_WHOLE = 0xFFFF

_HIT_TIMEOUT, _HIT_MASK, _HIT_NUMBER, _HIT_LENGTH = 0, 8, 16, 20

# Registers. R0-R5 are the helpers' result and arguments, clobbered by every call: scratch,
# named by number where they are used. R6-R9 survive calls and hold what the program keeps.
# The parser and the rules keep their own values in them: the parser's results are on the
# stack (_KEY, _LOCAL, _FRAME_KEY) by the time the rules start, and its registers are dead.
PACKET = R6  # the __sk_buff, throughout (LD_ABS and LD_IND want it in R6)
# While parsing:
HEADER_OFFSET = R7  # where the header being read starts, counted from the link-layer header
PROTOCOL = R8  # what the header at HEADER_OFFSET is (the protocol field before it)
READ_END = R9  # the end of the bytes the parser may read
# While applying the rules:
FRAME_ENTRY = R7  # the frame table's value for the packet's frame key
NOW = R8  # the time (ns), the kernel's clock plus the clock map's offset
FRESH_BUCKET = R9  # the current hit's bucket of the fresh table (its FRESH_WAYS slots)


#: fe80::/10 as the program sees an address's first two bytes (loaded in host order).
_LINK_LOCAL_PREFIX = int.from_bytes(b"\xfe\x80", sys.byteorder)
_LINK_LOCAL_MASK = int.from_bytes(b"\xff\xc0", sys.byteorder)


def generate(maps: MapFds, max_hits: int, fresh_buckets: int, seed: int) -> bytes:
    """The socket filter program for these maps; up to `max_hits` sequences per frame; a
    fresh table of `fresh_buckets` buckets (a power of two, at least 2), hashed with `seed`."""
    if fresh_buckets < 2 or fresh_buckets & (fresh_buckets - 1):
        raise ValueError(f"the fresh table needs a power of two >= 2 buckets, not {fresh_buckets}")
    program = _Program(maps.counters)
    program.start()
    _HeaderParser(program).parse()
    _KnockRules(program, maps, max_hits, fresh_buckets, seed).apply()
    return program.finish()


class _Program:
    """What the parser and the rules both write into: the assembler, the label that ends the
    program for a packet that is no (further) part of a knock, and this CPU's counters."""

    def __init__(self, counters_fd: int) -> None:
        self.asm = Assembler()
        self.drop = self.asm.label("drop")
        self.counters_fd = counters_fd

    def start(self) -> None:
        """Keep the packet; find this CPU's counters (kept on the stack) and count the
        packet; initialise the stack areas that keys are built in, as the verifier wants."""
        asm = self.asm
        asm.mov(PACKET, R1)
        asm.store("w", FP, _ZERO, 0)
        self.lookup(self.counters_fd, _ZERO)
        asm.jmp(R0, "==", 0, self.drop)
        asm.store("dw", FP, _COUNTERS, R0)
        self.increment(Counter.PACKETS)
        for offset in range(_KEY, 0, 8):  # KEY and LOCAL, zeroed: IPv4 uses 4 of 16 bytes
            asm.store("dw", FP, offset, 0)
        asm.store("dw", FP, _VALUE, 0)
        asm.store("dw", FP, _VALUE + 8, 0)

    def finish(self) -> bytes:
        self.asm.place(self.drop)
        self.asm.ret(0)
        return self.asm.assemble()

    def increment(self, counter: Counter, scratch: tuple[Reg, Reg] = (R1, R2)) -> None:
        """Count one in this CPU's `counter`, using (and clobbering) the `scratch` registers."""
        asm, counters, value = self.asm, *scratch
        asm.load("dw", counters, FP, _COUNTERS)
        asm.load("dw", value, counters, counter * 8)
        asm.alu(value, "+", 1)
        asm.store("dw", counters, counter * 8, value)

    def map_arguments(self, map_fd: int, key: int) -> None:
        """R1 = the map, R2 = the key on the stack at `key`: the first arguments of every map
        helper."""
        self.asm.ld_map_fd(R1, map_fd)
        self.asm.mov(R2, FP)
        self.asm.alu(R2, "+", key)

    def lookup(self, map_fd: int, key: int) -> None:
        """R0 = the value of `key` in the map, or 0."""
        self.map_arguments(map_fd, key)
        self.asm.call(Helper.MAP_LOOKUP_ELEM)


# -- the parser -------------------------------------------------------------------------------


class _HeaderParser:
    """Reads the headers of a packet addressed to this host as the classic filter and
    capture/packet.py do, and leaves on the stack what the rules look up: the frame key
    (_FRAME_KEY), the source (_KEY's family and address) and the destination (_LOCAL). Any
    other packet is dropped, or handed to user space whole if its headers cannot be read."""

    def __init__(self, program: _Program) -> None:
        self.program = program
        self.asm = program.asm
        self.drop = program.drop

    def parse(self) -> None:
        asm = self.asm
        self._check_packet_type()
        self._pass_unreadable()
        ipv4, ipv6, l4 = asm.label("ipv4"), asm.label("ipv6"), asm.label("l4")
        self._link_layer(ipv4, ipv6)
        asm.place(ipv4)
        self._ipv4(l4)
        asm.place(ipv6)
        self._ipv6(l4)
        asm.place(l4)
        self._transport()

    def _check_packet_type(self) -> None:
        self.asm.load("w", R0, PACKET, 4)  # struct __sk_buff: pkt_type
        self.asm.jmp(R0, "!=", PACKET_HOST, self.drop)

    def _pass_unreadable(self) -> None:
        """Hand a packet whose headers are not all in the linear part of its buffer (a
        zero-copy sender's, over veth) to user space whole: the program's loads read only the
        linear part, so it could not match it, and the Python engine can. Probed: the first
        min(len, PROBE_BYTES) bytes from the link-layer header (enough for Ethernet, an
        802.1Q tag, IPv4 and TCP headers without options)."""
        asm = self.asm
        readable = asm.label("readable")
        asm.load("w", R4, PACKET, 0)  # struct __sk_buff: len
        short = asm.label("short")
        asm.jmp(R4, "<=", PROBE_BYTES, short)
        asm.mov(R4, PROBE_BYTES)
        asm.place(short)
        asm.jmp(R4, "==", 0, self.drop)
        asm.mov(R1, PACKET)
        asm.mov(R2, 0)
        asm.mov(R3, FP)
        asm.alu(R3, "+", _PROBE)
        asm.mov(R5, BPF_HDR_START_MAC)
        asm.call(Helper.SKB_LOAD_BYTES_RELATIVE)
        asm.jmp(R0, "==", 0, readable)
        self.program.increment(Counter.PASSED)
        asm.ret(PASS_WHOLE)
        asm.place(readable)

    def _link_layer(self, ipv4: Label, ipv6: Label) -> None:
        """HEADER_OFFSET = where the IP header starts; branch on the ethertype (one 802.1Q
        tag)."""
        asm, drop = self.asm, self.drop
        untagged = asm.label("untagged")
        asm.ld_abs("h", SKF_LL_OFF + 12)
        asm.mov(HEADER_OFFSET, 14)
        asm.jmp(R0, "!=", ETH_P_8021Q, untagged)
        asm.ld_abs("h", SKF_LL_OFF + 16)
        asm.mov(HEADER_OFFSET, 18)
        asm.place(untagged)
        asm.jmp(R0, "==", ETH_P_IP, ipv4)
        asm.jmp(R0, "==", ETH_P_IPV6, ipv6)
        asm.goto(drop)

    def _load_addresses(self, offset: int, size: int, into: int) -> None:
        """Copy `size` header bytes at HEADER_OFFSET + offset to the stack at `into`."""
        asm = self.asm
        asm.mov(R1, PACKET)
        asm.mov(R2, HEADER_OFFSET)
        asm.alu(R2, "+", offset)
        asm.mov(R3, FP)
        asm.alu(R3, "+", into)
        asm.mov(R4, size)
        asm.mov(R5, BPF_HDR_START_MAC)
        asm.call(Helper.SKB_LOAD_BYTES_RELATIVE)
        asm.jmp(R0, "!=", 0, self.drop)

    def _ipv4(self, l4: Label) -> None:
        """On to `l4` with the transport header at HEADER_OFFSET, its protocol in PROTOCOL and
        READ_END at the end of the datagram."""
        asm, drop = self.asm, self.drop
        header_length = PROTOCOL  # until the protocol is read (first the byte it is in)
        asm.ld_ind("b", HEADER_OFFSET, SKF_LL_OFF)  # version, IHL
        asm.mov(header_length, R0)
        asm.alu(header_length, ">>", 4)
        asm.jmp(header_length, "!=", 4, drop)
        asm.mov(header_length, R0)
        asm.alu(header_length, "&", 0x0F)
        asm.alu(header_length, "<<", 2)  # header length
        asm.jmp(header_length, "<", 20, drop)
        asm.ld_ind("h", HEADER_OFFSET, SKF_LL_OFF + 2)  # total length
        asm.jmp(R0, "<", header_length, drop)
        asm.mov(READ_END, R0)
        asm.alu(READ_END, "+", HEADER_OFFSET)
        asm.ld_ind("h", HEADER_OFFSET, SKF_LL_OFF + 6)  # flags, fragment offset
        asm.alu(R0, "&", 0x1FFF)
        asm.jmp(R0, "!=", 0, drop)
        self._load_addresses(12, 8, _IPV4_ADDRESSES)
        asm.load("w", R0, FP, _IPV4_ADDRESSES)
        asm.store("w", FP, _KEY_ADDRESS, R0)
        asm.load("w", R0, FP, _IPV4_ADDRESSES + 4)
        asm.store("w", FP, _LOCAL_ADDRESS, R0)
        asm.store("w", FP, _KEY_FAMILY, FAMILY_IPV4)
        asm.store("w", FP, _LOCAL_FAMILY, FAMILY_IPV4)
        asm.ld_ind("b", HEADER_OFFSET, SKF_LL_OFF + 9)  # protocol
        asm.alu(HEADER_OFFSET, "+", header_length)
        asm.mov(PROTOCOL, R0)
        self._cap_end()
        asm.goto(l4)

    def _cap_end(self) -> None:
        """The classic filter passes SNAPLEN bytes to the parser: read no further either."""
        within = self.asm.label()
        self.asm.jmp(READ_END, "<=", SNAPLEN, within)
        self.asm.mov(READ_END, SNAPLEN)
        self.asm.place(within)

    def _ipv6(self, l4: Label) -> None:
        """Like _ipv4, after walking the extension headers that packet.py walks."""
        asm, drop = self.asm, self.drop
        asm.ld_ind("b", HEADER_OFFSET, SKF_LL_OFF)
        asm.alu(R0, ">>", 4)
        asm.jmp(R0, "!=", 6, drop)
        asm.ld_ind("h", HEADER_OFFSET, SKF_LL_OFF + 4)  # payload length
        asm.mov(READ_END, R0)
        asm.alu(READ_END, "+", HEADER_OFFSET)
        asm.alu(READ_END, "+", 40)
        asm.ld_ind("b", HEADER_OFFSET, SKF_LL_OFF + 6)  # next header
        asm.mov(PROTOCOL, R0)
        self._load_addresses(8, 32, _KEY_ADDRESS)  # source, then destination: see _LOCAL
        asm.store("w", FP, _KEY_FAMILY, FAMILY_IPV6)
        asm.store("w", FP, _LOCAL_FAMILY, FAMILY_IPV6)
        asm.alu(HEADER_OFFSET, "+", 40)
        self._cap_end()
        for walked in range(MAX_IPV6_EXT_HEADERS + 1):
            asm.jmp(PROTOCOL, "==", PROTO_TCP, l4)
            asm.jmp(PROTOCOL, "==", PROTO_UDP, l4)
            if walked < MAX_IPV6_EXT_HEADERS:
                self._ipv6_extension()
        asm.goto(drop)

    def _ipv6_extension(self) -> None:
        """Step over one extension header (its type in PROTOCOL) or drop the packet."""
        asm, drop = self.asm, self.drop
        generic, fragment, auth, done = (asm.label() for _ in range(4))
        for header in (IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_DEST_OPTS):
            asm.jmp(PROTOCOL, "==", header, generic)
        asm.jmp(PROTOCOL, "==", IPV6_FRAGMENT, fragment)
        asm.jmp(PROTOCOL, "==", IPV6_AUTH, auth)
        asm.goto(drop)
        for label, units_to_bytes in ((generic, (1, 3)), (auth, (2, 2))):
            # next header, length; the header is (length + 1) * 8 or (length + 2) * 4 bytes
            asm.place(label)
            self._need(2)
            asm.ld_ind("h", HEADER_OFFSET, SKF_LL_OFF)
            asm.mov(PROTOCOL, R0)
            asm.alu(PROTOCOL, ">>", 8)
            asm.alu(R0, "&", 0xFF)
            asm.alu(R0, "+", units_to_bytes[0])
            asm.alu(R0, "<<", units_to_bytes[1])
            asm.alu(HEADER_OFFSET, "+", R0)
            asm.goto(done)
        asm.place(fragment)
        self._need(8)
        asm.ld_ind("b", HEADER_OFFSET, SKF_LL_OFF + 7)  # the whole header must be there
        asm.ld_ind("w", HEADER_OFFSET, SKF_LL_OFF)  # next header, reserved, offset and flags
        asm.mov(R1, R0)
        asm.alu(R1, "&", 0xFFF8)
        asm.jmp(R1, "!=", 0, drop)  # not the first fragment: no ports in it
        asm.mov(PROTOCOL, R0)
        asm.alu(PROTOCOL, ">>", 24)
        asm.alu(HEADER_OFFSET, "+", 8)
        asm.place(done)

    def _need(self, size: int) -> None:
        """Drop unless `size` bytes from HEADER_OFFSET are within READ_END."""
        self.asm.mov(R1, HEADER_OFFSET)
        self.asm.alu(R1, "+", size)
        self.asm.jmp(R1, ">", READ_END, self.drop)

    def _transport(self) -> None:
        """_FRAME_KEY = the frame key of the TCP or UDP header at HEADER_OFFSET."""
        asm, drop = self.asm, self.drop
        udp, key = asm.label("udp"), asm.label("key")
        asm.jmp(PROTOCOL, "==", PROTO_UDP, udp)
        asm.jmp(PROTOCOL, "!=", PROTO_TCP, drop)
        frame_key = PROTOCOL  # built in place of the protocol it starts from
        self._need(14)  # up to the flag byte, as packet.py reads it
        asm.ld_ind("b", HEADER_OFFSET, SKF_LL_OFF + 13)
        asm.mov(frame_key, R0)
        asm.alu(frame_key, "<<", 16)
        asm.alu(frame_key, "|", PROTO_TCP << 24)
        asm.ld_ind("h", HEADER_OFFSET, SKF_LL_OFF + 2)
        asm.alu(frame_key, "|", R0)
        asm.goto(key)
        asm.place(udp)
        self._need(4)
        asm.ld_ind("h", HEADER_OFFSET, SKF_LL_OFF + 2)
        asm.mov(frame_key, R0)
        asm.alu(frame_key, "|", PROTO_UDP << 24)
        asm.place(key)
        asm.store("w", FP, _FRAME_KEY, frame_key)


# -- the rules --------------------------------------------------------------------------------


class _Hit:
    """Where hit `index`'s fields are in the frame table entry, and its labels."""

    def __init__(self, base: int, asm: Assembler, suffix: str) -> None:
        self.base = base
        self.checked_out = asm.label(f"checked_out{suffix}")
        self.put = asm.label(f"put{suffix}")  # into the fresh table; _VALUE + 8: 1 if new
        self.found = asm.label(f"found{suffix}")
        self.advance = asm.label(f"advance{suffix}")
        self.absent = asm.label(f"absent{suffix}")
        self.fire = asm.label(f"fire{suffix}")
        self.next = asm.label(f"next{suffix}")


class _KnockRules:
    """engine.py's rules for the parsed packet: the frame table entry of its frame key, if the
    destination is ours, then for each sequence (hit) of the entry the attempt of (source,
    sequence) taken forward, started, broken or completed."""

    def __init__(
        self, program: _Program, maps: MapFds, max_hits: int, fresh_buckets: int, seed: int
    ) -> None:
        self.program = program
        self.asm = program.asm
        self.drop = program.drop
        self.maps = maps
        self.max_hits = max_hits
        self.bucket_shift = 64 - (fresh_buckets.bit_length() - 1)
        self.seed = seed & (1 << 64) - 1

    def apply(self) -> None:
        self._lookups()
        for index in range(self.max_hits):
            self._hit(index)

    def _lookups(self) -> None:
        """FRAME_ENTRY = the frame table entry, if the destination is local; NOW = the time."""
        asm, drop = self.asm, self.drop
        self.program.lookup(self.maps.frames, _FRAME_KEY)
        asm.jmp(R0, "==", 0, drop)
        asm.mov(FRAME_ENTRY, R0)
        self._local_destination()
        self.program.increment(Counter.KNOCKS)
        asm.call(Helper.KTIME_GET_COARSE_NS)
        asm.mov(NOW, R0)
        self.program.lookup(self.maps.clock, _ZERO)
        asm.jmp(R0, "==", 0, drop)
        asm.load("dw", R1, R0, 0)
        asm.alu(NOW, "+", R1)
        self._hash_source()

    def _local_destination(self) -> None:
        """Drop unless the destination is ours: in the local map for every interface, or, for
        an IPv6 link-local one, for the interface the packet came in on (a link-local address
        belongs to one link, as the classic filter of each interface has it)."""
        asm, drop = self.asm, self.drop
        ours = asm.label()
        self.program.lookup(self.maps.local, _LOCAL)
        asm.jmp(R0, "!=", 0, ours)
        asm.load("w", R1, FP, _LOCAL_FAMILY)
        asm.jmp(R1, "!=", FAMILY_IPV6, drop)
        asm.load("h", R1, FP, _LOCAL_ADDRESS)  # the first two bytes, in host order
        asm.alu(R1, "&", _LINK_LOCAL_MASK)
        asm.jmp(R1, "!=", _LINK_LOCAL_PREFIX, drop)
        asm.load("w", R1, PACKET, SKB_IFINDEX)
        asm.store("w", FP, _LOCAL_IFINDEX, R1)
        self.program.lookup(self.maps.local, _LOCAL)
        asm.jmp(R0, "==", 0, drop)
        asm.place(ours)

    def _hash_source(self) -> None:
        """_HASH = the source address hashed with the seed (see _fresh_bucket)."""
        asm = self.asm
        asm.ld_imm64(R1, self.seed)
        asm.ld_imm64(R3, HASH_MULTIPLIER)
        for offset in (_KEY_ADDRESS, _KEY_ADDRESS + 8):
            asm.load("dw", R2, FP, offset)
            asm.alu(R1, "^", R2)
            asm.alu(R1, "*", R3)
        asm.store("dw", FP, _HASH, R1)

    def _hit(self, index: int) -> None:
        """Apply the rules to the attempt of (source, sequence of hit `index`)."""
        asm = self.asm
        hit = _Hit(FRAME_VALUE_HEAD.size + HIT.size * index, asm, str(index))
        asm.load("w", R1, FRAME_ENTRY, 0)  # hits in this entry
        asm.jmp(R1, "<=", index, self.drop)
        asm.load("w", R1, FRAME_ENTRY, hit.base + _HIT_NUMBER)
        asm.store("w", FP, _KEY_NUMBER, R1)
        self._fresh_bucket()
        self._check_out_fresh(hit)
        self.program.lookup(self.maps.advanced, _KEY)
        asm.jmp(R0, "==", 0, hit.absent)
        asm.load("dw", R1, R0, 0)  # started
        asm.load("w", R4, R0, 8)  # frames matched
        asm.goto(hit.found)
        asm.place(hit.checked_out)
        asm.load("dw", R1, FP, _VALUE)
        asm.mov(R4, 1)
        asm.mov(R0, 0)  # no map value: a fresh attempt is never written in place
        asm.place(hit.found)
        self._attempt_found(hit)
        asm.place(hit.advance)
        self._advance(hit)
        asm.place(hit.absent)
        self._no_attempt(hit)
        asm.place(hit.fire)
        self._fire()
        asm.place(hit.next)

    def _fresh_bucket(self) -> None:
        """FRESH_BUCKET = the fresh table bucket of (family, number, source): the top bits of
        the seeded source hash with the first key word (family, number) mixed in."""
        asm = self.asm
        asm.load("dw", R1, FP, _HASH)
        asm.load("dw", R2, FP, _KEY)
        asm.alu(R1, "^", R2)
        asm.ld_imm64(R2, HASH_MULTIPLIER)
        asm.alu(R1, "*", R2)
        asm.alu(R1, ">>", self.bucket_shift)
        asm.store("w", FP, _BUCKET_NUMBER, R1)
        self.program.lookup(self.maps.fresh, _BUCKET_NUMBER)
        asm.jmp(R0, "==", 0, self.drop)  # cannot happen (the index is in range): the verifier
        asm.mov(FRESH_BUCKET, R0)

    def _check_out_fresh(self, hit: _Hit) -> None:
        """If the bucket holds the attempt, take it out (its slot becomes free), leave its
        start in _VALUE and go to `checked_out`. Each slot is written through FRESH_BUCKET at a
        constant offset, so that the verifier sees one state at `checked_out`, not one per
        slot. The source's first 8 bytes are compared first: in a flood they differ."""
        asm = self.asm
        key_words = ((16, R4, _KEY_ADDRESS), (8, R3, _KEY), (24, R5, _KEY_ADDRESS + 8))
        for _, register, stack_offset in key_words:
            asm.load("dw", register, FP, stack_offset)
        for way in range(FRESH_WAYS):
            slot, miss = way * FRESH_SLOT.size, asm.label()
            for slot_offset, register, _ in key_words:
                asm.load("dw", R1, FRESH_BUCKET, slot + slot_offset)
                asm.jmp(R1, "!=", register, miss)
            asm.load("dw", R1, FRESH_BUCKET, slot)
            asm.store("dw", FP, _VALUE, R1)
            asm.store("dw", FRESH_BUCKET, slot + 8, 0)
            asm.goto(hit.checked_out)
            asm.place(miss)

    def _attempt_found(self, hit: _Hit) -> None:
        """R1: when it started, R4: frames matched, R0: the advanced attempt (R4 >= 2).
        Expired: gone. Next frame: on to `advance`. The frame just matched: kept as it was.
        Any other frame: broken."""
        asm = self.asm
        expired, retransmission = asm.label(), asm.label()
        asm.mov(R2, NOW)
        asm.alu(R2, "-", R1)
        asm.load("dw", R3, FRAME_ENTRY, hit.base + _HIT_TIMEOUT)
        asm.jmp(R2, "s>", R3, expired)
        asm.load("dw", R5, FRAME_ENTRY, hit.base + _HIT_MASK)
        asm.mov(R1, R5)
        asm.alu(R1, ">>", R4)
        asm.alu(R1, "&", 1)
        asm.jmp(R1, "!=", 0, hit.advance)
        asm.mov(R1, R4)
        asm.alu(R1, "-", 1)
        asm.alu(R5, ">>", R1)
        asm.alu(R5, "&", 1)
        asm.jmp(R5, "!=", 0, retransmission)
        self.program.increment(Counter.BROKEN)
        self._delete_attempt(matched=R4)
        asm.goto(hit.absent)  # the breaking frame may be frame 0
        asm.place(retransmission)
        self.program.increment(Counter.RETRANSMISSIONS)
        asm.jmp(R4, "!=", 1, hit.next)
        asm.store("w", FP, _VALUE + 8, 0)  # checked out above: back in as it was, not started
        asm.goto(hit.put)
        asm.place(expired)
        self.program.increment(Counter.EXPIRED)
        self._delete_attempt(matched=R4)
        asm.goto(hit.absent)

    def _advance(self, hit: _Hit) -> None:
        """R4: frames matched before this one; R0: the attempt, if advanced."""
        asm = self.asm
        promote, complete = asm.label(), asm.label()
        asm.alu(R4, "+", 1)
        asm.load("w", R1, FRAME_ENTRY, hit.base + _HIT_LENGTH)
        asm.jmp(R4, "==", R1, complete)
        asm.jmp(R4, "==", 2, promote)
        asm.store("w", R0, 8, R4)
        self.program.increment(Counter.ADVANCED)
        asm.goto(hit.next)
        asm.place(promote)  # fresh -> advanced: out of a first-frame flood's reach
        asm.store("w", FP, _VALUE + 8, 2)  # _VALUE holds its start since the check-out
        self._update(self.maps.advanced)
        self.program.increment(Counter.PROMOTED)
        asm.goto(hit.next)
        asm.place(complete)
        asm.alu(R4, "-", 1)
        self._delete_attempt(matched=R4)
        asm.goto(hit.fire)

    def _no_attempt(self, hit: _Hit) -> None:
        """No attempt (any more): frame 0 starts one, or completes a one-frame sequence."""
        asm = self.asm
        asm.load("dw", R5, FRAME_ENTRY, hit.base + _HIT_MASK)
        asm.alu(R5, "&", 1)
        asm.jmp(R5, "==", 0, hit.next)
        asm.load("w", R1, FRAME_ENTRY, hit.base + _HIT_LENGTH)
        asm.jmp(R1, "==", 1, hit.fire)
        asm.store("dw", FP, _VALUE, NOW)
        asm.store("w", FP, _VALUE + 8, 1)
        asm.place(hit.put)
        self._put_fresh()
        asm.load("w", R1, FP, _VALUE + 8)
        asm.jmp(R1, "==", 0, hit.next)
        self.program.increment(Counter.STARTED)
        asm.goto(hit.next)

    def _put_fresh(self) -> None:
        """Put the attempt (_KEY, started at _VALUE) in the first free slot of its bucket, or
        else in the slot of the bucket's oldest attempt (the first of equals), evicted.

        The oldest is found without branches (_oldest_way): with a branch per slot the
        verifier would follow every combination of them, which costs more to load than the
        rest of the program. R2 is the chosen slot's offset; the start is written before the
        key, which makes the slot live."""
        asm = self.asm
        write = asm.label()
        for way in range(FRESH_WAYS):
            free = asm.label()
            asm.load("dw", R1, FRESH_BUCKET, way * FRESH_SLOT.size + 8)
            asm.jmp(R1, "!=", 0, free)
            asm.mov(R2, way * FRESH_SLOT.size)
            asm.goto(write)
            asm.place(free)
        self._oldest_way()
        asm.alu(R2, "&", FRESH_WAYS - 1)
        asm.alu(R2, "<<", (FRESH_SLOT.size - 1).bit_length())
        self.program.increment(Counter.FRESH_EVICTED, scratch=(R1, R3))  # R2 is the slot's offset
        asm.place(write)
        asm.mov(R5, FRESH_BUCKET)
        asm.alu(R5, "+", R2)
        for offset in (0, 24, 16, 8):  # start, the key's end, the key's start last
            asm.load("dw", R1, FP, _VALUE if offset == 0 else _KEY + offset - 8)
            asm.store("dw", R5, offset, R1)

    def _oldest_way(self) -> None:
        """R2 = the way of the bucket's oldest start, R3 = that start; ties keep the first.
        Per way: mask = (start - oldest so far) arithmetically shifted right by 63, all ones
        exactly when this start is older; the oldest and R2 take this way's under the mask.
        (Starts are nanoseconds of a clock since boot: their differences cannot overflow.)"""
        asm = self.asm
        asm.load("dw", R3, FRESH_BUCKET, 0)
        asm.mov(R2, 0)
        for way in range(1, FRESH_WAYS):
            asm.load("dw", R1, FRESH_BUCKET, way * FRESH_SLOT.size)
            asm.alu(R1, "-", R3)  # this start - the oldest so far
            asm.mov(R4, R1)
            asm.alu(R4, "s>>", 63)  # all ones if this one is older
            asm.alu(R1, "&", R4)
            asm.alu(R3, "+", R1)
            asm.mov(R1, way)
            asm.alu(R1, "^", R2)
            asm.alu(R1, "&", R4)
            asm.alu(R2, "^", R1)

    def _delete_attempt(self, matched: Reg) -> None:
        """The attempt with `matched` frames ends: an advanced one is deleted from its map; a
        fresh one was checked out of its table already."""
        asm = self.asm
        fresh, done = asm.label(), asm.label()
        asm.jmp(matched, "==", 1, fresh)
        self._delete(self.maps.advanced)
        self.program.increment(Counter.ADVANCED_DELETED)
        asm.goto(done)
        asm.place(fresh)
        self.program.increment(Counter.FRESH_DELETED)
        asm.place(done)

    def _delete(self, map_fd: int) -> None:
        self.program.map_arguments(map_fd, _KEY)
        self.asm.call(Helper.MAP_DELETE_ELEM)

    def _update(self, map_fd: int) -> None:
        asm = self.asm
        self.program.map_arguments(map_fd, _KEY)
        asm.mov(R3, FP)
        asm.alu(R3, "+", _VALUE)
        asm.mov(R4, 0)  # BPF_ANY
        asm.call(Helper.MAP_UPDATE_ELEM)

    def _fire(self) -> None:
        """Tell user space: the record is the attempt key (family, number, source) and the
        interface the completing frame came in on."""
        asm = self.asm
        for offset in range(0, ATTEMPT_KEY.size, 8):
            asm.load("dw", R1, FP, _KEY + offset)
            asm.store("dw", FP, _RECORD + offset, R1)
        asm.load("w", R1, PACKET, SKB_IFINDEX)
        asm.store("w", FP, _RECORD + ATTEMPT_KEY.size, R1)
        asm.store("w", FP, _RECORD + ATTEMPT_KEY.size + 4, 0)
        asm.ld_map_fd(R1, self.maps.ring)
        asm.mov(R2, FP)
        asm.alu(R2, "+", _RECORD)
        asm.mov(R3, RECORD_SIZE)
        asm.mov(R4, 0)
        asm.call(Helper.RINGBUF_OUTPUT)
        sent = asm.label()
        asm.jmp(R0, "==", 0, sent)
        self.program.increment(Counter.RING_FULL)
        asm.place(sent)
        self.program.increment(Counter.COMPLETED)
