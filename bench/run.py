#!/usr/bin/env python3
"""`make bench`: tportknockd and knockd side by side, on the same knocks and the same floods;
tportknockd twice, with `--engine python` and with `--engine kernel`.

Everything happens between two network namespaces that the bench creates and joins with
one veth pair (created inside the server namespace, its peer put straight into the client
namespace). There is no default route, only documentation addresses are used, and spoofed
sources come only from 198.18.0.0/15. Every flood is bounded by a packet count (trafgen -n)
and by time (timeout). The daemon under test is pinned to CPU 0, everything that generates
traffic (trafgen, the knock clients, tcpdump, this script) to CPU 1.

Each scenario starts a fresh daemon, so CPU, RSS peak and ring drops belong to one scenario.
Each knock comes from its own source address, so the line that the start_command writes
(`date '+%IP% %s.%N' >> FILE`) can be matched to its knock. Latency runs from the capture
timestamp of the knock's last packet on the client's veth (tcpdump, CLOCK_REALTIME) to the
time that command wrote (CLOCK_REALTIME); it includes the fork of /bin/sh and date (~2 ms).

Results: bench/results/latest.md (printed too), latest.json and latest.png.
Run as root: `python3 bench/run.py [--quick]`. The parts are described in bench/__init__.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # The checkout, not bench/, goes first on the path: `bench` is then the package, and its
    # modules do not stand in for top-level ones.
    checkout = Path(__file__).resolve().parent.parent
    sys.path[0:1] = [str(checkout), str(checkout / "src")]  # tportknockd without the venv too
    from bench.cli import run

    run()
