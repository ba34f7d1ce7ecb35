"""One listened interface: its capture, its kernel index and state, the addresses that count.

A listener is created for each interface the daemon listens on and lives as long as that
interface is wanted; its capture is opened when the interface is there and closed when it
goes away (deleted, or re-created under the same name with a new index). The packets it reads
go to the engine, and the engine's actions to the doorkeeper, with the interface's name.
Which interfaces are listened on and what their addresses are is `interfaces.Interfaces`'
business; a listener only holds what it is told.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Callable, Collection

from tportknockd.bpf import classic
from tportknockd.capture import netif
from tportknockd.capture.ring import Capture, RingGeometry
from tportknockd.capture.statistics import Counters
from tportknockd.matching.engine import Action
from tportknockd.model import PROTOCOL_NAMES, Packet, address_bytes, address_text, describe_flags

log = logging.getLogger("tportknockd")

#: POLLIN with nothing to read this many times in a row: the sign of a deleted interface.
EMPTY_WAKEUPS_BEFORE_CHECK = 50

Feed = Callable[[Packet, float], list[Action]]
Perform = Callable[[list[Action], str], None]


class Listener:
    """An interface listened on; `capture` is None while the interface is not there."""

    def __init__(self, name: str, counters: Counters, debug: bool = False) -> None:
        self.name = name
        self.counters = counters
        self.debug = debug
        self.capture: Capture | None = None
        self.raw_ip = False  # its packets start at the IP header (tun, WireGuard)
        self.index = 0
        self.up = True
        self.addresses: frozenset[str] = frozenset()  # its own, as the log shows them
        self.accepted: frozenset[str] = frozenset()  # the destinations that count on it
        self._accepted_packed: frozenset[bytes] = frozenset()  # the same, as packets carry them
        self._empty_wakeups = 0

    # -- the capture ----------------------------------------------------------------------

    def open(self, link: netif.Interface, program: classic.Program, geometry: RingGeometry) -> None:
        """Open the capture on `link` with `program` (compiled for `link.framing`) as its
        filter and a ring of `geometry`; OSError when it fails."""
        raw_ip = link.framing == "raw-ip"
        self.capture = Capture(link.name, program, geometry, raw_ip)
        self.raw_ip = raw_ip
        self.index = link.index
        self.up = link.up
        self._empty_wakeups = 0
        log.info(
            "listening on %s (index %d, %s), addresses: %s",
            link.name,
            link.index,
            "up" if link.up else "down",
            ", ".join(sorted(self.addresses)) or "none yet",
        )

    def close(self) -> None:
        """Close the capture (the interface went away), keeping its counters."""
        if self.capture is None:
            return
        self.read_kernel_statistics()
        self.counters.ring_resyncs += self.capture.resyncs
        self.capture.close()
        self.capture = None

    def fileno(self) -> int:
        assert self.capture is not None
        return self.capture.fileno()

    def set_filter(self, program: classic.Program) -> None:
        if self.capture is not None:
            self.capture.set_filter(program)

    # -- what it knows of its interface ---------------------------------------------------

    def set_addresses(self, own: Collection[str], accepted: Collection[str]) -> None:
        """Its own addresses (for the log) and the destinations that count on it."""
        self.addresses = frozenset(own)
        self.accepted = frozenset(accepted)
        self._accepted_packed = frozenset(address_bytes(a) for a in self.accepted)

    def follow_state(self, link: netif.Interface) -> None:
        """Note (and log) the interface going down or coming up."""
        if link.up != self.up:
            self.up = link.up
            log.warning("interface %s is %s", link.name, "up again" if link.up else "down")

    def is_same_interface(self, link: netif.Interface | None) -> bool:
        """Is `link` still the interface the capture is bound to (not gone, not re-created)?"""
        return link is not None and link.index == self.index

    # -- packets --------------------------------------------------------------------------

    def on_ready(self, revents: int, feed: Feed, perform: Perform) -> bool:
        """Read what poll announced. True when the interface should be looked at again."""
        assert self.capture is not None
        if revents & select.POLLERR:
            code = self.capture.pending_error()
            if code:
                log.warning("capture on %s: %s", self.name, os.strerror(code))
            return True
        if self.read(feed, perform) == 0:
            # A deleted interface leaves its socket readable forever with nothing to read.
            self._empty_wakeups += 1
            if self._empty_wakeups >= EMPTY_WAKEUPS_BEFORE_CHECK:
                self._empty_wakeups = 0
                return True
        else:
            self._empty_wakeups = 0
        return False

    def read(self, feed: Feed, perform: Perform) -> int:
        """Feed the packets the kernel has handed over to the engine; how many were read."""
        assert self.capture is not None
        now = time.monotonic()
        debug, local, name = self.debug, self._accepted_packed, self.name
        seen = malformed = not_local = 0  # plain locals: this loop runs for every packet
        # The actions of the whole batch go to the doorkeeper at once: the state file is then
        # written once per batch, not once per opening door (a thousand knocks completing
        # together each waited for an fsync, and the ring overflowed meanwhile).
        pending: list[Action] = []
        for packet in self.capture.packets():
            seen += 1
            if packet is None:
                malformed += 1
            elif packet.dst not in local:
                not_local += 1
            else:
                if debug:
                    log.debug("packet %s on %s", describe_packet(packet), name)
                actions = feed(packet, now)
                if actions:
                    pending += actions
        if pending:
            perform(pending, name)
        counters = self.counters
        counters.malformed += malformed
        counters.not_local += not_local
        counters.packets += seen - malformed - not_local
        return seen

    def read_kernel_statistics(self) -> None:
        if self.capture is None:
            return
        try:
            stats = self.capture.statistics()
        except OSError:
            return
        self.counters.add_kernel(self.name, stats)


def describe_packet(packet: Packet) -> str:
    proto = PROTOCOL_NAMES.get(packet.protocol, str(packet.protocol))
    flags = f" {describe_flags(packet.flags)}" if proto == "tcp" else ""
    source, destination = address_text(packet.src), address_text(packet.dst)
    return f"{source} -> {destination} {proto}/{packet.port}{flags}"
