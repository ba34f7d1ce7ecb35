"""The sequencer: the live sequences kept in step with the one-time windows and lists, put in
place everywhere each time through the daemon's `apply` (stood in for here)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tportknockd.daemon.sequencer import Sequencer, frames_of
from tportknockd.frame_syntax import parse_kind
from tportknockd.matching.engine import Engine, ListLineUsed
from tportknockd.matching.sequences import LiveSequence
from tportknockd.model import Config, Event, Frame, OtpSpec
from tportknockd.onetime.lists import read_list

A = "198.51.100.7"
STATIC = Event("static", (Frame(17, 1000, None),), 10, "open")
OTP = Event("otp", (), 10, "open", otp=OtpSpec("/k", b"k" * 16, kinds=(parse_kind("udp"),)))


class Apply:
    """Stands in for Daemon.apply: records the frames it is given and puts the sequences in
    the engine, or raises, changing nothing, when told to."""

    def __init__(self, engine: Engine | None = None, error: str | None = None) -> None:
        self.engine = engine
        self.calls: list[list[Frame]] = []
        self.error = error

    def __call__(self, sequences: list[LiveSequence]) -> None:
        self.calls.append(frames_of(sequences))
        if self.error:
            raise ValueError(self.error)
        assert self.engine is not None
        self.engine.set_sequences(sequences)


def listed(tmp_path: Path, text: str) -> Event:
    path = tmp_path / "list"
    path.write_text(text)
    return Event("list", (), 10, "open", one_time_list=read_list(str(path)))


def started(*events: Event, apply: Apply | None = None) -> Sequencer:
    config = Config("test.conf", events)
    engine = Engine(config)
    sequencer = Sequencer(engine, config)
    apply = apply or Apply()
    apply.engine = engine
    sequencer.start(apply)
    return sequencer


def used(event: Event, line: int) -> ListLineUsed:
    assert event.one_time_list is not None
    return ListLineUsed(event.name, A, event.one_time_list.path, line)


def test_a_used_list_line_is_commented_out_and_the_next_one_goes_live(tmp_path: Path) -> None:
    event = listed(tmp_path, "udp:1 udp:2\nudp:3\n")
    apply = Apply()
    sequencer = started(STATIC, event, apply=apply)
    assert sequencer.frames() == [Frame(17, 1000, None), Frame(17, 1, None), Frame(17, 2, None)]
    assert sequencer.use_list_line(used(event, 1))
    assert (tmp_path / "list").read_text() == "#udp:1 udp:2\nudp:3\n"
    assert [s.list_line for s in sequencer.engine.sequences] == [None, 2]
    assert apply.calls == [[Frame(17, 1000, None), Frame(17, 3, None)]]


def test_a_line_edited_meanwhile_is_not_used_and_opens_nothing(tmp_path: Path) -> None:
    event = listed(tmp_path, "udp:1\nudp:3\n")
    sequencer = started(event)
    (tmp_path / "list").write_text("# gone\nudp:3\n")
    assert not sequencer.use_list_line(used(event, 1))
    assert (tmp_path / "list").read_text() == "# gone\nudp:3\n"  # nothing written
    assert [s.list_line for s in sequencer.engine.sequences] == [2]  # the file as it is now


def test_a_used_up_list_matches_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    event = listed(tmp_path, "udp:1\n")
    sequencer = started(STATIC, event)
    with caplog.at_level(logging.ERROR, logger="tportknockd"):
        assert sequencer.use_list_line(used(event, 1))
    assert [s.event.name for s in sequencer.engine.sequences] == ["static"]
    assert "used up" in caplog.text


def test_sequences_that_do_not_fit_leave_the_old_ones_live(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    event = listed(tmp_path, "udp:1\nudp:3\n")
    sequencer = started(event, apply=Apply(error="too many frames"))
    with caplog.at_level(logging.ERROR, logger="tportknockd"):
        assert sequencer.use_list_line(used(event, 1))  # the line is used all the same
    assert (tmp_path / "list").read_text() == "#udp:1\nudp:3\n"
    # All or nothing: the used line stays live (doors.py refuses it as a replay).
    assert sequencer.frames() == [Frame(17, 1, None)]
    assert "the new sequences do not fit (too many frames); keeping the old ones" in caplog.text


def test_only_time_based_events_need_a_wakeup() -> None:
    assert started(STATIC).next_wakeup() is None
    sequencer = started(OTP)
    wakeup = sequencer.next_wakeup()
    assert wakeup is not None
    assert [s.event.name for s in sequencer.engine.sequences] == ["otp"] * 3
    windows = [s.window for s in sequencer.engine.sequences]
    sequencer.housekeeping(wakeup - 1)  # not yet: nothing moves
    assert [s.window for s in sequencer.engine.sequences] == windows


def test_frames_of_lists_every_frame_of_every_sequence_in_order(tmp_path: Path) -> None:
    sequencer = started(STATIC, listed(tmp_path, "udp:1 udp:2\n"))
    assert frames_of(sequencer.engine.sequences) == sequencer.frames()
    assert len(sequencer.frames()) == 3
