"""Blocks to events: each block's settings checked and turned into an Event."""

from __future__ import annotations

import re
from collections.abc import Iterable

from tportknockd.config.blocks import Block, Problems
from tportknockd.config.doors import parse_door_settings
from tportknockd.config.values import format_seconds, parse_seconds
from tportknockd.frame_syntax import parse_frame
from tportknockd.model import Event, Frame, OneTimeList, OtpSpec
from tportknockd.onetime.keys import LIST_KEY, OTP_KEYS, parse_list, parse_otp

REQUIRED_KEYS = ("timeout",)
#: An event has at least one of these: what a knock does.
EFFECT_KEYS = ("door", "start_command")
#: An event has exactly one of these: where its sequence comes from.
SEQUENCE_SOURCES = ("sequence", "otp_secret", LIST_KEY)

_FRAME_SEPARATORS = re.compile(r"[\s,]+")


class EventBuilder:
    """Checks one block's settings and turns it into an Event when they are all valid."""

    def __init__(self, block: Block, problems: Problems) -> None:
        self.block = block
        self.problems = problems
        self.failed = False

    def build(self) -> Event | None:
        source = self._sequence_source()
        self._require_keys()
        self._require_an_effect()
        self._require_pairing("stop_command", "command_delay", "seconds to wait before it runs")
        self._require_pairing("command_delay", "stop_command", "the command it delays")
        frames = self._frames() if source == "sequence" else ()
        otp_spec = self._otp() if source == "otp_secret" else None
        one_time_list = self._list() if source == LIST_KEY else None
        timeout = self._seconds("timeout")
        delay = self._seconds("command_delay")
        start = self._command("start_command")
        stop = self._command("stop_command")
        door = parse_door_settings(self.block.settings, self._error)
        if otp_spec is not None and timeout is not None:
            self._check_timeout_fits(otp_spec.window, timeout)
        if self.failed or frames is None or timeout is None:
            return None
        return Event(
            name=self.block.name,
            frames=frames,
            timeout=timeout,
            start_command=start,
            stop_command=stop,
            command_delay=delay,
            line=self.block.line,
            otp=otp_spec,
            one_time_list=one_time_list,
            door=door.ports,
            door_timeout=door.timeout,
            door_prefix=door.prefix,
        )

    def _error(self, line: int, message: str) -> None:
        self.failed = True
        self.problems.add(line, message)

    def _require_keys(self) -> None:
        for key in REQUIRED_KEYS:
            if key not in self.block.settings:
                self._error(
                    self.block.line, f"event {self.block.name!r} lacks required key {key!r}"
                )

    def _require_an_effect(self) -> None:
        if not any(key in self.block.settings for key in EFFECT_KEYS):
            self._error(
                self.block.line,
                f"event {self.block.name!r} does nothing: give it a door (ports the knock "
                "opens), a start_command, or both",
            )

    def _sequence_source(self) -> str | None:
        """Which of sequence / otp_secret / one_time_sequences this event uses."""
        settings = self.block.settings
        given = sorted(
            (key for key in SEQUENCE_SOURCES if key in settings), key=lambda key: settings[key].line
        )
        if not given:
            self._error(
                self.block.line,
                f"event {self.block.name!r} lacks required key 'sequence' "
                f"(or 'otp_secret' or '{LIST_KEY}' for one-time sequences)",
            )
            return None
        for extra in given[1:]:
            self._error(
                settings[extra].line,
                f"{extra} cannot be combined with {given[0]} (line {settings[given[0]].line}): "
                "an event has one source of sequences",
            )
        if given[0] != "otp_secret":
            for key in OTP_KEYS[1:]:
                if key in settings:
                    self._error(
                        settings[key].line, f"{key} belongs to one-time events with otp_secret"
                    )
        return given[0] if len(given) == 1 else None

    def _otp(self) -> OtpSpec | None:
        spec = parse_otp(self.block.settings, self._error)
        if spec is None:
            self.failed = True
        return spec

    def _list(self) -> OneTimeList | None:
        one_time_list = parse_list(self.block.settings[LIST_KEY], self._error)
        if one_time_list is None:
            self.failed = True
        return one_time_list

    def _check_timeout_fits(self, window: int, timeout: float) -> None:
        if timeout > window:
            setting = self.block.settings["timeout"]
            self._error(
                setting.line,
                f"timeout {format_seconds(timeout)} is longer than otp_window {window} s: "
                "an attempt must finish while its window is accepted",
            )

    def _require_pairing(self, key: str, partner: str, purpose: str) -> None:
        setting = self.block.settings.get(key)
        if setting is not None and partner not in self.block.settings:
            self._error(setting.line, f"{key} needs {partner} ({purpose})")

    def _frames(self) -> tuple[Frame, ...] | None:
        setting = self.block.settings.get("sequence")
        if setting is None:
            return None
        words = [word for word in _FRAME_SEPARATORS.split(setting.value) if word]
        if not words:
            self._error(setting.line, "empty sequence: expected frames like tcp:1234:s udp:999")
            return None
        frames = []
        for word in words:
            try:
                frames.append(parse_frame(word))
            except ValueError as exc:
                self._error(setting.line, f"sequence: {exc}")
        return tuple(frames)

    def _seconds(self, key: str) -> float | None:
        setting = self.block.settings.get(key)
        if setting is None:
            return None
        try:
            return parse_seconds(setting.value)
        except ValueError as exc:
            self._error(setting.line, f"{key}: {exc}")
            return None

    def _command(self, key: str) -> str | None:
        setting = self.block.settings.get(key)
        if setting is None:
            return None
        if not setting.value:
            self._error(setting.line, f"{key} is empty: expected a command to run")
            return None
        return setting.value


def build_events(blocks: Iterable[Block], problems: Problems) -> list[tuple[Event, int]]:
    """Valid events, each with the line of its sequence (where warnings point)."""
    built: list[tuple[Event, int]] = []
    first_line: dict[str, int] = {}
    for block in blocks:
        if block.name in first_line:
            problems.add(
                block.line,
                f"duplicate event name {block.name!r} (first defined at line "
                f"{first_line[block.name]})",
            )
        else:
            first_line[block.name] = block.line
        event = EventBuilder(block, problems).build()
        if event is not None:
            source = next(key for key in SEQUENCE_SOURCES if key in block.settings)
            built.append((event, block.settings[source].line))
    return built
