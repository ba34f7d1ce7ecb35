"""The frame syntax (`tcp:123:frap`, `udp:53`) and frame kinds (`tcp:s`, `udp`): what each
spelling means, that formatting gives back the spelling, and what is refused with which reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tportknockd.frame_syntax import (
    format_frame,
    format_kind,
    parse_frame,
    parse_kind,
    parse_port,
)
from tportknockd.model import ACK, ALL_SIX, ECE, FIN, PSH, RST, SYN, URG, Frame, FrameKind

TCP, UDP = 6, 17


@pytest.mark.parametrize(
    ("text", "frame"),
    [
        ("tcp:123:frap", Frame(TCP, 123, FIN | RST | ACK | PSH)),
        ("TCP:7000:S", Frame(TCP, 7000, SYN)),
        ("tcp:1", Frame(TCP, 1, 0)),  # no flags spelled: none set
        ("tcp:22:n", Frame(TCP, 22, 0)),
        ("tcp:22:x", Frame(TCP, 22, ALL_SIX)),
        ("tcp:22:i", Frame(TCP, 22, None)),  # any flags
        ("  udp:65535 ", Frame(UDP, 65535, None)),
        ("tcp:0080:u", Frame(TCP, 80, URG)),
    ],
)
def test_spellings(text: str, frame: Frame) -> None:
    assert parse_frame(text) == frame


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("tcp", "expected protocol:port"),
        ("tcp:1:s:s", "expected protocol:port"),
        ("icmp:1", "unknown protocol 'icmp'"),
        ("tcp:0", "out of range"),
        ("tcp:65536", "out of range"),
        ("tcp:1" + "0" * 5000, "out of range"),
        ("tcp:-1", "not a decimal number"),
        ("tcp:١٢", "not a decimal number"),  # digits, but not ASCII ones
        ("udp:53:s", "only TCP frames take flags"),
        ("tcp:1:", "empty flags"),
        ("tcp:1:sn", "'n' cannot be combined"),
        ("tcp:1:ss", "'s' is repeated"),
        ("tcp:1:e", "unknown flag letter 'e'"),
    ],
)
def test_what_is_refused_and_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"bad frame {text.strip()!r}: .*{reason}"):
        parse_frame(text)


@given(
    port=st.integers(1, 65535),
    flags=st.one_of(st.none(), st.integers(0, ALL_SIX)),
    udp=st.booleans(),
)
def test_formatting_gives_back_what_parses_to_the_frame(
    port: int, flags: int | None, udp: bool
) -> None:
    frame = Frame(UDP, port, None) if udp else Frame(TCP, port, flags)
    assert parse_frame(format_frame(frame)) == frame


def test_formatting_spells_flags_in_a_fixed_order() -> None:
    assert format_frame(Frame(TCP, 123, ACK | PSH | RST | FIN)) == "tcp:123:frpa"
    assert format_frame(Frame(TCP, 1, 0)) == "tcp:1:n"
    assert format_frame(Frame(UDP, 53, None)) == "udp:53"


def test_what_cannot_be_spelled() -> None:
    with pytest.raises(ValueError, match="ECE/CWR"):
        format_frame(Frame(TCP, 1, SYN | ECE))
    with pytest.raises(ValueError, match="protocol 1 has no config spelling"):
        format_frame(Frame(1, 1, None))


def test_ports() -> None:
    assert parse_port("1") == 1 and parse_port("65535") == 65535
    for bad in ("", "0", "65536", "+1", "1.0", " 1"):
        with pytest.raises(ValueError):
            parse_port(bad)


@pytest.mark.parametrize(
    ("text", "kind", "spelled"),
    [
        ("tcp:s", FrameKind(TCP, SYN), "tcp:s"),
        ("tcp", FrameKind(TCP, 0), "tcp:n"),
        ("tcp:i", FrameKind(TCP, None), "tcp:i"),
        ("tcp:fu", FrameKind(TCP, FIN | URG), "tcp:fu"),
        ("udp", FrameKind(UDP, None), "udp"),
    ],
)
def test_kinds(text: str, kind: FrameKind, spelled: str) -> None:
    assert parse_kind(text) == kind
    assert format_kind(kind) == spelled
    assert parse_kind(spelled) == kind
    assert kind.at(9).port == 9 and kind.at(9).flags == kind.flags


@pytest.mark.parametrize(
    ("text", "reason"),
    [("tcp:s:1", "expected protocol"), ("udp:s", "only TCP"), ("sctp", "unknown protocol")],
)
def test_kinds_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"bad frame kind {text!r}: .*{reason}"):
        parse_kind(text)
