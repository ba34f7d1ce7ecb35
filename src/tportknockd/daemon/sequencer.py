"""Keeping the engine's live sequences in step with the clock and the one-time lists.

The engine matches whatever sequences it is given (sequences.py says which are live at a
time). The sequencer does the I/O around that: it reads the wall clock when the one-time
windows move, comments out a used list line and reads the list's next one, then gives the
daemon the new sequences to `apply` everywhere (the engine, the matching, the kernel
filters), so that packets to sequences no longer live never reach Python.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable

from tportknockd.matching.engine import Engine, ListLineUsed
from tportknockd.matching.sequences import LiveSequence, Schedule
from tportknockd.model import Config, Frame
from tportknockd.onetime.lists import ListError, mark_used, read_list

log = logging.getLogger("tportknockd")

#: Puts new live sequences in place everywhere, or raises ValueError changing nothing.
Apply = Callable[[list[LiveSequence]], None]


class Sequencer:
    def __init__(self, engine: Engine, config: Config) -> None:
        self.engine = engine
        self.schedule = Schedule(config)
        self._apply_everywhere: Apply | None = None
        self._next_move: float | None = None  # monotonic time of the next window move

    def start(self, apply: Apply) -> None:
        """Give the engine the sequences live now (before any filter or matching exists);
        later changes go through `apply`."""
        self._apply_everywhere = apply
        self.engine.set_sequences(self._live_now())
        self._check_lists_writable()

    def _check_lists_writable(self) -> None:
        """Say at once when a used list line could not be commented out (no door would open)."""
        for event in self.schedule.config.events:
            if event.one_time_list is None:
                continue
            path = event.one_time_list.path
            directory = os.path.dirname(os.path.abspath(path))
            if not (os.access(path, os.W_OK) and os.access(directory, os.W_OK)):
                log.warning(
                    "%s: %s or its directory is not writable: used lines cannot be commented "
                    "out, so knocks on this list will not open",
                    event.name,
                    path,
                )

    def frames(self) -> list[Frame]:
        """Every frame of every live sequence: what the kernel filters let through."""
        return frames_of(self.engine.sequences)

    def next_wakeup(self) -> float | None:
        return self._next_move

    def housekeeping(self, now: float) -> None:
        """Move the one-time windows when one has ended."""
        if self._next_move is not None and now >= self._next_move:
            self._apply(self._live_now(), "one-time windows moved")

    def _live_now(self) -> list[LiveSequence]:
        wall, mono = time.time(), time.monotonic()
        change = self.schedule.next_change(wall)
        self._next_move = None if change is None else mono + (change - wall)
        return self.schedule.live(wall)

    def _apply(self, sequences: list[LiveSequence], why: str) -> None:
        if self._apply_everywhere is None:
            self.engine.set_sequences(sequences)
            return
        try:
            self._apply_everywhere(sequences)
        except ValueError as exc:
            # A used one-time sequence that stays live is refused as a replay
            # (matching/doors.py): keeping the old sequences opens nothing twice.
            log.error("%s: the new sequences do not fit (%s); keeping the old ones", why, exc)
            return
        log.debug("%s: %d sequences, %d frames live", why, len(sequences), len(self.frames()))

    # -- one-time lists -------------------------------------------------------------------

    def use_list_line(self, used: ListLineUsed) -> bool:
        """Comment out the used line durably, then match the list's next line.

        False when the line could not be marked: the caller must not open the door, since the
        same sequence would work again after a restart.
        """
        try:
            mark_used(used.path, used.line)
        except (OSError, ListError) as exc:
            log.error(
                "%s: cannot mark line %d of %s used (%s): not opening for %s",
                used.event,
                used.line,
                used.path,
                exc,
                used.address,
            )
            self._reread_list(used.event, used.path)
            return False
        log.info("%s: line %d of %s used by %s", used.event, used.line, used.path, used.address)
        self._reread_list(used.event, used.path)
        return True

    def _reread_list(self, event: str, path: str) -> None:
        try:
            listing = read_list(path)
        except ListError as exc:
            log.error("%s: %s: the event matches nothing until it is fixed (SIGHUP)", event, exc)
            for number, message in exc.problems:
                log.error("%s:%d: %s", path, number, message)
            self.schedule.move_list(event, None)
        else:
            self.schedule.move_list(event, listing.head)
            if listing.head is None:
                log.error(
                    "%s: the one-time list %s is used up: the event matches nothing until it "
                    "is refilled (then send SIGHUP)",
                    event,
                    path,
                )
        self._apply(self._live_now(), f"{event}: one-time list moved on")

    # -- reload ---------------------------------------------------------------------------

    def adopt(self, schedule: Schedule) -> None:
        """Follow `schedule` from now on (a reloaded config's; the engine has its sequences)."""
        self.schedule = schedule
        change = schedule.next_change(time.time())
        self._next_move = None if change is None else time.monotonic() + change - time.time()


def frames_of(sequences: Iterable[LiveSequence]) -> list[Frame]:
    return [frame for sequence in sequences for frame in sequence.frames]
