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
* Only packets addressed to an address of a listened interface are fed in (the daemon and
  the kernel filter see to that), never outgoing ones, whichever listened interface they
  came in on.
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
* A one-time event (otp_secret, one_time_sequences) is matched through its live sequences
  (sequences.py): the windows w-1, w and w+1, or the list's current line. Each is matched as
  above, independently. A completed one-time sequence is *burned* (doors.py): it opens for the
  first address only; the same address may complete it again while its door is open (the stop
  is pushed back), any other completion is a `Replayed` and opens nothing.
* A fired event yields `RunStart`. If the event has a stop_command, the door stays *open* until
  `command_delay` seconds later, when `RunStop` is due. If the same source completes the same
  event while its door is open, start_command is not run again; the stop is pushed back to
  `command_delay` from now (`DoorExtended`), so firewall rules are never added twice.
* `shutdown()` returns every pending stop at once, so that no door stays open when the daemon
  ends.

Cost: a packet costs one dict lookup in a table built from the live sequences, plus one dict
lookup per sequence that the packet can advance. Attempts are capped (`max_attempts`); when
full, the oldest attempt is evicted. Expired attempts are swept by `tick` without waiting for
traffic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from tportknockd.doors import Door, Doors
from tportknockd.model import PROTO_TCP, Config, Packet, address_text
from tportknockd.outcomes import (
    Action,
    Burned,
    DoorExtended,
    ListLineUsed,
    Progress,
    Replayed,
    RunStart,
    RunStop,
)
from tportknockd.sequences import LiveSequence, SequenceKey, static_sequences

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "Action",
    "Burned",
    "Door",
    "DoorExtended",
    "Engine",
    "ListLineUsed",
    "Progress",
    "Replayed",
    "RunStart",
    "RunStop",
]

DEFAULT_MAX_ATTEMPTS = 65536


class _Attempt(NamedTuple):
    """Progress of one source through one sequence.

    A tuple of plain numbers, not an object: the garbage collector stops tracking such tuples,
    so 65k attempts held during a spoofed flood do not make every full collection walk them
    (as instances, one pass took ~37 ms: a latency spike for real knocks).
    """

    started: float
    matched: int  # frames matched so far; frame 0 is what starts an attempt


# _Attempt(...) goes through a Python-level __new__; the tuple constructor is one C call, and
# a spoofed flood creates one attempt per packet.
_new_attempt = tuple.__new__

_Table = dict[tuple[int, int, int], tuple[tuple[int, int], ...]]


def _frame_masks(sequences: Sequence[LiveSequence]) -> _Table:
    """Map each (protocol, port, flags) a packet can carry to [(sequence index, frame mask)].

    Bit k of the mask is set when the packet matches frame k. Frames with `i` (any flags) are
    expanded into all 256 flag values, so a packet needs exactly one lookup.
    """
    masks: dict[tuple[int, int, int], dict[int, int]] = {}
    for seq_index, sequence in enumerate(sequences):
        for frame_index, frame in enumerate(sequence.frames):
            if frame.protocol != PROTO_TCP:
                flag_values: Iterable[int] = (0,)
            elif frame.flags is None:
                flag_values = range(256)
            else:
                flag_values = (frame.flags,)
            for flags in flag_values:
                per_seq = masks.setdefault((frame.protocol, frame.port, flags), {})
                per_seq[seq_index] = per_seq.get(seq_index, 0) | (1 << frame_index)
    return {key: tuple(per_seq.items()) for key, per_seq in masks.items()}


@dataclass
class Engine:
    config: Config
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    trace: bool = False
    doors: Doors = field(init=False, default_factory=Doors)
    _sequences: list[LiveSequence] = field(init=False, repr=False)
    # Per sequence index: packed source -> attempt, in the order attempts started (oldest
    # first). OrderedDict, not dict: a plain dict used as a FIFO makes `next(iter(d))` walk
    # over every entry deleted since its last resize, which turned a spoofed flood quadratic.
    _attempts: list[OrderedDict[bytes, _Attempt]] = field(init=False, repr=False)
    _table: _Table = field(init=False, repr=False)
    _attempt_count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._sequences = []
        self._by_key: dict[SequenceKey, LiveSequence] = {}
        self._retired: dict[SequenceKey, LiveSequence] = {}
        self._attempts = []
        self.set_sequences(static_sequences(self.config))

    # -- what is matched ------------------------------------------------------------------

    def set_sequences(self, sequences: Sequence[LiveSequence]) -> None:
        """Match these sequences from now on (one-time windows moved, a list moved on).

        Attempts in progress are kept for the sequences that stay.
        """
        kept = zip(self._sequences, self._attempts, strict=True)
        old = {seq.key: attempts for seq, attempts in kept}
        self._retired = {seq.key: seq for seq in self._sequences}
        self._sequences = list(sequences)
        self._by_key = {seq.key: seq for seq in self._sequences}
        self._table = _frame_masks(self._sequences)
        self._attempts = [old.get(seq.key) or OrderedDict() for seq in self._sequences]
        self._attempt_count = sum(len(attempts) for attempts in self._attempts)
        self.doors.forget_unreachable(self._sequences)

    @property
    def sequences(self) -> list[LiveSequence]:
        return list(self._sequences)

    # -- packets --------------------------------------------------------------------------

    def feed(self, packet: Packet, now: float) -> list[Action]:
        """Account for one received packet; return what must happen now."""
        hits = self._table.get((packet.protocol, packet.port, packet.flags))
        if hits is None:
            return []
        actions: list[Action] = []
        for seq_index, mask in hits:
            self._step(seq_index, mask, packet.src, now, actions)
        return actions

    def _step(self, seq_index: int, mask: int, src: bytes, now: float, out: list[Action]) -> None:
        sequence = self._sequences[seq_index]
        attempts = self._attempts[seq_index]
        attempt = attempts.get(src)
        if attempt is not None and now - attempt.started > sequence.event.timeout:
            self._drop(attempts, src)
            self._note(out, sequence, src, "expired", attempt.matched)
            attempt = None
        if attempt is None:
            if mask & 1:
                self._start(seq_index, sequence, src, now, out)
            return
        if mask >> attempt.matched & 1:
            matched = attempt.matched + 1
            if matched == len(sequence.frames):
                self._drop(attempts, src)
                self.doors.complete(sequence, address_text(src), now, out)
            else:
                attempts[src] = _Attempt(attempt.started, matched)  # keeps its place in order
                self._note(out, sequence, src, "advanced", matched)
        elif mask >> (attempt.matched - 1) & 1:
            self._note(out, sequence, src, "retransmission", attempt.matched)
        else:
            self._drop(attempts, src)
            self._note(out, sequence, src, "broken", attempt.matched)
            if mask & 1:
                self._start(seq_index, sequence, src, now, out)

    def _start(
        self, seq_index: int, sequence: LiveSequence, src: bytes, now: float, out: list[Action]
    ) -> None:
        if len(sequence.frames) == 1:
            self.doors.complete(sequence, address_text(src), now, out)
            return
        if self._attempt_count >= self.max_attempts:
            self._evict_oldest(out)
        self._attempts[seq_index][src] = _new_attempt(_Attempt, (now, 1))
        self._attempt_count += 1
        if self.trace:
            self._note(out, sequence, src, "started", 1)

    def _drop(self, attempts: OrderedDict[bytes, _Attempt], src: bytes) -> None:
        del attempts[src]
        self._attempt_count -= 1

    def _evict_oldest(self, out: list[Action]) -> None:
        """Drop the attempt that started first, whatever its sequence."""
        busy = [index for index, attempts in enumerate(self._attempts) if attempts]
        if not busy:
            return
        seq_index = busy[0] if len(busy) == 1 else min(busy, key=self._first_start)
        src, attempt = self._attempts[seq_index].popitem(last=False)
        self._attempt_count -= 1
        if self.trace:
            self._note(out, self._sequences[seq_index], src, "evicted", attempt.matched)

    def _first_start(self, seq_index: int) -> float:
        attempts = self._attempts[seq_index]
        return attempts[next(iter(attempts))].started

    def _note(
        self, out: list[Action], sequence: LiveSequence, src: bytes, what: str, step: int
    ) -> None:
        if self.trace:
            name = sequence.event.name
            out.append(Progress(name, address_text(src), what, step, len(sequence.frames)))

    def complete(self, key: SequenceKey, src: bytes, now: float) -> list[Action]:
        """A sequence matched elsewhere (the kernel engine) completed for `src`: what the last
        frame would have done here. A sequence replaced by the last `set_sequences` still
        counts (its knock may have completed just before); unknown ones are ignored."""
        sequence = self._by_key.get(key) or self._retired.get(key)
        if sequence is None:
            return []
        out: list[Action] = []
        self.doors.complete(sequence, address_text(src), now, out)
        return out

    # -- doors ----------------------------------------------------------------------------

    def open_doors(self) -> list[Door]:
        """The doors whose stop_command is pending, soonest first (for persistence, logs)."""
        return self.doors.open_doors()

    def restore_door(self, door: Door) -> None:
        """Re-register a door opened by an earlier run (its start_command already ran)."""
        self.doors.restore_door(door)

    # -- time -----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Run what is due by `now`: pending stops, and the sweep of expired attempts."""
        out: list[Action] = []
        self._expire(now, out)
        out.extend(self.doors.due(now))
        return out

    def _expire(self, now: float, out: list[Action]) -> None:
        for sequence, attempts in zip(self._sequences, self._attempts, strict=True):
            # Attempts of one sequence are in start order, so expired ones sit at the front.
            while attempts:
                src, attempt = next(iter(attempts.items()))
                if now - attempt.started <= sequence.event.timeout:
                    break
                self._drop(attempts, src)
                self._note(out, sequence, src, "expired", attempt.matched)

    def next_deadline(self) -> float | None:
        """The earliest time at which `tick` has something to do, or None."""
        candidates = [
            attempts[next(iter(attempts))].started + sequence.event.timeout
            for sequence, attempts in zip(self._sequences, self._attempts, strict=True)
            if attempts
        ]
        stop = self.doors.next_due()
        if stop is not None:
            candidates.append(stop)
        return min(candidates) if candidates else None

    @property
    def attempt_count(self) -> int:
        return self._attempt_count

    # -- life cycle -----------------------------------------------------------------------

    def shutdown(self) -> list[Action]:
        """Close every open door now: the stops of all pending doors, soonest first."""
        return self.doors.shutdown()

    def reload(self, config: Config, sequences: Sequence[LiveSequence] | None = None) -> None:
        """Switch to a new config and its live `sequences` (default: its static ones).

        Open doors keep their pending stops (with the stop_command they were opened with).
        Attempts survive for sequences whose event name, frames and timeout are unchanged.
        """
        old_timeouts = {event.name: event.timeout for event in self.config.events}
        self.config = config
        new = list(sequences) if sequences is not None else static_sequences(config)
        # An attempt carries over only if its event kept its timeout.
        changed = {e.name for e in config.events if old_timeouts.get(e.name) != e.timeout}
        self._attempts = [
            attempts if seq.event.name not in changed else OrderedDict()
            for seq, attempts in zip(self._sequences, self._attempts, strict=True)
        ]
        self.set_sequences(new)
