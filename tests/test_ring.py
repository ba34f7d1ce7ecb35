"""Reading the TPACKET_V3 ring, on a ring laid out by hand in memory (no socket, no root)."""

from __future__ import annotations

import struct

from tportknockd.capture.packet import parse_ethernet, parse_ip
from tportknockd.capture.ring import TP_STATUS_KERNEL, TP_STATUS_USER, Capture, RingGeometry
from tportknockd.model import PROTO_UDP, Packet, address_bytes

GEOMETRY = RingGeometry(block_size=4096, block_count=8)
SLOT = 128  # bytes per packet in a block
MAC = 82  # where the frame starts in its slot, as the kernel puts it after the headers
PACKET_HOST, PACKET_OUTGOING = 0, 4


def udp_frame(src: str, port: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, address_bytes(src),
                     address_bytes("198.51.100.1"))
    return bytes(12) + b"\x08\x00" + ip + struct.pack("!HHHH", 40000, port, 8, 0)


def fill_block(ring: bytearray, block: int, seq: int, frames: list[tuple[bytes, int]]) -> None:
    """Lay `frames` (frame, pkttype) into `block` and hand it to user space."""
    base = block * GEOMETRY.block_size
    position = 48
    for index, (frame, pkttype) in enumerate(frames):
        next_offset = SLOT if index < len(frames) - 1 else 0
        header = struct.pack("=IIIIIIHH", next_offset, 0, 0, len(frame), len(frame), 1, MAC,
                             MAC + 14)
        ring[base + position : base + position + len(header)] = header
        ring[base + position + 48 + 10] = pkttype
        ring[base + position + MAC : base + position + MAC + len(frame)] = frame
        position += SLOT
    struct.pack_into("=IIIIQ", ring, base + 8, TP_STATUS_USER, len(frames), 48, position, seq)


def ring_capture() -> tuple[Capture, bytearray]:
    capture = object.__new__(Capture)  # the reading side only: no socket
    ring = bytearray(GEOMETRY.block_size * GEOMETRY.block_count)
    capture.geometry, capture._ring = GEOMETRY, ring  # type: ignore[assignment]
    capture._block, capture.not_for_us, capture.resyncs = 0, 0, 0
    capture._parse = parse_ethernet  # an Ethernet link
    return capture, ring


def sources(packets: list[Packet | None]) -> list[str]:
    return [f"{p.src[3]}:{p.port}" for p in packets if p is not None]


def status(ring: bytearray, block: int) -> int:
    return int(struct.unpack_from("=I", ring, block * GEOMETRY.block_size + 8)[0])


def test_reads_blocks_in_order_and_gives_them_back() -> None:
    capture, ring = ring_capture()
    fill_block(ring, 0, 1, [(udp_frame("198.18.0.1", 7000), PACKET_HOST),
                            (udp_frame("198.18.0.2", 7001), PACKET_HOST)])
    fill_block(ring, 1, 2, [(udp_frame("198.18.0.3", 7002), PACKET_HOST)])
    packets = list(capture.packets())
    assert packets[0] == Packet(address_bytes("198.18.0.1"), address_bytes("198.51.100.1"),
                                PROTO_UDP, 7000, 0)
    assert sources(packets) == ["1:7000", "2:7001", "3:7002"]
    assert status(ring, 0) == status(ring, 1) == TP_STATUS_KERNEL
    assert list(capture.packets()) == []  # block 2 is still the kernel's


def test_packets_not_for_this_host_are_skipped_and_counted() -> None:
    capture, ring = ring_capture()
    fill_block(ring, 0, 1, [(udp_frame("198.18.0.1", 7000), PACKET_OUTGOING),
                            (udp_frame("198.18.0.2", 7000), PACKET_HOST)])
    assert sources(list(capture.packets())) == ["2:7000"]
    assert capture.not_for_us == 1


def test_at_most_max_blocks_per_call() -> None:
    capture, ring = ring_capture()
    for block in range(4):
        fill_block(ring, block, block + 1, [(udp_frame(f"198.18.0.{block}", 7000), PACKET_HOST)])
    assert len(list(capture.packets(max_blocks=3))) == 3
    assert len(list(capture.packets(max_blocks=3))) == 1


def test_catches_up_when_the_kernel_fills_another_block_than_expected() -> None:
    # After an overflow the kernel went on at block 5 while we wait for block 0: without a
    # resynchronisation the daemon would spin on POLLIN and read nothing.
    capture, ring = ring_capture()
    fill_block(ring, 6, 11, [(udp_frame("198.18.0.6", 7000), PACKET_HOST)])
    fill_block(ring, 5, 10, [(udp_frame("198.18.0.5", 7000), PACKET_HOST)])
    assert sources(list(capture.packets())) == ["5:7000", "6:7000"]
    assert capture.resyncs == 1
    fill_block(ring, 7, 12, [(udp_frame("198.18.0.7", 7000), PACKET_HOST)])
    assert sources(list(capture.packets())) == ["7:7000"]  # in step again: no new resync
    assert capture.resyncs == 1


def test_nothing_ready_anywhere_is_not_a_resync() -> None:
    capture, _ = ring_capture()
    assert list(capture.packets()) == []
    assert capture.resyncs == 0


def test_a_raw_ip_link_is_read_from_the_ip_header() -> None:
    capture, ring = ring_capture()
    capture._parse = parse_ip  # as Capture(..., raw_ip=True) sets it: tun, WireGuard
    fill_block(ring, 0, 1, [(udp_frame("198.18.0.1", 7000)[14:], PACKET_HOST),
                            (udp_frame("198.18.0.2", 7001), PACKET_HOST)])
    packets = list(capture.packets())
    assert packets[0] == Packet(address_bytes("198.18.0.1"), address_bytes("198.51.100.1"),
                                PROTO_UDP, 7000, 0)
    assert packets[1] is None  # an Ethernet frame is no IP packet
