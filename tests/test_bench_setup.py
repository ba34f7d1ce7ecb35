"""The bench's set-up, where it needs no root: the daemons' configs and command lines, the
flood configs and their bounds, the addresses (documentation and 198.18.0.0/15 only), the
scenario table."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from bench.daemons import (
    DAEMONS,
    Knockd,
    Tportknockd,
    knockd_config,
    parse_statistics,
    start_command,
    tportknockd_config,
)
from bench.runner import knock_records
from bench.scenarios import SCENARIOS
from bench.settings import (
    CLIENT_V4,
    CLIENT_V6,
    DOOR,
    FLAG_DOOR,
    KNOCK_V4,
    KNOCK_V6,
    KNOCKD_DOOR,
    KNOCKD_FLAG_DOOR,
    SERVER_V4,
    SERVER_V6,
    SPOOF_BASE,
    SPOOF_LAST,
    SPOOF_SOURCES,
    Settings,
)
from bench.traffic import Knock, flood_bounds, noise_config, spoof_config, trafgen_figures
from tportknockd.config import parse_config
from tportknockd.model import PROTO_TCP, PROTO_UDP, PSH, SYN, URG

OUT = Path("/tmp/bench-out.txt")
SPOOF_NET = ipaddress.ip_network("198.18.0.0/15")
DOC_V4 = ipaddress.ip_network("198.51.100.0/24")
DOC_V6 = ipaddress.ip_network("2001:db8::/32")
MAC = "02:00:00:00:00:01"


def knockd_sections(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif "=" in line:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


def knockd_frames(sequence: str) -> list[tuple[int, int]]:
    names = {"tcp": PROTO_TCP, "udp": PROTO_UDP}
    return [(names[proto], int(port))
            for port, proto in (item.split(":") for item in sequence.split(","))]


def test_tportknockd_config_is_accepted_by_the_daemon_and_has_both_doors() -> None:
    config = parse_config(tportknockd_config(OUT), "bench.conf")
    events = {event.name: event for event in config.events}
    assert set(events) == {"bench", "flags"}
    door = [(f.protocol, f.port, f.flags) for f in events["bench"].frames]
    assert door == [(PROTO_UDP, 7000, None), (PROTO_TCP, 7001, SYN), (PROTO_UDP, 7002, None)]
    flags = [(f.protocol, f.port, f.flags) for f in events["flags"].frames]
    assert flags == [(PROTO_TCP, 110, URG | PSH), (PROTO_UDP, 111, None)]
    assert all(e.start_command == start_command(OUT) for e in config.events)


def test_knockd_doors_are_the_same_ports_and_protocols() -> None:
    sections = knockd_sections(knockd_config(OUT))
    assert set(sections) == {"bench", "flags"}
    ours = parse_config(tportknockd_config(OUT), "bench.conf").events
    for event in ours:
        theirs = knockd_frames(sections[event.name]["sequence"])
        assert theirs == [(f.protocol, f.port) for f in event.frames]
        assert sections[event.name]["command"] == start_command(OUT)
        assert sections[event.name]["seq_timeout"] == f"{event.timeout:g}"
    assert sections["bench"]["tcpflags"] == "syn"
    assert sections["flags"]["tcpflags"] == "urg,psh"
    assert KNOCKD_DOOR in knockd_config(OUT) and KNOCKD_FLAG_DOOR in knockd_config(OUT)
    assert " ".join(DOOR) in tportknockd_config(OUT)
    assert " ".join(FLAG_DOOR) in tportknockd_config(OUT)


def test_the_start_command_writes_source_and_time() -> None:
    assert start_command(OUT) == f"date '+%IP% %s.%N' >> {OUT}"


def test_tportknockd_command_line_takes_extra_options() -> None:
    plain = Tportknockd().argv(Path("/w/a.conf"), "tkb0")
    assert plain[1:] == ["-m", "tportknockd", "-c", "/w/a.conf", "-i", "tkb0",
                         "--state-file", "none"]
    kernel = Tportknockd("tportknockd-kernel", ("--engine", "kernel"))
    assert kernel.name == "tportknockd-kernel"
    assert kernel.argv(Path("/w/a.conf"), "tkb0") == [*plain, "--engine", "kernel"]
    assert Knockd().argv(Path("/w/a.conf"), "tkb0") == ["knockd", "-i", "tkb0", "-c",
                                                         "/w/a.conf"]


def test_the_daemons_compared() -> None:
    names = [d.name for d in DAEMONS]
    assert names == ["knockd", "tportknockd"]  # knockd first: the reference column


def test_statistics_come_from_the_last_statistics_line() -> None:
    lines = ["tportknockd: ready: listening on tkb0\n",
             "tportknockd: statistics: packets=5 kernel_drops=1\n",
             "tportknockd: something else\n",
             "tportknockd: statistics: packets=120 fired=3 kernel_drops=0\n"]
    assert parse_statistics(lines) == {"packets": 120, "fired": 3, "kernel_drops": 0}
    assert parse_statistics(["no statistics here\n"]) == {}
    assert Knockd().statistics(lines) == {}


QUAD = r"\d+\.\d+\.\d+\.\d+"


def trafgen_addresses(config: str) -> tuple[set[str], list[tuple[int, int]], set[str]]:
    """(literal sources, source ranges drnd/dinc(low, high), destinations) of a trafgen config."""
    literal = set(re.findall(rf"sa=({QUAD})", config))
    ranges = [(int(a), int(b)) for a, b in re.findall(r"sa=d(?:rnd|inc)\((\d+), (\d+)\)", config)]
    return literal, ranges, set(re.findall(rf"da=({QUAD})", config))


@pytest.mark.parametrize("config", [noise_config(MAC), spoof_config(MAC, True),
                                    spoof_config(MAC, False)])
def test_floods_spoof_only_198_18_and_aim_only_at_the_server(config: str) -> None:
    literal, ranges, destinations = trafgen_addresses(config)
    assert literal and ranges
    assert all(ipaddress.ip_address(a) in SPOOF_NET for a in literal)
    for low, high in ranges:
        assert low <= high
        assert ipaddress.ip_address(low) in SPOOF_NET and ipaddress.ip_address(high) in SPOOF_NET
    assert destinations == {SERVER_V4}
    # No other address anywhere in it.
    assert set(re.findall(QUAD, config)) == literal | destinations
    # Every packet block names the server's MAC explicitly.
    assert config.count("{") == config.count(f"eth(da={MAC})") >= 1


def test_spoofed_first_frames_count_through_the_sources() -> None:
    _, ranges, _ = trafgen_addresses(spoof_config(MAC, True))
    assert ranges == [(SPOOF_BASE, SPOOF_BASE + SPOOF_SOURCES - 1)]
    assert "udp(sp=40000, dp=7000)" in spoof_config(MAC, True)  # the door's first frame
    assert spoof_config(MAC, True).startswith("cpu(1): {")
    assert spoof_config(MAC, False).startswith("{")


def test_every_flood_is_bounded_in_count() -> None:
    assert flood_bounds(3.0, 10_000) == (30_000, ["-b", "10000pps"])
    assert flood_bounds(10.0, None) == (20_000_000, ["-P", "2"])


def test_trafgen_figures_from_its_closing_lines() -> None:
    # trafgen prints "\r%12llu packets outgoing" and one
    # "\r%12lu sec, %lu usec on CPU%d (%llu packets)" line per worker.
    output = ("\n\r     4862316 packets outgoing\n\r   291738960 bytes outgoing\n"
              "\r           0 sec, 0 usec on CPU0 (0 packets)\n"
              "\r           9 sec, 987654 usec on CPU1 (4862316 packets)\n")
    sent, seconds = trafgen_figures(output, 12.5)
    assert sent == 4_862_316
    assert seconds == pytest.approx(9.987654)
    assert trafgen_figures("", 12.5) == (0, 12.5)


def test_addresses_are_documentation_or_benchmarking_only() -> None:
    for address in (SERVER_V4, CLIENT_V4, *KNOCK_V4):
        assert ipaddress.ip_address(address) in DOC_V4
    for address in (SERVER_V6, CLIENT_V6, *KNOCK_V6):
        assert ipaddress.ip_address(address) in DOC_V6
    assert ipaddress.ip_address(SPOOF_BASE) == SPOOF_NET.network_address
    assert ipaddress.ip_address(SPOOF_LAST) == SPOOF_NET.broadcast_address
    assert SPOOF_NET.num_addresses >= SPOOF_SOURCES
    assert len(set(KNOCK_V4)) == len(KNOCK_V4) and len(set(KNOCK_V6)) == len(KNOCK_V6)


@pytest.mark.parametrize("settings", [Settings(), Settings.quick()], ids=["full", "quick"])
def test_each_scenario_has_enough_knock_sources(settings: Settings) -> None:
    assert settings.idle_knocks <= len(KNOCK_V4)
    assert settings.noise_knocks <= len(KNOCK_V4)
    assert settings.during_knocks + settings.after_knocks <= len(KNOCK_V4)
    assert 2 * settings.flag_knocks <= len(KNOCK_V4)
    assert settings.v6_knocks <= len(KNOCK_V6)
    for scenario in SCENARIOS:
        assert "{" not in scenario.heading(settings)


def test_quick_is_smaller_than_full() -> None:
    full, quick = asdict(Settings()), asdict(Settings.quick())
    assert all(quick[f.name] <= full[f.name] for f in fields(Settings))
    assert Settings.quick().is_quick and not Settings().is_quick


def test_scenario_keys_and_labels_are_unique() -> None:
    assert len({s.key for s in SCENARIOS}) == len(SCENARIOS)
    assert len({s.label for s in SCENARIOS}) == len(SCENARIOS)
    assert [s.key for s in SCENARIOS] == ["a", "b", "c10k", "cfull", "d", "e"]


def test_knock_records_latency_from_last_packet_to_detection() -> None:
    knocks = [Knock("198.51.100.10", ""), Knock("198.51.100.11", "during"),
              Knock("198.51.100.12", "after")]
    found = {"198.51.100.10": 100.0035, "198.51.100.12": 200.0}
    last = {"198.51.100.10": 100.0, "198.51.100.11": 150.0}
    records = knock_records(knocks, found, last)
    assert records[0] == {"source": "198.51.100.10", "kind": "", "sent": True,
                          "detected": True, "latency_ms": pytest.approx(3.5)}
    assert records[1]["detected"] is False and records[1]["latency_ms"] is None
    # Detected, but its packets were not captured: no latency rather than a wrong one.
    assert records[2]["detected"] is True and records[2]["latency_ms"] is None
