"""The doorkeeper: the engine's actions carried out, the state file kept ahead of the doors
(no capture, no root needed)."""

from __future__ import annotations

import json
import time
from collections.abc import Hashable
from pathlib import Path

import pytest

from tportknockd.capture.statistics import Counters
from tportknockd.daemon import state
from tportknockd.daemon.doorkeeper import CommandDoors, Doorkeeper
from tportknockd.matching.engine import Engine, RunStop
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

    def run(self, label: str, command: str, address: str, key: Hashable | None = None) -> None:
        doors = [d.address for d in state.load_all(str(self.state_file))[0]]
        self.calls.append((label.split()[-1], address, doors))


class CallRunner:
    """Stands in for CommandRunner: records the arguments of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def run(self, label: str, command: str, address: str, key: Hashable | None = None) -> None:
        self.calls.append((label, command, address))


def doorkeeper_for(state_file: Path, runner: RecordingRunner | CallRunner) -> Doorkeeper:
    engine = Engine(Config("t.conf", (EVENT,)))
    return Doorkeeper(engine, [CommandDoors(runner)], str(state_file), Counters())


@pytest.fixture
def doors(tmp_path: Path) -> Doorkeeper:
    return doorkeeper_for(tmp_path / "doors.json", RecordingRunner(tmp_path / "doors.json"))


def knock(d: Doorkeeper, now: float, via: str | None = None) -> None:
    for port in (1, 2):
        d.perform(
            d.engine.feed(
                Packet(address_bytes(A), address_bytes("198.51.100.1"), PROTO_UDP, port, 0), now
            ),
            via,
        )


def test_door_is_recorded_before_start_command_runs(doors: Doorkeeper) -> None:
    knock(doors, time.monotonic())
    assert doors.kinds[0].runner.calls == [("start", A, [A])]  # type: ignore[attr-defined]


def test_door_is_forgotten_once_its_stop_has_run(doors: Doorkeeper, tmp_path: Path) -> None:
    knock(doors, time.monotonic() - 31)
    doors.perform(doors.engine.tick(time.monotonic()))
    # Still recorded while the stop starts (a crash now repeats the stop, never skips it)...
    assert doors.kinds[0].runner.calls[-1] == ("stop", A, [A])  # type: ignore[attr-defined]
    # ...and forgotten right after.
    assert state.load_all(str(tmp_path / "doors.json"))[0] == []


def test_restore_closes_due_doors_and_reschedules_the_rest(
    doors: Doorkeeper, tmp_path: Path
) -> None:
    now = time.time()
    state.save(
        str(tmp_path / "doors.json"),
        [
            state.SavedDoor("ssh", A, now - 5, "close %IP%", 30),
            state.SavedDoor("ssh", "2001:db8::7", now + 20, "close %IP%", 30),
        ],
    )
    doors.restore()
    assert doors.kinds[0].runner.calls == [("stop", A, [A, "2001:db8::7"])]  # type: ignore[attr-defined]
    assert [d.address for d in state.load_all(str(tmp_path / "doors.json"))[0]] == ["2001:db8::7"]
    open_doors = doors.engine.open_doors()
    assert [(d.address, round(d.due - time.monotonic())) for d in open_doors] == [
        ("2001:db8::7", 20)
    ]
    assert doors.engine.tick(time.monotonic() + 21) == [
        RunStop("ssh", "2001:db8::7", "close %IP%")
    ]


def test_shutdown_closes_everything_and_empties_the_record(
    doors: Doorkeeper, tmp_path: Path
) -> None:
    knock(doors, time.monotonic())
    doors.perform(doors.engine.shutdown())
    assert doors.kinds[0].runner.calls[-1] == ("stop", A, [A])  # type: ignore[attr-defined]
    assert json.loads((tmp_path / "doors.json").read_text())["doors"] == []


def test_unwritable_state_file_is_logged_and_the_door_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    runner = CallRunner()
    d = doorkeeper_for(blocker / "doors.json", runner)
    knock(d, time.monotonic())
    assert "cannot record open doors" in caplog.text
    # The door opened although it could not be recorded.
    assert [c[0] for c in runner.calls] == [f"ssh {A} start"]
    assert [door.address for door in d.engine.open_doors()] == [A]


def test_corrupt_record_is_moved_aside_and_nothing_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "doors.json").write_text("{ not json")
    runner = CallRunner()
    doorkeeper_for(tmp_path / "doors.json", runner).restore()
    assert "moved aside to" in caplog.text
    assert [p.read_text() for p in tmp_path.glob("doors.json.bad-*")] == ["{ not json"]
    assert runner.calls == []


def test_no_state_file_keeps_no_record(tmp_path: Path) -> None:
    runner = CallRunner()
    d = Doorkeeper(Engine(Config("t.conf", (EVENT,))), [CommandDoors(runner)], None, Counters())
    d.restore()
    knock(d, time.monotonic())
    assert [c[0] for c in runner.calls] == [f"ssh {A} start"]
    assert list(tmp_path.iterdir()) == []


def test_the_log_names_the_interface_of_the_last_frame_and_fired_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    d = doorkeeper_for(tmp_path / "doors.json", CallRunner())
    knock(d, time.monotonic(), via="knk2")
    assert f"ssh: knock from {A} accepted: opening (on knk2)" in caplog.text
    knock(d, time.monotonic(), via="knk0")
    assert f"ssh: knock from {A} while open: stop pushed back" in caplog.text
    assert "(on knk0)" in caplog.text
    assert d.counters.fired == 1


def test_the_state_file_is_written_only_when_what_it_holds_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A door-only event (no stop due) has nothing to record: its knocks open the door at
    once, without waiting for a disk write; a door pushed back is written again."""
    saves: list[int] = []
    real_save = state.save

    def counting_save(*args: object) -> None:
        saves.append(1)
        real_save(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(state, "save", counting_save)
    door_only = Event("ssh", EVENT.frames, 10.0, None)
    engine = Engine(Config("t.conf", (door_only,)))
    keeper = Doorkeeper(engine, [], str(tmp_path / "doors.json"), Counters())
    for _ in range(3):
        knock(keeper, time.monotonic())
    assert len(saves) == 1  # the first record of this run; nothing changed after it
    commands = doorkeeper_for(tmp_path / "other.json", RecordingRunner(tmp_path / "other.json"))
    saves.clear()
    knock(commands, time.monotonic())
    knock(commands, time.monotonic() + 1)  # pushed back: the due time changed
    assert len(saves) == 2
