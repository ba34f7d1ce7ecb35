"""The knock state machine: parsed packets and the time go in, actions come out.

This module does no I/O at all: it never reads a clock, opens a socket or starts a process.
The daemon feeds it packets with the time it saw them, asks it when it next needs to be woken
(`next_deadline`), calls `tick` then, and carries out the actions it returns.

Matching rules
--------------
The rules are the numbered MATCHING RULES of tportknockd.conf(5), the one normative copy;
this module is their reference implementation, and the kernel program is checked against it.
Where each is carried out:
* rule 1 (protocol, port and the whole flag byte) and rule 5 (events are independent): the
  table of live frames that `feed` looks a packet up in;
* rule 2 (which packets count): not here. The daemon and the kernel filter feed in only
  packets addressed to a listened address, never outgoing ones;
* rules 3 and 4 (attempts per event and source, `timeout`, advance, retransmission, break and
  restart): `feed` and the attempt tables below;
* rule 6 (start, stop after `command_delay`, a re-knock pushes the stop back): `RunStart`,
  `RunStop` and `DoorExtended`, kept in doors.py, so firewall rules are never added twice;
* rule 7 (every pending stop runs at exit): `shutdown()`;
* rule 8 (one-time events): the live sequences of sequences.py, each matched on its own;
  burning in doors.py, a completion by another address being a `Replayed`.

Bounded state
-------------
Attempts are of two kinds, held apart. A *fresh* attempt has matched one frame: anyone can
make one with a single packet, spoofed or not. An *advanced* attempt has matched two or more
frames in order: its source knew the second frame too. Each kind has its own bound, as the
kernel engine's two maps do (kernel_matching.py sizes them from the same `max_attempts`), so
that a flood of first frames can only ever push out other fresh attempts:
* at most `max_attempts` fresh attempts are held; a new attempt, when that many are, evicts
  the oldest fresh one (the first started, whatever its event);
* an attempt that matches its second frame becomes advanced. At most
  `advanced_limit(max_attempts)` advanced attempts are held (an eighth, 64 at least: 8,192 by
  default); when that many are, the oldest one (the first to have become advanced) is evicted
  to make room.
Expired attempts are swept by `tick` without waiting for traffic.

Cost: a packet costs one dict lookup in a table built from the live sequences, plus one dict
lookup per sequence that the packet can advance. Starting an attempt adds three appends to the
queue of fresh attempts, and an eviction pops its front; the entries of attempts that end
otherwise are left in place and swept in bulk once they outnumber the attempts held.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tportknockd.matching.doors import Door, Doors
from tportknockd.matching.outcomes import (
    Action,
    Burned,
    DoorExtended,
    ListLineUsed,
    Progress,
    Replayed,
    RunStart,
    RunStop,
)
from tportknockd.matching.sequences import LiveSequence, SequenceKey, static_sequences
from tportknockd.model import Config, Packet, address_text

__all__ = [
    "ADVANCED_MINIMUM",
    "ADVANCED_SHARE",
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
    "advanced_limit",
]

DEFAULT_MAX_ATTEMPTS = 65536


#: Advanced attempts are bounded by this share of `max_attempts`, and by 64 at least.
ADVANCED_SHARE = 8
ADVANCED_MINIMUM = 64


def advanced_limit(max_attempts: int) -> int:
    """How many advanced attempts (two or more frames matched) are held besides the
    `max_attempts` fresh ones: the size of the kernel engine's map of them."""
    return max(ADVANCED_MINIMUM, max_attempts // ADVANCED_SHARE)


class _Attempt(NamedTuple):
    """Progress of one source through one sequence.

    A tuple of plain numbers, not an object: the garbage collector stops tracking such tuples,
    so 65k attempts held during a spoofed flood do not make every full collection walk them
    (as instances they would, and each such pass would delay the real knocks behind it).
    """

    started: float
    matched: int  # frames matched so far; frame 0 is what starts an attempt


# _Attempt(...) goes through a Python-level __new__; the tuple constructor is one C call, and
# a spoofed flood creates one attempt per packet.
_new_attempt = tuple.__new__

_Table = dict[tuple[int, int, int], tuple[tuple[int, int], ...]]

# Stale queue entries tolerated beyond the number of attempts held before a sweep: a sweep
# costs about as much per entry as the attempts' own dicts, so it is kept rare when few are
# held (a real knock leaves two stale entries behind).
_SWEEP_MARGIN = 256

# The attempts of one sequence, by packed source, in the order they started (oldest first).
# OrderedDict, not dict: a plain dict used as a FIFO makes `next(iter(d))` walk over every
# entry deleted since its last resize, which turned a spoofed flood quadratic.
_Attempts = OrderedDict[bytes, _Attempt]


class _AgeQueue(deque[Any]):
    """The attempts of one kind (fresh or advanced), oldest first, every sequence together.

    Flat triples (attempts of the sequence, source, start time): appending one costs a third
    of what one insert into an OrderedDict keyed by (sequence, source) costs, on a flood's
    path. It is lazy: an attempt that ends by the rules, or becomes advanced, is not looked
    for here; its entry goes stale and is skipped when it reaches the front, or swept by
    `sweep`. An entry names the attempts object, not the sequence index, so re-indexing the
    sequences leaves it valid; the attempts of a sequence that leaves are cleared, which makes
    their entries stale. (An attempt broken and restarted within one clock tick leaves two
    live-looking entries; it may then be evicted at the first one's place.)
    """

    def pop_oldest(self, fresh: bool) -> tuple[_Attempts, bytes, _Attempt] | None:
        """Take the oldest live attempt of this kind off the front (None: there is none)."""
        popleft = self.popleft
        while self:
            attempts, src, started = popleft(), popleft(), popleft()
            if self._is_live(attempts, src, started, fresh):
                return attempts, src, attempts[src]
        return None

    def sweep(self, live: int, fresh: bool) -> None:
        """Keep only the entries of live attempts (`live` of them are held)."""
        if not live:
            self.clear()
            return
        entries = list(self)
        self.clear()
        seen: set[tuple[int, bytes]] = set()
        kept: list[Any] = []
        # Newest first, so that a duplicate (an attempt restarted at the same time) keeps its
        # last place; each triple is stored reversed, and the whole list reversed at the end.
        for at in range(len(entries) - 3, -1, -3):
            attempts, src, started = entries[at : at + 3]
            if (id(attempts), src) not in seen and self._is_live(attempts, src, started, fresh):
                seen.add((id(attempts), src))
                kept += (started, src, attempts)
        self.extend(reversed(kept))

    @staticmethod
    def _is_live(attempts: _Attempts, src: bytes, started: float, fresh: bool) -> bool:
        attempt = attempts.get(src)
        return (
            attempt is not None
            and attempt.started == started
            and (attempt.matched == 1) == fresh
        )


def _frame_masks(sequences: Sequence[LiveSequence]) -> _Table:
    """Map each (protocol, port, flags) a packet can carry to [(sequence index, frame mask)].

    Bit k of the mask is set when the packet matches frame k. Frames with `i` (any flags) are
    expanded into all 256 flag values, so a packet needs exactly one lookup.
    """
    masks: dict[tuple[int, int, int], dict[int, int]] = {}
    for seq_index, sequence in enumerate(sequences):
        for frame_index, frame in enumerate(sequence.frames):
            for flags in frame.flag_bytes():
                per_seq = masks.setdefault((frame.protocol, frame.port, flags), {})
                per_seq[seq_index] = per_seq.get(seq_index, 0) | (1 << frame_index)
    return {key: tuple(per_seq.items()) for key, per_seq in masks.items()}


@dataclass
class Engine:
    config: Config
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # fresh attempts held at most
    trace: bool = False
    max_advanced: int | None = None  # advanced attempts held at most; advanced_limit() if None
    doors: Doors = field(init=False, default_factory=Doors)
    _sequences: list[LiveSequence] = field(init=False, repr=False)
    # Per sequence index, its attempts.
    _attempts: list[_Attempts] = field(init=False, repr=False)
    _table: _Table = field(init=False, repr=False)
    # The same attempts by kind: fresh ones in the order they started, advanced ones in the
    # order they became advanced (see "Bounded state" above).
    _fresh: _AgeQueue = field(init=False, repr=False, default_factory=_AgeQueue)
    _advanced: _AgeQueue = field(init=False, repr=False, default_factory=_AgeQueue)
    _fresh_count: int = field(init=False, default=0)
    _advanced_count: int = field(init=False, default=0)
    _fresh_evicted: int = field(init=False, default=0)
    _advanced_evicted: int = field(init=False, default=0)
    _stale: int = field(init=False, default=0)  # queue entries gone stale since the last sweep

    def __post_init__(self) -> None:
        limit = self.max_advanced
        self._advanced_limit = advanced_limit(self.max_attempts) if limit is None else max(1, limit)
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
        self._attempts = [old.pop(seq.key, OrderedDict()) for seq in self._sequences]
        for attempts in old.values():  # those of the sequences that are no longer matched
            self._discard(attempts)
        self._check_stale()
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
            self._drop(attempts, src, attempt)
            self._note(out, sequence, src, "expired", attempt.matched)
            attempt = None
        if attempt is None:
            if mask & 1:
                self._start(seq_index, sequence, src, now, out)
            return
        if mask >> attempt.matched & 1:
            matched = attempt.matched + 1
            if matched == len(sequence.frames):
                self._drop(attempts, src, attempt)
                self.doors.complete(sequence, address_text(src), now, out)
                return
            if matched == 2:
                self._promote(attempts, src, attempt.started, out)
            else:  # keeps its place in order
                attempts[src] = _new_attempt(_Attempt, (attempt.started, matched))
            self._note(out, sequence, src, "advanced", matched)
        elif mask >> (attempt.matched - 1) & 1:
            self._note(out, sequence, src, "retransmission", attempt.matched)
        else:
            self._drop(attempts, src, attempt)
            self._note(out, sequence, src, "broken", attempt.matched)
            if mask & 1:
                self._start(seq_index, sequence, src, now, out)

    def _start(
        self, seq_index: int, sequence: LiveSequence, src: bytes, now: float, out: list[Action]
    ) -> None:
        if len(sequence.frames) == 1:
            self.doors.complete(sequence, address_text(src), now, out)
            return
        if self._fresh_count < self.max_attempts:
            self._fresh_count += 1
        elif not self._evict_fresh(out):  # the new attempt takes the evicted one's place
            return  # max_attempts < 1: nothing is held
        attempts = self._attempts[seq_index]
        attempts[src] = _new_attempt(_Attempt, (now, 1))
        self._fresh.extend((attempts, src, now))
        if self.trace:
            self._note(out, sequence, src, "started", 1)

    def _evict_fresh(self, out: list[Action]) -> bool:
        """Drop the oldest fresh attempt, whatever its sequence, without counting it out (its
        place is taken at once). False: there is none.

        _AgeQueue.pop_oldest and _forget, inlined: a full engine under a flood of first
        frames runs this for every packet."""
        if not self._fresh_count:
            return False
        queue = self._fresh
        popleft = queue.popleft
        while queue:
            attempts, src, started = popleft(), popleft(), popleft()
            attempt = attempts.get(src)
            if attempt is not None and attempt.started == started and attempt.matched == 1:
                del attempts[src]
                self._fresh_evicted += 1
                if self.trace:
                    self._note(out, self._sequence_of(attempts), src, "evicted", 1)
                return True
        return False

    def _promote(self, attempts: _Attempts, src: bytes, started: float, out: list[Action]) -> None:
        """The attempt matched its second frame: it becomes advanced, out of the reach of a
        first-frame flood. Room is made first, while the attempt is still fresh (so that it
        cannot be the one evicted)."""
        if self._advanced_count >= self._advanced_limit:
            self._evict_advanced(out)
        attempts[src] = _new_attempt(_Attempt, (started, 2))
        self._advanced.extend((attempts, src, started))
        self._fresh_count -= 1
        self._advanced_count += 1
        self._stale += 1  # its entry among the fresh ones
        if self._stale > self._fresh_count + self._advanced_count + _SWEEP_MARGIN:
            self._sweep()

    def _evict_advanced(self, out: list[Action]) -> None:
        """Drop the advanced attempt that became advanced first, whatever its sequence."""
        victim = self._advanced.pop_oldest(fresh=False)
        if victim is not None:
            attempts, src, attempt = victim
            self._forget(attempts, src, attempt)
            self._advanced_evicted += 1
            if self.trace:
                self._note(out, self._sequence_of(attempts), src, "evicted", attempt.matched)

    def _drop(self, attempts: _Attempts, src: bytes, attempt: _Attempt) -> None:
        """An attempt ended by the rules (completed, broken, expired)."""
        del attempts[src]  # _forget, inlined
        if attempt.matched == 1:
            self._fresh_count -= 1
        else:
            self._advanced_count -= 1
        self._stale += 1
        if self._stale > self._fresh_count + self._advanced_count + _SWEEP_MARGIN:
            self._sweep()

    def _forget(self, attempts: _Attempts, src: bytes, attempt: _Attempt) -> None:
        del attempts[src]
        if attempt.matched == 1:
            self._fresh_count -= 1
        else:
            self._advanced_count -= 1

    def _discard(self, attempts: _Attempts) -> None:
        """Forget all of a sequence's attempts (their queue entries go stale)."""
        advanced = sum(1 for attempt in attempts.values() if attempt.matched > 1)
        self._advanced_count -= advanced
        self._fresh_count -= len(attempts) - advanced
        self._stale += len(attempts)
        attempts.clear()

    def _check_stale(self) -> None:
        if self._stale > self._fresh_count + self._advanced_count + _SWEEP_MARGIN:
            self._sweep()

    def _sweep(self) -> None:
        """Sweep the queues' stale entries, now that they outnumber the attempts held (plus a
        margin): each stale entry is swept once, and the queues never hold much more than
        twice the attempts held."""
        self._fresh.sweep(self._fresh_count, fresh=True)
        self._advanced.sweep(self._advanced_count, fresh=False)
        self._stale = 0

    def _sequence_of(self, attempts: _Attempts) -> LiveSequence:
        return next(
            seq
            for seq, held in zip(self._sequences, self._attempts, strict=True)
            if held is attempts
        )

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
                self._forget(attempts, src, attempt)
                self._stale += 1
                self._note(out, sequence, src, "expired", attempt.matched)
        self._check_stale()

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
        return self._fresh_count + self._advanced_count

    @property
    def attempts_held(self) -> tuple[int, int]:
        """(fresh, advanced): attempts held with one frame matched, and with two or more."""
        return self._fresh_count, self._advanced_count

    @property
    def evictions(self) -> tuple[int, int]:
        """(fresh, advanced): attempts evicted so far to make room for others."""
        return self._fresh_evicted, self._advanced_evicted

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
        for seq, attempts in zip(self._sequences, self._attempts, strict=True):
            if seq.event.name in changed:
                self._discard(attempts)
        self.set_sequences(new)
