"""Open doors and used one-time sequences: what the engine remembers once a knock completed.

Pure, like the engine that owns it: times come in as arguments (the engine's monotonic clock).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from tportknockd.matching.outcomes import (
    Action,
    Burned,
    DoorExtended,
    ListLineUsed,
    Replayed,
    RunStart,
    RunStop,
)
from tportknockd.matching.sequences import LiveSequence
from tportknockd.model import Event, Frame

BurnKey = tuple[str, int, tuple[Frame, ...]]  # event name, window, frames


@dataclass(slots=True)
class Door:
    """A fired event whose stop_command is still to run."""

    event: str
    address: str
    due: float
    stop_command: str
    delay: float


@dataclass
class Doors:
    _doors: dict[tuple[str, str], Door] = field(default_factory=dict)
    # (due, event, address); stale entries (door gone or pushed back) are skipped when popped.
    _stop_heap: list[tuple[float, str, str]] = field(default_factory=list)
    # One-time sequences used so far, with the address that used them first.
    _burned: dict[BurnKey, str] = field(default_factory=dict)
    # One-time list lines used in this run (the file records them; this covers the moment
    # until the daemon has moved the list on).
    _used_lines: set[tuple[str, int]] = field(default_factory=set)

    # -- a completed sequence -------------------------------------------------------------

    def complete(self, sequence: LiveSequence, address: str, now: float, out: list[Action]) -> None:
        """`address` completed `sequence`: open, extend, or refuse a replay."""
        event = sequence.event
        if sequence.window is not None:
            key = (event.name, sequence.window, sequence.frames)
            first = self._burned.get(key)
            if first is None:
                self._burned[key] = address
                out.append(Burned(event.name, address, sequence.window, sequence.frames))
            elif first != address or (event.name, address) not in self._doors:
                # Only the address that used it, while its door is open, may use it again.
                out.append(Replayed(event.name, address, first))
                return
        elif sequence.list_line is not None:
            line = (event.name, sequence.list_line)
            if line in self._used_lines:
                out.append(Replayed(event.name, address, "an earlier knock"))
                return
            self._used_lines.add(line)
            assert event.one_time_list is not None
            out.append(ListLineUsed(event.name, address, event.one_time_list.path, line[1]))
        self._open(event, address, now, out)

    def _open(self, event: Event, address: str, now: float, out: list[Action]) -> None:
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

    def abandon(self, event: str, address: str) -> None:
        """Forget a door whose start_command did not run (its stop must not run either)."""
        self._doors.pop((event, address), None)

    # -- time -----------------------------------------------------------------------------

    def due(self, now: float) -> list[RunStop]:
        stops = []
        heap = self._stop_heap
        while heap and heap[0][0] <= now:
            due, name, address = heapq.heappop(heap)
            door = self._doors.get((name, address))
            if door is not None and door.due == due:
                del self._doors[(name, address)]
                stops.append(RunStop(door.event, door.address, door.stop_command))
        return stops

    def next_due(self) -> float | None:
        heap = self._stop_heap
        while heap and (heap[0][1], heap[0][2]) not in self._doors:
            heapq.heappop(heap)  # forget stops whose door is gone
        return heap[0][0] if heap else None

    def shutdown(self) -> list[Action]:
        """Close every open door now: the stops of all pending doors, soonest first."""
        stops: list[Action] = [
            RunStop(d.event, d.address, d.stop_command) for d in self.open_doors()
        ]
        self._doors.clear()
        self._stop_heap.clear()
        return stops

    # -- what is kept, and restored -------------------------------------------------------

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

    def burns(self) -> list[Burned]:
        """The used one-time sequences still within reach (for the state file)."""
        return [
            Burned(name, address, window, frames)
            for (name, window, frames), address in sorted(self._burned.items())
        ]

    def restore_burn(self, burn: Burned) -> None:
        self._burned.setdefault((burn.event, burn.window, burn.frames), burn.address)

    def forget_unreachable(self, live: list[LiveSequence]) -> None:
        """Drop records that no live sequence can meet again.

        A window's burn is dropped once the window is older than every window accepted for
        its event (a clock set back keeps them: the oldest accepted window only goes down).
        A list line's record goes once the list has moved past it.
        """
        oldest: dict[str, int] = {}
        lines: set[tuple[str, int]] = set()
        for sequence in live:
            if sequence.window is not None:
                name = sequence.event.name
                oldest[name] = min(oldest.get(name, sequence.window), sequence.window)
            elif sequence.list_line is not None:
                lines.add((sequence.event.name, sequence.list_line))
        self._burned = {
            key: address
            for key, address in self._burned.items()
            if key[0] in oldest and key[1] >= oldest[key[0]]
        }
        self._used_lines &= lines
