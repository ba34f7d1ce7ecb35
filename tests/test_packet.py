"""parse_ethernet / parse_ip, cross-checked against scapy's dissection and fuzzed."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

from addresses import v4_addresses, v6_addresses
from tportknockd.capture.packet import MAX_IPV6_EXT_HEADERS, parse_ethernet, parse_ip
from tportknockd.model import PROTO_TCP, PROTO_UDP, Packet, address_bytes

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])



ports = st.integers(0, 65535)
flag_bytes = st.integers(0, 255)
payloads = st.binary(max_size=40)


@st.composite
def l4_layers(draw: st.DrawFn) -> ScapyPacket:
    sport, dport = draw(ports), draw(ports)
    if draw(st.booleans()):
        return TCP(sport=sport, dport=dport, flags=draw(flag_bytes),
                   seq=draw(st.integers(0, 2**32 - 1))) / Raw(draw(payloads))
    return UDP(sport=sport, dport=dport) / Raw(draw(payloads))


@st.composite
def ipv4_options(draw: st.DrawFn) -> list[ScapyPacket]:
    options: list[ScapyPacket] = []
    for _ in range(draw(st.integers(0, 4))):
        options += [IPOption_Router_Alert()] if draw(st.booleans()) else [IPOption_NOP()] * 4
    return options


@st.composite
def ipv4_packets(draw: st.DrawFn) -> ScapyPacket:
    first_fragment = draw(st.sampled_from(["", "MF"]))
    addresses = v4_addresses(spoofed=True)
    return IP(src=draw(addresses), dst=draw(addresses), flags=first_fragment,
              options=draw(ipv4_options())) / draw(l4_layers())


def ah_header() -> ScapyPacket:
    # AH length field counts 4-octet units minus 2; 12 + 12 bytes of ICV = 24 bytes, so 4.
    return AH(icv=b"\x00" * 12, payloadlen=4)


EXTENSION_HEADERS = {
    "hop": IPv6ExtHdrHopByHop,
    "rout": lambda: IPv6ExtHdrRouting(addresses=["2001:db8::99"]),
    "frag": lambda: IPv6ExtHdrFragment(offset=0, m=1),
    "dest": IPv6ExtHdrDestOpt,
    "ah": ah_header,
}


@st.composite
def ipv6_packets(draw: st.DrawFn) -> ScapyPacket:
    names = draw(st.lists(st.sampled_from(sorted(EXTENSION_HEADERS)), max_size=6))
    pkt = IPv6(src=draw(v6_addresses()), dst=draw(v6_addresses()))
    for name in names:
        pkt = pkt / EXTENSION_HEADERS[name]()
    return pkt / draw(l4_layers())


@st.composite
def ethernet_frames(draw: st.DrawFn) -> ScapyPacket:
    frame = Ether(**MACS)
    if draw(st.booleans()):
        frame = frame / Dot1Q(vlan=draw(st.integers(0, 4095)))
    ip_layer = draw(ipv4_packets()) if draw(st.booleans()) else draw(ipv6_packets())
    return frame / ip_layer


def _fixed_ah(pkt: ScapyPacket) -> ScapyPacket:
    """scapy does not fill AH's next-header field; set it from the layer that follows."""
    layer = pkt.getlayer(AH)
    while layer is not None:
        layer.nh = {IPv6ExtHdrHopByHop: 0, IPv6ExtHdrRouting: 43, IPv6ExtHdrFragment: 44,
                    IPv6ExtHdrDestOpt: 60, AH: 51, TCP: 6, UDP: 17}[type(layer.payload)]
        layer = layer.payload.getlayer(AH)
    return pkt


def expected(raw: bytes, built: ScapyPacket) -> Packet:
    """What scapy says the packet is.

    Addresses come from scapy's dissection of the bytes. scapy does not dissect past an AH
    header, so behind one the transport fields come from the layers we built.
    """
    dissected = Ether(raw)
    ip_layer = next(layer for layer in dissected.iterpayloads() if isinstance(layer, (IP, IPv6)))
    l4 = built if AH in built else dissected
    if TCP in l4:
        return packed(ip_layer.src, ip_layer.dst, PROTO_TCP, l4[TCP].dport, int(l4[TCP].flags))
    return packed(ip_layer.src, ip_layer.dst, PROTO_UDP, l4[UDP].dport, 0)


def packed(src: str, dst: str, protocol: int, port: int, flags: int) -> Packet:
    """The Packet the parser gives for these fields: addresses stay as the header has them."""
    return Packet(address_bytes(src), address_bytes(dst), protocol, port, flags)


def l4_min_end(raw: bytes, built: ScapyPacket) -> int:
    """Bytes needed before the parser can answer: up to the TCP flags or the UDP port."""
    l4 = built[TCP] if TCP in built else built[UDP]
    return len(raw) - len(bytes(l4)) + (14 if TCP in built else 4)


@FAST
@given(ethernet_frames())
def test_parse_ethernet_agrees_with_scapy(frame: ScapyPacket) -> None:
    frame = _fixed_ah(frame)
    raw = bytes(frame)
    want = expected(raw, frame)
    got = parse_ethernet(raw)
    assert got == want
    assert len(got.src) == len(got.dst) in (4, 16)


@FAST
@given(ethernet_frames(), st.data())
def test_truncation_gives_none_or_full_result(frame: ScapyPacket, data: st.DataObject) -> None:
    frame = _fixed_ah(frame)
    raw = bytes(frame)
    cut = data.draw(st.integers(0, len(raw)))
    got = parse_ethernet(raw[:cut])
    assert got == parse_ethernet(raw, 0, cut)
    assert got == (parse_ethernet(raw) if cut >= l4_min_end(raw, frame) else None)


@FAST
@given(ethernet_frames(), st.binary(max_size=64), st.binary(max_size=64))
def test_frame_inside_a_larger_buffer(frame: ScapyPacket, before: bytes, after: bytes) -> None:
    raw = bytes(_fixed_ah(frame))
    ring = memoryview(before + raw + after)
    assert parse_ethernet(ring, len(before), len(raw)) == parse_ethernet(raw)


@FAST
@given(st.one_of(ipv4_packets(), ipv6_packets()))
def test_parse_ip_matches_parse_ethernet(packet: ScapyPacket) -> None:
    raw = bytes(_fixed_ah(packet))
    ethertype = b"\x08\x00" if IP in packet else b"\x86\xdd"
    assert parse_ip(raw) == parse_ethernet(b"\x00" * 12 + ethertype + raw)
    assert parse_ip(raw) is not None


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200), st.integers(-5, 210), st.one_of(st.none(), st.integers(-5, 210)))
def test_arbitrary_bytes_never_raise(buf: bytes, offset: int, length: int | None) -> None:
    parse_ethernet(buf, offset, length)
    parse_ip(buf, offset, length)
    parse_ethernet(memoryview(buf), offset, length)
    parse_ip(memoryview(buf), offset, length)


@FAST
@given(ethernet_frames(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                   min_size=1, max_size=8))
def test_corrupted_frames_never_raise(frame: ScapyPacket, edits: list[tuple[int, int]]) -> None:
    raw = bytearray(bytes(_fixed_ah(frame)))
    for where, value in edits:
        raw[where % len(raw)] = value
    result = parse_ethernet(bytes(raw))
    assert result is None or isinstance(result, Packet)


# --- specific cases ---------------------------------------------------------------------

V4 = {"src": "198.51.100.2", "dst": "198.51.100.1"}
V6 = {"src": "2001:db8::2", "dst": "2001:db8::1"}


def eth(layer: ScapyPacket) -> bytes:
    return bytes(Ether(**MACS) / layer)


def test_ipv4_tcp_all_flags() -> None:
    got = parse_ethernet(eth(IP(**V4) / TCP(dport=123, flags=0xFF)))
    assert got == packed("198.51.100.2", "198.51.100.1", PROTO_TCP, 123, 0xFF)


def test_ipv4_udp_has_zero_flags() -> None:
    assert parse_ethernet(eth(IP(**V4) / UDP(dport=1234))) == packed(
        "198.51.100.2", "198.51.100.1", PROTO_UDP, 1234, 0)


def test_ipv4_first_fragment_with_more_fragments_is_parsed() -> None:
    got = parse_ethernet(eth(IP(**V4, flags="MF", frag=0) / TCP(dport=80, flags="S")))
    assert got is not None and got.port == 80


@pytest.mark.parametrize("frag", [1, 100, 0x1FFF])
def test_ipv4_non_first_fragment_is_ignored(frag: int) -> None:
    # Bytes that look like a TCP header follow, but they are the middle of some datagram.
    assert parse_ethernet(eth(IP(**V4, frag=frag, proto=6) / TCP(dport=80))) is None


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ipv4_bad_ihl(ihl: int) -> None:
    raw = bytearray(eth(IP(**V4) / TCP(dport=80)))
    raw[14] = 0x40 | ihl
    assert parse_ethernet(bytes(raw)) is None


def test_ipv4_total_length_shorter_than_header() -> None:
    assert parse_ethernet(eth(IP(**V4, len=19) / TCP(dport=80))) is None


def test_ipv4_total_length_cuts_the_tcp_header() -> None:
    # The bytes are in the buffer but past the datagram's end: padding, not TCP.
    assert parse_ethernet(eth(IP(**V4, len=20 + 13) / TCP(dport=80))) is None
    assert parse_ethernet(eth(IP(**V4, len=20 + 14) / TCP(dport=80))) is not None


def test_ethernet_padding_after_short_datagram() -> None:
    got = parse_ethernet(eth(IP(**V4) / UDP(dport=53)) + b"\x00" * 18)
    assert got is not None and got.port == 53


def test_ipv4_options_are_skipped() -> None:
    raw = eth(IP(**V4, options=[IPOption_Router_Alert()] * 3) / TCP(dport=7, flags="FA"))
    assert parse_ethernet(raw) == packed(V4["src"], V4["dst"], PROTO_TCP, 7, 0x11)


def test_version_must_match_ethertype() -> None:
    assert parse_ethernet(bytes(Ether(**MACS, type=0x86DD) / IP(**V4) / TCP())) is None
    assert parse_ethernet(bytes(Ether(**MACS, type=0x0800) / IPv6(**V6) / TCP())) is None


def test_other_protocols_and_ethertypes() -> None:
    assert parse_ethernet(eth(IP(**V4, proto=1) / Raw(b"\x08" * 20))) is None
    assert parse_ethernet(bytes(Ether(**MACS, type=0x0806) / Raw(b"\x00" * 28))) is None


def test_one_802_1q_tag_is_all_the_filters_pass() -> None:
    """The kernel takes a QinQ frame's outer tag into metadata; a second tag or an 802.1AD one
    left in the data is dropped by the classic filter and the kernel program alike."""
    knock = IP(**V4) / TCP(dport=1)
    assert parse_ethernet(bytes(Ether(**MACS) / Dot1Q() / knock))
    assert parse_ethernet(bytes(Ether(**MACS) / Dot1Q() / Dot1Q() / knock)) is None
    assert parse_ethernet(bytes(Ether(**MACS) / Dot1AD() / knock)) is None


def test_ipv6_non_first_fragment_is_ignored() -> None:
    raw = eth(IPv6(**V6) / IPv6ExtHdrFragment(offset=1, m=1) / TCP(dport=80))
    assert parse_ethernet(raw) is None


def test_ipv6_first_fragment_is_parsed() -> None:
    raw = eth(IPv6(**V6) / IPv6ExtHdrFragment(offset=0, m=1) / TCP(dport=80, flags="R"))
    assert parse_ethernet(raw) == packed(V6["src"], V6["dst"], PROTO_TCP, 80, 0x04)


def test_ipv6_esp_is_ignored() -> None:
    raw = eth(IPv6(**V6, nh=50) / Raw(b"\x00\x00\x00\x01" * 2) / TCP(dport=80))
    assert parse_ethernet(raw) is None


def test_ipv6_no_next_header() -> None:
    raw = eth(IPv6(**V6) / IPv6ExtHdrDestOpt(nh=59) / TCP(dport=80))
    assert parse_ethernet(raw) is None


def test_ipv6_unknown_extension_header() -> None:
    assert parse_ethernet(eth(IPv6(**V6, nh=253) / Raw(b"\x06\x00" + b"\x00" * 6))) is None


def dest_opts_chain(count: int) -> bytes:
    pkt = IPv6(**V6)
    for _ in range(count):
        pkt = pkt / IPv6ExtHdrDestOpt()
    return eth(pkt / TCP(dport=4242, flags="S"))


def test_ipv6_extension_header_bound() -> None:
    assert parse_ethernet(dest_opts_chain(MAX_IPV6_EXT_HEADERS)) is not None
    assert parse_ethernet(dest_opts_chain(MAX_IPV6_EXT_HEADERS + 1)) is None


def test_ipv6_header_loop_is_bounded() -> None:
    # Hop-by-hop headers that each name another hop-by-hop header, filling a jumbo buffer.
    chain = b"\x00\x00" + b"\x00" * 6
    raw = eth(IPv6(**V6, nh=0, plen=8 * 1000)) + chain * 1000
    assert parse_ethernet(raw) is None


def test_ipv6_payload_length_bounds_the_extension_walk() -> None:
    raw = bytearray(dest_opts_chain(1))
    struct.pack_into("!H", raw, 14 + 4, 8 + 13)  # TCP header one byte short of the flags
    assert parse_ethernet(bytes(raw)) is None


def test_ipv6_addresses_are_compressed() -> None:
    got = parse_ethernet(eth(IPv6(src="2001:0db8:0000:0000:0000:0000:0000:0002",
                                  dst="2001:db8:0:1::1") / UDP(dport=9)))
    assert got == packed("2001:db8::2", "2001:db8:0:1::1", PROTO_UDP, 9, 0)


def test_parse_ip_versions() -> None:
    assert parse_ip(bytes(IP(**V4) / UDP(dport=1))) == packed(*V4.values(), PROTO_UDP, 1, 0)
    assert parse_ip(bytes(IPv6(**V6) / UDP(dport=1))) == packed(*V6.values(), PROTO_UDP, 1, 0)
    assert parse_ip(b"\x50" + b"\x00" * 60) is None
    assert parse_ip(b"") is None


def test_offset_and_length_out_of_range() -> None:
    raw = eth(IP(**V4) / UDP(dport=1))
    assert parse_ethernet(raw, len(raw) + 10) is None
    assert parse_ethernet(raw, -3) is None
    assert parse_ethernet(raw, 0, -1) is None
    assert parse_ip(raw, 14, 0) is None


@pytest.mark.parametrize("flags", range(256))
def test_every_flag_byte(flags: int) -> None:
    for layer, addrs in ((IP(**V4), V4), (IPv6(**V6), V6)):
        raw = bytes(Ether(**MACS) / Dot1Q() / layer / TCP(dport=2345, flags=flags))
        assert parse_ethernet(raw) == packed(addrs["src"], addrs["dst"], PROTO_TCP, 2345, flags)
        assert Ether(raw)[TCP].flags == flags
