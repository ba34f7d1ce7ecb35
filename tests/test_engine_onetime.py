"""The engine with one-time sequences: live windows, burning, replays, list lines."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tportknockd.frame_syntax import parse_kind
from tportknockd.matching.engine import (
    Burned,
    DoorExtended,
    Engine,
    ListLineUsed,
    Replayed,
    RunStart,
    RunStop,
)
from tportknockd.matching.sequences import Schedule
from tportknockd.model import (
    PROTO_TCP,
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

KEY = b"correct horse battery staple 42"
T0 = 1800000000.0  # window 60000000 of 30 s
A, B, C = "198.51.100.7", "198.51.100.8", "2001:db8::9"
HOST = "198.51.100.1"


def otp_event(stop: bool = True, window: int = 30, name: str = "ssh") -> Event:
    spec = OtpSpec("k", KEY, 4, 20000, 59999, (parse_kind("tcp:s"), parse_kind("udp")), window)
    return Event(
        name=name,
        frames=(),
        timeout=10,
        start_command="open %IP%",
        stop_command="close %IP%" if stop else None,
        command_delay=30 if stop else None,
        otp=spec,
    )


def setup(event: Event, at: float = T0) -> tuple[Engine, Schedule]:
    config = Config("t.conf", (event,))
    engine = Engine(config)
    schedule = Schedule(config)
    engine.set_sequences(schedule.live(at))
    return engine, schedule


def frames_of(event: Event, window: int) -> tuple[Frame, ...]:
    assert event.otp is not None
    return derivation.derive(event.otp, event.name, window)


def knock(engine: Engine, frames: tuple[Frame, ...], src: str, now: float) -> list:
    out: list = []
    for index, frame in enumerate(frames):
        flags = frame.flags or 0
        packet = Packet(address_bytes(src), address_bytes(HOST), frame.protocol, frame.port, flags)
        out += engine.feed(packet, now + index * 0.01)
    return out


def kinds(actions: list) -> list[str]:
    return [type(a).__name__ for a in actions]


W = derivation.window_number(T0, 30)


def test_a_window_opens_once_then_is_burned() -> None:
    event = otp_event()
    engine, _ = setup(event)
    seq = frames_of(event, W)
    first = knock(engine, seq, A, 100.0)
    assert first == [
        Burned("ssh", A, W, seq),
        RunStart("ssh", A, "open %IP%"),
    ]
    # The same packets from another address: logged as a replay, nothing opens.
    assert knock(engine, seq, B, 101.0) == [Replayed("ssh", B, A)]
    # The same address while its door is open: the stop is pushed back, nothing runs again.
    assert knock(engine, seq, A, 102.0) == [DoorExtended("ssh", A, 132.03)]
    # Once the door has closed, the sequence is dead for its first user too.
    assert engine.tick(200.0) == [RunStop("ssh", A, "close %IP%")]
    assert knock(engine, seq, A, 201.0) == [Replayed("ssh", A, A)]


def test_without_stop_command_the_sequence_is_dead_at_once() -> None:
    event = otp_event(stop=False)
    engine, _ = setup(event)
    seq = frames_of(event, W)
    assert kinds(knock(engine, seq, A, 1.0)) == ["Burned", "RunStart"]
    assert knock(engine, seq, A, 2.0) == [Replayed("ssh", A, A)]


def test_each_window_is_a_sequence_of_its_own() -> None:
    event = otp_event()
    engine, _ = setup(event)
    assert kinds(knock(engine, frames_of(event, W), A, 1.0)) == ["Burned", "RunStart"]
    # The next window's sequence, from the same address while open: burned, the stop pushed back.
    assert kinds(knock(engine, frames_of(event, W + 1), A, 2.0)) == ["Burned", "DoorExtended"]
    # The previous window's, from another address: a fresh sequence, it opens for B.
    assert kinds(knock(engine, frames_of(event, W - 1), B, 3.0)) == ["Burned", "RunStart"]


@given(
    offset=st.integers(min_value=-4, max_value=4),
    into_window=st.floats(min_value=0, max_value=29.999),
)
def test_windows_w_minus_1_to_w_plus_1_and_only_those_are_accepted(
    offset: int, into_window: float
) -> None:
    event = otp_event()
    now = W * 30 + into_window
    engine, _ = setup(event, at=now)
    actions = knock(engine, frames_of(event, W + offset), A, 5.0)
    assert bool([a for a in actions if isinstance(a, RunStart)]) == (abs(offset) <= 1)


def test_windows_move_and_attempts_in_progress_survive() -> None:
    event = otp_event()
    engine, schedule = setup(event)
    seq = frames_of(event, W + 1)
    knock(engine, seq[:2], A, 1.0)
    engine.set_sequences(schedule.live(T0 + 30))  # now W+1 is the current window
    assert engine.attempt_count == 1
    assert kinds(knock(engine, seq[2:], A, 1.1)) == ["Burned", "RunStart"]
    # W-1 has left: its sequence no longer matches.
    assert knock(engine, frames_of(event, W - 1), B, 2.0) == []


def test_burns_are_forgotten_once_their_window_is_out_of_reach() -> None:
    event = otp_event()
    engine, schedule = setup(event)
    knock(engine, frames_of(event, W), A, 1.0)
    engine.set_sequences(schedule.live(T0 + 30))  # W is now w-1: still burned
    assert [b.window for b in engine.doors.burns()] == [W]
    engine.set_sequences(schedule.live(T0 + 60))  # W is out of reach
    assert engine.doors.burns() == []
    # A clock set back does not drop them.
    engine2, schedule2 = setup(event)
    knock(engine2, frames_of(event, W), A, 1.0)
    engine2.set_sequences(schedule2.live(T0 - 300))
    assert [b.window for b in engine2.doors.burns()] == [W]


def test_restored_burns_hold_after_a_restart() -> None:
    event = otp_event()
    engine, _ = setup(event)
    knock(engine, frames_of(event, W), A, 1.0)
    saved = engine.doors.burns()
    fresh, _ = setup(event)
    for burn in saved:
        fresh.doors.restore_burn(burn)
    assert knock(fresh, frames_of(event, W), B, 1.0) == [Replayed("ssh", B, A)]


# --- a literal reading of the burning rules, against the engine ---------------------------

ADDRESSES = [A, B, C]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(ADDRESSES),
            st.integers(min_value=-1, max_value=1),  # window offset
            st.floats(min_value=0.0, max_value=40.0),  # seconds after the previous knock
        ),
        max_size=12,
    ),
    st.booleans(),
)
def test_a_burned_sequence_never_opens_for_a_second_address(
    knocks: list[tuple[str, int, float]], with_stop: bool
) -> None:
    event = otp_event(stop=with_stop)
    engine, _ = setup(event)
    burned: dict[int, str] = {}
    open_until: dict[str, float] = {}
    now = 1000.0
    for address, offset, gap in knocks:
        now += gap
        engine.tick(now)
        if with_stop:
            open_until = {a: t for a, t in open_until.items() if t > now}
        window = W + offset
        actions = knock(engine, frames_of(event, window), address, now)
        now += 0.04
        done = now - 0.01
        first = burned.get(window)
        if first is None:
            burned[window] = address
            opened = address not in open_until
            expected = ["Burned", "RunStart" if opened else "DoorExtended"]
            if with_stop:
                open_until[address] = done + 30
        elif first == address and address in open_until:
            expected = ["DoorExtended"]
            open_until[address] = done + 30
        else:
            expected = ["Replayed"]
        assert kinds(actions) == expected
        starts = [a.address for a in actions if isinstance(a, RunStart)]
        assert starts in ([], [burned[window]])


# --- one-time lists -----------------------------------------------------------------------


def list_event(head: ListHead | None) -> Event:
    return Event(
        name="knockd",
        frames=(),
        timeout=5,
        start_command="open %IP%",
        one_time_list=OneTimeList("/lists/knockd", head, 2),
    )


def test_a_list_line_is_used_once_and_the_list_moves_on() -> None:
    line1 = (Frame(PROTO_TCP, 7000, None), Frame(PROTO_UDP, 8000, None))
    line2 = (Frame(PROTO_TCP, 7100, 2), Frame(PROTO_UDP, 8100, None))
    event = list_event(ListHead(1, line1))
    engine, schedule = setup(event)
    assert knock(engine, line1, A, 1.0) == [
        ListLineUsed("knockd", A, "/lists/knockd", 1),
        RunStart("knockd", A, "open %IP%"),
    ]
    # Until the daemon has moved the list on, the used line does not open again.
    assert knock(engine, line1, B, 1.5) == [Replayed("knockd", B, "an earlier knock")]
    schedule.move_list("knockd", ListHead(3, line2))
    engine.set_sequences(schedule.live(T0))
    assert knock(engine, line1, B, 2.0) == []
    assert kinds(knock(engine, line2, B, 3.0)) == ["ListLineUsed", "RunStart"]
    schedule.move_list("knockd", None)
    engine.set_sequences(schedule.live(T0))
    assert engine.sequences == []


def test_a_completion_from_elsewhere_fires_like_a_last_frame() -> None:
    event = otp_event()
    engine, schedule = setup(event)
    (current,) = [s for s in engine.sequences if s.window == W]
    assert engine.complete(current.key, address_bytes(A), 1.0) == [
        Burned("ssh", A, W, current.frames),
        RunStart("ssh", A, "open %IP%"),
    ]
    assert engine.complete(current.key, address_bytes(B), 1.5) == [Replayed("ssh", B, A)]
    # Just replaced sequences still count once (a knock completed before the switch) ...
    oldest = min(engine.sequences, key=lambda s: s.window or 0)
    engine.set_sequences(schedule.live(T0 + 30))
    assert [type(a).__name__ for a in engine.complete(oldest.key, address_bytes(B), 2.0)] == [
        "Burned",
        "RunStart",
    ]
    # ... unknown ones never.
    assert engine.complete(("nope", (), None, None), address_bytes(A), 3.0) == []
