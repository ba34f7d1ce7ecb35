"""Send frames the way zero-copy senders do (trafgen, PACKET_TX_RING): the kernel builds each
skb with only the link-layer header in its linear part and the rest in page fragments. Run
inside a test namespace:

    python3 tests/support/txring.py IFACE HEXFRAME [HEXFRAME ...]

Each frame (Ethernet header included, explicit MACs) is written into a TPACKET_V2 TX ring and
sent, 10 ms apart. Used to check that the kernel engine hands such packets to user space.
"""

from __future__ import annotations

import mmap
import socket
import struct
import sys
import time

SOL_PACKET = 263
PACKET_VERSION = 10
PACKET_TX_RING = 13
TPACKET_V2 = 1
TP_STATUS_SEND_REQUEST = 1
FRAME_SIZE = 2048
FRAME_COUNT = 16
DATA_OFFSET = 32  # TPACKET_ALIGN(sizeof(struct tpacket2_hdr)): where the frame goes


def main(argv: list[str]) -> int:
    iface, frames = argv[0], [bytes.fromhex(text) for text in argv[1:]]
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        block = FRAME_SIZE * FRAME_COUNT
        sock.setsockopt(SOL_PACKET, PACKET_TX_RING,
                        struct.pack("=IIII", block, 1, FRAME_SIZE, FRAME_COUNT))
        ring = mmap.mmap(sock.fileno(), block, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE)
        sock.bind((iface, 0))
        for index, frame in enumerate(frames):
            base = (index % FRAME_COUNT) * FRAME_SIZE
            ring[base + DATA_OFFSET : base + DATA_OFFSET + len(frame)] = frame
            struct.pack_into("=III", ring, base, TP_STATUS_SEND_REQUEST, len(frame), len(frame))
            sock.send(b"")
            time.sleep(0.01)
        ring.close()
    print(f"sent {len(frames)} frames through a TX ring", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
