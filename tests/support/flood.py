"""A bounded flood of spoofed knock first frames, written straight onto a veth link.

Run inside the client namespace of a test pair:

    python3 tests/support/flood.py IFACE DST_MAC DST_IP DPORT COUNT SECONDS [SOURCES [PPS]]

Sends COUNT IPv4 UDP datagrams to DST_IP:DPORT, each from a different source taken in turn
from 198.18.0.0/15 (the benchmarking range, the only one spoofed sources may come from), at
most SOURCES distinct ones (default 100000, at most 131072). Stops after COUNT packets or
SECONDS seconds, whichever comes first, and prints how many it sent and in how long. With PPS
it paces itself to about that many packets per second (0: as fast as it can).
"""

from __future__ import annotations

import socket
import struct
import sys
import time

SPOOF_BASE = struct.unpack("!I", socket.inet_aton("198.18.0.0"))[0]
SPOOF_SIZE = 1 << 17  # 198.18.0.0/15


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(src_mac: bytes, dst_mac: bytes, src: int, dst: bytes, dport: int) -> bytes:
    udp = struct.pack("!HHHH", 40000, dport, 8, 0)  # UDP checksum 0: none, valid for IPv4
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, socket.IPPROTO_UDP, 0,
                         struct.pack("!I", src), dst)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return dst_mac + src_mac + b"\x08\x00" + header + udp


def main(argv: list[str]) -> int:
    iface, dst_mac_text, dst_ip, dport_text, count_text, seconds_text = argv[:6]
    sources = min(int(argv[6]) if len(argv) > 6 else 100_000, SPOOF_SIZE)
    pps = float(argv[7]) if len(argv) > 7 else 0.0
    count, seconds, dport = int(count_text), float(seconds_text), int(dport_text)
    with open(f"/sys/class/net/{iface}/address") as f:
        src_mac = bytes.fromhex(f.read().strip().replace(":", ""))
    dst_mac = bytes.fromhex(dst_mac_text.replace(":", ""))
    dst = socket.inet_aton(dst_ip)
    frames = [frame(src_mac, dst_mac, SPOOF_BASE + i, dst, dport) for i in range(sources)]
    sent = 0
    started = time.monotonic()
    deadline = started + seconds
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for sent in range(1, count + 1):
            s.send(frames[sent % sources])
            if not sent & 255:
                now = time.monotonic()
                if now > deadline:
                    break
                if pps and sent / pps > now - started:
                    time.sleep(sent / pps - (now - started))
    elapsed = time.monotonic() - started
    print(f"sent {sent} in {elapsed:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
