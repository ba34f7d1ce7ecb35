"""The knock configuration language: `<NAME> ... </NAME>` blocks of `key = value` lines.

Parsing never stops at the first problem: every error is collected and reported at once as
`FILE:LINE: message`, in line order, so one `tportknockd -C` run shows everything to fix.
"""

from __future__ import annotations

import codecs
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tportknockd.frame_syntax import format_frame, format_kind, parse_frame
from tportknockd.model import (
    ACK,
    FIN,
    PROTO_UDP,
    PSH,
    RST,
    SYN,
    Config,
    Event,
    Frame,
    OneTimeList,
    OtpSpec,
)
from tportknockd.onetime import derivation
from tportknockd.onetime.keys import LIST_KEY, OTP_KEYS, Setting, parse_list, parse_otp

__all__ = [
    "ConfigError",
    "check_report",
    "format_frame",
    "load_config",
    "parse_config",
    "parse_frame",
    "parse_seconds",
]

KEYS = (
    "sequence",
    "timeout",
    "start_command",
    "stop_command",
    "command_delay",
    *OTP_KEYS,
    LIST_KEY,
)
REQUIRED_KEYS = ("timeout", "start_command")
#: An event has exactly one of these: where its sequence comes from.
SEQUENCE_SOURCES = ("sequence", "otp_secret", LIST_KEY)

#: A config file is a handful of lines; the cap keeps `-C /dev/zero` from eating memory.
MAX_CONFIG_BYTES = 1 << 20

_TAG = re.compile(r"<(/?)([A-Za-z0-9_.-]+)>")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FRAME_SEPARATORS = re.compile(r"[\s,]+")

#: TCP flag bytes that ordinary connections put on the wire, with where they come from.
_COMMON_TCP_FLAGS: dict[int, str] = {
    SYN: "every new connection starts with it",
    ACK: "most segments of every connection carry it",
    PSH | ACK: "data segments carry it",
    SYN | ACK: "servers answer every connection with it",
    FIN | ACK: "connections close with it",
    RST: "refused connections produce it",
    RST | ACK: "refused and aborted connections produce it",
}
_BUSY_UDP_PORTS: dict[int, str] = {
    53: "DNS",
    67: "DHCP",
    68: "DHCP",
    123: "NTP",
    137: "NetBIOS name service",
    138: "NetBIOS datagrams",
    5353: "multicast DNS",
}
_WELL_KNOWN_LIMIT = 1024


class ConfigError(Exception):
    """The config is unusable; `messages` holds every problem as `FILE:LINE: message`."""

    def __init__(self, messages: Sequence[str]) -> None:
        self.messages: list[str] = list(messages)
        super().__init__("\n".join(self.messages))


# --- the block structure --------------------------------------------------------------------


@dataclass
class _Block:
    name: str
    line: int
    settings: dict[str, Setting] = field(default_factory=dict)


@dataclass
class _Problems:
    """Errors as (line, message); rendered with the path only at the end."""

    items: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int, message: str) -> None:
        self.items.append((line, message))

    def render(self, path: str) -> list[str]:
        ordered = sorted(self.items, key=lambda item: item[0])
        return [f"{path}:{line}: {message}" for line, message in ordered]


class _BlockReader:
    """Splits lines into blocks of settings, reporting structural mistakes as it goes."""

    def __init__(self, problems: _Problems) -> None:
        self.problems = problems
        self.blocks: list[_Block] = []
        self.current: _Block | None = None

    def read(self, text: str) -> list[_Block]:
        for number, line in enumerate(text.split("\n"), start=1):
            self._read_line(number, line.removesuffix("\r"))
        self._finish()
        return self.blocks

    def _read_line(self, number: int, line: str) -> None:
        content = _strip_comment(line).strip()
        if not content:
            return
        control = _first_control_character(content)
        if control is not None:
            self.problems.add(number, f"line contains control character U+{ord(control):04X}")
        elif content.startswith("<"):
            self._read_tag(number, content)
        else:
            self._read_setting(number, content)

    def _read_tag(self, number: int, content: str) -> None:
        match = _TAG.fullmatch(content)
        if match is None:
            self.problems.add(
                number,
                f"malformed block tag {_shorten(content)!r}: expected <NAME> or </NAME>, "
                "NAME made of letters, digits, '_', '-' and '.'",
            )
        elif match.group(1):
            self._close_block(number, match.group(2))
        else:
            self._open_block(number, match.group(2))

    def _open_block(self, number: int, name: str) -> None:
        outer = self.current
        if outer is not None:
            # Most often the closing tag was forgotten: end the outer block here so the
            # rest of the file is still checked as usual.
            self.problems.add(
                number,
                f"nested block <{name}> inside <{outer.name}> (opened at line {outer.line}); "
                f"close it with </{outer.name}> first",
            )
            self.blocks.append(outer)
        self.current = _Block(name, number)

    def _close_block(self, number: int, name: str) -> None:
        block = self.current
        if block is None:
            self.problems.add(number, f"closing tag </{name}> without an open block")
            return
        if name != block.name:
            self.problems.add(
                number,
                f"closing tag </{name}> does not match <{block.name}> opened at line {block.line}",
            )
        self.blocks.append(block)
        self.current = None

    def _read_setting(self, number: int, content: str) -> None:
        key, equals, value = content.partition("=")
        key = key.strip()
        if not equals or not _KEY.fullmatch(key):
            self.problems.add(number, _garbage_message(content))
            return
        block = self.current
        if block is None:
            self.problems.add(number, f"key {key!r} outside of a block (put it inside <NAME>)")
        elif key not in KEYS:
            self.problems.add(number, _unknown_key_message(key))
        elif key in block.settings:
            first = block.settings[key].line
            self.problems.add(number, f"duplicate key {key!r} (first set at line {first})")
        else:
            block.settings[key] = Setting(value.strip(), number)

    def _finish(self) -> None:
        block = self.current
        if block is not None:
            self.problems.add(
                block.line, f"block <{block.name}> is never closed (missing </{block.name}>)"
            )
            self.blocks.append(block)
            self.current = None


def _strip_comment(line: str) -> str:
    """Cut a `#` comment that starts the line or follows white space; `a#b` stays intact."""
    for index, char in enumerate(line):
        if char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def _first_control_character(text: str) -> str | None:
    # A NUL or escape in a command would fail, or worse, only when the knock arrives.
    for char in text:
        if char != "\t" and (ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F):
            return char
    return None


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _garbage_message(content: str) -> str:
    first_word = content.split()[0]
    if first_word in KEYS:
        return f"missing '=' after {first_word!r}"
    return f"cannot parse {_shorten(content)!r}: expected 'key = value', <NAME> or </NAME>"


def _unknown_key_message(key: str) -> str:
    if key.lower() in KEYS:
        return f"unknown key {key!r} (keys are lower-case: {key.lower()!r})"
    return f"unknown key {key!r} (known keys: {', '.join(KEYS)})"


# --- blocks to events -----------------------------------------------------------------------


class _EventBuilder:
    """Checks one block's settings and turns it into an Event when they are all valid."""

    def __init__(self, block: _Block, problems: _Problems) -> None:
        self.block = block
        self.problems = problems
        self.failed = False

    def build(self) -> Event | None:
        source = self._sequence_source()
        self._require_keys()
        self._require_pairing("stop_command", "command_delay", "seconds to wait before it runs")
        self._require_pairing("command_delay", "stop_command", "the command it delays")
        frames = self._frames() if source == "sequence" else ()
        otp_spec = self._otp() if source == "otp_secret" else None
        one_time_list = self._list() if source == LIST_KEY else None
        timeout = self._seconds("timeout")
        delay = self._seconds("command_delay")
        start = self._command("start_command")
        stop = self._command("stop_command")
        if otp_spec is not None and timeout is not None:
            self._check_timeout_fits(otp_spec.window, timeout)
        if self.failed or frames is None or timeout is None or start is None:
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
                f"timeout {_format_seconds(timeout)} is longer than otp_window {window} s: "
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


def parse_seconds(text: str) -> float:
    """A positive, finite number of seconds (`10`, `2.5`); ValueError says what is wrong."""
    if not text:
        raise ValueError("no value: expected a number of seconds, e.g. 10")
    try:
        if not text.isascii() or "_" in text:
            raise ValueError
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{_shorten(text)!r} is not a number of seconds") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a finite number of seconds")
    if seconds <= 0:
        raise ValueError(f"{text!r} must be greater than 0 seconds")
    return seconds


def _build_events(blocks: Iterable[_Block], problems: _Problems) -> list[tuple[Event, int]]:
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
        event = _EventBuilder(block, problems).build()
        if event is not None:
            source = next(key for key in SEQUENCE_SOURCES if key in block.settings)
            built.append((event, block.settings[source].line))
    return built


# --- warnings -------------------------------------------------------------------------------


def _common_traffic_reason(frame: Frame) -> str | None:
    """Why ordinary traffic would match this frame, or None when it would not."""
    if frame.protocol == PROTO_UDP:
        service = _BUSY_UDP_PORTS.get(frame.port)
        if service is not None:
            return f"{service} traffic uses udp/{frame.port}"
        if frame.port < _WELL_KNOWN_LIMIT:
            return f"udp/{frame.port} is a well-known service port"
        return None
    if frame.flags is None:
        if frame.port < _WELL_KNOWN_LIMIT:
            return f"any packet to well-known service port {frame.port} matches, whatever its flags"
        return f"any TCP packet to port {frame.port} matches, whatever its flags"
    return _COMMON_TCP_FLAGS.get(frame.flags)


def _first_frame_warning(event: Event) -> str | None:
    # A one-time event's first frame is secret and changes: ordinary traffic cannot aim at it.
    if event.otp is not None:
        return None
    frames = _known_frames(event)
    if not frames:
        return None
    reason = _common_traffic_reason(frames[0])
    if reason is None:
        return None
    return (
        f"event {event.name!r} starts with {frames[0].describe()}, which ordinary "
        f"traffic produces ({reason}); prefer a first frame that does not occur in usual traffic"
    )


def _known_frames(event: Event) -> tuple[Frame, ...]:
    """The frames known at load time: the sequence, or the head of a one-time list."""
    one_time_list = event.one_time_list
    if one_time_list is None:
        return event.frames
    return one_time_list.head.frames if one_time_list.head is not None else ()


def _used_up_warning(event: Event) -> str | None:
    if event.one_time_list is None or event.one_time_list.head is not None:
        return None
    return (
        f"event {event.name!r}: the one-time list {event.one_time_list.path} is used up; "
        "the event matches nothing until the list is refilled (then send SIGHUP)"
    )


def _duplicate_sequence_warnings(events: Sequence[tuple[Event, int]]) -> list[tuple[int, str]]:
    first_with: dict[tuple[Frame, ...], Event] = {}
    warnings = []
    for event, line in events:
        if event.one_time:
            continue
        earlier = first_with.setdefault(event.frames, event)
        if earlier is not event:
            message = (
                f"event {event.name!r} has the same sequence as event {earlier.name!r} "
                f"(line {earlier.line}); one knock triggers both"
            )
            warnings.append((line, message))
    return warnings


def _warnings(path: str, events: Sequence[tuple[Event, int]]) -> tuple[str, ...]:
    found: list[tuple[int, str]] = []
    for event, line in events:
        for warning in (_first_frame_warning(event), _used_up_warning(event)):
            if warning is not None:
                found.append((line, warning))
    found.extend(_duplicate_sequence_warnings(events))
    found.sort(key=lambda item: item[0])
    return tuple(f"{path}:{line}: warning: {message}" for line, message in found)


# --- public entry points --------------------------------------------------------------------


def parse_config(text: str, path: str = "<config>") -> Config:
    """Parse config text; ConfigError lists every problem as `PATH:LINE: message`."""
    return _parse(text, path, _Problems())


def _parse(text: str, path: str, problems: _Problems) -> Config:
    blocks = _BlockReader(problems).read(text)
    events = _build_events(blocks, problems)
    if not blocks:
        problems.add(1, "no events defined (expected at least one <NAME> ... </NAME> block)")
    if problems.items:
        raise ConfigError(problems.render(path))
    return Config(
        path=path,
        events=tuple(event for event, _ in events),
        warnings=_warnings(path, events),
    )


def load_config(path: str) -> Config:
    """Read and parse a config file; unreadable and non-UTF-8 files raise ConfigError too."""
    data = _read_bytes(path)
    text, undecodable = _decode_lines(data)
    problems = _Problems()
    try:
        config = _parse(text, path, problems)
    except ConfigError:
        config = None
    if config is not None and not undecodable:
        return config
    # A line with broken bytes gets only the UTF-8 complaint, not follow-on noise.
    problems.items = [item for item in problems.items if item[0] not in undecodable]
    problems.items.extend(undecodable.items())
    raise ConfigError(problems.render(path))


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: cannot read: larger than {MAX_CONFIG_BYTES} bytes"])
    return data


def _decode_lines(data: bytes) -> tuple[str, dict[int, str]]:
    """Decode line by line so every non-UTF-8 line is reported with its number."""
    data = data.removeprefix(codecs.BOM_UTF8)
    lines: list[str] = []
    undecodable: dict[int, str] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            undecodable[number] = (
                f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            )
            lines.append(raw.decode("utf-8", errors="replace"))
    return "\n".join(lines), undecodable


def check_report(config: Config, show_sequences_at: float | None = None) -> str:
    """What `tportknockd -C FILE` prints: every event spelled out, then `N events OK`.

    One-time events are shown by their parameters; their current sequences only when
    `show_sequences_at` gives the Unix time to show them for (`--show-sequences`).
    """
    sections = [_describe_event(event, show_sequences_at) for event in config.events]
    count = len(config.events)
    sections.append(f"{count} event{'' if count == 1 else 's'} OK")
    return "\n\n".join(sections)


def _describe_event(event: Event, show_sequences_at: float | None) -> str:
    lines = [f"event {event.name} (line {event.line})"]
    if event.otp is not None:
        lines += _describe_otp(event, event.otp, show_sequences_at)
    elif event.one_time_list is not None:
        lines += _describe_list(event.one_time_list, show_sequences_at is not None)
    else:
        lines += ["  sequence:", *_numbered(event.frames)]
    lines += [
        f"  timeout:       {_format_seconds(event.timeout)}",
        f"  start_command: {event.start_command}",
        f"  stop_command:  {event.stop_command if event.stop_command is not None else 'none'}",
        f"  command_delay: {_format_seconds(event.command_delay)}",
    ]
    return "\n".join(lines)


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    number = str(int(seconds)) if seconds.is_integer() else repr(seconds)
    return f"{number} s"


def _numbered(frames: Sequence[Frame]) -> list[str]:
    return [f"    {index}. {frame.describe()}" for index, frame in enumerate(frames, 1)]


def _describe_otp(event: Event, spec: OtpSpec, show_at: float | None) -> list[str]:
    kinds = " ".join(format_kind(kind) for kind in spec.kinds)
    lines = [
        "  one-time sequences derived from a secret and the clock (otp v1):",
        f"    secret file:   {spec.secret_path}",
        f"    frames:        {spec.length}, kinds {kinds}, ports {spec.low}-{spec.high}",
        f"    window:        {spec.window} s (windows w-1, w and w+1 accepted)",
    ]
    if show_at is None:
        return [*lines, "    sequences:     not shown (--show-sequences shows them)"]
    for number in derivation.accepted_windows(show_at, spec.window):
        start = derivation.window_start(number, spec.window)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start))
        derived = derivation.derive(spec, event.name, number)
        frames = " ".join(format_frame(frame) for frame in derived)
        lines.append(f"    window {number} (from {stamp}): {frames}")
    return lines


def _describe_list(one_time_list: OneTimeList, show: bool) -> list[str]:
    lines = [
        "  one-time sequences from a list, each used once:",
        f"    list file:     {one_time_list.path}",
        f"    unused:        {one_time_list.remaining}",
    ]
    head = one_time_list.head
    if head is None:
        return [*lines, "    current:       none (the list is used up)"]
    if not show:
        return [*lines, "    current:       not shown (--show-sequences shows it)"]
    frames = " ".join(format_frame(frame) for frame in head.frames)
    return [*lines, f"    current:       line {head.line}: {frames}"]
