"""The daemon's bookkeeping around the engine, without capture (no root needed)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tportknockd import state
from tportknockd.daemon import Daemon, Options
from tportknockd.engine import RunStop
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


class RecordingRunner:
    """Stands in for CommandRunner: records each command with the state file as it was."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self.calls: list[tuple[str, str, list[str]]] = []

    def run(self, label: str, command: str, address: str, key: object = None) -> None:
        doors = [d.address for d in state.load(str(self.state_file))]
        self.calls.append((label.split()[-1], address, doors))

    def wait(self, timeout: float) -> bool:
        return True


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    d = Daemon(
        Config("t.conf", (EVENT,)),
        Options("t.conf", "knk0", state_file=str(tmp_path / "doors.json")),
    )
    d.runner = RecordingRunner(tmp_path / "doors.json")  # type: ignore[assignment]
    return d


def knock(d: Daemon, now: float) -> None:
    for port in (1, 2):
        d._perform(
            d.engine.feed(
                Packet(address_bytes(A), address_bytes("198.51.100.1"), PROTO_UDP, port, 0), now
            )
        )


def test_door_is_recorded_before_start_command_runs(daemon: Daemon) -> None:
    knock(daemon, time.monotonic())
    assert daemon.runner.calls == [("start", A, [A])]  # type: ignore[attr-defined]


def test_door_is_forgotten_once_its_stop_has_run(daemon: Daemon, tmp_path: Path) -> None:
    knock(daemon, time.monotonic() - 31)
    daemon._perform(daemon.engine.tick(time.monotonic()))
    # Still recorded while the stop starts (a crash now repeats the stop, never skips it)...
    assert daemon.runner.calls[-1] == ("stop", A, [A])  # type: ignore[attr-defined]
    # ...and forgotten right after.
    assert state.load(str(tmp_path / "doors.json")) == []


def test_restore_closes_due_doors_and_reschedules_the_rest(daemon: Daemon, tmp_path: Path) -> None:
    now = time.time()
    state.save(
        str(tmp_path / "doors.json"),
        [
            state.SavedDoor("ssh", A, now - 5, "close %IP%", 30),
            state.SavedDoor("ssh", "2001:db8::7", now + 20, "close %IP%", 30),
        ],
    )
    daemon.restore_doors()
    assert daemon.runner.calls == [("stop", A, [A, "2001:db8::7"])]  # type: ignore[attr-defined]
    assert [d.address for d in state.load(str(tmp_path / "doors.json"))] == ["2001:db8::7"]
    doors = daemon.engine.open_doors()
    assert [(d.address, round(d.due - time.monotonic())) for d in doors] == [("2001:db8::7", 20)]
    assert daemon.engine.tick(time.monotonic() + 21) == [
        RunStop("ssh", "2001:db8::7", "close %IP%")
    ]


def test_shutdown_closes_everything_and_empties_the_record(daemon: Daemon, tmp_path: Path) -> None:
    knock(daemon, time.monotonic())
    daemon._shutdown()
    assert daemon.runner.calls[-1] == ("stop", A, [A])  # type: ignore[attr-defined]
    assert json.loads((tmp_path / "doors.json").read_text())["doors"] == []


def test_unwritable_state_file_is_logged_and_the_door_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    d = Daemon(
        Config("t.conf", (EVENT,)),
        Options("t.conf", "knk0", state_file=str(blocker / "doors.json")),
    )
    calls: list[object] = []
    d.runner.run = lambda *a, **k: calls.append(a)  # type: ignore[method-assign]
    knock(d, time.monotonic())
    assert "cannot record open doors" in caplog.text
    # The door opened although it could not be recorded.
    assert [c[0] for c in calls] == [f"ssh {A} start"]
    assert [door.address for door in d.engine.open_doors()] == [A]


def test_transient_socket_error_does_not_end_the_loop(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def flaky(poller: object) -> None:
        calls.append(poller)
        if len(calls) == 1:
            raise OSError(100, "Network is down")
        daemon._stopping = True

    monkeypatch.setattr(daemon, "_iterate", flaky)
    monkeypatch.setattr(daemon, "_check_link", lambda poller: None)
    monkeypatch.setattr(daemon, "_install_signal_handlers", lambda: None)  # pytest's stay
    monkeypatch.setattr("tportknockd.daemon.gc.freeze", lambda: None)
    assert daemon.run() == 0
    assert len(calls) == 2
    assert "transient error: [Errno 100] Network is down" in caplog.text
