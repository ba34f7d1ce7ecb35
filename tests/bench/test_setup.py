"""The bench's set-up, where it needs no root: the daemons' configs and command lines, the
flood configs and their bounds, the addresses (documentation and 198.18.0.0/15 only), the
scenario table."""

from __future__ import annotations

import ipaddress
import re
import stat
import subprocess
import sys
import threading
import time
from dataclasses import asdict, fields
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from bench.daemons import (
    DAEMONS,
    ENGINE_PAIR,
    KERNEL_COLUMN,
    TPORTKNOCKD_COLUMNS,
    Knockd,
    Running,
    Tportknockd,
    collect_lines,
    engine_line,
    knockd_config,
    parse_statistics,
    start_command,
    tportknockd_config,
)
from bench.onetime import flood_target, next_change_after, secret_path, tportknockd_otp_config
from bench.runner import knock_records
from bench.scenarios import SCENARIOS, Context, change_into_flood
from bench.settings import (
    CLIENT_V4,
    CLIENT_V6,
    DOOR,
    FLAG_DOOR,
    KNOCK_V4,
    KNOCK_V6,
    KNOCKD_DOOR,
    KNOCKD_FLAG_DOOR,
    OTP_WINDOW,
    SEQ_TIMEOUT,
    SERVER_V4,
    SERVER_V6,
    SPOOF_BASE,
    SPOOF_LAST,
    SPOOF_SOURCES,
    Settings,
)
from bench.traffic import Knock, flood_bounds, noise_config, spoof_config, trafgen_figures
from tportknockd.client import build_parser, frames_from_args
from tportknockd.config import load_config, parse_config
from tportknockd.matching.sequences import Schedule
from tportknockd.model import ACK, FIN, PROTO_TCP, PROTO_UDP, PSH, SYN, URG, Frame
from tportknockd.onetime import derivation

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


def test_tportknockd_command_line_names_the_engine_and_takes_extra_options() -> None:
    plain = Tportknockd().argv(Path("/w/a.conf"), "tkb0")
    assert plain[1:] == ["-m", "tportknockd", "-c", "/w/a.conf", "-i", "tkb0",
                         "--state-file", "none"]
    kernel = Tportknockd("tportknockd-kernel", "kernel")
    assert kernel.name == "tportknockd-kernel"
    assert kernel.argv(Path("/w/a.conf"), "tkb0") == [*plain, "--engine", "kernel"]
    other = Tportknockd("x", "python", ("--max-attempts", "9"))
    assert other.argv(Path("/w/a.conf"), "tkb0") == [*plain, "--engine", "python",
                                                      "--max-attempts", "9"]
    assert Knockd().argv(Path("/w/a.conf"), "tkb0") == ["knockd", "-i", "tkb0", "-c",
                                                         "/w/a.conf"]


def test_the_daemons_compared() -> None:
    names = [d.name for d in DAEMONS]
    # knockd first: the reference column; then tportknockd with each engine, asked for.
    assert names == ["knockd", "tportknockd-python", "tportknockd-kernel"]
    engines = [d.argv(Path("/w/a.conf"), "tkb0")[-2:] for d in DAEMONS[1:]]
    assert engines == [["--engine", "python"], ["--engine", "kernel"]]
    assert TPORTKNOCKD_COLUMNS == ("tportknockd-python", "tportknockd-kernel")
    assert ENGINE_PAIR == ("tportknockd-kernel", "tportknockd-python")
    assert KERNEL_COLUMN == "tportknockd-kernel"


KERNEL_LINE = ("engine: kernel (eBPF socket filter, 3503 instructions; attempts in BPF maps: "
               "65536 fresh, 8192 advanced, about 7.6 MiB of kernel memory)")


def test_the_engine_line_is_found_in_the_log() -> None:
    lines = ["2026-11-28 16:35:46,640 tportknockd[1]: INFO tportknockd 0.2.0 starting\n",
             "2026-11-28 16:35:46,668 tportknockd[1]: ERROR kernel engine: nope; keeping\n",
             f"2026-11-28 16:35:46,668 tportknockd[1]: INFO {KERNEL_LINE}\n",
             "2026-11-28 16:35:46,668 tportknockd[1]: INFO ready: 2 events, 5 frames\n"]
    assert engine_line(lines) == KERNEL_LINE.removeprefix("engine: ")
    assert engine_line(["tportknockd: engine: python (as asked)\n"]) == "python (as asked)"
    assert engine_line(lines[:2]) is None


def stand_in(script: str) -> tuple[subprocess.Popen[str], Running]:
    """A process that logs like tportknockd, its lines collected as the bench does."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=collect_lines, args=(proc, lines), daemon=True)
    reader.start()
    return proc, Running(proc, 0.0, lines, reader)


def started(daemon: Tportknockd, engine_said: str | None) -> Running:
    said = f'print("tportknockd: {engine_said}", flush=True)\n' if engine_said else ""
    proc, run = stand_in(said + 'print("tportknockd: ready: 1 events", flush=True)\n')
    try:
        proc.wait(10)
        run.reader.join(5)
        assert daemon.is_ready(run)
        run.engine = daemon.engine(run)
        return run
    finally:
        proc.kill()
        proc.wait()


def test_a_column_runs_the_engine_it_names_or_the_bench_fails() -> None:
    kernel = Tportknockd("tportknockd-kernel", "kernel")
    assert started(kernel, KERNEL_LINE).engine == KERNEL_LINE.removeprefix("engine: ")
    with pytest.raises(RuntimeError, match="should run the kernel engine"):
        started(kernel, "engine: python (the kernel engine cannot run: no CAP_BPF)")
    python = Tportknockd("tportknockd-python", "python")
    assert started(python, "engine: python (as asked)").engine == "python (as asked)"
    with pytest.raises(RuntimeError, match="should run the python engine"):
        started(python, KERNEL_LINE)
    with pytest.raises(RuntimeError, match="no 'engine:' line"):
        started(python, None)
    # Without an engine asked for (auto), whatever it says is recorded.
    assert started(Tportknockd(), KERNEL_LINE).engine.startswith("kernel (")


def test_statistics_come_from_the_last_statistics_line() -> None:
    lines = ["tportknockd: ready: listening on tkb0\n",
             "tportknockd: statistics: packets=5 kernel_drops=1\n",
             "tportknockd: something else\n",
             "tportknockd: statistics: packets=120 fired=3 kernel_drops=0\n"]
    assert parse_statistics(lines) == {"packets": 120, "fired": 3, "kernel_drops": 0}
    assert parse_statistics(["no statistics here\n"]) == {}
    assert Knockd().statistics(lines) == {}


STAND_IN = """
import signal, sys, time
count = 0
def answer(*_):
    global count
    count += 1
    print(f"tportknockd: statistics: kernel_packets={count * 100} kernel_drops=0", flush=True)
signal.signal(signal.SIGUSR1, answer)
print("tportknockd: ready: 1 events, 4 frames", flush=True)
time.sleep(30)
"""


def test_statistics_on_demand_by_sigusr1() -> None:
    """A stand-in that answers SIGUSR1 as tportknockd does: each call gets a fresh line."""
    proc, run = stand_in(STAND_IN)
    try:
        daemon = Tportknockd()
        while not daemon.is_ready(run):
            time.sleep(0.01)
        assert daemon.statistics_now(run) == {"kernel_packets": 100, "kernel_drops": 0}
        assert daemon.statistics_now(run) == {"kernel_packets": 200, "kernel_drops": 0}
        assert Knockd().statistics_now(run) == {}  # knockd cannot tell: no signal sent
        assert daemon.statistics_now(run)["kernel_packets"] == 300
    finally:
        proc.kill()
        proc.wait()


QUAD = r"\d+\.\d+\.\d+\.\d+"


def trafgen_addresses(config: str) -> tuple[set[str], list[tuple[int, int]], set[str]]:
    """(literal sources, source ranges drnd/dinc(low, high), destinations) of a trafgen config."""
    literal = set(re.findall(rf"sa=({QUAD})", config))
    ranges = [(int(a), int(b)) for a, b in re.findall(r"sa=d(?:rnd|inc)\((\d+), (\d+)\)", config)]
    return literal, ranges, set(re.findall(rf"da=({QUAD})", config))


@pytest.mark.parametrize("config", [noise_config(MAC), spoof_config(MAC)])
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
    _, ranges, _ = trafgen_addresses(spoof_config(MAC))
    assert ranges == [(SPOOF_BASE, SPOOF_BASE + SPOOF_SOURCES - 1)]
    assert "udp(sp=40000, dp=7000)" in spoof_config(MAC)  # the door's first frame
    # One worker (trafgen's slow path) sends every packet: none is tied to a CPU's worker.
    assert all("cpu(" not in config for config in (spoof_config(MAC), noise_config(MAC)))


def test_every_flood_is_bounded_in_count() -> None:
    assert flood_bounds(3.0, 10_000) == (30_000, ["-b", "10000pps"])
    # Full rate: sendto(2) with no gap (-t 0), never the TX_RING; bounded by time too.
    assert flood_bounds(10.0, None) == (20_000_000, ["-t", "0"])


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
    assert [s.key for s in SCENARIOS] == ["a", "b", "c10k", "cfull", "d", "e", "f10k", "ffull"]


def test_only_the_one_time_scenarios_are_limited_to_tportknockd_with_both_engines() -> None:
    for scenario in SCENARIOS:
        one_time = scenario.key.startswith("f")
        assert all(scenario.applies_to(name) for name in TPORTKNOCKD_COLUMNS)
        assert scenario.applies_to("knockd") is not one_time
        assert set(scenario.configs) == (set(TPORTKNOCKD_COLUMNS) if one_time else set())


def test_a_scenario_gives_a_daemon_its_own_config_or_the_usual_one(tmp_path: Path) -> None:
    one_time = next(s for s in SCENARIOS if s.key == "f10k")
    usual = next(s for s in SCENARIOS if s.key == "a")
    ctx = cast(Context, SimpleNamespace(workdir=tmp_path, settings=Settings.quick()))
    for daemon in DAEMONS[1:]:
        own = one_time.config(daemon, ctx, OUT)
        assert "otp_secret" in own and "sequence" not in own
        assert usual.config(daemon, ctx, OUT) == tportknockd_config(OUT)
    assert usual.config(Knockd(), ctx, OUT) == knockd_config(OUT)
    # A variant of tportknockd under another name runs the usual config.
    variant = Tportknockd("tportknockd-other", "kernel")
    assert one_time.config(variant, ctx, OUT) == tportknockd_config(OUT)
    assert not one_time.applies_to(variant.name)


def one_time_config(tmp_path: Path, users: int = 4) -> Path:
    conf = tmp_path / "f.conf"
    conf.write_text(tportknockd_otp_config(tmp_path, users, OUT))
    return conf


def test_the_one_time_config_is_accepted_by_the_daemon(tmp_path: Path) -> None:
    config = load_config(str(one_time_config(tmp_path)))
    assert [e.name for e in config.events] == ["user0", "user1", "user2", "user3"]
    keys = set()
    for user, event in enumerate(config.events):
        assert event.otp is not None
        assert event.otp.window == OTP_WINDOW and event.timeout == SEQ_TIMEOUT <= OTP_WINDOW
        assert (event.otp.length, event.otp.low, event.otp.high) == (4, 20000, 59999)
        assert event.start_command == start_command(OUT)
        secret = secret_path(tmp_path, user)
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        keys.add(event.otp.key)
    assert len(keys) == 4  # a secret of its own for each user


def test_the_flood_aims_at_the_previous_windows_first_frame(tmp_path: Path) -> None:
    conf = one_time_config(tmp_path)
    now = 1_800_000_003.0
    name, window, frame = flood_target(conf, now)
    current = derivation.window_number(now, OTP_WINDOW)
    assert window == current - 1
    event = next(e for e in load_config(str(conf)).events if e.name == name)
    assert event.otp is not None
    assert frame == derivation.derive(event.otp, name, current - 1)[0]
    # What an eavesdropper's client would print: --window-offset=-1, within that window.
    args = build_parser().parse_args(["-c", str(conf), "-e", name, "--window-offset=-1",
                                      "--print"])
    assert frames_from_args(args, now)[0] == frame
    # Accepted until the next change (w-1), out of reach after it: no live frame shares it.
    before = {f for s in Schedule(load_config(str(conf))).live(now) for f in s.frames}
    after = {(f.protocol, f.port) for s in Schedule(load_config(str(conf))).live(
        next_change_after(now, 0)) for f in s.frames}
    assert frame in before and (frame.protocol, frame.port) not in after


def test_the_window_changes_between_two_bursts_of_the_flood() -> None:
    assert change_into_flood(Settings().flood_s) == 4.5
    assert change_into_flood(Settings.quick().flood_s) == 1.5
    for settings in (Settings(), Settings.quick()):
        # The change is inside the flood, and trafgen's bursts (one per second, from its
        # start) are half a second away from it.
        into = change_into_flood(settings.flood_s)
        assert 0 < into < settings.flood_s and into % 1 == 0.5
    assert next_change_after(1_800_000_003.0, 4.7) == 1_800_000_010.0
    assert next_change_after(1_800_000_006.0, 4.7) == 1_800_000_020.0


@pytest.mark.parametrize(("frame", "header"), [
    (Frame(PROTO_TCP, 41207, SYN), "tcp(sp=40000, dp=41207, syn, seq=1, win=1024)"),
    (Frame(PROTO_TCP, 20000, FIN | PSH | ACK), "tcp(sp=40000, dp=20000, fin, psh, ack, seq=1"),
    (Frame(PROTO_TCP, 20001, 0), "tcp(sp=40000, dp=20001, seq=1"),
    (Frame(PROTO_TCP, 20002, None), "tcp(sp=40000, dp=20002, syn, seq=1"),
    (Frame(PROTO_UDP, 59999, None), "udp(sp=40000, dp=59999),\n  fill(0x6b, 5)"),
])
def test_a_flood_of_any_first_frame_carries_exactly_its_flags(frame: Frame, header: str) -> None:
    config = spoof_config(MAC, frame)
    assert header in config
    literal, ranges, destinations = trafgen_addresses(config)
    assert destinations == {SERVER_V4} and literal == {"198.18.0.0"}
    assert ranges == [(SPOOF_BASE, SPOOF_BASE + SPOOF_SOURCES - 1)]
    assert config.count("{") == config.count(f"eth(da={MAC})") == 1


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
