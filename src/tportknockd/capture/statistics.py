"""What the daemon counts, and the line it logs on SIGUSR1.

The listeners add what they read (the capture loop adds its plain local counts once per batch
of packets, never per packet), the doorkeeper adds the events fired.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tportknockd.capture.ring import Stats

log = logging.getLogger("tportknockd")


@dataclass
class Counters:
    packets: int = 0  # well-formed packets to this host that reached the engine
    malformed: int = 0  # dropped by the parser
    not_local: int = 0  # well-formed, but to an address that is not (or no longer) ours
    kernel_packets: int = 0  # handed to user space by the kernel, on every interface
    kernel_drops: int = 0  # lost because a ring was full
    fired: int = 0
    replays: int = 0  # used one-time sequences that came again
    ring_resyncs: int = 0  # of captures closed since (the open ones count their own)
    door_failures: int = 0  # knocks whose door the nftables table did not take

    def add_kernel(self, interface: str, stats: Stats) -> None:
        """Add what the kernel says about one capture since it was last asked."""
        self.kernel_packets += stats.packets
        if stats.drops:
            self.kernel_drops += stats.drops
            log.warning(
                "kernel ring dropped %d packets on %s (%d in all)",
                stats.drops,
                interface,
                self.kernel_drops,
            )

    def summary(self, attempts: int, open_doors: int, open_resyncs: int) -> str:
        """`name=value` pairs for the log; `open_resyncs` counts the captures still open."""
        return (
            f"kernel_packets={self.kernel_packets} kernel_drops={self.kernel_drops} "
            f"packets={self.packets} malformed={self.malformed} not_local={self.not_local} "
            f"attempts={attempts} open_doors={open_doors} fired={self.fired} "
            f"replays={self.replays} "
            f"ring_resyncs={self.ring_resyncs + open_resyncs} door_failures={self.door_failures}"
        )
