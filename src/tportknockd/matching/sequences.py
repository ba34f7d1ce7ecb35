"""Which concrete sequences the engine matches at a given time.

A static event has one sequence for ever. A time-based one-time event has three at any time:
those of windows w-1, w and w+1 (derivation.py), which move every `otp_window` seconds. A one-time
list event has the sequence on the list's first unused line, which moves when it is used.
Pure: the caller passes the Unix time and tells when a list moves on.
"""

from __future__ import annotations

from typing import NamedTuple

from tportknockd.model import Config, Event, Frame, ListHead
from tportknockd.onetime import derivation

#: What identifies a live sequence across updates: event name, frames, window, list line.
SequenceKey = tuple[str, tuple[Frame, ...], int | None, int | None]


class LiveSequence(NamedTuple):
    """One sequence the engine matches, and where it comes from."""

    event: Event
    frames: tuple[Frame, ...]
    window: int | None = None  # the OTP window it belongs to
    list_line: int | None = None  # the one-time list line it was read from

    @property
    def key(self) -> SequenceKey:
        """What makes it the same sequence across updates (attempts carry over)."""
        return (self.event.name, self.frames, self.window, self.list_line)


class Schedule:
    """The live sequences of a config, given the time and the lists' current lines."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._heads: dict[str, ListHead | None] = {
            event.name: event.one_time_list.head
            for event in config.events
            if event.one_time_list is not None
        }

    def live(self, unix_time: float | None) -> list[LiveSequence]:
        """The sequences live at `unix_time`; None leaves out the time-based ones."""
        sequences: list[LiveSequence] = []
        for event in self.config.events:
            if event.otp is not None:
                if unix_time is None:
                    continue
                for number in derivation.accepted_windows(unix_time, event.otp.window):
                    if number < 0:
                        continue  # before 1970: no window (w is unsigned)
                    frames = derivation.derive(event.otp, event.name, number)
                    sequences.append(LiveSequence(event, frames, window=number))
            elif event.one_time_list is not None:
                head = self._heads.get(event.name)
                if head is not None:
                    sequences.append(LiveSequence(event, head.frames, list_line=head.line))
            else:
                sequences.append(LiveSequence(event, event.frames))
        return sequences

    def next_change(self, unix_time: float) -> float | None:
        """The next Unix time at which `live` gives other sequences, or None (never)."""
        changes = [
            derivation.next_change(unix_time, event.otp.window)
            for event in self.config.events
            if event.otp is not None
        ]
        return min(changes) if changes else None

    def move_list(self, event_name: str, head: ListHead | None) -> None:
        """A list's first unused line is now `head` (None: used up)."""
        self._heads[event_name] = head


def static_sequences(config: Config) -> list[LiveSequence]:
    """The sequences that do not depend on the time (one-time lists at their loaded line)."""
    return Schedule(config).live(None)
