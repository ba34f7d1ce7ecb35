"""Replay captured frames onto a link, as an eavesdropper would: run inside a test namespace.

    python3 tests/support/replay.py IFACE

Imports scapy, says `ready`, then reads requests from stdin, one a line:

    PCAP [NEW_SOURCE]

and for each reads the Ethernet frames of PCAP (tcpdump -w), optionally gives every IPv4
packet the source address NEW_SOURCE (checksums recomputed), writes them onto IFACE in order,
10 ms apart, and answers `replayed N frames`. It ends at the end of its input. The frames keep
the MAC addresses they were captured with, and the interface is named explicitly: scapy
resolves nothing and sends nowhere else.

Started before the test needs it, so that scapy's start-up (seconds on a loaded machine) is
not between a knock and its replays: a replay then takes some tens of milliseconds.
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
    from scapy.all import IP, TCP, UDP, Ether, conf, rdpcap  # noqa: PLC0415

    iface = argv[0]
    # One socket on the named interface for every frame (sendp would open one a frame).
    with conf.L2socket(iface=iface) as link:
        print("ready", flush=True)
        for request in sys.stdin:
            if not request.strip():
                continue
            pcap, *rest = request.split()
            new_source = rest[0] if rest else None
            frames = [frame for frame in rdpcap(pcap) if Ether in frame and IP in frame]
            for frame in frames:
                if new_source is not None:
                    frame[IP].src = new_source
                    del frame[IP].chksum
                    for layer in (TCP, UDP):
                        if layer in frame:
                            del frame[layer].chksum
                link.send(frame)
                time.sleep(0.01)
            print(f"replayed {len(frames)} frames", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
