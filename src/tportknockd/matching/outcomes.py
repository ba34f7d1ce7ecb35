"""What the engine answers with: the actions the daemon carries out, in the order given."""

from __future__ import annotations

from typing import NamedTuple

from tportknockd.model import Frame


class RunStart(NamedTuple):
    """`address` knocked right: open the event's door and run `command` (its start_command;
    None when the event has only a door)."""

    event: str
    address: str
    command: str | None


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


class Burned(NamedTuple):
    """A one-time sequence was used by `address`: record it durably before the start runs."""

    event: str
    address: str
    window: int
    frames: tuple[Frame, ...]


class ListLineUsed(NamedTuple):
    """A one-time list line was used: comment it out durably before the start runs."""

    event: str
    address: str
    path: str
    line: int


class Replayed(NamedTuple):
    """A used one-time sequence came again, from `address`; nothing opens."""

    event: str
    address: str
    first_address: str


class Progress(NamedTuple):
    """Debug trace of an attempt (only emitted when the engine is built with trace=True)."""

    event: str
    address: str
    what: str  # "started", "advanced", "retransmission", "broken", "expired", "evicted"
    step: int  # frames matched so far
    of: int  # frames in the sequence


Action = RunStart | RunStop | DoorExtended | Burned | ListLineUsed | Replayed | Progress
