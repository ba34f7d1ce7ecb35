"""Eviction in the engine: a flood of first frames only ever evicts other fresh attempts.

Fresh attempts (one frame matched) and advanced ones (two or more) are bounded apart, as in
the kernel engine's two maps: a new attempt evicts the oldest fresh one, never an advanced
one; advanced ones (`advanced_limit`, or `max_advanced`) evict only each other. The last tests
compare the engine with a slow, literal reading of those rules on random streams.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from test_engine import A, B, engine, event, knock, pkt, starts, udp
from tportknockd.kernel import adapter
from tportknockd.kernel.matcher import Capacity
from tportknockd.matching.engine import (
    _SWEEP_MARGIN,
    DEFAULT_MAX_ATTEMPTS,
    Engine,
    Progress,
    advanced_limit,
)
from tportknockd.model import (
    ACK,
    PROTO_TCP,
    SYN,
    Config,
    Event,
    Frame,
    Packet,
    address_text,
)

C = "198.51.100.9"


def matches(frame: Frame, protocol: int, port: int, flags: int) -> bool:
    """Whether a packet with these fields is this frame (UDP packets carry flags 0)."""
    return (protocol, port) == (frame.protocol, frame.port) and flags in frame.flag_bytes()


def spoofed(index: int) -> str:
    """One of 198.18.0.0/15's addresses."""
    return f"198.18.{index >> 8 & 0xFF}.{index & 0xFF}"


def traced(actions: list, what: str) -> list[tuple[str, str]]:
    return [(a.event, a.address) for a in actions if isinstance(a, Progress) and a.what == what]


def flood(e: Engine, count: int, now: float) -> list:
    """`count` spoofed first frames (udp:1), each from an address of its own."""
    out: list = []
    for index in range(count):
        out += e.feed(pkt(udp(1), spoofed(index)), now)
    return out


# -- the rules --------------------------------------------------------------------------------


def test_the_bounds_are_the_kernel_engines() -> None:
    kernel = Capacity()
    assert kernel.fresh_attempts == DEFAULT_MAX_ATTEMPTS
    assert advanced_limit(DEFAULT_MAX_ATTEMPTS) == kernel.advanced_attempts == 8192
    assert adapter.advanced_limit is advanced_limit  # the kernel maps are sized by it
    assert [advanced_limit(n) for n in (1, 512, 520, 1024)] == [64, 64, 65, 128]


def test_a_first_frame_flood_cannot_evict_an_advanced_attempt() -> None:
    e = engine(event("ev", udp(1), udp(2), udp(3)), max_attempts=16)
    knock(e, [udp(1), udp(2)], src=A)  # A is advanced
    e.feed(pkt(udp(1), B), 0.3)  # B is fresh
    flood(e, 1000, 1.0)
    assert e.attempts_held == (16, 1)
    assert e.evictions == (1 + 1000 - 16, 0)  # B and the flood's oldest, never A
    assert e.feed(pkt(udp(2), B), 2) == []  # B's first frame was evicted
    assert starts(e.feed(pkt(udp(3), A), 2)) == [("ev", A)]
    assert e.attempts_held == (16, 0)


def test_the_oldest_fresh_attempt_goes_first_whatever_its_event() -> None:
    e = engine(event("one", udp(1), udp(2)), event("two", udp(5), udp(6)), max_attempts=3,
               trace=True)
    e.feed(pkt(udp(5), A), 0)
    e.feed(pkt(udp(1), B), 1)
    e.feed(pkt(udp(5), C), 2)
    assert traced(e.feed(pkt(udp(1), spoofed(0)), 3), "evicted") == [("two", A)]
    assert traced(e.feed(pkt(udp(5), spoofed(1)), 4), "evicted") == [("one", B)]
    assert traced(e.feed(pkt(udp(1), spoofed(2)), 5), "evicted") == [("two", C)]
    assert e.evictions == (3, 0)


def test_an_attempt_that_advances_leaves_the_fresh_ones() -> None:
    e = engine(event("ev", udp(1), udp(2), udp(3)), max_attempts=2, trace=True)
    e.feed(pkt(udp(1), A), 0)
    e.feed(pkt(udp(1), B), 1)
    e.feed(pkt(udp(2), A), 2)  # A, the oldest, advances: B is now the oldest fresh one
    e.feed(pkt(udp(1), C), 3)
    assert e.attempts_held == (2, 1)
    assert traced(e.feed(pkt(udp(1), spoofed(0)), 4), "evicted") == [("ev", B)]
    assert traced(e.feed(pkt(udp(1), spoofed(1)), 5), "evicted") == [("ev", C)]
    assert starts(e.feed(pkt(udp(3), A), 6)) == [("ev", A)]


def test_advanced_attempts_are_bounded_and_evict_only_each_other() -> None:
    e = engine(event("ev", udp(1), udp(2), udp(3)), max_attempts=4, trace=True)
    assert advanced_limit(4) == 64
    e.feed(pkt(udp(1), B), 0)
    e.feed(pkt(udp(1), A), 1)
    e.feed(pkt(udp(2), A), 2)  # A becomes advanced first, though B started first
    e.feed(pkt(udp(2), B), 3)
    for index in range(62):
        knock(e, [udp(1), udp(2)], src=spoofed(index), t0=4)
    assert e.attempts_held == (0, 64) and e.evictions == (0, 0)
    e.feed(pkt(udp(1), C), 5)
    assert traced(e.feed(pkt(udp(2), C), 5), "evicted") == [("ev", A)]
    assert e.attempts_held == (0, 64)
    assert e.evictions == (0, 1)
    assert e.feed(pkt(udp(3), A), 6) == []  # A holds nothing any more
    assert starts(e.feed(pkt(udp(3), B), 6)) == [("ev", B)]
    assert starts(e.feed(pkt(udp(3), C), 6)) == [("ev", C)]


def test_the_advanced_bound_can_be_set() -> None:
    e = engine(event("ev", udp(1), udp(2), udp(3)), max_attempts=4, max_advanced=2)
    for src in (A, B, C):
        knock(e, [udp(1), udp(2)], src=src)
    assert e.attempts_held == (0, 2) and e.evictions == (0, 1)
    assert e.feed(pkt(udp(3), A), 1) == []
    assert starts(e.feed(pkt(udp(3), B), 1)) == [("ev", B)]


def test_without_trace_evictions_are_counted_not_reported() -> None:
    e = engine(event("ev", udp(1), udp(2), udp(3)), max_attempts=1)
    e.feed(pkt(udp(1), A), 0)
    assert e.feed(pkt(udp(1), B), 1) == []
    assert e.evictions == (1, 0) and e.attempts_held == (1, 0)


def test_a_two_frame_sequence_completes_from_fresh() -> None:
    e = engine(event("ev", udp(1), udp(2)), max_attempts=4)
    flood(e, 3, 0.0)
    e.feed(pkt(udp(1), A), 0.5)
    assert starts(e.feed(pkt(udp(2), A), 1)) == [("ev", A)]
    assert e.attempts_held == (3, 0)


def test_counts_follow_expiry_breaks_and_completions() -> None:
    e = engine(event("ev", udp(1), udp(2), udp(3), timeout=5), max_attempts=64)
    knock(e, [udp(1), udp(2)], src=A)
    knock(e, [udp(1), udp(2)], src=B)
    flood(e, 10, 1.0)
    assert e.attempts_held == (10, 2)
    e.feed(pkt(udp(1), B), 2)  # breaks B's advanced attempt and starts a fresh one
    assert e.attempts_held == (11, 1)
    e.feed(pkt(udp(1), A), 5.5)  # A's attempt expired: a fresh one starts
    assert e.attempts_held == (12, 0)
    e.tick(6.5)  # the flood's attempts expire; B's (started at 2) and A's (5.5) stay
    assert e.attempts_held == (2, 0) and e.attempt_count == 2
    e.tick(7.5)
    assert e.attempts_held == (1, 0) and e.attempt_count == 1


def test_attempts_survive_re_indexing_with_their_kind_and_order() -> None:
    e = engine(event("one", udp(1), udp(2), udp(3)), event("two", udp(5), udp(6), udp(7)),
               max_attempts=2, trace=True)
    knock(e, [udp(1), udp(2)], src=A)  # advanced in "one"
    e.feed(pkt(udp(5), B), 1)  # the oldest fresh attempt, in "two"
    e.feed(pkt(udp(1), C), 2)
    e.set_sequences(list(reversed(e.sequences)))  # "two" is now index 0
    assert e.attempts_held == (2, 1)
    assert traced(e.feed(pkt(udp(5), spoofed(0)), 3), "evicted") == [("two", B)]
    assert traced(e.feed(pkt(udp(5), spoofed(1)), 4), "evicted") == [("one", C)]
    assert starts(e.feed(pkt(udp(3), A), 6)) == [("one", A)]


def test_sequences_that_leave_take_their_attempts_out_of_the_counts() -> None:
    one, two = event("one", udp(1), udp(2), udp(3)), event("two", udp(5), udp(6), udp(7))
    e = engine(one, two, max_attempts=8)
    knock(e, [udp(5), udp(6)], src=A)
    e.feed(pkt(udp(5), B), 1)
    e.feed(pkt(udp(1), C), 1)
    assert e.attempts_held == (2, 1)
    e.set_sequences([s for s in e.sequences if s.event.name == "one"])
    assert e.attempts_held == (1, 0)
    flood(e, 7, 2.0)  # room for 7 more fresh: nothing is evicted
    assert e.evictions == (0, 0)
    e.reload(Config("test.conf", (event("one", udp(1), udp(2), udp(3), timeout=3),)))
    assert e.attempts_held == (0, 0)  # its timeout changed: its attempts are gone


def test_the_queues_stay_bounded_when_attempts_end_by_the_rules() -> None:
    """Attempts that complete, break, expire or advance leave stale entries in the queues
    (they are lazy): those are swept, so the queues never hold much more than twice the
    attempts held, and nothing once none is held."""
    e = engine(event("ev", udp(1), udp(2), udp(3), timeout=1), max_attempts=100000)
    pieces = ([udp(1), udp(2), udp(3)], [udp(1), udp(3)], [udp(1), udp(2)], [udp(1)])
    longest = 0
    for index in range(20000):
        now = index * 0.001
        for frame in pieces[index % 4]:
            e.feed(pkt(frame, spoofed(index % 3000)), now)
            entries = (len(e._fresh) + len(e._advanced)) // 3
            assert entries <= 2 * e.attempt_count + _SWEEP_MARGIN + 1
            longest = max(longest, entries)
    assert e.evictions[0] == 0 and longest > _SWEEP_MARGIN  # no eviction kept them short
    e.tick(1000)
    assert e.attempts_held == (0, 0)
    assert len(e._fresh) == len(e._advanced) == 0


# -- a real knock during a flood --------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    length=st.integers(3, 6),
    max_attempts=st.integers(2, 24),
    max_advanced=st.integers(1, 4),
    flood_size=st.integers(0, 3000),
    cuts=st.lists(st.floats(0, 1), min_size=4, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_real_knock_with_two_frames_in_survives_any_first_frame_flood(
    length: int, max_attempts: int, max_advanced: int, flood_size: int, cuts: list[float],
    seed: int,
) -> None:
    """Whatever the flood's size, its sources (drawn with repeats from 198.18.0.0/15) and
    where the knock's remaining frames fall in it, a knock whose first two frames are in
    completes: spoofed first frames only ever evict fresh attempts. (The flood also hits a
    second event, which A's first frame started too: max_attempts >= 2 leaves room for both.)
    """
    frames = [udp(1 + index) for index in range(length)]
    e = engine(event("ev", *frames), event("other", udp(1), udp(99)),
               max_attempts=max_attempts, max_advanced=max_advanced)
    out = knock(e, frames[:2], src=A)
    assert e.attempts_held == (1, 1)  # A: advanced in "ev", fresh in "other"
    draw = random.Random(seed)
    stream = [pkt(udp(1), spoofed(draw.randrange(131072))) for _ in range(flood_size)]
    rest = frames[2:]
    positions = sorted(int(cut * flood_size) for cut in cuts[: len(rest)])
    for frame, position in reversed(list(zip(rest, positions, strict=True))):
        stream.insert(position, pkt(frame, A))  # from the back: the frames stay in order
    for index, packet in enumerate(stream):
        out += e.feed(packet, 1.0 + index * 0.0001)
    assert starts(out) == [("ev", A)]
    assert e.attempts_held[0] <= max_attempts


# -- the rules, read literally ----------------------------------------------------------------


@dataclass
class Literal:
    """A slow reading of the matching and eviction rules: every attempt in one dict, the
    oldest found by scanning."""

    events: tuple[Event, ...]
    max_attempts: int
    max_advanced: int
    # (event index, source) -> [started, matched, start order, order of becoming advanced]
    held: dict[tuple[int, bytes], list] = field(default_factory=dict)
    order: itertools.count = field(default_factory=itertools.count)
    fired: list[tuple[str, str]] = field(default_factory=list)
    evictions: list[int] = field(default_factory=lambda: [0, 0])

    def feed(self, p: Packet, now: float) -> None:
        for index, ev in enumerate(self.events):
            m = [matches(f, p.protocol, p.port, p.flags) for f in ev.frames]
            if not any(m):
                continue
            key = (index, p.src)
            attempt = self.held.get(key)
            if attempt is not None and now - attempt[0] > ev.timeout:
                del self.held[key]
                attempt = None
            if attempt is None:
                if m[0]:
                    self.start(key, ev, now)
            elif m[attempt[1]]:
                attempt[1] += 1
                if attempt[1] == len(ev.frames):
                    del self.held[key]
                    self.fired.append((ev.name, address_text(p.src)))
                elif attempt[1] == 2:
                    self.promote(key, attempt)
            elif not m[attempt[1] - 1]:
                del self.held[key]
                if m[0]:
                    self.start(key, ev, now)

    def start(self, key: tuple[int, bytes], ev: Event, now: float) -> None:
        if len(ev.frames) == 1:
            self.fired.append((ev.name, address_text(key[1])))
            return
        fresh = [k for k, a in self.held.items() if a[1] == 1]
        if len(fresh) >= self.max_attempts:
            del self.held[min(fresh, key=lambda k: self.held[k][2])]
            self.evictions[0] += 1
        self.held[key] = [now, 1, next(self.order), None]

    def promote(self, key: tuple[int, bytes], attempt: list) -> None:
        advanced = [k for k, a in self.held.items() if a[1] >= 2 and k != key]
        if len(advanced) >= self.max_advanced:
            del self.held[min(advanced, key=lambda k: self.held[k][3])]
            self.evictions[1] += 1
        attempt[3] = next(self.order)

    def tick(self, now: float) -> None:
        for key, attempt in list(self.held.items()):
            if now - attempt[0] > self.events[key[0]].timeout:
                del self.held[key]

    def attempts_held(self) -> tuple[int, int]:
        fresh = sum(1 for a in self.held.values() if a[1] == 1)
        return fresh, len(self.held) - fresh

    def state(self) -> dict[tuple[str, bytes], tuple[float, int]]:
        return {(self.events[i].name, src): (a[0], a[1]) for (i, src), a in self.held.items()}


def engine_state(e: Engine) -> dict[tuple[str, bytes], tuple[float, int]]:
    """Every attempt the engine holds (a look inside: which attempts, not only how many)."""
    return {
        (sequence.event.name, src): (attempt.started, attempt.matched)
        for sequence, attempts in zip(e.sequences, e._attempts, strict=True)
        for src, attempt in attempts.items()
    }


FRAME_POOL = [udp(1), udp(2), udp(3), Frame(PROTO_TCP, 1, SYN), Frame(PROTO_TCP, 1, ACK)]
SOURCES = [A, B, C, "2001:db8::7", spoofed(1)]

literal_events = st.lists(
    st.builds(
        lambda name, frames, timeout: Event(name, tuple(frames), timeout, "open %IP%", None, None),
        st.sampled_from(["e0", "e1", "e2"]),
        st.lists(st.sampled_from(FRAME_POOL), min_size=1, max_size=5),
        st.integers(2, 12),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda ev: ev.name,
)

@st.composite
def streams(draw: st.DrawFn, events: list[Event]) -> list[tuple[Frame | None, str, float]]:
    """Packets (None: a tick) with the time since the last step: mostly pieces of knocks
    (the first k frames of an event, from one source), so that attempts advance and fill
    both kinds, mixed with stray frames."""
    stream: list[tuple[Frame | None, str, float]] = []
    for _ in range(draw(st.integers(0, 60))):
        source = draw(st.sampled_from(SOURCES))
        what = draw(st.sampled_from(["knock", "knock", "stray", "tick"]))
        if what == "knock":
            frames = draw(st.sampled_from(events)).frames
            piece = frames[: draw(st.integers(1, len(frames)))]
        else:
            piece = (draw(st.sampled_from(FRAME_POOL)),) if what == "stray" else (None,)
        stream += [(frame, source, draw(st.floats(0.001, 1.0))) for frame in piece]
    return stream


@settings(max_examples=500, deadline=None)
@given(
    data=st.data(),
    events=literal_events,
    max_attempts=st.integers(1, 8),
    max_advanced=st.integers(1, 4),
)
def test_the_engine_is_the_literal_rules(
    data: st.DataObject, events: list[Event], max_attempts: int, max_advanced: int
) -> None:
    e = Engine(Config("test.conf", tuple(events)), max_attempts, max_advanced=max_advanced)
    literal = Literal(tuple(events), max_attempts, max_advanced)
    fired: list[tuple[str, str]] = []
    now = 0.0
    for frame, source, dt in data.draw(streams(events)):
        now += dt  # strictly increasing: the daemon's monotonic clock, at nanosecond grain
        if frame is None:
            e.tick(now)
            literal.tick(now)
        else:
            packet = pkt(frame, source)
            fired += starts(e.feed(packet, now))
            literal.feed(packet, now)
        assert fired == literal.fired
        assert engine_state(e) == literal.state()
        assert e.attempts_held == literal.attempts_held()
        assert e.attempt_count == len(literal.held)
        assert list(e.evictions) == literal.evictions
