"""The knock state machine: parsed packets and the time go in, actions come out.

This module does no I/O at all: it never reads a clock, opens a socket or starts a process.
The daemon feeds it packets with the time it saw them, asks it when it next needs to be woken
(`next_deadline`), calls `tick` then, and carries out the actions it returns.

Matching rules
--------------
* A packet matches a frame when protocol and destination port are equal and, for TCP, the
  packet's whole flag byte equals the frame's flags. All eight bits count: the letters name
  FIN SYN RST PSH ACK URG, so ECE and CWR must be clear. Only a frame with `i` accepts any
  flags.
* Only packets addressed to one of the interface's own addresses are fed in (the daemon and
  the kernel filter see to that), never outgoing ones.
* State is kept per event and per source address (an *attempt*). A packet that matches frame 0
  of an event starts an attempt for its source; the whole sequence must then arrive within the
  event's `timeout` seconds of that first frame.
* For a source with an attempt in progress, in this order:
  1. a packet matching the next frame advances the attempt; completing the last frame fires
     the event;
  2. otherwise a packet matching the frame just matched is a retransmission and is ignored;
  3. otherwise a packet matching any other frame of the event breaks the attempt, and starts a
     new one if it matches frame 0.
  Packets that match no frame of the event are ignored.
* Events are independent: one packet can advance several events.
* A fired event yields `RunStart`. If the event has a stop_command, the door stays *open* until
  `command_delay` seconds later, when `RunStop` is due. If the same source completes the same
  event while its door is open, start_command is not run again; the stop is pushed back to
  `command_delay` from now (`DoorExtended`), so firewall rules are never added twice.
* `shutdown()` returns every pending stop at once, so that no door stays open when the daemon
  ends.

Cost: a packet costs one dict lookup in a table built from the config, plus one dict lookup per
event that the packet can advance. Attempts are capped (`max_attempts`); when full, the oldest
attempt is evicted. Expired attempts are swept by `tick` without waiting for traffic.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from tportknockd.model import PROTO_TCP, Config, Event, Packet, address_text

DEFAULT_MAX_ATTEMPTS = 65536


# --- actions -------------------------------------------------------------------------------


class RunStart(NamedTuple):
    """Run `command` (an event's start_command) for `address`."""

    event: str
    address: str
    command: str


class RunStop(NamedTuple):
    """Run `command` (the stop_command recorded when the door opened) for `address`."""

    event: str
    address: str
    command: str


class DoorExtended(NamedTuple):
    """A source knocked again while its door was open: the stop is now due at `due`."""

    event: str
    address: str
    due: float


class Progress(NamedTuple):
    """Debug trace of an attempt (only emitted when the engine is built with trace=True)."""

    event: str
    address: str
    what: str  # "started", "advanced", "retransmission", "broken", "expired", "evicted"
    step: int  # frames matched so far
    of: int  # frames in the sequence


Action = RunStart | RunStop | DoorExtended | Progress


@dataclass(slots=True)
class Door:
    """A fired event whose stop_command is still to run."""

    event: str
    address: str
    due: float
    stop_command: str
    delay: float


# --- the machine ---------------------------------------------------------------------------


class _Attempt(NamedTuple):
    """Progress of one source through one event.

    A tuple of plain numbers, not an object: the garbage collector stops tracking such tuples,
    so 65k attempts held during a spoofed flood do not make every full collection walk them
    (as instances, one pass took ~37 ms: a latency spike for real knocks).
    """

    started: float
    matched: int  # frames matched so far; frame 0 is what starts an attempt


# _Attempt(...) goes through a Python-level __new__; the tuple constructor is one C call, and
# a spoofed flood creates one attempt per packet.
_new_attempt = tuple.__new__


def _frame_masks(config: Config) -> dict[tuple[int, int, int], tuple[tuple[int, int], ...]]:
    """Map each (protocol, port, flags) a packet can carry to [(event index, frame mask)].

    Bit k of the mask is set when the packet matches frame k. Frames with `i` (any flags) are
    expanded into all 256 flag values, so a packet needs exactly one lookup.
    """
    masks: dict[tuple[int, int, int], dict[int, int]] = {}
    for ev_index, event in enumerate(config.events):
        for frame_index, frame in enumerate(event.frames):
            if frame.protocol != PROTO_TCP:
                flag_values: Iterable[int] = (0,)
            elif frame.flags is None:
                flag_values = range(256)
            else:
                flag_values = (frame.flags,)
            for flags in flag_values:
                per_event = masks.setdefault((frame.protocol, frame.port, flags), {})
                per_event[ev_index] = per_event.get(ev_index, 0) | (1 << frame_index)
    return {key: tuple(per_event.items()) for key, per_event in masks.items()}


@dataclass
class Engine:
    config: Config
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    trace: bool = False
    # Per event index: packed source -> attempt, in the order attempts started (oldest first).
    # OrderedDict, not dict: a plain dict used as a FIFO makes `next(iter(d))` walk over every
    # entry deleted since its last resize, which turned a spoofed flood quadratic.
    _attempts: list[OrderedDict[bytes, _Attempt]] = field(init=False, repr=False)
    _table: dict[tuple[int, int, int], tuple[tuple[int, int], ...]] = field(init=False, repr=False)
    _attempt_count: int = field(init=False, default=0)
    _doors: dict[tuple[str, str], Door] = field(init=False, default_factory=dict)
    # (due, event, address); stale entries (door gone or pushed back) are skipped when popped.
    _stop_heap: list[tuple[float, str, str]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._install(self.config)

    def _install(self, config: Config) -> None:
        self.config = config
        self._table = _frame_masks(config)
        self._attempts = [OrderedDict() for _ in config.events]
        self._attempt_count = 0

    # -- packets --------------------------------------------------------------------------

    def feed(self, packet: Packet, now: float) -> list[Action]:
        """Account for one received packet; return what must happen now."""
        hits = self._table.get((packet.protocol, packet.port, packet.flags))
        if hits is None:
            return []
        actions: list[Action] = []
        for ev_index, mask in hits:
            self._step(ev_index, mask, packet.src, now, actions)
        return actions

    def _step(self, ev_index: int, mask: int, src: bytes, now: float, out: list[Action]) -> None:
        event = self.config.events[ev_index]
        attempts = self._attempts[ev_index]
        attempt = attempts.get(src)
        if attempt is not None and now - attempt.started > event.timeout:
            self._drop(attempts, src)
            self._note(out, event, src, "expired", attempt.matched)
            attempt = None
        if attempt is None:
            if mask & 1:
                self._start(ev_index, event, src, now, out)
            return
        if mask >> attempt.matched & 1:
            matched = attempt.matched + 1
            if matched == len(event.frames):
                self._drop(attempts, src)
                self._fire(event, src, now, out)
            else:
                attempts[src] = _Attempt(attempt.started, matched)  # keeps its place in order
                self._note(out, event, src, "advanced", matched)
        elif mask >> (attempt.matched - 1) & 1:
            self._note(out, event, src, "retransmission", attempt.matched)
        else:
            self._drop(attempts, src)
            self._note(out, event, src, "broken", attempt.matched)
            if mask & 1:
                self._start(ev_index, event, src, now, out)

    def _start(
        self, ev_index: int, event: Event, src: bytes, now: float, out: list[Action]
    ) -> None:
        if len(event.frames) == 1:
            self._fire(event, src, now, out)
            return
        if self._attempt_count >= self.max_attempts:
            self._evict_oldest(out)
        self._attempts[ev_index][src] = _new_attempt(_Attempt, (now, 1))
        self._attempt_count += 1
        if self.trace:
            self._note(out, event, src, "started", 1)

    def _drop(self, attempts: OrderedDict[bytes, _Attempt], src: bytes) -> None:
        del attempts[src]
        self._attempt_count -= 1

    def _evict_oldest(self, out: list[Action]) -> None:
        """Drop the attempt that started first, whatever its event."""
        busy = [index for index, attempts in enumerate(self._attempts) if attempts]
        if not busy:
            return
        ev_index = busy[0] if len(busy) == 1 else min(busy, key=self._first_start)
        src, attempt = self._attempts[ev_index].popitem(last=False)
        self._attempt_count -= 1
        if self.trace:
            self._note(out, self.config.events[ev_index], src, "evicted", attempt.matched)

    def _first_start(self, ev_index: int) -> float:
        attempts = self._attempts[ev_index]
        return attempts[next(iter(attempts))].started

    def _note(self, out: list[Action], event: Event, src: bytes, what: str, step: int) -> None:
        if self.trace:
            out.append(Progress(event.name, address_text(src), what, step, len(event.frames)))

    # -- doors ----------------------------------------------------------------------------

    def _fire(self, event: Event, src: bytes, now: float, out: list[Action]) -> None:
        address = address_text(src)
        if event.stop_command is None or event.command_delay is None:
            out.append(RunStart(event.name, address, event.start_command))
            return
        due = now + event.command_delay
        key = (event.name, address)
        door = self._doors.get(key)
        if door is None:
            self._doors[key] = Door(
                event.name, address, due, event.stop_command, event.command_delay
            )
            out.append(RunStart(event.name, address, event.start_command))
        else:
            door.due = due
            out.append(DoorExtended(event.name, address, due))
        heapq.heappush(self._stop_heap, (due, event.name, address))

    def open_doors(self) -> list[Door]:
        """The doors whose stop_command is pending, soonest first (for persistence, logs)."""
        return sorted(self._doors.values(), key=lambda d: d.due)

    def restore_door(self, door: Door) -> None:
        """Re-register a door opened by an earlier run (its start_command already ran)."""
        key = (door.event, door.address)
        current = self._doors.get(key)
        if current is None or current.due < door.due:
            self._doors[key] = door
            heapq.heappush(self._stop_heap, (door.due, door.event, door.address))

    # -- time -----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Run what is due by `now`: pending stops, and the sweep of expired attempts."""
        out: list[Action] = []
        self._expire(now, out)
        for door in self._due_doors(now):
            out.append(RunStop(door.event, door.address, door.stop_command))
        return out

    def _due_doors(self, now: float) -> Iterator[Door]:
        heap = self._stop_heap
        while heap and heap[0][0] <= now:
            due, name, src = heapq.heappop(heap)
            door = self._doors.get((name, src))
            if door is not None and door.due == due:
                del self._doors[(name, src)]
                yield door

    def _expire(self, now: float, out: list[Action]) -> None:
        for event, attempts in zip(self.config.events, self._attempts, strict=True):
            # Attempts of one event are in start order, so expired ones sit at the front.
            while attempts:
                src, attempt = next(iter(attempts.items()))
                if now - attempt.started <= event.timeout:
                    break
                self._drop(attempts, src)
                self._note(out, event, src, "expired", attempt.matched)

    def next_deadline(self) -> float | None:
        """The earliest time at which `tick` has something to do, or None."""
        candidates = [
            attempts[next(iter(attempts))].started + event.timeout
            for event, attempts in zip(self.config.events, self._attempts, strict=True)
            if attempts
        ]
        heap = self._stop_heap
        while heap and self._doors.get((heap[0][1], heap[0][2]), None) is None:
            heapq.heappop(heap)  # forget stops whose door is gone
        if heap:
            candidates.append(heap[0][0])
        return min(candidates) if candidates else None

    @property
    def attempt_count(self) -> int:
        return self._attempt_count

    # -- life cycle -----------------------------------------------------------------------

    def shutdown(self) -> list[Action]:
        """Close every open door now: the stops of all pending doors, soonest first."""
        stops: list[Action] = [
            RunStop(d.event, d.address, d.stop_command) for d in self.open_doors()
        ]
        self._doors.clear()
        self._stop_heap.clear()
        return stops

    def reload(self, config: Config) -> None:
        """Switch to a new config.

        Open doors keep their pending stops (with the stop_command they were opened with).
        Attempts survive for events whose name, sequence and timeout are unchanged.
        """
        old_events = self.config.events
        old_attempts = self._attempts
        self._install(config)
        kept = {
            (e.name, e.frames, e.timeout): attempts
            for e, attempts in zip(old_events, old_attempts, strict=True)
        }
        for ev_index, event in enumerate(config.events):
            attempts = kept.get((event.name, event.frames, event.timeout))
            if attempts:
                self._attempts[ev_index] = attempts
                self._attempt_count += len(attempts)
