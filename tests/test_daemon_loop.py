"""The daemon's loop, without capture (no root needed)."""

from __future__ import annotations

import json
import time
from collections.abc import Hashable, Sequence
from pathlib import Path

import pytest

from tportknockd.capture import netif
from tportknockd.capture.interfaces import Interfaces
from tportknockd.capture.selection import Selection
from tportknockd.daemon.doorkeeper import CommandDoors
from tportknockd.daemon.loop import Daemon, Options
from tportknockd.daemon.matching import PythonMatching
from tportknockd.matching.sequences import LiveSequence, static_sequences
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

OTHER = Event(
    "vpn", (Frame(PROTO_UDP, 7000, None), Frame(PROTO_UDP, 7001, None)), 5.0, "open %IP%"
)


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """A daemon opened with the Python engine, without captures (no root needed)."""
    monkeypatch.setattr(Interfaces, "start", lambda self: None)
    opened = Daemon(
        Config("t.conf", (EVENT,)),
        Options(
            "t.conf",
            Selection(("knk0",)),
            state_file=str(tmp_path / "doors.json"),
            engine="python",
        ),
    )
    opened.open()
    opened.interfaces._add_listeners([netif.Interface("knk0", 5, True, "up", [])])
    return opened


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
    daemon.doors.kinds = [CommandDoors(Recorder(stops))]
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


class RecordingMatching(PythonMatching):
    """The Python matching, recording what it is told; refuses sequences on demand."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__("engine: test")
        self.refuse = refuse
        self.told: list[list[str]] = []

    def set_sequences(self, sequences: Sequence[LiveSequence]) -> None:
        if self.refuse:
            raise ValueError("17 sequences share a frame")
        self.told.append([seq.event.name for seq in sequences])


def test_apply_puts_new_sequences_everywhere(daemon: Daemon) -> None:
    daemon.matching = recording = RecordingMatching()
    new = static_sequences(Config("t.conf", (OTHER,)))
    daemon.apply(new)
    assert recording.told == [["vpn"]]
    assert [seq.event.name for seq in daemon.engine.sequences] == ["vpn"]
    listener = daemon.interfaces.listeners["knk0"]
    assert [f.port for f in daemon._current_frames()] == [7000, 7001]
    assert listener.capture is None  # no capture here: refilter compiled for it all the same


def test_apply_that_the_matching_refuses_changes_nothing(daemon: Daemon) -> None:
    daemon.matching = RecordingMatching(refuse=True)
    refiltered: list[object] = []
    daemon.interfaces.refilter = refiltered.append  # type: ignore[method-assign,assignment]
    with pytest.raises(ValueError, match="17 sequences share a frame"):
        daemon.apply(static_sequences(Config("t.conf", (OTHER,))))
    assert refiltered == []
    assert [seq.event.name for seq in daemon.engine.sequences] == ["ssh"]


def test_apply_whose_filters_do_not_fit_puts_the_matching_back(daemon: Daemon) -> None:
    daemon.matching = recording = RecordingMatching()

    def too_long(frames: object) -> None:
        raise ValueError("more than the kernel's limit")

    daemon.interfaces.refilter = too_long  # type: ignore[method-assign,assignment]
    with pytest.raises(ValueError, match="kernel's limit"):
        daemon.apply(static_sequences(Config("t.conf", (OTHER,))))
    assert recording.told == [["vpn"], ["ssh"]]  # told, then told again what stays
    assert [seq.event.name for seq in daemon.engine.sequences] == ["ssh"]


def test_moved_sequences_that_do_not_fit_keep_the_old_ones(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    daemon.matching = RecordingMatching(refuse=True)
    daemon.sequencer._apply(static_sequences(Config("t.conf", (OTHER,))), "windows moved")
    assert "windows moved: the new sequences do not fit (17 sequences share a frame)" in (
        caplog.text
    )
    assert [seq.event.name for seq in daemon.engine.sequences] == ["ssh"]


def test_the_statistics_line_ends_with_the_matchings_own(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")

    class Counting(PythonMatching):
        def summary(self) -> str:
            return "kernel_seen=7"

    daemon.matching = Counting("engine: test")
    daemon.log_statistics()
    assert caplog.records[-1].getMessage().endswith(" door_failures=0 kernel_seen=7")
