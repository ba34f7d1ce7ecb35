"""bench.doors, bench.door_report and bench.forks: the door figures' configs, parsing and
report, without a test bed."""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Any

from bench.door_report import door_summary, render_doors
from bench.doors import (
    BUILTIN,
    COMMAND_SIDE,
    KNOCKD_SIDE,
    SIDES,
    DoorSettings,
    element_addresses,
    knockers_config,
    latency_records,
    spoofed_sources,
    syn_flood_config,
)
from bench.forks import CN_MSG, EVENT_HEADER, FORK, NLMSG_HEADER, forked_process, listen_message

SPOOFED = ipaddress.ip_network("198.18.0.0/15")


def _numbers(text: str) -> list[int]:
    """The bounds of every dinc/drnd source address of a trafgen config."""
    return [int(n) for pair in re.findall(r"sa=d(?:inc|rnd)\((\d+), (\d+)\)", text)
            for n in pair]


def test_the_spoofed_knockers_send_the_whole_sequence_from_198_18_only() -> None:
    config = knockers_config("aa:bb:cc:dd:ee:ff", 1000)
    blocks = config.count("eth(da=aa:bb:cc:dd:ee:ff)")
    assert blocks == 3  # one block per frame, sent in turn
    assert re.findall(r"(udp|tcp)\(sp=\d+, dp=(\d+)", config) == [
        ("udp", "7000"), ("tcp", "7001"), ("udp", "7002")]
    assert ", syn," in config
    bounds = _numbers(config)
    assert len(set(bounds[0::2])) == len(set(bounds[1::2])) == 1  # the same sources each
    for n in bounds:
        assert ipaddress.IPv4Address(n) in SPOOFED
    assert bounds[1] - bounds[0] + 1 == 1000
    assert spoofed_sources(1000)[0] == str(ipaddress.IPv4Address(bounds[0]))
    assert spoofed_sources(1000)[-1] == str(ipaddress.IPv4Address(bounds[1]))


def test_the_door_flood_is_syns_to_the_door_port_from_198_18_only() -> None:
    config = syn_flood_config("aa:bb:cc:dd:ee:ff")
    assert "dp=22, syn" in config and "da=198.51.100.1" in config
    for n in _numbers(config):
        assert ipaddress.IPv4Address(n) in SPOOFED


def test_sides_configs() -> None:
    builtin, command, knockd = (side.config() for side in SIDES)
    assert "door          = tcp:22" in builtin and "start_command" not in builtin
    assert "nft add element inet knock allowed '{ %IP% timeout 30s }'" in command
    assert "door " not in command
    assert "command     = nft add element inet knock allowed" in knockd
    assert SIDES[0].set_ref()[0] == "tportknockd" and SIDES[1].set_ref() == ("knock", "allowed")


def test_quick_door_settings_are_smaller() -> None:
    full, quick = DoorSettings(), DoorSettings.quick()
    assert full.knocks == 20 and full.spoofed_knockers == 1000 and full.spoof_s == 10
    assert full.flood_pps == 300_000 and full.probe_interval_us <= 250
    assert quick.knocks < full.knocks and quick.flood_s < full.flood_s


def test_element_addresses_of_plain_prefix_and_concatenated_elements() -> None:
    listing = {"nftables": [{"metainfo": {}}, {"set": {"name": "s", "elem": [
        "198.18.0.1",
        {"elem": {"val": "198.18.0.2", "timeout": 30, "expires": 29}},
        {"elem": {"val": {"concat": [{"prefix": {"addr": "198.18.0.3", "len": 32}}, "tcp",
                                     22]}, "timeout": 30}},
        {"elem": {"val": {"concat": ["198.18.0.4", 6, {"range": [22, 22]}]}}},
    ]}}]}
    assert element_addresses(listing) == {"198.18.0.1", "198.18.0.2", "198.18.0.3",
                                          "198.18.0.4"}
    assert element_addresses({"nftables": [{"set": {"name": "empty"}}]}) == set()


def test_latency_from_the_last_frame_to_the_first_connection() -> None:
    probes: list[dict[str, Any]] = [
        {"source": "a", "opened": 10.002, "attempts": 101, "first": 9.99, "last": 10.0},
        {"source": "b", "opened": None, "attempts": 1, "first": 5.0, "last": 5.0},
        {"source": "c", "opened": 3.0, "attempts": 0, "first": None, "last": 0.0}]
    records = latency_records(probes, {"a": 10.0, "b": 4.0})
    assert abs(records[0]["latency_ms"] - 2.0) < 1e-6
    assert abs(records[0]["interval_ms"] - 0.1) < 1e-6
    assert records[1]["opened"] is False and records[1]["latency_ms"] is None
    assert records[2]["sent"] is False and records[2]["latency_ms"] is None


def _fork_message(parent_tgid: int, child_pid: int, child_tgid: int, what: int = 1) -> bytes:
    event = EVENT_HEADER.pack(what, 0, 0) + FORK.pack(parent_tgid, parent_tgid, child_pid,
                                                      child_tgid)
    body = CN_MSG.pack(1, 1, 0, 0, len(event), 0) + event
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), 3, 0, 0, 0) + body


def test_fork_events_count_processes_not_threads() -> None:
    assert forked_process(_fork_message(100, 200, 200)) == (100, 200)
    assert forked_process(_fork_message(100, 201, 100)) is None  # a thread
    assert forked_process(_fork_message(100, 200, 200, what=2)) is None  # exec, not fork
    assert forked_process(b"short") is None
    message = listen_message(42)
    assert struct.unpack_from("=I", message)[0] == len(message)


def _window(latencies: list[float], cpu: float = 0.01, forks: int = 0) -> dict[str, Any]:
    return {"knocks": [{"source": f"s{i}", "kind": "", "sent": True, "opened": True,
                        "latency_ms": v, "attempts": 100, "interval_ms": 0.1}
                       for i, v in enumerate(latencies)],
            "cpu_s": cpu, "stat_cpu_s": cpu, "children_cpu_s": 0.0, "forks": forks,
            "window_s": 1.0, "fork_overruns": 0}


def _spoof(seen: int, forks: int, cpu: float) -> dict[str, Any]:
    return {"knockers": 1000, "elements_seen": seen, "elements_foreign": 0,
            "elements_at_end": seen, "all_in_s": 10.5, "forks": forks, "fork_overruns": 0,
            "cpu_s": cpu, "stat_cpu_s": cpu, "children_cpu_s": 0.0, "fired": seen,
            "door_failures": 0, "send_s": 10.0}


def _doors() -> dict[str, Any]:
    flood = {"quiet": _window([0.5], 0.010), "flood": _window([0.6], 0.011) | {
        "flood_sent": 3_000_000, "flood_delivered": 3_000_000, "flood_s": 10.0}}
    return {
        "settings": DoorSettings().__dict__, "sides": [BUILTIN, COMMAND_SIDE, KNOCKD_SIDE],
        "dopen": {BUILTIN: _window([0.4, 0.5, 0.6]), COMMAND_SIDE: _window([19.0], forks=1),
                  KNOCKD_SIDE: _window([36.0], forks=1)},
        "dspoof": {BUILTIN: _spoof(1000, 0, 0.05), COMMAND_SIDE: _spoof(1000, 1000, 2.0),
                   KNOCKD_SIDE: _spoof(990, 1000, 1.0)},
        "dflood": {BUILTIN: flood},
    }


def test_the_door_section_checks_the_built_in_door_against_its_targets() -> None:
    lines = render_doors(_doors(), BUILTIN, COMMAND_SIDE, KNOCKD_SIDE)
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines
            if line.startswith("| ") and not line.startswith("| **")}
    assert rows["median (ms)"][:3] == ["0.50 ✓", "19.00", "36.00"]
    assert rows["median / knockd nft command's median"][0] == "0.014× ✓"
    assert rows["their elements that appeared in the set"][:3] == ["1000/1000 ✓", "1000/1000",
                                                                  "990/1000"]
    assert rows["processes forked by the daemon"][0] == "0 ✓"
    assert rows["daemon CPU, utime+stime (s)"][0] == "0.05 ✓"
    assert rows["… with the flood (s)"][0] == "0.011 ✓"
    assert rows["… with the flood (s)"][1] == "—"  # that side did not run this part
    assert rows["flood delivered (k pps)"][0] == "300.0"


def test_a_slow_door_fails_its_targets() -> None:
    doors = _doors()
    doors["dopen"][BUILTIN] = _window([1.5, 2.5, 3.0])
    lines = render_doors(doors, BUILTIN, COMMAND_SIDE, KNOCKD_SIDE)
    median = next(line for line in lines if line.startswith("| median (ms)"))
    assert "2.50 ✗" in median
    summary = door_summary(doors)
    assert summary["dopen"][BUILTIN]["opened"] == (3, 3)
    assert summary["dflood"][BUILTIN]["flood"]["flood_pps"] == 300_000
