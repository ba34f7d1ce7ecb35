"""Many knockers at once: every source of a set completes the same UDP sequence.

Run inside the client namespace of a test pair:

    python3 tests/support/knockers.py IFACE DST_MAC DST_IP SOURCES PORTS SECONDS

Sends, for each port of PORTS (comma-separated, in order), one datagram to DST_IP:port from
each of SOURCES distinct addresses of 198.18.0.0/15 (the benchmarking range, the only one
spoofed sources may come from), spread evenly over SECONDS. So SOURCES x len(PORTS) packets
in all, then it stops; it prints how many it sent and in how long.
"""

from __future__ import annotations

import socket
import sys
import time

from flood import SPOOF_BASE, SPOOF_SIZE, frame


def main(argv: list[str]) -> int:
    iface, dst_mac_text, dst_ip, sources_text, ports_text, seconds_text = argv[:6]
    sources = min(int(sources_text), SPOOF_SIZE)
    ports = [int(port) for port in ports_text.split(",")]
    seconds = float(seconds_text)
    with open(f"/sys/class/net/{iface}/address") as f:
        src_mac = bytes.fromhex(f.read().strip().replace(":", ""))
    dst_mac = bytes.fromhex(dst_mac_text.replace(":", ""))
    dst = socket.inet_aton(dst_ip)
    total = sources * len(ports)
    gap = seconds / total
    started = time.monotonic()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        sent = 0
        for port in ports:
            for source in range(sources):
                s.send(frame(src_mac, dst_mac, SPOOF_BASE + source, dst, port))
                sent += 1
                ahead = started + sent * gap - time.monotonic()
                if ahead > 0.001:
                    time.sleep(ahead)
    print(f"sent {sent} in {time.monotonic() - started:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
