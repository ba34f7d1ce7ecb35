"""Carrying out the engine's actions, with the doors kept durable.

The engine decides what must happen; the doorkeeper makes it happen: it hands each knock and
each stop to every kind of door (`DoorKind`: the commands, and the daemon's own nftables table
when events have a `door`), logs each door opening, pushed back and closing, and keeps the
state file ahead of the doors, so that a crash at any moment leaves no open door unrecorded.
At start-up it takes over the doors a previous run left open.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

from tportknockd.capture.statistics import Counters
from tportknockd.daemon import state
from tportknockd.frame_syntax import format_frame, parse_frame
from tportknockd.matching.engine import (
    Action,
    Burned,
    Door,
    DoorExtended,
    Engine,
    ListLineUsed,
    Progress,
    Replayed,
    RunStart,
    RunStop,
)
from tportknockd.model import Frame

log = logging.getLogger("tportknockd")


class Runner(Protocol):
    """What the doorkeeper needs of actions.CommandRunner."""

    def run(self, label: str, command: str, address: str, key: Hashable | None = None) -> None:
        """Start `command` for `address` in the background; same `key`, same order."""


#: A host that knocked right just now: a door opens (RunStart) or, open already, stays open
#: longer (DoorExtended).
Knock = RunStart | DoorExtended


class DoorKind(Protocol):
    """One way doors open and close: commands, or the elements of an nftables table."""

    def opened(self, knocks: Sequence[Knock], via: str | None) -> None:
        """Open (or keep open) the doors of these knocks, in one go where the kind can."""

    def closed(self, stops: Sequence[RunStop]) -> None:
        """Close these doors now."""


class CommandDoors:
    """Doors that are commands: start_command when a door opens, stop_command when it closes
    (through the command runner, which never blocks)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def opened(self, knocks: Sequence[Knock], via: str | None) -> None:
        for knock in knocks:
            if isinstance(knock, RunStart):
                self._run(knock, "start")

    def closed(self, stops: Sequence[RunStop]) -> None:
        for stop in stops:
            self._run(stop, "stop")

    def _run(self, action: RunStart | RunStop, what: str) -> None:
        if action.command is None:
            return
        door = (action.event, action.address)  # a door's commands run in order
        label = f"{action.event} {action.address} {what}"
        self.runner.run(label, action.command, action.address, key=door)


#: Makes a used one-time list line durable; False when it could not (the door stays shut).
UseListLine = Callable[[ListLineUsed], bool]


class Doorkeeper:
    def __init__(
        self,
        engine: Engine,
        kinds: Sequence[DoorKind],
        state_file: str | None,
        counters: Counters,
        use_list_line: UseListLine | None = None,
    ) -> None:
        self.engine = engine
        self.kinds = list(kinds)
        self.state_file = state_file  # None: keep no record
        self.counters = counters
        self.use_list_line = use_list_line
        #: What the state file holds (None: not written by this run yet).
        self._recorded: tuple[tuple[object, ...], ...] | None = None

    def perform(self, actions: list[Action], via: str | None = None) -> None:
        """Carry out the engine's actions, keeping the state file ahead of the doors.

        Stops run first, then used one-time list lines are commented out, then the record
        (open doors and burned one-time sequences) is rewritten, then starts run: a crash at
        any point leaves a door recorded longer than needed (its stop runs again at restart,
        harmlessly), never an open door unrecorded, and never a used one-time sequence
        usable again. `via` names the interface the packet that caused the actions came in
        on (for the log).
        """
        stops = [action for action in actions if isinstance(action, RunStop)]
        for stop in stops:
            log.info("%s: closing for %s", stop.event, stop.address)
        for kind in self.kinds:
            kind.closed(stops)
        refused = self._use_list_lines(actions)
        if stops or any(isinstance(a, (RunStart, DoorExtended, Burned)) for a in actions):
            self._record()
        knocks: list[Knock] = []
        for action in actions:
            if isinstance(action, RunStart) and (action.event, action.address) in refused:
                continue
            if isinstance(action, (RunStart, DoorExtended)):
                knocks.append(action)
            if not isinstance(action, RunStop):
                self._log(action, via)
        if knocks:
            for kind in self.kinds:
                kind.opened(knocks, via)

    def _use_list_lines(self, actions: list[Action]) -> set[tuple[str, str]]:
        """Make used list lines durable; the doors whose line could not be marked."""
        opening = {(a.event, a.address) for a in actions if isinstance(a, RunStart)}
        refused: set[tuple[str, str]] = set()
        for action in actions:
            if not isinstance(action, ListLineUsed):
                continue
            if self.use_list_line is None or not self.use_list_line(action):
                door = (action.event, action.address)
                refused.add(door)
                if door in opening:
                    # Opened just now: never opened after all, so no stop is due. A door
                    # that was already open keeps its stop (only pushed back).
                    self.engine.doors.abandon(*door)
        return refused

    def _log(self, action: Action, via: str | None) -> None:
        if isinstance(action, RunStart):
            self.counters.fired += 1
            log.info(
                "%s: knock from %s accepted: opening%s", action.event, action.address, _on(via)
            )
        elif isinstance(action, DoorExtended):
            log.info(
                "%s: knock from %s while open: stop pushed back, now in %.1f s%s",
                action.event,
                action.address,
                action.due - time.monotonic(),
                _on(via),
            )
        elif isinstance(action, Replayed):
            self.counters.replays += 1
            log.warning(
                "%s: replayed sequence from %s, first used by %s%s",
                action.event,
                action.address,
                action.first_address,
                _on(via),
            )
        elif isinstance(action, Progress):
            log.debug(
                "%s: %s %s (%d/%d)%s",
                action.event,
                action.address,
                action.what,
                action.step,
                action.of,
                _on(via),
            )

    # -- the record -------------------------------------------------------------------------

    def _record(self) -> None:
        """Write every open door to the state file (atomically, durably), unless the file
        holds it already: a knock that only opens a door in the nftables table (no stop is
        due) must not wait for a disk write."""
        path = self.state_file
        if path is None:
            return
        open_doors, burned = self.engine.open_doors(), self.engine.doors.burns()
        # Values, not the Door objects: a door pushed back changes in place.
        recorded = (tuple(dataclasses.astuple(d) for d in open_doors), tuple(burned))
        if recorded == self._recorded:
            return
        wall, mono = time.time(), time.monotonic()
        doors = [
            state.SavedDoor(d.event, d.address, wall + d.due - mono, d.stop_command, d.delay)
            for d in open_doors
        ]
        burns = [
            state.SavedBurn(b.event, b.address, b.window, " ".join(map(format_frame, b.frames)))
            for b in burned
        ]
        try:
            state.save(path, doors, burns)
        except OSError as exc:
            log.error(
                "cannot record open doors in %s: %s (a crash now would leave them open)", path, exc
            )
            return
        self._recorded = recorded

    def _restore_burns(self, burns: list[state.SavedBurn]) -> None:
        for burn in burns:
            try:
                frames = _frames_of(burn.frames)
            except ValueError as exc:
                log.error("state file: a used one-time sequence cannot be read back: %s", exc)
                continue
            self.engine.doors.restore_burn(Burned(burn.event, burn.address, burn.window, frames))
        if burns:
            log.info("%d used one-time sequences remembered from an earlier run", len(burns))

    def restore(self) -> None:
        """Take over the doors a previous run left open: close due ones, reschedule the rest."""
        path = self.state_file
        if path is None:
            return
        try:
            saved, burns = state.load_all(path)
        except state.StateError as exc:
            aside = state.set_aside(path)
            log.error("%s; moved aside to %s", exc, aside)
            return
        self._restore_burns(burns)
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
                due = mono + door.due - wall
                self.engine.restore_door(
                    Door(door.event, door.address, due, door.stop_command, door.delay)
                )
        self.perform(due_now)


def _on(via: str | None) -> str:
    return f" (on {via})" if via else ""


def _frames_of(spelled: str) -> tuple[Frame, ...]:
    return tuple(parse_frame(word) for word in spelled.split())
