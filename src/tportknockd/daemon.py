"""The daemon: the I/O around the engine.

One thread runs the loop: poll the capture socket, a signal wake-up pipe and an rtnetlink
socket, feed packets and the monotonic clock to the engine, hand its actions to the command
runner, and look after the interface (addresses changed, link down, deleted and re-created;
also re-read every -r seconds). Commands run in worker threads (see actions), so nothing here
waits for them.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from tportknockd import filter as bpf
from tportknockd import netif, state
from tportknockd.actions import DEFAULT_MAX_RUNNING, DEFAULT_TIME_LIMIT, CommandRunner
from tportknockd.capture import Capture, RingGeometry
from tportknockd.config import ConfigError, load_config
from tportknockd.engine import (
    DEFAULT_MAX_ATTEMPTS,
    Action,
    Door,
    DoorExtended,
    Engine,
    Progress,
    RunStart,
    RunStop,
)
from tportknockd.model import (
    PROTOCOL_NAMES,
    Config,
    Packet,
    address_bytes,
    address_text,
    describe_flags,
)

log = logging.getLogger("tportknockd")

IDLE_WAKEUP = 5.0  # seconds: the longest sleep
STATISTICS_INTERVAL = 5.0  # seconds between reads of the kernel's drop counters
LINK_CHECK = 1.0  # seconds between checks while the interface is down or missing
STOP_GRACE = 10.0  # seconds to wait at exit for the last stop commands to finish
_EMPTY_WAKEUPS_BEFORE_CHECK = 50  # POLLIN with nothing to read: a deleted interface's sign


@dataclass
class Options:
    config_path: str
    interface: str
    refresh: float | None = None
    debug: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_commands: int = DEFAULT_MAX_RUNNING
    command_time_limit: float = DEFAULT_TIME_LIMIT
    state_file: str | None = state.DEFAULT_STATE_FILE
    ring_mib: int = 2


@dataclass
class Counters:
    packets: int = 0  # well-formed packets to this host that reached the engine
    malformed: int = 0  # dropped by the parser
    not_local: int = 0  # well-formed, but to an address that is not (or no longer) ours
    kernel_packets: int = 0
    kernel_drops: int = 0
    fired: int = 0
    ring_resyncs: int = 0  # of captures closed since (the open one counts its own)


class StartupError(Exception):
    """A problem that stops the daemon before it runs: one clear line for the user."""


@dataclass
class Daemon:
    config: Config
    options: Options
    engine: Engine = field(init=False)
    runner: CommandRunner = field(init=False)
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self.engine = Engine(self.config, self.options.max_attempts, trace=self.options.debug)
        self.runner = CommandRunner(self.options.max_commands, self.options.command_time_limit)
        self.capture: Capture | None = None
        self.watcher: netif.ChangeWatcher | None = None
        self.ifindex = 0
        self.link_up = True
        self.local: frozenset[str] = frozenset()
        self._local_packed: frozenset[bytes] = frozenset()  # the same, as packets carry them
        self._signals: list[int] = []
        self._stopping = False
        self._empty_wakeups = 0
        self._next_refresh = 0.0
        self._next_link_check = 0.0
        self._next_statistics = 0.0
        self._wake_r, self._wake_w = socket.socketpair()

    # -- start-up -------------------------------------------------------------------------

    def open(self) -> None:
        """Open the capture; raises StartupError with a line fit for the user."""
        link = netif.find_interface(self.options.interface)
        if link is None:
            raise StartupError(f"no interface '{self.options.interface}' (see tportknockd -l)")
        try:
            self._open_capture(link)
        except PermissionError as exc:
            raise StartupError(
                f"capturing on {self.options.interface} needs root or CAP_NET_RAW ({exc.strerror})"
            ) from None
        except OSError as exc:
            raise StartupError(f"cannot capture on {self.options.interface}: {exc}") from None
        except ValueError as exc:
            raise StartupError(f"cannot build the kernel filter: {exc}") from None

    def _open_capture(self, link: netif.Interface) -> None:
        self._set_local(link.addresses)
        self.capture = Capture(
            link.name, self._program(), RingGeometry.of_size(self.options.ring_mib)
        )
        self.ifindex = link.index
        self.link_up = link.up
        log.info(
            "listening on %s (index %d, %s), addresses: %s",
            link.name,
            link.index,
            "up" if link.up else "down",
            ", ".join(sorted(self.local)) or "none yet",
        )

    def _program(self, config: Config | None = None) -> list[bpf.Insn]:
        """The kernel filter for `config` (default: the current one) and our addresses.

        Raises ValueError when it would not fit in a classic BPF program.
        """
        config = config or self.config
        if not self.local:
            return bpf.drop_all()
        frames = [frame for event in config.events for frame in event.frames]
        program = bpf.compile_filter(frames, self.local)
        if self.options.debug:
            log.debug(
                "kernel filter (%d instructions):\n%s", len(program), bpf.disassemble(program)
            )
        return program

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; then close every open door. Returns the exit status."""
        self._install_signal_handlers()
        self.restore_doors()
        # What start-up built lives as long as the daemon: keep it out of every later
        # collection, so collections stay short while floods churn through attempts.
        gc.freeze()
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self.capture is not None:
            poller.register(self.capture.fileno(), select.POLLIN)
        self._watch_interfaces(poller)
        now = time.monotonic()
        self._next_refresh = now + (self.options.refresh or 0)
        notify_systemd("READY=1")
        log.info(
            "ready: %d events, %d frames",
            len(self.config.events),
            sum(len(e.frames) for e in self.config.events),
        )
        while not self._stopping:
            try:
                self._iterate(poller)
            except OSError as exc:
                # A socket or netlink hiccup must not end the daemon (and leave doors open):
                # log it, look at the interface again, and go on after a short pause.
                log.warning("transient error: %s", exc)
                time.sleep(0.1)
                try:
                    self._check_link(poller)
                except OSError as again:
                    log.warning("interface check failed too: %s", again)
        return self._shutdown()

    def _iterate(self, poller: select.poll) -> None:
        # Under a flood this runs once per ring block (every millisecond or so): everything
        # besides reading packets is a timestamp comparison unless it is due.
        now = time.monotonic()
        deadline = self.engine.next_deadline()
        if deadline is not None and deadline <= now:
            self._perform(self.engine.tick(now))
            deadline = self.engine.next_deadline()
        self._housekeeping(now, poller)
        for fd, revents in poller.poll(self._poll_timeout_ms(now, deadline)):
            if fd == self._wake_r.fileno():
                self._handle_signals(poller)
            elif self.capture is not None and fd == self.capture.fileno():
                self._on_capture_ready(revents, poller)
            elif self.watcher is not None and fd == self.watcher.fileno() and self.watcher.drain():
                self._check_link(poller)

    def _poll_timeout_ms(self, now: float, deadline: float | None) -> int:
        wake = min(now + IDLE_WAKEUP, self._next_statistics)
        if deadline is not None:
            wake = min(wake, deadline)
        if self.options.refresh:
            wake = min(wake, self._next_refresh)
        if self.capture is None or not self.link_up:
            wake = min(wake, self._next_link_check)
        return max(0, int((wake - now) * 1000) + 1)

    def _on_capture_ready(self, revents: int, poller: select.poll) -> None:
        assert self.capture is not None
        if revents & select.POLLERR:
            code = self.capture.pending_error()
            if code:
                log.warning("capture on %s: %s", self.options.interface, os.strerror(code))
            self._check_link(poller)
            if self.capture is None:
                return
        if self._read_packets() == 0:
            self._empty_wakeups += 1
            if self._empty_wakeups >= _EMPTY_WAKEUPS_BEFORE_CHECK:
                self._empty_wakeups = 0
                self._check_link(poller)
        else:
            self._empty_wakeups = 0

    def _read_packets(self) -> int:
        assert self.capture is not None
        now = time.monotonic()
        engine, debug, local = self.engine, self.options.debug, self._local_packed
        seen = malformed = not_local = 0  # plain locals: this loop runs for every packet
        for packet in self.capture.packets():
            seen += 1
            if packet is None:
                malformed += 1
            elif packet.dst not in local:
                not_local += 1
            else:
                if debug:
                    log.debug("packet %s", _describe_packet(packet))
                actions = engine.feed(packet, now)
                if actions:
                    self._perform(actions)
        counters = self.counters
        counters.malformed += malformed
        counters.not_local += not_local
        counters.packets += seen - malformed - not_local
        return seen

    def _perform(self, actions: list[Action]) -> None:
        """Carry out the engine's actions, keeping the state file ahead of the doors.

        Stops run first, then the state file is rewritten, then starts run: a crash at any
        point leaves a door recorded longer than needed (its stop runs again at restart,
        harmlessly), never an open door unrecorded.
        """
        changes_doors = False
        for action in actions:
            if isinstance(action, RunStop):
                self._dispatch(action)
                changes_doors = True
            elif isinstance(action, (RunStart, DoorExtended)):
                changes_doors = True
        if changes_doors:
            self._persist()
        for action in actions:
            if not isinstance(action, RunStop):
                self._dispatch(action)

    def _dispatch(self, action: Action) -> None:
        if isinstance(action, RunStart):
            self.counters.fired += 1
            log.info("%s: knock from %s accepted: opening", action.event, action.address)
            self._run_command(action, "start")
        elif isinstance(action, RunStop):
            log.info("%s: closing for %s", action.event, action.address)
            self._run_command(action, "stop")
        elif isinstance(action, DoorExtended):
            log.info(
                "%s: knock from %s while open: stop pushed back, now in %.1f s",
                action.event,
                action.address,
                action.due - time.monotonic(),
            )
        elif isinstance(action, Progress):
            log.debug(
                "%s: %s %s (%d/%d)",
                action.event,
                action.address,
                action.what,
                action.step,
                action.of,
            )

    def _run_command(self, action: RunStart | RunStop, what: str) -> None:
        door = (action.event, action.address)  # a door's commands run in order
        label = f"{action.event} {action.address} {what}"
        self.runner.run(label, action.command, action.address, key=door)

    # -- open doors across restarts -------------------------------------------------------

    def restore_doors(self) -> None:
        """Take over the doors a previous run left open: close due ones, reschedule the rest."""
        path = self.options.state_file
        if path is None:
            return
        try:
            saved = state.load(path)
        except state.StateError as exc:
            aside = state.set_aside(path)
            log.error("%s; moved aside to %s", exc, aside)
            return
        wall, mono = time.time(), time.monotonic()
        due_now: list[Action] = []
        for door in saved:
            if door.due <= wall:
                log.info(
                    "%s: door for %s was left open by an earlier run: closing now",
                    door.event,
                    door.address,
                )
                due_now.append(RunStop(door.event, door.address, door.stop_command))
            else:
                log.info(
                    "%s: door for %s was left open by an earlier run: closing in %.0f s",
                    door.event,
                    door.address,
                    door.due - wall,
                )
                self.engine.restore_door(
                    Door(
                        door.event,
                        door.address,
                        mono + door.due - wall,
                        door.stop_command,
                        door.delay,
                    )
                )
        self._perform(due_now)

    def _persist(self) -> None:
        path = self.options.state_file
        if path is None:
            return
        wall, mono = time.time(), time.monotonic()
        doors = [
            state.SavedDoor(d.event, d.address, wall + d.due - mono, d.stop_command, d.delay)
            for d in self.engine.open_doors()
        ]
        try:
            state.save(path, doors)
        except OSError as exc:
            log.error(
                "cannot record open doors in %s: %s (a crash now would leave them open)", path, exc
            )

    # -- interface and addresses ----------------------------------------------------------

    def _housekeeping(self, now: float, poller: select.poll) -> None:
        if self.options.refresh and now >= self._next_refresh:
            self._next_refresh = now + self.options.refresh
            self._check_link(poller)
        elif (self.capture is None or not self.link_up) and now >= self._next_link_check:
            self._check_link(poller)
        if now >= self._next_statistics:
            self._next_statistics = now + STATISTICS_INTERVAL
            self._read_kernel_statistics()

    def _watch_interfaces(self, poller: select.poll) -> None:
        """Follow link and address changes as the kernel announces them, so a new address
        is knockable at once; -r then only adds a periodic re-read on top."""
        try:
            self.watcher = netif.ChangeWatcher()
        except OSError as exc:
            log.warning("cannot follow interface changes (%s): only -r re-reads addresses", exc)
            return
        poller.register(self.watcher.fileno(), select.POLLIN)

    def _check_link(self, poller: select.poll) -> None:
        """Compare the interface with what we know; follow it down, away, back, re-addressed."""
        self._next_link_check = time.monotonic() + LINK_CHECK
        try:
            link = netif.find_interface(self.options.interface)
        except OSError as exc:
            log.warning("cannot read interfaces: %s", exc)
            return
        if link is None or (self.capture is not None and link.index != self.ifindex):
            if self.capture is not None:
                log.warning(
                    "interface %s is gone; waiting for it to come back", self.options.interface
                )
                self._close_capture(poller)
            if link is None:
                return
        if self.capture is None:
            self._reopen(link, poller)
            return
        if link.up != self.link_up:
            self.link_up = link.up
            log.warning("interface %s is %s", link.name, "up again" if link.up else "down")
        self._update_addresses(link.addresses)

    def _reopen(self, link: netif.Interface, poller: select.poll) -> None:
        try:
            self._open_capture(link)
        except (OSError, ValueError) as exc:
            log.warning("cannot capture on %s yet: %s", link.name, exc)
            return
        assert self.capture is not None
        poller.register(self.capture.fileno(), select.POLLIN)

    def _close_capture(self, poller: select.poll) -> None:
        assert self.capture is not None
        self._read_kernel_statistics()
        poller.unregister(self.capture.fileno())
        self.counters.ring_resyncs += self.capture.resyncs
        self.capture.close()
        self.capture = None

    def _update_addresses(self, addresses: Iterable[str]) -> None:
        new = frozenset(addresses)
        if new == self.local:
            return
        log.info(
            "addresses of %s changed: %s -> %s",
            self.options.interface,
            ", ".join(sorted(self.local)) or "none",
            ", ".join(sorted(new)) or "none",
        )
        self._set_local(new)
        if self.capture is not None:
            try:
                self.capture.set_filter(self._program())
            except ValueError as exc:
                log.error("kernel filter for the new addresses: %s; keeping the old filter", exc)

    def _set_local(self, addresses: Iterable[str]) -> None:
        # Zones (fe80::1%eth0) are not part of the address a packet carries.
        self.local = frozenset(a.split("%", 1)[0] for a in addresses)
        self._local_packed = frozenset(address_bytes(a) for a in self.local)

    def _read_kernel_statistics(self) -> None:
        if self.capture is None:
            return
        try:
            stats = self.capture.statistics()
        except OSError:
            return
        self.counters.kernel_packets += stats.packets
        if stats.drops:
            self.counters.kernel_drops += stats.drops
            log.warning(
                "kernel ring dropped %d packets (%d in all)",
                stats.drops,
                self.counters.kernel_drops,
            )

    # -- signals --------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        self._wake_w.setblocking(False)
        self._wake_r.setblocking(False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Only record it: the loop does the work, outside of the signal handler.
        self._signals.append(signum)
        try:
            self._wake_w.send(b"\0")
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise

    def _handle_signals(self, poller: select.poll) -> None:
        try:
            while self._wake_r.recv(256):
                pass
        except BlockingIOError:
            pass
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("%s: stopping", signal.Signals(signum).name)
                self._stopping = True
            elif signum == signal.SIGHUP:
                self.reload()
            elif signum == signal.SIGUSR1:
                self.log_statistics()

    def reload(self) -> None:
        try:
            config = load_config(self.options.config_path)
        except ConfigError as exc:
            for message in exc.messages:
                log.error("%s", message)
            log.error("reload rejected: keeping the current configuration")
            return
        try:
            program = self._program(config)
        except ValueError as exc:
            log.error("reload rejected: kernel filter: %s; keeping the current configuration", exc)
            return
        for warning in config.warnings:
            log.warning("%s", warning)
        self.config = config
        self.engine.reload(config)
        if self.capture is not None:
            self.capture.set_filter(program)
        log.info("configuration reloaded: %d events", len(config.events))

    def log_statistics(self) -> None:
        self._read_kernel_statistics()
        c = self.counters
        log.info(
            "statistics: kernel_packets=%d kernel_drops=%d packets=%d malformed=%d "
            "not_local=%d attempts=%d open_doors=%d fired=%d ring_resyncs=%d",
            c.kernel_packets,
            c.kernel_drops,
            c.packets,
            c.malformed,
            c.not_local,
            self.engine.attempt_count,
            len(self.engine.open_doors()),
            c.fired,
            c.ring_resyncs + (self.capture.resyncs if self.capture is not None else 0),
        )

    # -- the end --------------------------------------------------------------------------

    def _shutdown(self) -> int:
        notify_systemd("STOPPING=1")
        self._perform(self.engine.shutdown())  # also empties the state file
        if not self.runner.wait(STOP_GRACE):
            log.error("some commands were still running at exit")
        self.log_statistics()
        if self.capture is not None:
            self.capture.close()
        if self.watcher is not None:
            self.watcher.close()
        log.info("stopped")
        return 0


def notify_systemd(message: str) -> bool:
    """Tell systemd our state (sd_notify protocol) when it runs us as Type=notify.

    The protocol is one datagram on the unix socket named by $NOTIFY_SOCKET ('@' means the
    abstract namespace); no library needed. Returns False when there is no one to tell.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address.lstrip("\0"), exc)
        return False
    return True


def _describe_packet(packet: Packet) -> str:
    proto = PROTOCOL_NAMES.get(packet.protocol, str(packet.protocol))
    flags = f" {describe_flags(packet.flags)}" if proto == "tcp" else ""
    source, destination = address_text(packet.src), address_text(packet.dst)
    return f"{source} -> {destination} {proto}/{packet.port}{flags}"
