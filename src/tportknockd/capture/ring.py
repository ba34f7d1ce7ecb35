"""Packet capture: an AF_PACKET socket with a memory-mapped TPACKET_V3 receive ring.

Set-up order matters for safety. The socket is created with protocol 0, which receives
nothing at all; the filter and the ring are set, and only then `bind()` names the interface and
ETH_P_ALL. So no packet can reach the ring before the kernel filter is in place.

The ring is a row of blocks. The kernel fills a block with packets and hands it to us (sets
TP_STATUS_USER) when it is full or when the block retire timer fires; we read every packet of
the block, give it back (TP_STATUS_KERNEL) and move to the next block in order. A short retire
timer keeps a lone knock's latency at a few milliseconds.
"""

from __future__ import annotations

import mmap
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from tportknockd.bpf import classic
from tportknockd.capture.packet import parse_ethernet, parse_ip
from tportknockd.model import Packet

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
ETH_P_ALL = 0x0003
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
PACKET_HOST = 0  # sll_pkttype of a packet addressed to this host

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1 whose first fields
# are block_status, num_pkts, offset_to_first_pkt.
_BLOCK_HEADER = struct.Struct("=III")
_BLOCK_STATUS_OFFSET = 8
_BLOCK_HEADER_OFFSET = 8
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac.
_PACKET_HEADER = struct.Struct("=I8xI8xH")
# The struct sockaddr_ll follows the 48-byte tpacket3_hdr; sll_pkttype is its byte 10.
_PKTTYPE_OFFSET = 48 + 10
_STATUS_KERNEL = struct.pack("=I", TP_STATUS_KERNEL)
_BLOCK_SEQ_OFFSET = 24  # tpacket_hdr_v1.seq_num, a u64: the order the kernel filled blocks in
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_STATS = struct.Struct("=III")


@dataclass(frozen=True)
class RingGeometry:
    # Many small blocks rather than a few big ones: with a 1 ms retire timer, light traffic
    # uses up a block per millisecond whatever its size, so the ring holds block_count ms of
    # it. 128 blocks of 16 KiB (2 MiB in all, about 100 small packets a block) ride out a
    # 128 ms stall of Python at moderate rates and about 13,000 packets at full rate. The ring
    # is resident from the start: most of the daemon's memory beyond the interpreter.
    block_size: int = 1 << 14  # a multiple of the page size, a power of two
    block_count: int = 128
    frame_size: int = 2048  # only used by the kernel to size its frame count
    retire_ms: int = 1  # the latency floor for a lone knock

    @classmethod
    def of_size(cls, mebibytes: int) -> RingGeometry:
        return cls(block_count=max(1, (mebibytes << 20) // cls.block_size))

    @classmethod
    def for_kernel_engine(cls) -> RingGeometry:
        """The ring of a capture that carries the kernel engine's program (unless --ring-size
        says otherwise): 64 blocks of 4 KiB, 256 KiB instead of 2 MiB of the daemon's memory.

        That program returns 0 for every packet but those whose headers are not in the linear
        part of their buffer, which it hands over whole to be matched in Python (kernel_passed:
        a zero-copy sender's, on this host, over veth). The ring waits for those alone. Small
        blocks make the most of its size for them: with the 1 ms retire timer, a trickle uses
        a block a millisecond, so 64 blocks ride out a 64 ms stall of Python; a burst fills
        them at about 28 small packets a block, some 1,800 in all. A larger packet is cut to
        the block (the headers are all that is read). Every other knock is matched in the
        kernel and never waits here, so a full ring loses only packets to be handed over.
        """
        return cls(block_size=1 << 12, block_count=64)

    def request(self) -> bytes:
        frames = (self.block_size // self.frame_size) * self.block_count
        return struct.pack(
            "=7I",
            self.block_size,
            self.block_count,
            self.frame_size,
            frames,
            self.retire_ms,
            0,  # sizeof_priv
            0,  # feature_req_word
        )


@dataclass
class Stats:
    packets: int = 0  # handed to user space by the kernel (after the filter)
    drops: int = 0  # lost because the ring was full


class Capture:
    """An open capture on one interface. Use `fileno()` with poll; read with `packets()`."""

    def __init__(
        self,
        ifname: str,
        program: classic.Program,
        geometry: RingGeometry | None = None,
        raw_ip: bool = False,
    ) -> None:
        """`raw_ip`: the link's packets start at the IP header (tun, WireGuard), not at an
        Ethernet header; the filter must be compiled for the same."""
        self.ifname = ifname
        self.geometry = geometry or RingGeometry()
        self._parse = parse_ip if raw_ip else parse_ethernet
        self.not_for_us = 0  # packets the ring held that were not addressed to this host
        self.resyncs = 0  # times the kernel's block and ours were found out of step
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            self._setup(program)
        except BaseException:
            self._sock.close()
            raise
        self._block = 0

    def _setup(self, program: classic.Program) -> None:
        sock, geometry = self._sock, self.geometry
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        classic.attach_program(sock, program)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, geometry.request())
        self._ring = mmap.mmap(
            sock.fileno(),
            geometry.block_size * geometry.block_count,
            mmap.MAP_SHARED,
            mmap.PROT_READ | mmap.PROT_WRITE,
        )
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass  # kernel < 4.20: outgoing packets are still dropped by their sll_pkttype
        sock.bind((self.ifname, ETH_P_ALL))

    def fileno(self) -> int:
        return self._sock.fileno()

    def set_filter(self, program: classic.Program) -> None:
        """Swap the kernel filter (atomic in the kernel)."""
        classic.attach_program(self._sock, program)

    def packets(self, max_blocks: int = 32) -> Iterator[Packet | None]:
        """The packets of the blocks the kernel has handed over, in order, at most `max_blocks`.

        The bound matters under a flood: the kernel refills the ring as fast as we empty it,
        and the caller must get back to its timers (pending stops) and signals in between.
        Yields None for a packet that is no well-formed TCP/UDP packet (the caller counts it).
        Packets not addressed to this host (outgoing, broadcast, another host's) are skipped
        and counted in `not_for_us`. Each block is given back once its packets are read.
        """
        ring, parse = self._ring, self._parse
        block_size = self.geometry.block_size
        block_count = self.geometry.block_count
        for index in range(max_blocks):
            base = self._block * block_size
            status, count, offset = _BLOCK_HEADER.unpack_from(ring, base + _BLOCK_HEADER_OFFSET)
            if not status & TP_STATUS_USER:
                if index == 0 and self._resynchronise():
                    continue
                return
            position = base + offset
            for _ in range(count):
                next_offset, snaplen, mac = _PACKET_HEADER.unpack_from(ring, position)
                if ring[position + _PKTTYPE_OFFSET] == PACKET_HOST:
                    yield parse(ring, position + mac, snaplen)
                else:
                    self.not_for_us += 1
                position += next_offset
            ring[base + _BLOCK_STATUS_OFFSET : base + _BLOCK_STATUS_OFFSET + 4] = _STATUS_KERNEL
            self._block = (self._block + 1) % block_count

    def _resynchronise(self) -> bool:
        """Catch up with the kernel when it fills a different block than the one we expect.

        We were woken because some block is ready, yet ours is not: after the ring overflowed
        the kernel can go on from another block (libpcap saw the same, its issue #898). Left
        alone we would spin at full CPU and read nothing until the kernel wrapped round to our
        block. Move to the ready block the kernel filled first (lowest sequence number).
        """
        ring, block_size = self._ring, self.geometry.block_size
        ready = []
        for block in range(self.geometry.block_count):
            base = block * block_size
            (status,) = _U32.unpack_from(ring, base + _BLOCK_STATUS_OFFSET)
            if status & TP_STATUS_USER:
                ready.append((_U64.unpack_from(ring, base + _BLOCK_SEQ_OFFSET)[0], block))
        if not ready:
            return False
        self._block = min(ready)[1]
        self.resyncs += 1
        return True

    def statistics(self) -> Stats:
        """Kernel counters since the last call (the kernel resets them when read)."""
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        packets, drops, _freezes = _STATS.unpack(raw)
        return Stats(packets, drops)

    def pending_error(self) -> int:
        """Read and clear the socket's pending error (e.g. ENETDOWN after the link went down)."""
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def close(self) -> None:
        try:
            self._ring.close()
        except (AttributeError, BufferError):
            pass
        self._sock.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
