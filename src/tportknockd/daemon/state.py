"""The durable record of open doors, so that a crash never forgets a pending stop_command.

Before a door opens (its start_command runs) the daemon writes every pending stop to the state
file, replaced durably (files.replace_durably: the old file or the new after a crash). At
start-up it reads the file back: stops already due run at once, the others are rescheduled.
Due times are stored as wall-clock (Unix) times, since the monotonic clock does not survive a
reboot. A file that cannot be read or parsed is moved aside, never fatal.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from tportknockd.files import replace_durably

DEFAULT_STATE_FILE = "/var/lib/tportknockd/doors.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SavedDoor:
    event: str
    address: str
    due: float  # Unix time
    stop_command: str
    delay: float


@dataclass(frozen=True)
class SavedBurn:
    """A one-time sequence (window `window` of `event`) used by `address`."""

    event: str
    address: str
    window: int
    frames: str  # in the config's frame syntax


class StateError(Exception):
    pass


def save(path: str, doors: Iterable[SavedDoor], burns: Iterable[SavedBurn] = ()) -> None:
    """Atomically replace the state file with `doors` and `burns`."""
    data = {
        "version": FORMAT_VERSION,
        "burns": [
            {"event": b.event, "address": b.address, "window": b.window, "frames": b.frames}
            for b in burns
        ],
        "doors": [
            {
                "event": d.event,
                "address": d.address,
                "due": d.due,
                "stop_command": d.stop_command,
                "delay": d.delay,
            }
            for d in doors
        ],
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    replace_durably(path, json.dumps(data, indent=1).encode("utf-8"))


def load_all(path: str) -> tuple[list[SavedDoor], list[SavedBurn]]:
    """Doors and burns recorded in `path`; empty without a file; StateError when it is bad."""
    try:
        with open(path, encoding="utf-8") as f:
            _check_trusted(path, os.fstat(f.fileno()))
            data = json.load(f)
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{path}: cannot read: {exc}") from None
    try:
        return _doors_from(data), _burns_from(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{path}: not a tportknockd state file: {exc!r}") from None


def _check_trusted(path: str, info: os.stat_result) -> None:
    """The file holds commands we will run (the stops): only one we wrote ourselves will do."""
    if info.st_uid != os.geteuid():
        raise StateError(f"{path}: owned by uid {info.st_uid}, not by us: not trusted")
    if info.st_mode & 0o022:
        raise StateError(f"{path}: writable by group or others: not trusted")


def _doors_from(data: object) -> list[SavedDoor]:
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise ValueError("unknown format version")
    doors = []
    for item in data["doors"]:
        door = SavedDoor(
            event=_text(item["event"]),
            address=_text(item["address"]),
            due=_number(item["due"]),
            stop_command=_text(item["stop_command"]),
            delay=_number(item["delay"]),
        )
        doors.append(door)
    return doors


def _burns_from(data: dict[str, object]) -> list[SavedBurn]:
    # Files written before one-time sequences existed have no burns.
    items = data.get("burns", [])
    if not isinstance(items, list):
        raise TypeError(f"expected a list of burns, got {items!r}")
    return [
        SavedBurn(
            event=_text(item["event"]),
            address=_text(item["address"]),
            window=_integer(item["window"]),
            frames=_text(item["frames"]),
        )
        for item in items
    ]


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a whole number, got {value!r}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {value!r}")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def set_aside(path: str) -> str:
    """Move a bad state file out of the way (kept for a person to look at); returns its new name."""
    aside = f"{path}.bad-{time.strftime('%Y%m%dT%H%M%S')}"
    os.replace(path, aside)
    return aside
