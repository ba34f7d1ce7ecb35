"""What the engine remembers once a knock completed: open doors and their stops, used one-time
sequences and list lines. Pure: times are arguments."""

from __future__ import annotations

from tportknockd.matching.doors import Door, Doors
from tportknockd.matching.outcomes import (
    Action,
    Burned,
    DoorExtended,
    ListLineUsed,
    Replayed,
    RunStart,
    RunStop,
)
from tportknockd.matching.sequences import LiveSequence
from tportknockd.model import Event, Frame, ListHead, OneTimeList, OtpSpec

A, B = "198.51.100.7", "198.51.100.8"
FRAMES = (Frame(17, 1000, None), Frame(17, 2000, None))
DOOR = Event("ssh", FRAMES, 10, "open %IP%", "close %IP%", 30)
NO_STOP = Event("ping", FRAMES, 10, "ping %IP%")
OTP = Event("otp", (), 10, "open", "close", 30, otp=OtpSpec("/k", b"key"))
LIST = Event("list", (), 10, "open", one_time_list=OneTimeList("/l", ListHead(3, FRAMES), 2))


def complete(doors: Doors, sequence: LiveSequence, address: str, now: float) -> list[Action]:
    out: list[Action] = []
    doors.complete(sequence, address, now, out)
    return out


def test_a_door_opens_once_and_a_second_knock_pushes_its_stop_back() -> None:
    doors = Doors()
    assert complete(doors, LiveSequence(DOOR, FRAMES), A, 100) == [
        RunStart("ssh", A, "open %IP%")
    ]
    assert complete(doors, LiveSequence(DOOR, FRAMES), A, 110) == [DoorExtended("ssh", A, 140)]
    assert doors.due(139) == []  # the first stop, at 130, is stale
    assert doors.next_due() == 140
    assert doors.due(140) == [RunStop("ssh", A, "close %IP%")]
    assert doors.due(1000) == [] and doors.next_due() is None


def test_an_event_without_a_stop_starts_every_time_and_keeps_nothing() -> None:
    doors = Doors()
    for now in (1, 2):
        assert complete(doors, LiveSequence(NO_STOP, FRAMES), A, now) == [
            RunStart("ping", A, "ping %IP%")
        ]
    assert doors.open_doors() == [] and doors.next_due() is None


def test_an_abandoned_door_never_stops() -> None:
    doors = Doors()
    complete(doors, LiveSequence(DOOR, FRAMES), A, 0)
    doors.abandon("ssh", A)
    assert doors.due(100) == [] and doors.next_due() is None


def test_shutdown_stops_every_door_soonest_first() -> None:
    doors = Doors()
    complete(doors, LiveSequence(DOOR, FRAMES), B, 5)
    complete(doors, LiveSequence(DOOR, FRAMES), A, 1)
    assert doors.shutdown() == [RunStop("ssh", A, "close %IP%"), RunStop("ssh", B, "close %IP%")]
    assert doors.open_doors() == [] and doors.shutdown() == []


def test_a_restored_door_keeps_the_later_stop() -> None:
    doors = Doors()
    doors.restore_door(Door("ssh", A, 50, "close", 30))
    doors.restore_door(Door("ssh", A, 40, "close", 30))  # older: ignored
    assert [door.due for door in doors.open_doors()] == [50]
    assert doors.due(50) == [RunStop("ssh", A, "close")]


def test_a_one_time_sequence_is_burned_then_refused_to_others() -> None:
    doors = Doors()
    sequence = LiveSequence(OTP, FRAMES, window=7)
    assert complete(doors, sequence, A, 0) == [
        Burned("otp", A, 7, FRAMES),
        RunStart("otp", A, "open"),
    ]
    assert complete(doors, sequence, A, 1) == [DoorExtended("otp", A, 31)]  # its own, door open
    assert complete(doors, sequence, B, 2) == [Replayed("otp", B, A)]
    doors.due(100)
    assert complete(doors, sequence, A, 101) == [Replayed("otp", A, A)]  # door closed since


def test_burns_are_kept_and_restored_until_their_window_is_out_of_reach() -> None:
    doors = Doors()
    complete(doors, LiveSequence(OTP, FRAMES, window=7), A, 0)
    assert doors.burns() == [Burned("otp", A, 7, FRAMES)]
    again = Doors()
    again.restore_burn(doors.burns()[0])
    assert complete(again, LiveSequence(OTP, FRAMES, window=7), B, 0) == [
        Replayed("otp", B, A)
    ]
    again.forget_unreachable([LiveSequence(OTP, FRAMES, window=7)])
    assert again.burns() != []
    again.forget_unreachable([LiveSequence(OTP, FRAMES, window=8)])
    assert again.burns() == []


def test_a_list_line_is_used_once() -> None:
    doors = Doors()
    sequence = LiveSequence(LIST, FRAMES, list_line=3)
    assert complete(doors, sequence, A, 0) == [
        ListLineUsed("list", A, "/l", 3),
        RunStart("list", A, "open"),
    ]
    assert complete(doors, sequence, B, 1) == [Replayed("list", B, "an earlier knock")]
    doors.forget_unreachable([LiveSequence(LIST, FRAMES, list_line=4)])  # the list moved on
    assert complete(doors, sequence, B, 2)[0] == ListLineUsed("list", B, "/l", 3)
