"""The doorkeeper with one-time sequences: burns recorded before the start, list lines marked
before the start (no door when that fails), replays logged, burns restored."""

from __future__ import annotations

import time
from collections.abc import Hashable
from pathlib import Path

import pytest

from tportknockd.capture.statistics import Counters
from tportknockd.daemon import state
from tportknockd.daemon.doorkeeper import CommandDoors, Doorkeeper
from tportknockd.frame_syntax import format_frame, parse_kind
from tportknockd.matching.engine import Engine, ListLineUsed
from tportknockd.matching.sequences import Schedule
from tportknockd.model import (
    PROTO_UDP,
    Config,
    Event,
    Frame,
    ListHead,
    OneTimeList,
    OtpSpec,
    Packet,
    address_bytes,
)
from tportknockd.onetime import derivation

A, B = "198.51.100.7", "198.51.100.8"
SPEC = OtpSpec("k", b"a secret of the unit test, long", 2, 20000, 20099,
               (parse_kind("udp"),), 30)
OTP = Event("ssh", (), 10.0, "open %IP%", "close %IP%", 30.0, otp=SPEC)


class Runner:
    """Records each command with the burns and doors on disk at that moment."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self.calls: list[tuple[str, str, list[str], int]] = []

    def run(self, label: str, command: str, address: str, key: Hashable | None = None) -> None:
        doors, burns = state.load_all(str(self.state_file))
        self.calls.append((label.split()[-1], address, [d.address for d in doors], len(burns)))


def send(keeper: Doorkeeper, frames: tuple[Frame, ...], src: str, now: float) -> None:
    for frame in frames:
        packet = Packet(address_bytes(src), address_bytes("198.51.100.1"), PROTO_UDP,
                        frame.port, 0)
        keeper.perform(keeper.engine.feed(packet, now))


def otp_keeper(state_file: Path) -> tuple[Doorkeeper, Runner, tuple[Frame, ...]]:
    engine = Engine(Config("t.conf", (OTP,)))
    wall = time.time()
    engine.set_sequences(Schedule(engine.config).live(wall))
    runner = Runner(state_file)
    keeper = Doorkeeper(engine, [CommandDoors(runner)], str(state_file), Counters())
    return keeper, runner, derivation.derive(SPEC, "ssh", derivation.window_number(wall, 30))


def test_the_burn_is_on_disk_before_the_start_runs(tmp_path: Path) -> None:
    keeper, runner, frames = otp_keeper(tmp_path / "doors.json")
    send(keeper, frames, A, time.monotonic())
    assert runner.calls == [("start", A, [A], 1)]
    (burn,) = state.load_all(str(tmp_path / "doors.json"))[1]
    spelled = " ".join(map(format_frame, frames))
    assert (burn.event, burn.address, burn.frames) == ("ssh", A, spelled)


def test_a_replay_is_logged_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keeper, runner, frames = otp_keeper(tmp_path / "doors.json")
    send(keeper, frames, A, time.monotonic())
    send(keeper, frames, B, time.monotonic())
    assert f"ssh: replayed sequence from {B}, first used by {A}" in caplog.text
    assert keeper.counters.replays == 1
    assert [call[0] for call in runner.calls] == ["start"]


def test_burns_come_back_after_a_restart(tmp_path: Path) -> None:
    keeper, _, frames = otp_keeper(tmp_path / "doors.json")
    send(keeper, frames, A, time.monotonic())
    again, runner, _ = otp_keeper(tmp_path / "doors.json")
    again.restore()
    send(again, frames, B, time.monotonic())
    assert [call[0] for call in runner.calls if call[0] == "start"] == []


# --- one-time lists -----------------------------------------------------------------------

LINE1 = (Frame(PROTO_UDP, 7000, None), Frame(PROTO_UDP, 8000, None))
LINE2 = (Frame(PROTO_UDP, 7100, None), Frame(PROTO_UDP, 8100, None))


def list_keeper(tmp_path: Path, marks: list[bool]) -> tuple[Doorkeeper, Runner]:
    event = Event("once", (), 10.0, "open %IP%", "close %IP%", 30.0,
                  one_time_list=OneTimeList("/l", ListHead(1, LINE1), 2))
    engine = Engine(Config("t.conf", (event,)))
    runner = Runner(tmp_path / "doors.json")

    def use(used: ListLineUsed) -> bool:
        ok = marks.pop(0)
        if ok:  # the line moves on, as the sequencer would do
            schedule = Schedule(engine.config)
            schedule.move_list("once", ListHead(2, LINE2))
            engine.set_sequences(schedule.live(None))
        return ok

    state_file = str(tmp_path / "doors.json")
    return Doorkeeper(engine, [CommandDoors(runner)], state_file, Counters(), use), runner


def test_no_door_when_the_list_line_cannot_be_marked(tmp_path: Path) -> None:
    keeper, runner = list_keeper(tmp_path, [False])
    send(keeper, LINE1, A, time.monotonic())
    assert runner.calls == []
    assert keeper.engine.open_doors() == []  # no stop will run for a door never opened


def test_an_open_door_keeps_its_stop_when_a_later_line_cannot_be_marked(tmp_path: Path) -> None:
    keeper, runner = list_keeper(tmp_path, [True, False])
    send(keeper, LINE1, A, time.monotonic())
    send(keeper, LINE2, A, time.monotonic())
    assert [call[0] for call in runner.calls] == ["start"]
    assert [d.address for d in keeper.engine.open_doors()] == [A]
