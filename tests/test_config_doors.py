"""The door keys: what a knock opens in the daemon's own table, and every way to get it wrong."""

from __future__ import annotations

import pytest

from tportknockd.config import ConfigError, check_report, parse_config
from tportknockd.frame_syntax import format_door_port, parse_door_port
from tportknockd.model import PROTO_TCP, PROTO_UDP, DoorPort

PATH = "knock.conf"


def event_with(*lines: str, start: bool = False) -> str:
    body = "\n".join(f" {line}" for line in lines)
    command = "\n start_command = true" if start else ""
    return f"<ssh>\n sequence = udp:7000 udp:8000\n timeout = 10\n{body}{command}\n</ssh>\n"


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, PATH)
    return caught.value.messages


def test_a_door_alone_is_an_event() -> None:
    [event] = parse_config(event_with("door = tcp:22"), PATH).events
    assert event.door == (DoorPort(PROTO_TCP, 22, 22),)
    assert event.start_command is None
    assert (event.door_timeout, event.door_prefix) == (30.0, (32, 128))


def test_ports_ranges_timeout_and_prefix() -> None:
    text = event_with("door = tcp:22, udp:60000-61000  tcp:443", "door_timeout = 2.5",
                      "door_prefix = 24 64", start=True)  # fmt: skip
    [event] = parse_config(text, PATH).events
    assert event.door == (
        DoorPort(PROTO_TCP, 22, 22),
        DoorPort(PROTO_UDP, 60000, 61000),
        DoorPort(PROTO_TCP, 443, 443),
    )
    assert event.door_timeout == 2.5 and event.door_prefix == (24, 64)
    assert event.start_command == "true"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("door = tcp:22:s", "door: bad door 'tcp:22:s': a door takes no flags"),
        ("door = udp:0", "door: bad door 'udp:0': port 0 is out of range 1..65535"),
        ("door = tcp:65536", "door: bad door 'tcp:65536': port 65536 is out of range"),
        ("door = sctp:5", "door: bad door 'sctp:5': unknown protocol 'sctp'"),
        ("door = tcp:9-3", "door: bad door 'tcp:9-3': range 9-3 is reversed (write 3-9)"),
        ("door = tcp:9-", "door: bad door 'tcp:9-': port '' is not a decimal number"),
        ("door = ,", "empty door: expected ports like tcp:22"),
    ],
)
def test_bad_doors_name_their_line(line: str, message: str) -> None:
    [error] = errors_of(event_with(line, start=True))
    assert error.startswith(f"{PATH}:4: {message}")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("door_timeout = 0", "door_timeout: '0' must be greater than 0 seconds"),
        ("door_timeout = -5", "door_timeout: '-5' must be greater than 0 seconds"),
        ("door_prefix = 33 64", "door_prefix 33 64: IPv4 takes 1..32, IPv6 1..128"),
        ("door_prefix = 24 0", "door_prefix 24 0: IPv4 takes 1..32, IPv6 1..128"),
        ("door_prefix = 24", "door_prefix '24': expected two prefix lengths, IPv4 then IPv6"),
        ("door_prefix = /24 /64", "door_prefix '/24 /64': expected two prefix lengths"),
    ],
)
def test_bad_door_settings_name_their_line(line: str, message: str) -> None:
    [error] = errors_of(event_with("door = tcp:22", line))
    assert error.startswith(f"{PATH}:5: {message}")


def test_door_settings_without_a_door() -> None:
    errors = errors_of(event_with("door_timeout = 5", "door_prefix = 24 64", start=True))
    assert errors == [
        f"{PATH}:4: door_timeout needs door (the ports a knock opens)",
        f"{PATH}:5: door_prefix needs door (the ports a knock opens)",
    ]


def test_an_event_that_does_nothing() -> None:
    assert errors_of(event_with()) == [
        f"{PATH}:1: event 'ssh' does nothing: give it a door (ports the knock opens), a "
        "start_command, or both"
    ]


def test_one_time_events_take_doors_too() -> None:
    text = "<l>\n one_time_sequences = /nonexistent\n timeout = 5\n door = tcp:22\n</l>\n"
    assert not any("door" in error for error in errors_of(text))


def test_the_check_report_shows_the_door() -> None:
    report = check_report(parse_config(event_with("door = tcp:22 udp:5-6", "door_prefix = 24 64"),
                                       PATH))  # fmt: skip
    assert "  door:          tcp:22 udp:5-6, open 30 s for the knocker's /24 or /64" in report
    assert "  start_command: none" in report
    plain = check_report(parse_config(event_with(start=True), PATH))
    assert "  door:          none" in plain


@pytest.mark.parametrize("text", ["tcp:22", "udp:60000-61000", "tcp:1-65535", "udp:7"])
def test_door_ports_spell_back(text: str) -> None:
    assert format_door_port(parse_door_port(text)) == text
