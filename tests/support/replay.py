"""Replay captured frames onto a link, as an eavesdropper would: run inside a test namespace.

    python3 tests/support/replay.py PCAP IFACE [NEW_SOURCE]

Reads the Ethernet frames of PCAP (tcpdump -w) with scapy, optionally gives every IPv4 packet
the source address NEW_SOURCE (checksums recomputed), and writes them onto IFACE in order,
10 ms apart. The frames keep the MAC addresses they were captured with, and the interface is
named explicitly: scapy resolves nothing and sends nowhere else.
"""

from __future__ import annotations

import sys
import time


def _in_a_test_namespace() -> bool:
    """Never replay outside a namespace made by tests/support/netns.py (named tpk-...)."""
    import os
    import subprocess

    name = subprocess.run(["ip", "netns", "identify", str(os.getpid())],
                          capture_output=True, text=True).stdout.strip()
    return name.startswith("tpk-")


def main(argv: list[str]) -> int:
    if not _in_a_test_namespace():
        sys.exit("replay.py runs only inside a test network namespace")
    from scapy.all import IP, TCP, UDP, Ether, rdpcap, sendp  # noqa: PLC0415

    pcap, iface = argv[0], argv[1]
    new_source = argv[2] if len(argv) > 2 else None
    frames = [frame for frame in rdpcap(pcap) if Ether in frame and IP in frame]
    for frame in frames:
        if new_source is not None:
            frame[IP].src = new_source
            del frame[IP].chksum
            for layer in (TCP, UDP):
                if layer in frame:
                    del frame[layer].chksum
        sendp(frame, iface=iface, verbose=False)
        time.sleep(0.01)
    print(f"replayed {len(frames)} frames", flush=True)
    return 0 if frames else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
