"""The knock state machine, driven with hand-made packets and a fake clock (plain floats)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tportknockd.matching.engine import (
    DoorExtended,
    Engine,
    Progress,
    RunStart,
    RunStop,
)
from tportknockd.model import (
    ACK,
    ALL_SIX,
    ECE,
    FIN,
    PROTO_TCP,
    PROTO_UDP,
    PSH,
    RST,
    SYN,
    URG,
    Config,
    Event,
    Frame,
    Packet,
    address_bytes,
)

A = "198.51.100.7"
B = "198.51.100.8"
V6 = "2001:db8::7"
HOST = "198.51.100.1"


def matches(frame: Frame, protocol: int, port: int, flags: int) -> bool:
    """Whether a packet with these fields is this frame (UDP packets carry flags 0)."""
    return (protocol, port) == (frame.protocol, frame.port) and flags in frame.flag_bytes()


def tcp(port: int, flags: int | None = 0) -> Frame:
    return Frame(PROTO_TCP, port, flags)


def udp(port: int) -> Frame:
    return Frame(PROTO_UDP, port, None)


def event(name: str, *frames: Frame, timeout: float = 10, stop: bool = False) -> Event:
    return Event(
        name=name,
        frames=frames,
        timeout=timeout,
        start_command=f"open {name} %IP%",
        stop_command=f"close {name} %IP%" if stop else None,
        command_delay=30 if stop else None,
    )


def engine(*events: Event, **kw: object) -> Engine:
    return Engine(Config("test.conf", events), **kw)  # type: ignore[arg-type]


def pkt(frame: Frame, src: str = A, flags: int | None = None) -> Packet:
    if flags is None:
        flags = frame.flags if frame.flags is not None else 0
    if frame.protocol == PROTO_UDP:
        flags = 0
    return Packet(address_bytes(src), address_bytes(HOST), frame.protocol, frame.port, flags)


def knock(e: Engine, frames: list[Frame], src: str = A, t0: float = 0.0, dt: float = 0.1) -> list:
    out: list = []
    for i, f in enumerate(frames):
        out += e.feed(pkt(f, src), t0 + i * dt)
    return out


def starts(actions: list) -> list[tuple[str, str]]:
    return [(a.event, a.address) for a in actions if isinstance(a, RunStart)]


SEED1 = [
    udp(1234),
    tcp(543),
    tcp(543, None),
    tcp(123, FIN | RST | PSH | ACK),
    tcp(434, ALL_SIX),
    tcp(2345, 0),
]
SEED2 = [tcp(12430, ACK), tcp(2711, None), tcp(123, None), tcp(8375), tcp(1155)]
SEED3 = [tcp(110, ALL_SIX), tcp(110, URG | PSH), tcp(110, URG | PSH), tcp(110), tcp(110, None)]


def test_seed_examples_fire() -> None:
    for seq in (SEED1, SEED2, SEED3):
        e = engine(event("ssh", *seq))
        assert starts(knock(e, seq)) == [("ssh", A)]


def test_flags_are_exact_ece_and_cwr_must_be_clear() -> None:
    e = engine(event("ev", tcp(110, URG | PSH), tcp(111)))
    assert e.feed(pkt(tcp(110, URG | PSH | ECE)), 0) == []
    assert e.attempt_count == 0
    e.feed(pkt(tcp(110, URG | PSH)), 0)
    assert e.attempt_count == 1


def test_no_flags_means_none_set() -> None:
    e = engine(event("ev", tcp(200), tcp(201)))
    e.feed(pkt(tcp(200), flags=SYN), 0)
    assert e.attempt_count == 0


def test_ignore_flags_accepts_anything() -> None:
    e = engine(event("ev", tcp(200), tcp(201, None)))
    e.feed(pkt(tcp(200)), 0)
    assert starts(e.feed(pkt(tcp(201), flags=0xFF), 1)) == [("ev", A)]


def test_wrong_order_does_not_fire() -> None:
    seq = [udp(1), udp(2), udp(3)]
    e = engine(event("ev", *seq))
    assert starts(knock(e, [udp(2), udp(1), udp(3), udp(2)])) == []


def test_wrong_frame_breaks_attempt() -> None:
    e = engine(event("ev", udp(1), udp(2), udp(3)))
    # 1 starts, 2 advances, 2 again is a retransmission, 1 breaks and restarts, 3 breaks.
    assert starts(knock(e, [udp(1), udp(2), udp(2), udp(1), udp(3)])) == []
    assert e.attempt_count == 0


def test_breaking_packet_that_is_frame0_restarts() -> None:
    e = engine(event("ev", udp(1), udp(2), udp(3)))
    actions = knock(e, [udp(1), udp(2), udp(1), udp(2), udp(3)])
    assert starts(actions) == [("ev", A)]


def test_unrelated_packets_are_ignored() -> None:
    e = engine(event("ev", udp(1), udp(2)))
    e.feed(pkt(udp(1)), 0)
    e.feed(pkt(udp(99)), 0.1)
    e.feed(pkt(tcp(2)), 0.2)
    assert starts(e.feed(pkt(udp(2)), 0.3)) == [("ev", A)]


def test_retransmitted_frame_is_ignored() -> None:
    e = engine(event("ev", tcp(1, SYN), tcp(2, SYN), tcp(3, SYN)))
    seq = [tcp(1, SYN), tcp(1, SYN), tcp(2, SYN), tcp(2, SYN), tcp(2, SYN), tcp(3, SYN)]
    assert starts(knock(e, seq)) == [("ev", A)]


def test_repeated_frames_in_sequence_advance_before_retransmission() -> None:
    e = engine(event("ev", *SEED3))
    # up, up are frames 1 and 2: the second `up` must advance, not count as a retransmission.
    assert starts(knock(e, SEED3)) == [("ev", A)]


def test_too_slow_does_not_fire() -> None:
    e = engine(event("ev", udp(1), udp(2), timeout=5))
    e.feed(pkt(udp(1)), 0)
    assert e.feed(pkt(udp(2)), 5.01) == []


def test_timeout_is_measured_from_first_frame() -> None:
    e = engine(event("ev", udp(1), udp(2), udp(3), timeout=5))
    e.feed(pkt(udp(1)), 0)
    e.feed(pkt(udp(2)), 4)
    assert e.feed(pkt(udp(3)), 5.5) == []
    assert starts(knock(e, [udp(1), udp(2), udp(3)], t0=10, dt=2.5)) == [("ev", A)]


def test_expired_attempt_then_frame0_starts_fresh() -> None:
    e = engine(event("ev", udp(1), udp(2), timeout=5))
    e.feed(pkt(udp(1)), 0)
    e.feed(pkt(udp(1)), 6)
    assert starts(e.feed(pkt(udp(2)), 7)) == [("ev", A)]


def test_sources_are_independent() -> None:
    e = engine(event("ev", udp(1), udp(2)))
    e.feed(pkt(udp(1), A), 0)
    e.feed(pkt(udp(2), B), 0.1)  # B never sent frame 0
    assert starts(e.feed(pkt(udp(2), A), 0.2)) == [("ev", A)]
    assert e.attempt_count == 0


def test_events_are_independent_one_packet_advances_several() -> None:
    e = engine(event("one", udp(1), udp(2)), event("two", udp(1), udp(2), udp(3)))
    actions = knock(e, [udp(1), udp(2), udp(3)])
    assert starts(actions) == [("one", A), ("two", A)]


def test_single_frame_event() -> None:
    e = engine(event("ev", udp(7)))
    assert starts(e.feed(pkt(udp(7)), 0)) == [("ev", A)]
    assert e.attempt_count == 0


def test_ipv6_sources() -> None:
    e = engine(event("ev", udp(1), udp(2)))
    assert starts(knock(e, [udp(1), udp(2)], src=V6)) == [("ev", V6)]


def test_stop_is_due_after_delay() -> None:
    e = engine(event("ev", udp(1), udp(2), stop=True))
    assert starts(knock(e, [udp(1), udp(2)])) == [("ev", A)]
    assert e.next_deadline() == 0.1 + 30
    assert e.tick(30.0) == []
    assert e.tick(30.1) == [RunStop("ev", A, "close ev %IP%")]
    assert e.next_deadline() is None
    assert e.open_doors() == []


def test_reknock_while_open_extends_instead_of_rerunning_start() -> None:
    e = engine(event("ev", udp(1), udp(2), stop=True))
    knock(e, [udp(1), udp(2)])
    again = knock(e, [udp(1), udp(2)], t0=20)
    assert again == [DoorExtended("ev", A, 20.1 + 30)]
    assert e.tick(31) == []  # the original due time no longer closes it
    assert e.tick(50.1) == [RunStop("ev", A, "close ev %IP%")]
    # Door closed: a new knock opens it again.
    assert starts(knock(e, [udp(1), udp(2)], t0=60)) == [("ev", A)]


def test_shutdown_runs_every_pending_stop() -> None:
    e = engine(event("ev", udp(1), udp(2), stop=True), event("other", udp(5), stop=True))
    knock(e, [udp(1), udp(2)], src=A)
    knock(e, [udp(5)], src=B, t0=1)
    stops = e.shutdown()
    assert set(stops) == {
        RunStop("ev", A, "close ev %IP%"),
        RunStop("other", B, "close other %IP%"),
    }
    assert e.tick(1000) == []


def test_expired_attempts_are_swept_without_traffic() -> None:
    e = engine(event("ev", udp(1), udp(2), timeout=5))
    for i in range(100):
        e.feed(pkt(udp(1), f"198.18.0.{i}"), i * 0.01)
    assert e.attempt_count == 100
    assert e.next_deadline() == 5
    e.tick(5.5)
    assert 0 < e.attempt_count < 100
    e.tick(6)
    assert e.attempt_count == 0
    assert e.next_deadline() is None


def test_attempts_are_capped_oldest_evicted() -> None:
    e = engine(event("ev", udp(1), udp(2)), max_attempts=10)
    e.feed(pkt(udp(1), A), 0)
    for i in range(50):
        e.feed(pkt(udp(1), f"198.18.1.{i}"), 1 + i * 0.01)
    assert e.attempt_count == 10
    # A was the oldest and has been evicted; the newest survive.
    assert e.feed(pkt(udp(2), A), 2) == []
    assert starts(e.feed(pkt(udp(2), "198.18.1.49"), 2)) == [("ev", "198.18.1.49")]


def test_real_knock_survives_flood_when_cap_is_larger_than_flood_window() -> None:
    e = engine(event("ev", udp(1), udp(2), timeout=1), max_attempts=1000)
    t = 0.0
    for i in range(20000):
        t = i * 0.0001  # 10k pps
        e.feed(pkt(udp(1), f"198.18.{i // 256 % 256}.{i % 256}"), t)
        if i % 1000 == 0:
            e.tick(t)
        if i == 10000:
            e.feed(pkt(udp(1), A), t)
        if i == 10050:
            assert starts(e.feed(pkt(udp(2), A), t)) == [("ev", A)]
    assert e.attempt_count <= 1000


def test_trace_reports_progress() -> None:
    e = engine(event("ev", udp(1), udp(2), udp(3)), trace=True)
    actions = knock(e, [udp(1), udp(1), udp(2), udp(9), udp(3)])
    whats = [a.what for a in actions if isinstance(a, Progress)]
    assert whats == ["started", "retransmission", "advanced"]
    assert starts(actions) == [("ev", A)]


def test_reload_keeps_doors_and_unchanged_attempts() -> None:
    ev = event("ev", udp(1), udp(2), udp(3), stop=True)
    e = engine(ev, event("gone", udp(1), udp(4)))
    knock(e, [udp(1), udp(2), udp(3)], src=B)  # B's door is open
    e.feed(pkt(udp(1), A), 1)
    e.feed(pkt(udp(2), A), 1.1)
    changed = event("new", udp(1), udp(5))
    e.reload(Config("test.conf", (changed, ev)))
    assert starts(e.feed(pkt(udp(3), A), 1.2)) == [("ev", A)]
    assert [(d.event, d.address) for d in e.open_doors()] == [("ev", B), ("ev", A)]
    assert e.attempt_count == 0


def _reference(frames: tuple[Frame, ...], timeout: float, seq: list[tuple[Packet, float]]) -> int:
    """A slow, literal reading of the rules, for one source and one event: fires counted."""
    fires = 0
    matched, started = 0, 0.0
    for p, now in seq:
        m = [matches(f, p.protocol, p.port, p.flags) for f in frames]
        if matched and now - started > timeout:
            matched = 0
        if matched == 0:
            if m[0]:
                matched, started = 1, now
        elif m[matched]:
            matched += 1
        elif m[matched - 1]:
            pass
        elif any(m):
            matched = 0
            if m[0]:
                matched, started = 1, now
        if matched == len(frames):
            fires += 1
            matched = 0
    return fires


small_frames = st.builds(
    Frame,
    st.sampled_from([PROTO_TCP, PROTO_UDP]),
    st.integers(1, 3),
    st.sampled_from([None, 0, SYN, ACK, FIN | ACK]),
).map(lambda f: Frame(f.protocol, f.port, None) if f.protocol == PROTO_UDP else f)


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(small_frames, min_size=1, max_size=5).map(tuple),
    steps=st.lists(
        st.tuples(small_frames, st.sampled_from([0, SYN, ACK, FIN | ACK, ECE]), st.floats(0, 3)),
        max_size=30,
    ),
)
def test_engine_agrees_with_literal_reading_of_rules(frames, steps) -> None:
    e = engine(Event("ev", frames, 5.0, "start"))
    now = 0.0
    seq = []
    for f, flags, dt in steps:
        now += dt
        p = Packet(
            address_bytes(A),
            address_bytes(HOST),
            f.protocol,
            f.port,
            flags if f.protocol == PROTO_TCP else 0,
        )
        seq.append((p, now))
    fired = sum(len(starts(e.feed(p, t))) for p, t in seq)
    assert fired == _reference(frames, 5.0, seq)
