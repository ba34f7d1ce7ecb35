"""The door keys of an event: what a knock opens in the daemon's own nftables table.

    door         = tcp:22, udp:60000-61000   # for the knocking address only
    door_timeout = 30                        # seconds it stays open for new connections
    door_prefix  = 24 64                     # open for the knocker's /24 (IPv4), /64 (IPv6)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tportknockd.config.values import parse_seconds
from tportknockd.frame_syntax import parse_door_port
from tportknockd.model import DEFAULT_DOOR_TIMEOUT, DoorPort
from tportknockd.onetime.keys import Report, Setting

DOOR_KEYS = ("door", "door_timeout", "door_prefix")

#: The knocker's own address, unless door_prefix widens it (carrier-grade NAT).
DEFAULT_PREFIX = (32, 128)

_SEPARATORS = re.compile(r"[\s,]+")



@dataclass(frozen=True)
class DoorSettings:
    ports: tuple[DoorPort, ...] = ()
    timeout: float = DEFAULT_DOOR_TIMEOUT
    prefix: tuple[int, int] = DEFAULT_PREFIX


def parse_door_settings(settings: Mapping[str, Setting], report: Report) -> DoorSettings:
    """The event's door; every mistake goes to `report` (the result is then partial)."""
    door = settings.get("door")
    if door is None:
        for key in DOOR_KEYS[1:]:
            if key in settings:
                report(settings[key].line, f"{key} needs door (the ports a knock opens)")
        return DoorSettings()
    return DoorSettings(
        _ports(door, report),
        _timeout(settings.get("door_timeout"), report),
        _prefix(settings.get("door_prefix"), report),
    )


def _ports(setting: Setting, report: Report) -> tuple[DoorPort, ...]:
    words = [word for word in _SEPARATORS.split(setting.value) if word]
    if not words:
        report(setting.line, "empty door: expected ports like tcp:22 or udp:60000-61000")
    ports = []
    for word in words:
        try:
            ports.append(parse_door_port(word))
        except ValueError as exc:
            report(setting.line, f"door: {exc}")
    return tuple(ports)


def _timeout(setting: Setting | None, report: Report) -> float:
    if setting is None:
        return DEFAULT_DOOR_TIMEOUT
    try:
        return parse_seconds(setting.value)
    except ValueError as exc:
        report(setting.line, f"door_timeout: {exc}")
        return DEFAULT_DOOR_TIMEOUT


def _prefix(setting: Setting | None, report: Report) -> tuple[int, int]:
    if setting is None:
        return DEFAULT_PREFIX
    words = setting.value.split()
    if len(words) != 2 or not all(word.isascii() and word.isdigit() for word in words):
        report(
            setting.line,
            f"door_prefix {setting.value!r}: expected two prefix lengths, IPv4 then IPv6, "
            "e.g. 24 64",
        )
        return DEFAULT_PREFIX
    v4, v6 = (int(word) for word in words)
    if not (1 <= v4 <= 32 and 1 <= v6 <= 128):
        report(setting.line, f"door_prefix {v4} {v6}: IPv4 takes 1..32, IPv6 1..128")
        return DEFAULT_PREFIX
    return v4, v6
