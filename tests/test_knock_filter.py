"""The kernel packet filter: decisions (in a cBPF interpreter and in the kernel), layout, limits."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.config import conf
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_EOL, IPOption_NOP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

import bpfvm
from netns import SERVER_V4, SERVER_V6, Pair, is_root, veth_pair
from tportknockd.bpf import classic
from tportknockd.capture import knock_filter
from tportknockd.model import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG, Frame

ROOT = Path(__file__).resolve().parent.parent
TCP_, UDP_ = 6, 17
SOURCE_V4 = "198.18.0.7"
SOURCE_V6 = "2001:db8:ffff::7"
# Every Ether() gets both addresses: left out, scapy would resolve the destination by sending
# ARP or neighbour solicitations from this (the root) namespace.
SERVER_MAC = "02:00:5e:10:00:01"
CLIENT_MAC = "02:00:5e:10:00:02"


@pytest.fixture(autouse=True)
def _no_neighbour_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("scapy tried to resolve a MAC address (it would send packets)")

    monkeypatch.setattr(conf.neighbor, "resolve", refuse)


def eth(**fields: Any) -> ScapyPacket:
    return Ether(dst=SERVER_MAC, src=CLIENT_MAC, **fields)


def accepts(program: Sequence[classic.Insn], packet: ScapyPacket | bytes) -> bool:
    verdict = bpfvm.run(program, bytes(packet))
    assert verdict in (0, knock_filter.SNAPLEN)
    return verdict == knock_filter.SNAPLEN


def compiled(frames: Iterable[Frame], local: Iterable[str]) -> list[classic.Insn]:
    program = knock_filter.compile_filter(frames, local)
    bpfvm.check(program)
    return program


def v4(dst: str = SERVER_V4, **ip: Any) -> ScapyPacket:
    return eth() / IP(src=SOURCE_V4, dst=dst, **ip)


def v6(dst: str = SERVER_V6, **ip: Any) -> ScapyPacket:
    return eth() / IPv6(src=SOURCE_V6, dst=dst, **ip)


# -- a small config, decision by decision ----------------------------------------------------

FRAMES = [
    Frame(TCP_, 7000, SYN),
    Frame(TCP_, 7001, None),
    Frame(TCP_, 7002, URG | PSH),
    Frame(TCP_, 7002, FIN),
    Frame(UDP_, 7003, None),
]
LOCAL = [SERVER_V4, SERVER_V6]

DECISIONS: list[tuple[str, ScapyPacket, bool]] = [
    ("v4 tcp SYN", v4() / TCP(dport=7000, flags=SYN), True),
    ("v4 tcp SYN+ACK", v4() / TCP(dport=7000, flags=SYN | ACK), False),
    ("v4 tcp SYN+ECE", v4() / TCP(dport=7000, flags=SYN | ECE), False),
    ("v4 tcp any flags, none", v4() / TCP(dport=7001, flags=0), True),
    ("v4 tcp any flags, all", v4() / TCP(dport=7001, flags=0xFF), True),
    ("v4 tcp URG+PSH", v4() / TCP(dport=7002, flags=URG | PSH), True),
    ("v4 tcp URG+PSH+ECE", v4() / TCP(dport=7002, flags=URG | PSH | ECE), False),
    ("v4 tcp URG+PSH+CWR", v4() / TCP(dport=7002, flags=URG | PSH | CWR), False),
    ("v4 tcp URG+PSH+FIN", v4() / TCP(dport=7002, flags=URG | PSH | FIN), False),
    ("v4 tcp FIN, second flag set of the port", v4() / TCP(dport=7002, flags=FIN), True),
    ("v4 tcp RST", v4() / TCP(dport=7002, flags=RST), False),
    ("v4 udp", v4() / UDP(dport=7003), True),
    ("v4 udp to a tcp port", v4() / UDP(dport=7001), False),
    ("v4 tcp to a udp port", v4() / TCP(dport=7003, flags=0), False),
    ("v4 tcp wrong port", v4() / TCP(dport=7004, flags=SYN), False),
    ("v4 tcp port of the source", v4() / TCP(sport=7001, dport=9), False),
    ("v4 wrong dst", v4("198.51.100.2") / TCP(dport=7001), False),
    ("v4 from a local address", v4(SOURCE_V4) / TCP(dport=7001), False),
    ("v4 icmp", v4() / ICMP(), False),
    ("v4 first fragment", v4(flags="MF") / TCP(dport=7000, flags=SYN), True),
    ("v4 don't-fragment", v4(flags="DF") / TCP(dport=7000, flags=SYN), True),
    ("v4 later fragment", v4(frag=3) / TCP(dport=7001), False),
    ("v4 later, not last fragment", v4(frag=3, flags="MF") / TCP(dport=7001), False),
    (
        "v4 options",
        v4(options=[IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_EOL()])
        / TCP(dport=7000, flags=SYN),
        True,
    ),
    (
        "v4 options, wrong flags",
        v4(options=[IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_EOL()])
        / TCP(dport=7000, flags=SYN | ACK),
        False,
    ),
    ("v4 vlan", eth() / Dot1Q(vlan=5) / IP(dst=SERVER_V4) / TCP(dport=7000, flags=SYN), True),
    ("v4 vlan, wrong port", eth() / Dot1Q(vlan=5) / IP(dst=SERVER_V4) / TCP(dport=1), False),
    ("v6 tcp SYN", v6() / TCP(dport=7000, flags=SYN), True),
    ("v6 tcp SYN+CWR", v6() / TCP(dport=7000, flags=SYN | CWR), False),
    ("v6 tcp any flags", v6() / TCP(dport=7001, flags=FIN | ACK), True),
    ("v6 udp", v6() / UDP(dport=7003), True),
    ("v6 udp to a tcp port", v6() / UDP(dport=7000), False),
    ("v6 wrong dst", v6("2001:db8::2") / TCP(dport=7001), False),
    ("v6 dst differs in the last bit", v6("2001:db8::") / TCP(dport=7001), False),
    ("v6 dst differs in the first word", v6("2001:db9::1") / TCP(dport=7001), False),
    ("v6 icmp", v6() / ICMPv6EchoRequest(), False),
    ("v6 vlan", eth() / Dot1Q(vlan=7) / IPv6(dst=SERVER_V6) / UDP(dport=7003), True),
    ("v6 hop-by-hop", v6() / IPv6ExtHdrHopByHop() / TCP(dport=1), True),
    ("v6 destination options", v6() / IPv6ExtHdrDestOpt() / UDP(dport=1), True),
    ("v6 routing", v6() / IPv6ExtHdrRouting() / TCP(dport=1), True),
    ("v6 fragment", v6() / IPv6ExtHdrFragment(offset=9) / Raw(b"x" * 16), True),
    ("v6 authentication header", v6(nh=51) / Raw(b"\x06\x04" + b"\0" * 30), True),
    ("v6 esp", v6(nh=50) / Raw(b"\0" * 32), False),
    ("v6 extension header, wrong dst", v6("2001:db8::2") / IPv6ExtHdrHopByHop() / TCP(), False),
    ("arp", eth() / ARP(pdst=SERVER_V4), False),
    ("v4 in an unknown ethertype", eth(type=0x88B5) / IP(dst=SERVER_V4) / TCP(dport=7001), False),
]


@pytest.mark.parametrize(
    ("packet", "expected"),
    [pytest.param(packet, expected, id=name) for name, packet, expected in DECISIONS],
)
def test_small_config_decisions(packet: ScapyPacket, expected: bool) -> None:
    assert accepts(compiled(FRAMES, LOCAL), packet) is expected


def test_truncated_packet_is_dropped() -> None:
    program = compiled(FRAMES, LOCAL)
    whole = bytes(v4() / TCP(dport=7000, flags=SYN))
    assert accepts(program, whole)
    assert not accepts(program, whole[: 14 + 20 + 13])  # the flag byte is missing
    assert not accepts(program, whole[:20])


def test_no_local_address_drops_everything() -> None:
    assert compiled(FRAMES, []) == knock_filter.drop_all()
    program = compiled(FRAMES, [SERVER_V4])
    assert not accepts(program, v6() / TCP(dport=7001))  # no IPv6 address, so no IPv6 at all


def test_no_frames_drops_everything() -> None:
    assert compiled([], LOCAL) == knock_filter.drop_all()


def test_drop_all_drops() -> None:
    assert bpfvm.run(knock_filter.drop_all(), bytes(v4() / TCP(dport=7001))) == 0


def test_address_forms() -> None:
    program = compiled([Frame(UDP_, 53, None)], ["fe80::1%knk0", "2001:DB8::1", "2001:db8::1"])
    assert accepts(program, v6("fe80::1") / UDP(dport=53))
    assert accepts(program, v6("2001:db8::1") / UDP(dport=53))
    with pytest.raises(ValueError):
        knock_filter.compile_filter([Frame(UDP_, 53, None)], ["not-an-address"])


def test_untagged_ipv4_path_is_short() -> None:
    """The common case stays close to what tcpdump would compile for it."""
    program = compiled([Frame(TCP_, 7000, SYN)], [SERVER_V4])
    steps: list[int] = []
    packet = bytes(v4() / TCP(dport=7000, flags=SYN))
    assert bpfvm.run(program, packet, steps) == knock_filter.SNAPLEN
    assert len(steps) <= 15


# -- property: the filter agrees with a straight reading of the frames -----------------------

LOCAL_POOL = [
    "198.51.100.1",
    "198.51.100.7",
    "203.0.113.9",
    "2001:db8::1",
    "2001:db8::1:0:0:1",
    "2001:db8:5::1",
    "::ffff:198.51.100.1",
]
OTHER_POOL = [
    "198.51.100.2",
    "203.0.113.1",
    "2001:db8::2",
    "2001:db8:5::2",
    "2001:db8:1::1",
    "::ffff:198.51.100.2",
]
PORT_POOL = [0, 22, 1000, 1001, 7000, 65535]
# Flag bytes near each other (ECE/CWR variations of the same classic flags) and a few others.
FLAG_POOL = [0, FIN, SYN, SYN | ECE, SYN | CWR, URG | PSH, URG | PSH | ECE, 0xFF, 0x3F, 0xC0]
EXTENSIONS = ["hop-by-hop", "destination", "routing", "fragment", "auth", "esp"]


@dataclass(frozen=True)
class Shape:
    """What a generated packet is, from which the expected verdict follows."""

    ethertype: int  # 0x0800, 0x86dd, or something else (ARP)
    vlan: bool
    dst: str
    protocol: int
    port: int
    flags: int
    later_fragment: bool = False  # IPv4 only
    extension: str | None = None  # IPv6 only


def matches(frame: Frame, protocol: int, port: int, flags: int) -> bool:
    """Whether a packet with these fields is this frame (UDP packets carry flags 0)."""
    return (protocol, port) == (frame.protocol, frame.port) and flags in frame.flag_bytes()


def build(shape: Shape) -> bytes:
    head = eth() / Dot1Q(vlan=42) if shape.vlan else eth()
    if shape.ethertype not in (0x0800, 0x86DD):
        return bytes(head / ARP(pdst=shape.dst, psrc=SOURCE_V4, hwsrc=CLIENT_MAC))
    if shape.protocol == TCP_:
        upper: ScapyPacket = TCP(dport=shape.port, flags=shape.flags)
    elif shape.protocol == UDP_:
        upper = UDP(dport=shape.port)
    else:
        upper = ICMP() if shape.ethertype == 0x0800 else ICMPv6EchoRequest()
    if shape.ethertype == 0x0800:
        return bytes(head / IP(src=SOURCE_V4, dst=shape.dst, frag=shape.later_fragment) / upper)
    network = IPv6(src=SOURCE_V6, dst=shape.dst)
    return bytes(head / _with_extension(network, shape.extension, upper))


def _with_extension(network: ScapyPacket, extension: str | None, upper: ScapyPacket) -> ScapyPacket:
    if extension is None:
        return network / upper
    if extension == "auth":  # next header, length 4 (24 bytes), reserved, SPI, sequence, ICV
        network.nh = 51
        return network / Raw(bytes([6, 4]) + bytes(22)) / upper
    if extension == "esp":
        network.nh = 50
        return network / Raw(bytes(32))
    layer = {
        "hop-by-hop": IPv6ExtHdrHopByHop,
        "destination": IPv6ExtHdrDestOpt,
        "routing": IPv6ExtHdrRouting,
        "fragment": IPv6ExtHdrFragment,
    }[extension]
    return network / layer() / upper


def expected(shape: Shape, frames: Sequence[Frame], local: Sequence[str]) -> bool:
    if shape.ethertype not in (0x0800, 0x86DD) or not frames:
        return False
    if ipaddress.ip_address(shape.dst) not in {ipaddress.ip_address(a) for a in local}:
        return False
    if shape.later_fragment:
        return False
    if shape.extension is not None:
        return shape.extension != "esp"  # user space walks the chain
    flags = shape.flags if shape.protocol == TCP_ else 0
    return any(matches(frame, shape.protocol, shape.port, flags) for frame in frames)


@st.composite
def frames_strategy(draw: st.DrawFn) -> Frame:
    protocol = draw(st.sampled_from([TCP_, UDP_]))
    port = draw(st.sampled_from(PORT_POOL))
    if protocol == UDP_:
        return Frame(UDP_, port, None)
    return Frame(TCP_, port, draw(st.none() | st.sampled_from(FLAG_POOL) | st.integers(0, 255)))


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    ethertype = draw(st.sampled_from([0x0800, 0x86DD, 0x0806]))
    v6 = ethertype == 0x86DD
    pool = [a for a in LOCAL_POOL + OTHER_POOL if (":" in a) == v6]
    protocol = draw(st.sampled_from([TCP_, UDP_, TCP_, UDP_, 0]))
    return Shape(
        ethertype=ethertype,
        vlan=draw(st.booleans()),
        dst=draw(st.sampled_from(pool)),
        protocol=protocol,
        port=draw(st.sampled_from(PORT_POOL) | st.integers(0, 65535)),
        flags=draw(st.sampled_from(FLAG_POOL) | st.integers(0, 255)),
        later_fragment=not v6 and draw(st.integers(0, 5)) == 0,
        extension=draw(st.none() | st.sampled_from(EXTENSIONS)) if v6 and protocol else None,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(frames_strategy(), max_size=8),
    local=st.lists(st.sampled_from(LOCAL_POOL), unique=True, max_size=4),
    packets=st.lists(shapes(), min_size=1, max_size=12),
)
def test_filter_agrees_with_the_frames(
    frames: list[Frame], local: list[str], packets: list[Shape]
) -> None:
    program = compiled(frames, local)
    for shape in packets:
        assert accepts(program, build(shape)) is expected(shape, frames, local), shape


# -- big configs: long jumps, trampolines, limits --------------------------------------------


def many_v4(count: int) -> list[str]:
    """Up to 512 addresses: 198.51.100.0/24, then 203.0.113.0/24."""
    hosts = [*ipaddress.ip_network("198.51.100.0/24"), *ipaddress.ip_network("203.0.113.0/24")]
    assert count <= len(hosts)
    return [str(address) for address in hosts[:count]]


def many_v6(count: int) -> list[str]:
    # Varied in every word, so the trie branches at each level.
    return [f"2001:db8:{i % 7:x}:{i % 5:x}::{i % 3:x}:{i:x}" for i in range(count)]


def has_far_jump_fixes(program: Sequence[classic.Insn]) -> bool:
    """A `ja`, or a `ret` right behind a conditional jump, can only come from the assembler."""
    if any(code == classic.BPF_JMP | classic.BPF_JA for code, _, _, _ in program):
        return True
    return any(
        program[i][0] & 0x07 == classic.BPF_JMP and program[i + 1][0] & 0x07 == classic.BPF_RET
        for i in range(len(program) - 1)
    )


def test_many_addresses_and_ports() -> None:
    v4_local, v6_local = many_v4(300), many_v6(120)
    frames = [Frame(TCP_, 1000 + i, [SYN, FIN | ACK, URG | PSH][i % 3]) for i in range(300)]
    frames += [Frame(TCP_, 2000 + i, None) for i in range(100)]
    frames += [Frame(UDP_, 3000 + i, None) for i in range(300)]
    program = compiled(frames, v4_local + v6_local)
    assert 600 < len(program) <= classic.BPF_MAXINSNS
    assert any(code == classic.BPF_JMP | classic.BPF_JA for code, _, _, _ in program)
    for dst in (v4_local[0], v4_local[-1], v6_local[0], v6_local[-1], v6_local[77]):
        ip = IP(src=SOURCE_V4, dst=dst) if ":" not in dst else IPv6(src=SOURCE_V6, dst=dst)
        for frame in (frames[0], frames[299], frames[300], frames[399], frames[400], frames[-1]):
            upper = (
                TCP(dport=frame.port, flags=frame.flags or 0)
                if frame.protocol == TCP_
                else (UDP(dport=frame.port))
            )
            assert accepts(program, eth() / ip / upper), (dst, frame)
            if frame.flags is not None:
                assert not accepts(program, eth() / ip / TCP(dport=frame.port, flags=0xFF))
        assert not accepts(program, eth() / ip / TCP(dport=2500, flags=SYN))
    assert not accepts(program, v4("203.0.113.200") / UDP(dport=3000))
    assert not accepts(program, v6("2001:db8:1:1::1:2") / UDP(dport=3000))


def test_every_flag_byte_of_one_port() -> None:
    """256 comparisons behind one port: the last flag comparisons are far from any ret."""
    frames = [Frame(TCP_, 1, flags) for flags in range(256)] + [Frame(UDP_, 2, None)]
    program = compiled(frames, [SERVER_V4])
    assert has_far_jump_fixes(program)
    for flags in (0, 1, 127, 254, 255):
        assert accepts(program, v4() / TCP(dport=1, flags=flags))
    assert not accepts(program, v4() / TCP(dport=2, flags=0))
    assert accepts(program, v4() / UDP(dport=2))


@settings(max_examples=40, deadline=None)
@given(
    ports=st.lists(st.integers(1, 65535), min_size=1, max_size=700, unique=True),
    flag_sets=st.lists(st.none() | st.sets(st.integers(0, 255), max_size=5), min_size=1),
    v4_count=st.integers(0, 400),
    v6_count=st.integers(0, 120),
)
def test_big_programs_are_valid_and_exact(
    ports: list[int], flag_sets: list[set[int] | None], v4_count: int, v6_count: int
) -> None:
    frames = []
    for index, port in enumerate(ports):
        flags = flag_sets[index % len(flag_sets)]
        if flags is None:
            frames.append(Frame(TCP_, port, None))
        frames += [Frame(TCP_, port, value) for value in sorted(flags or ())]
    local = many_v4(v4_count) + many_v6(v6_count)
    try:
        program = compiled(frames, local)
    except ValueError as error:
        assert "4096" in str(error)
        return
    if not local or not frames:
        assert program == knock_filter.drop_all()
        return
    dst = local[-1]
    ip = IP(src=SOURCE_V4, dst=dst) if ":" not in dst else IPv6(src=SOURCE_V6, dst=dst)
    for frame in (frames[0], frames[len(frames) // 2], frames[-1]):
        packet = bytes(eth() / ip / TCP(dport=frame.port, flags=frame.flags or 0))
        assert accepts(program, packet)
        for probe in (0x00, 0x80, 0xFF):
            wanted = any(matches(f, TCP_, frame.port, probe) for f in frames)
            assert accepts(program, eth() / ip / TCP(dport=frame.port, flags=probe)) is wanted


def test_too_big_a_config_is_refused() -> None:
    frames = [Frame(UDP_, port, None) for port in range(1, 5000)]
    with pytest.raises(ValueError, match="4096"):
        knock_filter.compile_filter(frames, [SERVER_V4])


# -- the kernel accepts what is compiled (no packets: a UDP socket that is never bound) --------


def test_kernel_accepts_compiled_programs() -> None:
    programs = [
        knock_filter.drop_all(),
        knock_filter.compile_filter(FRAMES, LOCAL),
        knock_filter.compile_filter(
            [Frame(TCP_, port, flags) for port in range(1, 200) for flags in (SYN, FIN, 0x28)]
            + [Frame(UDP_, port, None) for port in range(1, 400)],
            many_v4(300) + many_v6(100),
        ),
        knock_filter.compile_filter([Frame(TCP_, 1, flags) for flags in range(256)], [SERVER_V6]),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for program in programs:
            classic.attach(sock, program)


@pytest.mark.parametrize(
    "program",
    [
        [(0x28, 0, 0, 12)],  # does not end in ret
        [(0x15, 5, 0, 0x800), (0x06, 0, 0, 0)],  # jumps out of the program
        [(0x60, 0, 0, 0), (0x06, 0, 0, 0)],  # reads scratch memory never written
        [(0xFFFF, 0, 0, 0), (0x06, 0, 0, 0)],  # no such instruction
    ],
)
def test_kernel_rejects_invalid_programs(program: list[classic.Insn]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(OSError):
        classic.attach(sock, program)
    with pytest.raises(bpfvm.BadProgram):  # and the interpreter's checker agrees
        bpfvm.check(program)


def test_attach_refuses_empty_and_oversized_programs() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(ValueError):
            classic.attach(sock, [])
        with pytest.raises(ValueError):
            classic.attach(sock, knock_filter.drop_all() * (classic.BPF_MAXINSNS + 1))


# -- in the kernel: what a bound AF_PACKET socket with the filter receives ---------------------

# Runs in the server namespace: attach the filter before binding (so nothing arrives unfiltered),
# say READY, wait until the test has sent everything, then print every queued frame in hex.
RECEIVER = """
import json, socket, sys
from tportknockd.bpf import classic
from tportknockd.capture import knock_filter
from tportknockd.model import Frame
spec = json.loads(sys.argv[1])
if spec["frames"] is None:
    program = knock_filter.drop_all()
else:
    program = knock_filter.compile_filter([Frame(*f) for f in spec["frames"]], spec["local"])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
classic.attach(sock, program)
sock.bind((spec["ifname"], 0x0003))
print("READY", flush=True)
sys.stdin.readline()
sock.setblocking(False)
while True:
    try:
        print(sock.recv(65535).hex(), flush=True)
    except BlockingIOError:
        break
"""

# Runs in the client namespace: send each hex line of stdin as one raw Ethernet frame.
SENDER = """
import socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
sock.bind((sys.argv[1], 0))
for line in sys.stdin:
    sock.send(bytes.fromhex(line))
"""

KERNEL_FRAMES = [
    Frame(TCP_, 7000, SYN),
    Frame(TCP_, 7001, None),
    Frame(TCP_, 7002, URG | PSH),
    Frame(UDP_, 7003, None),
]


def kernel_cases(server_mac: str) -> list[tuple[bool, ScapyPacket]]:
    """(should arrive, frame) pairs; each frame ends in a unique marker."""

    def l2(**fields: Any) -> ScapyPacket:
        return Ether(dst=server_mac, src=CLIENT_MAC, **fields)

    def ip4(dst: str = SERVER_V4, **fields: Any) -> ScapyPacket:
        return l2() / IP(src="198.51.100.2", dst=dst, **fields)

    def ip6(dst: str = SERVER_V6, **fields: Any) -> ScapyPacket:
        return l2() / IPv6(src="2001:db8::2", dst=dst, **fields)

    def qinq() -> ScapyPacket:
        return l2(type=0x88A8) / Dot1AD(vlan=100) / Dot1Q(vlan=5)

    cases: list[tuple[bool, ScapyPacket]] = [
        (True, ip4() / TCP(dport=7000, flags=SYN)),
        (True, ip4() / TCP(dport=7001, flags=FIN | ACK)),
        (True, ip4() / TCP(dport=7002, flags=URG | PSH)),
        (True, ip4() / UDP(dport=7003)),
        (True, ip4(flags="MF") / TCP(dport=7000, flags=SYN)),
        (True, ip6() / TCP(dport=7000, flags=SYN)),
        (True, ip6() / UDP(dport=7003)),
        (True, ip6() / IPv6ExtHdrDestOpt() / TCP(dport=9, flags=SYN)),
        (True, l2() / Dot1Q(vlan=9) / IP(src="198.51.100.2", dst=SERVER_V4) / UDP(dport=7003)),
        # The kernel takes the outer tag of a QinQ frame into metadata; the inner one stays.
        (True, qinq() / IP(src="198.51.100.2", dst=SERVER_V4) / TCP(dport=7000, flags=SYN)),
        (False, qinq() / IP(src="198.51.100.2", dst=SERVER_V4) / TCP(dport=7000, flags=FIN)),
        (True, qinq() / IPv6(src="2001:db8::2", dst=SERVER_V6) / UDP(dport=7003)),
        (False, ip4() / TCP(dport=7002, flags=URG | PSH | ECE)),
        (False, ip4() / TCP(dport=7000, flags=SYN | ACK)),
        (False, ip4() / TCP(dport=7003, flags=SYN)),
        (False, ip4() / UDP(dport=7000)),
        (False, ip4("198.51.100.3") / TCP(dport=7000, flags=SYN)),
        (False, ip4(frag=2, proto=6) / Raw(bytes(TCP(dport=7001)))),
        (False, ip4() / ICMP()),
        (False, ip6("2001:db8::3") / TCP(dport=7000, flags=SYN)),
        (False, ip6("2001:db8::3") / IPv6ExtHdrDestOpt() / TCP(dport=7000, flags=SYN)),
        (False, ip6() / TCP(dport=7000, flags=SYN | CWR)),
        (False, ip6() / ICMPv6EchoRequest()),
        (False, l2() / ARP(psrc="198.51.100.2", pdst=SERVER_V4, hwsrc=CLIENT_MAC)),
    ]
    return [(wanted, frame / Raw(marker(i))) for i, (wanted, frame) in enumerate(cases)]


def as_the_filter_sees_it(frame: bytes) -> bytes:
    """On receive the kernel moves the first VLAN tag (802.1Q or 802.1ad) into packet metadata
    before packet sockets see the frame."""
    if frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
        return frame[:12] + frame[16:]
    return frame


def marker(index: int) -> bytes:
    return b"tpk-filter-test-%03d" % index


def interface_mac(ns: str, ifname: str) -> str:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", "dev", ifname],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return str(json.loads(out)[0]["address"])


def received_through_kernel(
    pair: Pair, frames: list[Frame] | None, frames_to_send: list[bytes]
) -> list[bytes]:
    spec = {
        "frames": None if frames is None else [[f.protocol, f.port, f.flags] for f in frames],
        "local": [SERVER_V4, SERVER_V6],
        "ifname": pair.server_if,
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    receiver = pair.popen(
        pair.server,
        [sys.executable, "-c", RECEIVER, json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None and receiver.stdin is not None
        assert receiver.stdout.readline().strip() == "READY"
        pair.run(
            pair.client,
            [sys.executable, "-c", SENDER, pair.client_if],
            input="".join(frame.hex() + "\n" for frame in frames_to_send),
            check=True, timeout=30,
        )  # fmt: skip
        time.sleep(0.3)  # veth delivery is immediate, but leave the softirq a moment
        out, _ = receiver.communicate("done\n", timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert receiver.returncode == 0
    return [bytes.fromhex(line) for line in out.split()]


def needs_root() -> None:
    if not is_root():
        if os.environ.get("CI"):
            pytest.fail("the kernel filter test needs root (CI is set)")
        pytest.skip("needs root for network namespaces")


def markers_in(received: list[bytes], count: int) -> list[int]:
    found = []
    for frame in received:
        hits = [i for i in range(count) if marker(i) in frame]
        assert len(hits) == 1, f"unexpected frame got through: {frame.hex()}"
        found += hits
    return sorted(found)


@pytest.mark.e2e
def test_kernel_passes_exactly_the_matching_frames() -> None:
    needs_root()
    with veth_pair() as pair:
        cases = kernel_cases(interface_mac(pair.server, pair.server_if))
        # The filter the kernel runs must agree with the interpreter on every frame.
        program = knock_filter.compile_filter(KERNEL_FRAMES, [SERVER_V4, SERVER_V6])
        for wanted, frame in cases:
            assert accepts(program, as_the_filter_sees_it(bytes(frame))) is wanted, frame.summary()
        received = received_through_kernel(pair, KERNEL_FRAMES, [bytes(f) for _, f in cases])
        expected_markers = [i for i, (wanted, _) in enumerate(cases) if wanted]
        assert markers_in(received, len(cases)) == expected_markers
        assert all(len(frame) <= knock_filter.SNAPLEN for frame in received)


@pytest.mark.e2e
def test_kernel_drop_all_delivers_nothing() -> None:
    needs_root()
    with veth_pair() as pair:
        cases = kernel_cases(interface_mac(pair.server, pair.server_if))
        assert received_through_kernel(pair, None, [bytes(f) for _, f in cases]) == []


@pytest.mark.e2e
def test_kernel_snap_length_cuts_long_frames() -> None:
    needs_root()
    with veth_pair() as pair:
        mac = interface_mac(pair.server, pair.server_if)
        long_frame = (
            Ether(dst=mac, src=CLIENT_MAC)
            / IP(src="198.51.100.2", dst=SERVER_V4)
            / UDP(dport=7003)
            / Raw(marker(0) + bytes(1000))
        )
        received = received_through_kernel(pair, KERNEL_FRAMES, [bytes(long_frame)])
        assert received == [bytes(long_frame)[: knock_filter.SNAPLEN]]


# -- raw IP links (tun, WireGuard): packets start at the IP header ---------------------------

RAW_IP_DECISIONS = [
    (name, packet, verdict)
    for name, packet, verdict in DECISIONS
    if packet.haslayer(Ether) and not packet.haslayer(Dot1Q) and packet[Ether].type in
    (0x0800, 0x86DD)
]


@pytest.mark.parametrize(
    ("packet", "expected"),
    [pytest.param(packet, expected, id=name) for name, packet, expected in RAW_IP_DECISIONS],
)
def test_raw_ip_decisions_are_the_ethernet_ones(packet: ScapyPacket, expected: bool) -> None:
    program = knock_filter.compile_filter(FRAMES, LOCAL, raw_ip=True)
    bpfvm.check(program)
    assert accepts(program, bytes(packet)[14:]) is expected


def test_raw_ip_drops_what_is_no_ip() -> None:
    program = knock_filter.compile_filter(FRAMES, LOCAL, raw_ip=True)
    ipv4_udp = bytes(IP(src=SOURCE_V4, dst=SERVER_V4) / UDP(dport=7003))
    assert accepts(program, ipv4_udp)
    assert not accepts(program, bytes([0x55]) + ipv4_udp[1:])  # version 5
    assert not accepts(program, bytes(v4() / UDP(dport=7003)))  # an Ethernet frame


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(frames_strategy(), max_size=8),
    local=st.lists(st.sampled_from(LOCAL_POOL), unique=True, max_size=4),
    packets=st.lists(
        shapes().filter(lambda s: s.ethertype != 0x0806 and not s.vlan), min_size=1, max_size=12
    ),
)
def test_raw_ip_filter_agrees_with_the_frames(
    frames: list[Frame], local: list[str], packets: list[Shape]
) -> None:
    program = knock_filter.compile_filter(frames, local, raw_ip=True)
    bpfvm.check(program)
    for shape in packets:
        assert accepts(program, build(shape)[14:]) is expected(shape, frames, local), shape


def test_kernel_accepts_raw_ip_programs() -> None:
    programs = [
        knock_filter.compile_filter(FRAMES, LOCAL, raw_ip=True),
        knock_filter.compile_filter([Frame(UDP_, port, None) for port in range(1, 400)],
                           many_v4(300) + many_v6(100), raw_ip=True),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for program in programs:
            classic.attach(sock, program)
