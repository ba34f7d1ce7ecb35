"""The daemon's loop, without capture (no root needed)."""

from __future__ import annotations

import json
import time
from collections.abc import Hashable
from pathlib import Path

import pytest

from tportknockd.capture.selection import Selection
from tportknockd.daemon.loop import Daemon, Options
from tportknockd.model import PROTO_UDP, Config, Event, Frame, Packet, address_bytes

A = "198.51.100.7"

EVENT = Event(
    "ssh",
    (Frame(PROTO_UDP, 1, None), Frame(PROTO_UDP, 2, None)),
    10.0,
    "open %IP%",
    "close %IP%",
    30.0,
)


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    return Daemon(
        Config("t.conf", (EVENT,)),
        Options("t.conf", Selection(("knk0",)), state_file=str(tmp_path / "doors.json")),
    )


def test_transient_socket_error_does_not_end_the_loop(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def flaky() -> None:
        calls.append(None)
        if len(calls) == 1:
            raise OSError(100, "Network is down")
        daemon._stopping = True

    monkeypatch.setattr(daemon, "_iterate", flaky)
    monkeypatch.setattr(daemon.interfaces, "follow", lambda: None)
    monkeypatch.setattr(daemon.signals, "install", lambda signums: None)  # pytest's stay
    monkeypatch.setattr("tportknockd.daemon.loop.gc.freeze", lambda: None)
    assert daemon.run() == 0
    assert len(calls) == 2
    assert "transient error: [Errno 100] Network is down" in caplog.text


def test_sighup_switches_to_a_good_config(
    daemon: Daemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    path = tmp_path / "k.conf"
    path.write_text("<vpn>\n sequence = udp:7000 udp:7001\n timeout = 5\n start_command = true\n"
                    "</vpn>\n")
    daemon.options.config_path = str(path)
    daemon.reload()
    assert "configuration reloaded: 1 events" in caplog.text
    assert [e.name for e in daemon.engine.config.events] == ["vpn"]
    assert [f.port for f in daemon._current_frames()] == [7000, 7001]


def test_sighup_with_a_broken_config_keeps_the_old_one(
    daemon: Daemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "k.conf"
    path.write_text("<vpn>\n sequence = udp:99999\n</vpn>\n")
    daemon.options.config_path = str(path)
    daemon.reload()
    assert "reload rejected: keeping the current configuration" in caplog.text
    assert [e.name for e in daemon.engine.config.events] == ["ssh"]


def test_sighup_with_a_config_too_big_for_the_kernel_keeps_the_old_one(
    daemon: Daemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ports = " ".join(f"udp:{port}" for port in range(1, 5000))
    path = tmp_path / "k.conf"
    path.write_text(f"<big>\n sequence = {ports}\n timeout = 5\n start_command = true\n</big>\n")
    daemon.options.config_path = str(path)
    for listener in daemon.interfaces.listeners.values():
        listener.set_addresses({"198.51.100.1"}, {"198.51.100.1"})
    daemon.reload()
    assert "reload rejected: kernel filter" in caplog.text
    assert [e.name for e in daemon.engine.config.events] == ["ssh"]


def test_sleeps_until_the_first_thing_due(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon._next_statistics = 104.0
    monkeypatch.setattr(daemon.interfaces, "next_wakeup", lambda: None)
    assert daemon._poll_timeout_ms(100.0, 100.25) == 251  # the engine's next deadline
    assert daemon._poll_timeout_ms(100.0, None) == 4001  # the statistics
    assert daemon._poll_timeout_ms(100.0, 99.0) == 0  # overdue: do not sleep
    monkeypatch.setattr(daemon.interfaces, "next_wakeup", lambda: 101.0)
    assert daemon._poll_timeout_ms(100.0, None) == 1001  # a missing interface to look for


def test_statistics_line(daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    daemon.counters.packets = 4
    daemon.log_statistics()
    assert "statistics: kernel_packets=0 kernel_drops=0 packets=4 malformed=0" in caplog.text


def test_shutdown_closes_every_open_door_and_empties_the_record(
    daemon: Daemon, tmp_path: Path
) -> None:
    stops: list[str] = []
    daemon.doors.runner = Recorder(stops)
    for port in (1, 2):
        packet = Packet(address_bytes(A), address_bytes("198.51.100.1"), PROTO_UDP, port, 0)
        daemon.doors.perform(daemon.engine.feed(packet, time.monotonic()), "knk0")
    assert stops == [f"ssh {A} start"]
    assert daemon._shutdown() == 0
    assert stops == [f"ssh {A} start", f"ssh {A} stop"]
    assert json.loads((tmp_path / "doors.json").read_text())["doors"] == []


class Recorder:
    def __init__(self, labels: list[str]) -> None:
        self.labels = labels

    def run(self, label: str, command: str, address: str, key: Hashable | None = None) -> None:
        self.labels.append(label)
