"""Following the listened interfaces and their addresses.

`Interfaces` holds one `Listener` per listened interface and keeps them in line with the
kernel: it opens a capture when an interface is there, closes it when the interface is deleted
or re-created (a new index), logs it going down and up, and recompiles every listener's kernel
filter when the addresses change. It learns of changes from rtnetlink announcements at once,
from the captures themselves (errors, a socket readable with nothing in it), every second
while an interface is missing or down, and every -r seconds as a safety net.

The filter is always compiled from `frames()`, the frames the engine currently wants, and the
addresses: `refilter()` is the one call that puts a new set of frames in place everywhere.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable, Iterable, Sequence

from tportknockd import filter as bpf
from tportknockd import netif
from tportknockd.capture import RingGeometry
from tportknockd.listener import Feed, Listener, Perform
from tportknockd.model import Frame
from tportknockd.statistics import Counters

log = logging.getLogger("tportknockd")

LINK_CHECK = 1.0  # seconds between checks while an interface is down or missing


class StartupError(Exception):
    """A problem that stops the daemon before it runs: one clear line for the user."""


class Interfaces:
    def __init__(
        self,
        names: Sequence[str],
        frames: Callable[[], Iterable[Frame]],
        poller: select.poll,
        counters: Counters,
        geometry: RingGeometry | None = None,
        refresh: float | None = None,
        debug: bool = False,
    ) -> None:
        self.names = tuple(names)
        self._frames = frames
        self._poller = poller
        self.refresh = refresh  # -r: re-read everything every `refresh` seconds
        self.debug = debug
        geometry = geometry or RingGeometry()
        self.listeners = {name: Listener(name, counters, geometry, debug) for name in self.names}
        self._by_fd: dict[int, Listener] = {}
        self.watcher: netif.ChangeWatcher | None = None
        self._next_check = 0.0
        self._next_refresh = 0.0

    # -- start-up -------------------------------------------------------------------------

    def start(self) -> None:
        """Open a capture on every listened interface; StartupError with a line for people."""
        self._watch()
        links = {link.name: link for link in netif.list_interfaces()}
        missing = [name for name in self.names if name not in links]
        if missing:
            raise StartupError(
                f"no interface {', '.join(repr(n) for n in missing)} (see tportknockd -l)"
            )
        for name, listener in self.listeners.items():
            link = links[name]
            listener.set_addresses(_own_addresses(link), _own_addresses(link))
            try:
                self._open(listener, link)
            except PermissionError as exc:
                raise StartupError(
                    f"capturing on {name} needs root or CAP_NET_RAW ({exc.strerror})"
                ) from None
            except OSError as exc:
                raise StartupError(f"cannot capture on {name}: {exc}") from None
            except ValueError as exc:
                raise StartupError(f"cannot build the kernel filter: {exc}") from None
        self._next_refresh = time.monotonic() + (self.refresh or 0)

    def _watch(self) -> None:
        """Follow link and address changes as the kernel announces them, so a new address
        is knockable at once; -r then only adds a periodic re-read on top."""
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
        elif self._waiting() and now >= self._next_check:
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
        by_name = {link.name: link for link in links}
        for name, listener in self.listeners.items():
            link = by_name.get(name)
            if listener.capture is not None and not listener.is_same_interface(link):
                log.warning("interface %s is gone; waiting for it to come back", name)
                self._close(listener)
            if link is None:
                continue
            if listener.capture is None:
                listener.set_addresses(_own_addresses(link), _own_addresses(link))
                self._reopen(listener, link)
                continue
            listener.follow_state(link)
            self._update_addresses(listener, _own_addresses(link))

    def _update_addresses(self, listener: Listener, new: frozenset[str]) -> None:
        if new == listener.addresses:
            return
        log.info(
            "addresses of %s changed: %s -> %s",
            listener.name,
            ", ".join(sorted(listener.addresses)) or "none",
            ", ".join(sorted(new)) or "none",
        )
        listener.set_addresses(new, new)
        try:
            listener.set_filter(self._program(listener.accepted))
        except ValueError as exc:
            log.error("kernel filter for the new addresses: %s; keeping the old filter", exc)

    def _open(self, listener: Listener, link: netif.Interface) -> None:
        listener.open(link, self._program(listener.accepted))
        self._by_fd[listener.fileno()] = listener
        self._poller.register(listener.fileno(), select.POLLIN)

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

    # -- the kernel filters ---------------------------------------------------------------

    def refilter(self, frames: Iterable[Frame] | None = None) -> None:
        """Recompile every listener's filter, for `frames` (default: the current ones).

        All programs are compiled before any is attached: a ValueError (a program too long
        for the kernel) leaves every filter as it was.
        """
        wanted = list(self._frames() if frames is None else frames)
        programs = [(li, self._program(li.accepted, wanted)) for li in self.listeners.values()]
        for listener, program in programs:
            listener.set_filter(program)

    def _program(
        self, addresses: Iterable[str], frames: Iterable[Frame] | None = None
    ) -> list[bpf.Insn]:
        """The kernel filter for `frames` (default: the current ones) sent to `addresses`.

        Raises ValueError when it would not fit in a classic BPF program.
        """
        addresses = list(addresses)
        if not addresses:
            return bpf.drop_all()
        program = bpf.compile_filter(self._frames() if frames is None else frames, addresses)
        if self.debug:
            log.debug(
                "kernel filter (%d instructions):\n%s", len(program), bpf.disassemble(program)
            )
        return program

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


def _own_addresses(link: netif.Interface) -> frozenset[str]:
    # Zones (fe80::1%eth0) are not part of the address a packet carries.
    return frozenset(a.split("%", 1)[0] for a in link.addresses)
