"""The frame syntax shared by the config, one-time lists and the client: `tcp:123:frap`;
and the door syntax of the config (`tcp:22`, `udp:60000-61000`).

A frame is `protocol:port[:flags]`; a frame kind (`tcp:s`, `udp`), used by one-time sequences,
is the same without the port.
"""

from __future__ import annotations

from tportknockd.model import (
    ALL_SIX,
    FLAG_LETTERS,
    PROTO_TCP,
    PROTO_UDP,
    PROTOCOL_NUMBERS,
    DoorPort,
    Frame,
    FrameKind,
)

_EXCLUSIVE_LETTERS = {"x": ALL_SIX, "n": 0, "i": None}
_LETTER_ORDER = "fsrpau"


def parse_frame(text: str) -> Frame:
    """`tcp:123:frap` → Frame(6, 123, FIN|RST|ACK|PSH); ValueError says what is wrong."""
    spelled = text.strip()
    parts = spelled.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"bad frame {spelled!r}: expected protocol:port[:flags], e.g. tcp:1234:s")
    try:
        protocol = _parse_protocol(parts[0])
        port = parse_port(parts[1])
        if len(parts) == 2:
            return Frame(protocol, port, 0 if protocol == PROTO_TCP else None)
        if protocol != PROTO_TCP:
            raise ValueError("only TCP frames take flags")
        return Frame(protocol, port, _parse_flags(parts[2]))
    except ValueError as exc:
        raise ValueError(f"bad frame {spelled!r}: {exc}") from None


def format_frame(frame: Frame) -> str:
    """The config spelling of a frame, the inverse of `parse_frame`: `tcp:123:frap`."""
    protocol = {PROTO_TCP: "tcp", PROTO_UDP: "udp"}.get(frame.protocol)
    if protocol is None:
        raise ValueError(f"protocol {frame.protocol} has no config spelling")
    head = f"{protocol}:{frame.port}"
    if frame.protocol == PROTO_UDP:
        return head
    return f"{head}:{_flag_letters(frame.flags)}"


def _flag_letters(flags: int | None) -> str:
    if flags is None:
        return "i"
    if flags == 0:
        return "n"
    if flags == ALL_SIX:
        return "x"
    if flags & ~ALL_SIX:
        raise ValueError(f"flags {flags:#04x} include ECE/CWR, which frames cannot spell")
    return "".join(letter for letter in _LETTER_ORDER if flags & FLAG_LETTERS[letter])


def _parse_protocol(text: str) -> int:
    number = PROTOCOL_NUMBERS.get(text.lower())
    if number is None:
        raise ValueError(f"unknown protocol {text!r} (expected tcp or udp)")
    return number


def parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"port {text!r} is not a decimal number")
    # int() refuses very long digit strings, and such a port is out of range anyway.
    if len(text.lstrip("0")) > 5 or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text} is out of range 1..65535")
    return int(text)


def _parse_flags(text: str) -> int | None:
    if not text:
        raise ValueError("empty flags after ':' (use n for none, i for any)")
    letters = text.lower()
    for letter in letters:
        if letter in _EXCLUSIVE_LETTERS and len(letters) > 1:
            raise ValueError(f"flag {letter!r} cannot be combined with other flag letters")
    if letters in _EXCLUSIVE_LETTERS:
        return _EXCLUSIVE_LETTERS[letters]
    flags = 0
    for letter in letters:
        bit = FLAG_LETTERS.get(letter)
        if bit is None:
            raise ValueError(f"unknown flag letter {letter!r} (use f s r p a u, or x, n, i)")
        if flags & bit:
            raise ValueError(f"flag letter {letter!r} is repeated")
        flags |= bit
    return flags


def parse_kind(text: str) -> FrameKind:
    """`tcp:fu` → FrameKind(6, FIN|URG), `udp` → FrameKind(17, None); ValueError otherwise.

    `tcp` alone means no flags, as a frame without flags does.
    """
    spelled = text.strip()
    parts = spelled.split(":")
    try:
        if len(parts) > 2:
            raise ValueError("expected protocol[:flags], e.g. tcp:s or udp")
        protocol = _parse_protocol(parts[0])
        if len(parts) == 1:
            return FrameKind(protocol, 0 if protocol == PROTO_TCP else None)
        if protocol != PROTO_TCP:
            raise ValueError("only TCP frames take flags")
        return FrameKind(protocol, _parse_flags(parts[1]))
    except ValueError as exc:
        raise ValueError(f"bad frame kind {spelled!r}: {exc}") from None


def format_kind(kind: FrameKind) -> str:
    """The spelling of a frame kind: `tcp:s`, `udp`."""
    if kind.protocol == PROTO_UDP:
        return "udp"
    return f"tcp:{_flag_letters(kind.flags)}"


def parse_door_port(text: str) -> DoorPort:
    """`tcp:22` or `udp:60000-61000` → DoorPort; ValueError says what is wrong."""
    spelled = text.strip()
    parts = spelled.split(":")
    try:
        if len(parts) == 3:
            raise ValueError("a door takes no flags: it opens the port for every connection")
        if len(parts) != 2:
            raise ValueError("expected protocol:port or protocol:low-high, e.g. tcp:22")
        protocol = _parse_protocol(parts[0])
        low_text, dash, high_text = parts[1].partition("-")
        low = parse_port(low_text)
        high = parse_port(high_text) if dash else low
        if high < low:
            raise ValueError(f"range {low}-{high} is reversed (write {high}-{low})")
        return DoorPort(protocol, low, high)
    except ValueError as exc:
        raise ValueError(f"bad door {spelled!r}: {exc}") from None


def format_door_port(door: DoorPort) -> str:
    """The config spelling of a door port, the inverse of `parse_door_port`."""
    protocol = {PROTO_TCP: "tcp", PROTO_UDP: "udp"}[door.protocol]
    ports = str(door.low) if door.low == door.high else f"{door.low}-{door.high}"
    return f"{protocol}:{ports}"
