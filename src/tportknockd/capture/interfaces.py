"""Following the listened interfaces and their addresses.

`Interfaces` holds one `Listener` per interface that -i selects (see selection.py) and keeps
them in line with the kernel: it opens a capture when an interface is there, closes it when
the interface is deleted or re-created (a new index), logs it going down and up, and
recompiles the kernel filters when addresses change.
It learns of changes from rtnetlink announcements at once, from the captures themselves
(errors, a socket readable with nothing in it), every second while an interface is missing
or down, and every -r seconds as a safety net. One interface going away never stops others.

Which destinations count is Linux's own rule for what it accepts: an address of any listened
interface, whichever of them the packet came in on (for `any`: any address of the host); an
IPv6 link-local address only on its own interface. Loopback addresses (127.0.0.0/8, ::1)
never count.

The filters are always compiled from `frames()`, the frames the engine currently wants, and
the addresses: `refilter()` is the one call that puts a new set of frames in place everywhere.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

from tportknockd.bpf import classic
from tportknockd.capture import netif
from tportknockd.capture.listener import Feed, Listener, Perform
from tportknockd.capture.ring import RingGeometry
from tportknockd.capture.selection import Selection
from tportknockd.capture.statistics import Counters
from tportknockd.model import Frame, address_bytes, is_link_local, is_loopback

log = logging.getLogger("tportknockd")

LINK_CHECK = 1.0  # seconds between checks while an interface is down or missing


class Filters(Protocol):
    """What gives each capture its filter: the part of the daemon's `Matching`
    (daemon/matching.py) that captures need."""

    def program_for(
        self, accepted: Collection[str], raw_ip: bool, frames: Iterable[Frame]
    ) -> classic.Program:
        """The socket filter of a capture on a link with an Ethernet header or (`raw_ip`)
        without, whose packets count when sent to `accepted`. ValueError when it cannot be
        built (a classic program longer than the kernel allows)."""

    def ring_for(self, raw_ip: bool) -> RingGeometry:
        """The ring a capture needs on such a link when --ring-size does not say."""

    def set_local_addresses(self, links: Iterable[Listener]) -> None:
        """The destinations that count on each listened interface with an open capture."""


class StartupError(Exception):
    """A problem that stops the daemon before it runs: one clear line for the user."""


class Interfaces:
    def __init__(
        self,
        selection: Selection,
        matching: Filters,
        frames: Callable[[], Iterable[Frame]],
        poller: select.poll,
        counters: Counters,
        geometry: RingGeometry | None = None,
        refresh: float | None = None,
        debug: bool = False,
    ) -> None:
        self.selection = selection
        #: Builds each capture's filter and learns the addresses that count (see
        #: daemon/matching.py): the classic filter, or the kernel engine's program.
        self.matching = matching
        self._frames = frames
        self._poller = poller
        self.counters = counters
        #: The ring --ring-size asks for; None: each capture's default (see `_geometry`).
        self.geometry = geometry
        self.refresh = refresh  # -r: re-read everything every `refresh` seconds
        self.debug = debug
        self.listeners: dict[str, Listener] = {}
        for name in selection.names:
            self._listener(name)
        self._by_fd: dict[int, Listener] = {}
        self.watcher: netif.ChangeWatcher | None = None
        self._next_check = 0.0
        self._next_refresh = 0.0

    def _listener(self, name: str) -> Listener:
        listener = self.listeners.get(name)
        if listener is None:
            listener = Listener(name, self.counters, self.debug)
            self.listeners[name] = listener
        return listener

    # -- start-up -------------------------------------------------------------------------

    def start(self) -> None:
        """Open a capture on every listened interface; StartupError with a line for people.

        The rtnetlink watch starts first, so that no interface appearing meanwhile is missed.
        """
        self._watch()
        links = netif.list_interfaces()
        present = {link.name for link in links}
        missing = [name for name in self.selection.names if name not in present]
        if missing:
            raise StartupError(
                f"no interface {', '.join(repr(n) for n in missing)} (see tportknockd -l)"
            )
        if self.selection.every:
            _check_can_capture()
            log.info("listening on every interface but the loopback, present and future")
        self._add_listeners(links)
        self._update_addresses(links)
        for link in links:
            if self.selection.listens_on(link):
                self._open_at_start(self.listeners[link.name], link)
        self._share_addresses()
        self._next_check = time.monotonic() + LINK_CHECK
        self._next_refresh = time.monotonic() + (self.refresh or 0)

    def _open_at_start(self, listener: Listener, link: netif.Interface) -> None:
        try:
            self._open(listener, link)
        except PermissionError as exc:
            raise StartupError(
                f"capturing on {link.name} needs root or CAP_NET_RAW ({exc.strerror})"
            ) from None
        except (OSError, ValueError) as exc:
            if self.selection.every:  # one odd interface does not stop the others
                log.warning("cannot capture on %s: %s", link.name, exc)
            elif isinstance(exc, ValueError):
                raise StartupError(f"cannot build the kernel filter: {exc}") from None
            else:
                raise StartupError(f"cannot capture on {link.name}: {exc}") from None

    def _watch(self) -> None:
        """Follow link and address changes as the kernel announces them, so a new address
        (or, with `any`, a new interface) counts at once; -r adds a periodic re-read."""
        try:
            self.watcher = netif.ChangeWatcher()
        except OSError as exc:
            log.warning("cannot follow interface changes (%s): only -r re-reads addresses", exc)
            return
        self._poller.register(self.watcher.fileno(), select.POLLIN)

    # -- the loop's questions ---------------------------------------------------------------

    def on_ready(self, fd: int, revents: int, feed: Feed, perform: Perform) -> None:
        """Handle poll's news about one of our descriptors (a capture or the watcher)."""
        listener = self._by_fd.get(fd)
        if listener is not None:
            if listener.on_ready(revents, feed, perform):
                self.follow()
        elif self.watcher is not None and fd == self.watcher.fileno() and self.watcher.drain():
            self.follow()

    def housekeeping(self, now: float) -> None:
        """Look at the interfaces again when -r or a missing/down interface says so."""
        if self.refresh and now >= self._next_refresh:
            self._next_refresh = now + self.refresh
            self.follow()
        elif now >= self._next_check and self._waiting():
            self.follow()

    def next_wakeup(self) -> float | None:
        """When `housekeeping` next has something to do (monotonic time), or None."""
        wake: float | None = None
        if self.refresh:
            wake = self._next_refresh
        if self._waiting():
            wake = self._next_check if wake is None else min(wake, self._next_check)
        return wake

    def _waiting(self) -> bool:
        """Is something to be looked for: a missing or down interface, or (`any` without
        rtnetlink) new ones?"""
        if self.selection.every and self.watcher is None:
            return True
        return any(li.capture is None or not li.up for li in self.listeners.values())

    # -- following the kernel -------------------------------------------------------------

    def follow(self) -> None:
        """Read the interfaces and bring every listener in line: gone, back, down, re-addressed."""
        self._next_check = time.monotonic() + LINK_CHECK
        try:
            links = netif.list_interfaces()
        except OSError as exc:
            log.warning("cannot read interfaces: %s", exc)
            return
        self.follow_links(links)

    def follow_links(self, links: Iterable[netif.Interface]) -> None:
        links = list(links)
        self._close_gone(links)
        self._add_listeners(links)
        self._update_addresses(links)
        for link in links:
            listener = self.listeners.get(link.name)
            if listener is None:
                continue
            if listener.capture is not None:
                listener.follow_state(link)
            elif self.selection.listens_on(link):
                self._reopen(listener, link)
        self._share_addresses()

    def _add_listeners(self, links: list[netif.Interface]) -> None:
        """A listener for each interface to listen on that has none (new ones, with `any`)."""
        for link in links:
            if link.name not in self.listeners and self.selection.listens_on(link):
                self._listener(link.name)

    def _close_gone(self, links: list[netif.Interface]) -> None:
        """Close the captures whose interface was deleted (or re-created: a new index)."""
        by_name = {link.name: link for link in links}
        for name, listener in list(self.listeners.items()):
            link = by_name.get(name)
            if listener.capture is not None and not listener.is_same_interface(link):
                self._close(listener)
                if self.selection.every:
                    log.warning("interface %s is gone", name)
                else:
                    log.warning("interface %s is gone; waiting for it to come back", name)
            unwanted = link is None or not self.selection.listens_on(link)
            if self.selection.every and listener.capture is None and unwanted:
                del self.listeners[name]  # `any` listens on it again if it comes (back) up

    def _update_addresses(self, links: list[netif.Interface]) -> None:
        """Give every listener the destinations that count on it; refilter those that changed."""
        by_name = {link.name: link for link in links}
        shared: set[str] = set()
        for link in links:
            if self.selection.counts_addresses_of(link):
                shared.update(a for a in own_addresses(link) if not is_link_local(a))
        for name, listener in self.listeners.items():
            current = by_name.get(name)
            own = own_addresses(current) if current is not None else frozenset()
            accepted = shared.union(a for a in own if is_link_local(a))
            if listener.capture is None:
                listener.set_addresses(own, accepted)
            elif listener.is_same_interface(current):
                self._readdress(listener, own, accepted)

    def _share_addresses(self) -> None:
        """Tell matching the destinations that count on each open capture. After the captures
        are opened: a link-local address goes with the index of its interface, which a capture
        learns when it opens (anew when the interface was re-created)."""
        self.matching.set_local_addresses(
            listener for listener in self.listeners.values() if listener.capture is not None
        )

    def _readdress(self, listener: Listener, own: frozenset[str], accepted: set[str]) -> None:
        if own != listener.addresses:
            log.info(
                "addresses of %s changed: %s -> %s",
                listener.name,
                ", ".join(sorted(listener.addresses)) or "none",
                ", ".join(sorted(own)) or "none",
            )
        if accepted == listener.accepted:
            listener.set_addresses(own, accepted)
            return
        try:
            program = self._program(accepted, listener.raw_ip)
        except ValueError as exc:
            log.error("kernel filter for the new addresses: %s; keeping the old filter", exc)
            return
        listener.set_addresses(own, accepted)
        listener.set_filter(program)

    def _open(self, listener: Listener, link: netif.Interface) -> None:
        if link.framing is None:
            raise OSError(
                f"its packets are neither Ethernet frames nor bare IP (link type {link.link_type})"
            )
        raw_ip = link.framing == "raw-ip"
        listener.open(link, self._program(listener.accepted, raw_ip), self._geometry(raw_ip))
        self._by_fd[listener.fileno()] = listener
        self._poller.register(listener.fileno(), select.POLLIN)

    def _geometry(self, raw_ip: bool) -> RingGeometry:
        """The ring of a new capture: what --ring-size asked for, else what matching needs."""
        if self.geometry is not None:
            return self.geometry
        return self.matching.ring_for(raw_ip)

    def _reopen(self, listener: Listener, link: netif.Interface) -> None:
        try:
            self._open(listener, link)
        except (OSError, ValueError) as exc:
            log.warning("cannot capture on %s yet: %s", link.name, exc)

    def _close(self, listener: Listener) -> None:
        fd = listener.fileno()
        self._poller.unregister(fd)
        del self._by_fd[fd]
        listener.close()

    def name_of(self, index: int) -> str | None:
        """The name of the listened interface with kernel index `index` (None if none)."""
        for listener in self.listeners.values():
            if listener.capture is not None and listener.index == index:
                return listener.name
        return None

    # -- the kernel filters ---------------------------------------------------------------

    def refilter(self, frames: Iterable[Frame] | None = None) -> None:
        """Recompile every listener's filter, for `frames` (default: the current ones).

        All programs are compiled before any is attached: a ValueError (a program too long
        for the kernel) leaves every filter as it was.
        """
        wanted = list(self._frames() if frames is None else frames)
        compiled: dict[tuple[frozenset[str], bool], classic.Program] = {}
        for listener in self.listeners.values():
            key = (listener.accepted, listener.raw_ip)
            if key not in compiled:
                compiled[key] = self._program(listener.accepted, listener.raw_ip, wanted)
        for listener in self.listeners.values():
            listener.set_filter(compiled[listener.accepted, listener.raw_ip])

    def _program(
        self, addresses: Collection[str], raw_ip: bool, frames: Iterable[Frame] | None = None
    ) -> classic.Program:
        """The filter for `frames` (default: the current ones) sent to `addresses`, for a link
        with an Ethernet header or (`raw_ip`) without. ValueError when it cannot be built."""
        wanted = self._frames() if frames is None else frames
        return self.matching.program_for(addresses, raw_ip, wanted)

    # -- statistics and the end -----------------------------------------------------------

    def read_kernel_statistics(self) -> None:
        for listener in self.listeners.values():
            listener.read_kernel_statistics()

    def open_resyncs(self) -> int:
        """Ring resynchronisations of the captures still open (closed ones are counted)."""
        return sum(li.capture.resyncs for li in self.listeners.values() if li.capture)

    def close(self) -> None:
        for listener in self.listeners.values():
            if listener.capture is not None:
                self._close(listener)
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None


def own_addresses(link: netif.Interface) -> frozenset[str]:
    """The addresses of `link` that can count: without zone (fe80::1%eth0: a packet carries
    none), and without loopback addresses (127.0.0.0/8, ::1), which never count."""
    bare = (a.split("%", 1)[0] for a in link.addresses)
    return frozenset(a for a in bare if not is_loopback(address_bytes(a)))



def _check_can_capture() -> None:
    """With `any` there may be nothing to open yet: find out now whether we could."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0).close()
    except PermissionError as exc:
        raise StartupError(f"capturing needs root or CAP_NET_RAW ({exc.strerror})") from None
    except OSError as exc:
        raise StartupError(f"cannot capture: {exc}") from None
