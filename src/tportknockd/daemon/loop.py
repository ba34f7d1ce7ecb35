"""The daemon: one loop around the engine.

One thread polls the captures, the rtnetlink watcher and the signal inbox, feeds the engine
packets and the monotonic clock, and hands its actions to the doorkeeper. What each part does
lives in its own module:

* `interfaces` / `listener` — the listened interfaces, one capture each, followed as they go
  down, up, away and back, and their addresses;
* `matching` — where knocks are matched (classic filters and Python, or the kernel engine);
* `doorkeeper` — the engine's actions carried out, with the state file kept ahead of the doors;
* `statistics` — the counters; `signals` — signals handled in the loop, not in the handler.

Commands run in worker threads (see actions), so nothing here waits for them.
"""

from __future__ import annotations

import gc
import logging
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tportknockd.capture.interfaces import Interfaces, StartupError
from tportknockd.capture.ring import RingGeometry
from tportknockd.capture.selection import Selection
from tportknockd.capture.statistics import Counters
from tportknockd.config import ConfigError, load_config
from tportknockd.daemon import state
from tportknockd.daemon.commands import DEFAULT_MAX_RUNNING, DEFAULT_TIME_LIMIT, CommandRunner
from tportknockd.daemon.doorkeeper import CommandDoors, Doorkeeper
from tportknockd.daemon.matching import ENGINES, EngineError, Matching, choose
from tportknockd.daemon.sequencer import Sequencer, frames_of
from tportknockd.daemon.signals import SignalInbox
from tportknockd.daemon.systemd import notify_systemd

if TYPE_CHECKING:  # imported when an event has a door
    from tportknockd.daemon.firewall_doors import FirewallDoors
from tportknockd.matching.engine import DEFAULT_MAX_ATTEMPTS, Action, Engine
from tportknockd.matching.sequences import LiveSequence, Schedule
from tportknockd.model import Config, Frame

__all__ = ["ENGINES", "Daemon", "Options", "StartupError", "notify_systemd"]

log = logging.getLogger("tportknockd")

IDLE_WAKEUP = 5.0  # seconds: the longest sleep
STATISTICS_INTERVAL = 5.0  # seconds between reads of the kernel's drop counters
STOP_GRACE = 10.0  # seconds to wait at exit for the last stop commands to finish
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


@dataclass
class Options:
    config_path: str
    interfaces: Selection
    refresh: float | None = None
    debug: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_commands: int = DEFAULT_MAX_RUNNING
    command_time_limit: float = DEFAULT_TIME_LIMIT
    state_file: str | None = state.DEFAULT_STATE_FILE
    ring_mib: int | None = None  # None: 2 MiB, or the kernel engine's smaller ring
    engine: str = "auto"  # one of ENGINES


@dataclass
class Daemon:
    config: Config
    options: Options
    engine: Engine = field(init=False)
    runner: CommandRunner = field(init=False)
    counters: Counters = field(default_factory=Counters)
    matching: Matching = field(init=False)
    interfaces: Interfaces = field(init=False)

    def __post_init__(self) -> None:
        options = self.options
        self.engine = Engine(self.config, options.max_attempts, trace=options.debug)
        self.runner = CommandRunner(options.max_commands, options.command_time_limit)
        self.sequencer = Sequencer(self.engine, self.config)
        self.doors = Doorkeeper(
            self.engine,
            [CommandDoors(self.runner)],
            options.state_file,
            self.counters,
            self.sequencer.use_list_line,
        )
        self.poller = select.poll()
        #: What to do when one of the daemon's own descriptors is readable (the captures'
        #: are the interfaces' business).
        self._handlers: dict[int, Callable[[], None]] = {}
        self.signals = SignalInbox()
        #: The daemon's own nftables table, while some event has a door.
        self.firewall: FirewallDoors | None = None
        self._stopping = False
        self._next_statistics = 0.0

    def _current_frames(self) -> list[Frame]:
        """Every frame the engine wants now: what the kernel filters let through."""
        return self.sequencer.frames()

    def open(self) -> None:
        """Close the door ports, choose the engine, open the captures; StartupError with a
        line fit for the user."""
        self.sequencer.start(self.apply)
        # Before any capture: a start-up that fails later leaves the ports closed.
        self._guard_doors(self.config)
        try:
            self.matching = choose(
                self.options.engine,
                self.engine.sequences,
                self.options.max_attempts,
                self.options.debug,
            )
        except EngineError as exc:
            raise StartupError(str(exc)) from None
        self.interfaces = Interfaces(
            self.options.interfaces,
            self.matching,
            self._current_frames,
            self.poller,
            self.counters,
            RingGeometry.of_size(self.options.ring_mib) if self.options.ring_mib else None,
            self.options.refresh,
            self.options.debug,
        )
        self.interfaces.start()

    def _guard_doors(self, config: Config) -> None:
        """Install, replace or empty the door table for `config`; StartupError says why
        (the table is replaced in one transaction: on failure the old one stands)."""
        if self.firewall is None and not any(event.door for event in config.events):
            return
        # Imported only for doors: a daemon without them loads no libnftables.
        from tportknockd.daemon.firewall_doors import FirewallDoors, FirewallError

        try:
            if self.firewall is not None:
                self.firewall.follow(config)
                return
            self.firewall = FirewallDoors(config, self.counters)
        except FirewallError as exc:
            raise StartupError(str(exc)) from None
        self.doors.kinds.insert(0, self.firewall)  # the door opens before the command runs
        self._watch(self.firewall.fileno(), self.firewall.on_ruleset_change)

    def _watch(self, fd: int, handler: Callable[[], None]) -> None:
        self._handlers[fd] = handler
        self.poller.register(fd, select.POLLIN)

    def apply(self, sequences: list[LiveSequence], config: Config | None = None) -> None:
        """Match `sequences` from now on, in the kernel filters, the matching and the engine
        (which also switches to `config`, on a reload); or, when they do not fit (ValueError,
        which says why), change nothing."""
        previous = self.engine.sequences
        self.matching.set_sequences(sequences)
        try:
            self.interfaces.refilter(frames_of(sequences))  # all compiled before any attached
        except ValueError:
            self.matching.set_sequences(previous)
            raise
        if config is None:
            self.engine.set_sequences(sequences)
        else:
            self.engine.reload(config, sequences)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; then close every open door. Returns the exit status."""
        self.signals.install(HANDLED_SIGNALS)
        self._watch(self.signals.fileno(), self._handle_signals)
        for fd in self.matching.fds():
            self._watch(fd, self._on_completions)
        self.doors.restore()
        # What start-up built lives as long as the daemon: keep it out of every later
        # collection, so collections stay short while floods churn through attempts. What
        # start-up left behind in reference cycles (the eBPF program's generator, its labels)
        # is collected first: frozen, it would be kept for good.
        gc.collect()
        gc.freeze()
        notify_systemd("READY=1")
        # Said here, not when chosen: a start-up that fails says one thing, what went wrong.
        log.info("%s", self.matching.description)
        log.info(
            "ready: %d events, %d frames, on %s",
            len(self.config.events),
            len(self.sequencer.frames()),
            self.options.interfaces.describe(),
        )
        while not self._stopping:
            try:
                self._iterate()
            except OSError as exc:
                # A socket or netlink hiccup must not end the daemon (and leave doors open):
                # log it, look at the interfaces again, and go on after a short pause.
                log.warning("transient error: %s", exc)
                time.sleep(0.1)
                try:
                    self.interfaces.follow()
                except OSError as again:
                    log.warning("interface check failed too: %s", again)
        return self._shutdown()

    def _iterate(self) -> None:
        # Under a flood this runs once per ring block (every millisecond or so): everything
        # besides reading packets is a timestamp comparison unless it is due.
        now = time.monotonic()
        deadline = self.engine.next_deadline()
        if deadline is not None and deadline <= now:
            self.doors.perform(self.engine.tick(now))
            deadline = self.engine.next_deadline()
        self.interfaces.housekeeping(now)
        self.sequencer.housekeeping(now)
        if now >= self._next_statistics:
            self._next_statistics = now + STATISTICS_INTERVAL
            self.interfaces.read_kernel_statistics()
        feed, perform, handlers = self.engine.feed, self.doors.perform, self._handlers
        for fd, revents in self.poller.poll(self._poll_timeout_ms(now, deadline)):
            handler = handlers.get(fd)
            if handler is not None:
                handler()
            else:
                self.interfaces.on_ready(fd, revents, feed, perform)

    def _on_completions(self) -> None:
        """Carry out what the knocks completed in the kernel call for: in one go for each
        run of completions on the same interface (one state file write, not one each)."""
        batch: list[Action] = []
        batch_index = None
        for actions, ifindex in self.matching.completions(self.engine, time.monotonic()):
            if batch and ifindex != batch_index:
                self.doors.perform(batch, self.interfaces.name_of(batch_index or 0))
                batch = []
            batch += actions
            batch_index = ifindex
        if batch:
            self.doors.perform(batch, self.interfaces.name_of(batch_index or 0))

    def _poll_timeout_ms(self, now: float, deadline: float | None) -> int:
        wake = min(now + IDLE_WAKEUP, self._next_statistics)
        for other in (deadline, self.interfaces.next_wakeup(), self.sequencer.next_wakeup()):
            if other is not None:
                wake = min(wake, other)
        return max(0, int((wake - now) * 1000) + 1)

    # -- signals --------------------------------------------------------------------------

    def _handle_signals(self) -> None:
        for signum in self.signals.take():
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
        schedule = Schedule(config)
        live = schedule.live(time.time())
        try:
            self._guard_doors(config)
        except StartupError as exc:
            log.error("reload rejected: %s; keeping the current configuration", exc)
            return
        try:
            self.apply(live, config)
        except ValueError as exc:
            log.error("reload rejected: kernel filter: %s; keeping the current configuration", exc)
            try:
                self._guard_doors(self.config)
            except StartupError as again:
                log.error("the door table could not be put back as it was: %s", again)
            return
        for warning in config.warnings:
            log.warning("%s", warning)
        self.config = config
        self.sequencer.adopt(schedule)
        log.info("configuration reloaded: %d events", len(config.events))

    def log_statistics(self) -> None:
        self.interfaces.read_kernel_statistics()
        summary = self.counters.summary(
            self.engine.attempt_count,
            len(self.engine.open_doors()),
            self.interfaces.open_resyncs(),
        )
        extra = [self.matching.summary()]
        if self.firewall is not None:
            extra.append(self.firewall.summary())
        log.info("statistics: %s", " ".join([summary, *filter(None, extra)]))

    # -- the end --------------------------------------------------------------------------

    def _shutdown(self) -> int:
        notify_systemd("STOPPING=1")
        self.doors.perform(self.engine.shutdown())  # also empties the state file
        if not self.runner.wait(STOP_GRACE):
            log.error("some commands were still running at exit")
        self.log_statistics()
        self.interfaces.close()
        self.matching.close()
        if self.firewall is not None:
            self.firewall.close()  # the table stays: the ports stay closed
        log.info("stopped")
        return 0
