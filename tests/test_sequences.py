"""Which sequences are live when: a static event's for ever, a time-based one-time event's three
windows around now, a one-time list's first unused line."""

from __future__ import annotations

from tportknockd.frame_syntax import parse_kind
from tportknockd.matching.sequences import LiveSequence, Schedule, static_sequences
from tportknockd.model import Config, Event, Frame, ListHead, OneTimeList, OtpSpec
from tportknockd.onetime import derivation

FRAMES = (Frame(17, 1000, None), Frame(6, 2000, 2))
NEXT_LINE = ListHead(9, (Frame(17, 3000, None),))
STATIC = Event("static", FRAMES, 10, "open")
SPEC = OtpSpec("/k", b"k" * 16, kinds=(parse_kind("udp"),), window=30)
OTP = Event("otp", (), 10, "open", otp=SPEC)
LISTED = Event("list", (), 10, "open", one_time_list=OneTimeList("/l", ListHead(3, FRAMES), 2))
CONFIG = Config("test.conf", (STATIC, OTP, LISTED))
NOW = 1_800_000_015.0  # in window 60000000, which started at 1_800_000_000


def test_what_is_live_at_a_time() -> None:
    live = Schedule(CONFIG).live(NOW)
    assert live[0] == LiveSequence(STATIC, FRAMES)
    assert [s.window for s in live[1:4]] == [59_999_999, 60_000_000, 60_000_001]
    for sequence in live[1:4]:
        assert sequence.event is OTP and sequence.window is not None
        assert sequence.frames == derivation.derive(SPEC, "otp", sequence.window)
    assert live[4] == LiveSequence(LISTED, FRAMES, list_line=3)
    assert len(live) == 5


def test_without_a_time_the_time_based_ones_are_left_out() -> None:
    assert [s.event.name for s in static_sequences(CONFIG)] == ["static", "list"]


def test_no_window_before_1970() -> None:
    assert [s.window for s in Schedule(Config("c", (OTP,))).live(10.0)] == [0, 1]


def test_a_list_moves_on_and_is_used_up() -> None:
    schedule = Schedule(CONFIG)
    schedule.move_list("list", NEXT_LINE)
    assert schedule.live(None)[-1] == LiveSequence(LISTED, NEXT_LINE.frames, list_line=9)
    schedule.move_list("list", None)
    assert [s.event.name for s in schedule.live(None)] == ["static"]


def test_the_next_change_is_the_next_window() -> None:
    assert Schedule(CONFIG).next_change(NOW) == 1_800_000_030
    assert Schedule(Config("c", (STATIC, LISTED))).next_change(NOW) is None


def test_keys_tell_sequences_apart_across_updates() -> None:
    window = LiveSequence(OTP, FRAMES, window=1)
    assert window.key == ("otp", FRAMES, 1, None)
    assert window.key != LiveSequence(OTP, FRAMES, window=2).key
    assert LiveSequence(LISTED, FRAMES, list_line=3).key == ("list", FRAMES, None, 3)
