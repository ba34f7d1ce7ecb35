"""The kernel engine against the specification: the Python engine behind today's pipeline.

Every frame goes through both:
* the Python path the daemon runs today: the classic filter of filter.py (run by
  tests/bpfvm.py), packet.py's parser on the bytes it passes, the destination check, and
  engine.Engine;
* the generated eBPF program, run by the kernel over the same bytes (BPF_PROG_TEST_RUN: nothing
  is sent anywhere), with its completions read from the ring buffer.
The same sequences must complete for the same sources after the same frames, and nothing else.

Time: the program reads the kernel's clock, which a test cannot set. The rules only ever look
at `now - started`, so instead of moving the present forward by dt, the tests move every
attempt's start back by dt (`age`): the program under test is the one that ships. Real time
still passes while a test runs, so generated times are multiples of 0.25 s and timeouts sit
0.125 s between them: the comparison never depends on a few milliseconds. A few tests check
the clock itself with real sleeps.
"""

from __future__ import annotations

import mmap
import os
import select
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import frames_raw as fr
from kernel_path import KernelPath, TooShort
from privileges import BPF, require_root
from python_path import PythonPath
from tportknockd.bpf import syscalls
from tportknockd.kernel import program as kp
from tportknockd.kernel.matcher import (
    Capacity,
    CapacityError,
    KernelMatcher,
    KnockSequence,
)
from tportknockd.model import (
    ACK,
    ECE,
    FIN,
    PROTO_TCP,
    PROTO_UDP,
    PSH,
    RST,
    SYN,
    URG,
    Event,
    Frame,
    address_bytes,
)

SERVER_V4, SERVER_V6 = "198.51.100.1", "2001:db8::1"
LOCAL = [SERVER_V4, SERVER_V6, "fe80::1%lo"]  # test runs come in on lo
A, B, A6 = "198.51.100.7", "198.51.100.8", "2001:db8::7"
SMALL = Capacity(fresh_attempts=4096, advanced_attempts=1024, frame_keys=2048)


# -- the two pipelines -----------------------------------------------------------------------


def clear(matcher: KernelMatcher) -> None:
    """Forget every attempt and unread completion (between examples)."""
    matcher.forget_attempts()
    matcher.completions()


@pytest.fixture(scope="module")
def matcher() -> Iterator[KernelMatcher]:
    require_root(BPF)
    m = KernelMatcher(SMALL)
    yield m
    m.close()


def event(name: str, *frames: Frame, timeout: float = 10.125, stop: bool = False) -> Event:
    return Event(name, frames, timeout, f"open {name}", f"close {name}" if stop else None,
                 30 if stop else None)  # fmt: skip


def tcp(port: int, flags: int | None = 0) -> Frame:
    return Frame(PROTO_TCP, port, flags)


def udp(port: int) -> Frame:
    return Frame(PROTO_UDP, port, None)


def frame_for(f: Frame, src: str = A, flags: int | None = None) -> bytes:
    dst = SERVER_V6 if ":" in src else SERVER_V4
    wanted = f.flags if flags is None else flags
    return fr.knock(src, dst, f.protocol, f.port, (wanted or 0) if f.protocol == PROTO_TCP else 0)


def both(matcher: KernelMatcher, events: tuple[Event, ...]) -> tuple[PythonPath, KernelPath]:
    return PythonPath(events, LOCAL), KernelPath(matcher, events, LOCAL)


def feed_both(paths: tuple[PythonPath, KernelPath], frame: bytes, dt: float = 0.0) -> list:
    """Feed both; they must agree on what completed and on whether the frame counted at all
    (a well-formed packet to us that matches some frame: the kernel's `knocks` counter)."""
    python, kernel = paths
    expected = python.feed(frame, dt)
    try:
        got = kernel.feed(frame, dt)
    except TooShort:
        got = []  # the parser drops it too: the Python path must agree
    assert got == expected, frame.hex()
    assert kernel.knocks == python.knocks, frame.hex()
    return got


# -- hand-written cases ------------------------------------------------------------------------

SEED_SSH = (udp(1234), tcp(543), tcp(543, None), tcp(123, FIN | RST | PSH | ACK),
            tcp(434, 0x3F), tcp(2345, 0))  # fmt: skip
SEED_VPN = (tcp(12430, ACK), tcp(2711, None), tcp(123, None), tcp(8375), tcp(1155))
SEED_FLAGS = (tcp(110, 0x3F), tcp(110, URG | PSH), tcp(110, URG | PSH), tcp(110), tcp(110, None))


@pytest.mark.parametrize("sequence", [SEED_SSH, SEED_VPN, SEED_FLAGS])
@pytest.mark.parametrize("source", [A, A6])
def test_seed_examples_complete(matcher: KernelMatcher, sequence: tuple, source: str) -> None:
    paths = both(matcher, (event("ssh", *sequence),))
    results = [feed_both(paths, frame_for(f, source), 0.25) for f in sequence]
    assert results[-1] == [("ssh", source)]
    assert all(r == [] for r in results[:-1])


def test_one_packet_advances_several_sequences(matcher: KernelMatcher) -> None:
    events = (event("one", udp(1), udp(2)), event("two", udp(1), udp(2), udp(3)),
              event("single", udp(3)))  # fmt: skip
    paths = both(matcher, events)
    assert feed_both(paths, frame_for(udp(1))) == []
    assert feed_both(paths, frame_for(udp(2))) == [("one", A)]
    assert feed_both(paths, frame_for(udp(3))) == [("two", A), ("single", A)]


def test_flags_are_exact(matcher: KernelMatcher) -> None:
    paths = both(matcher, (event("ev", tcp(110, URG | PSH), tcp(111, SYN)),))
    assert feed_both(paths, frame_for(tcp(110), flags=URG | PSH | ECE)) == []
    assert feed_both(paths, frame_for(tcp(111), flags=SYN)) == []
    assert feed_both(paths, frame_for(tcp(110), flags=URG | PSH)) == []
    assert feed_both(paths, frame_for(tcp(111), flags=SYN | ACK)) == []
    assert feed_both(paths, frame_for(tcp(111), flags=SYN)) == [("ev", A)]


def test_retransmission_break_and_restart(matcher: KernelMatcher) -> None:
    paths = both(matcher, (event("ev", udp(1), udp(2), udp(3)),))
    for port in (1, 2, 2, 1, 3):  # 2 again: ignored; 1: breaks and restarts; 3: breaks
        assert feed_both(paths, frame_for(udp(port))) == []
    for port in (1, 2, 1, 2):
        assert feed_both(paths, frame_for(udp(port))) == []
    assert feed_both(paths, frame_for(udp(3))) == [("ev", A)]


def test_timeout_counts_from_the_first_frame(matcher: KernelMatcher) -> None:
    paths = both(matcher, (event("ev", udp(1), udp(2), udp(3), timeout=5.125),))
    assert feed_both(paths, frame_for(udp(1))) == []
    assert feed_both(paths, frame_for(udp(2)), 4) == []
    assert feed_both(paths, frame_for(udp(3)), 1.5) == []  # 5.5 s after frame 0
    assert feed_both(paths, frame_for(udp(1)), 1) == []
    assert feed_both(paths, frame_for(udp(2)), 2.5) == []
    assert feed_both(paths, frame_for(udp(3)), 2.5) == [("ev", A)]  # 5 s after frame 0


def test_sources_and_families_are_apart(matcher: KernelMatcher) -> None:
    paths = both(matcher, (event("ev", udp(1), udp(2)),))
    assert feed_both(paths, frame_for(udp(1), A)) == []
    assert feed_both(paths, frame_for(udp(2), B)) == []
    assert feed_both(paths, frame_for(udp(2), A6)) == []
    assert feed_both(paths, frame_for(udp(2), A)) == [("ev", A)]


def test_only_packets_to_this_host_count(matcher: KernelMatcher) -> None:
    paths = both(matcher, (event("ev", udp(1), udp(2)),))
    to_other = fr.ether(fr.ipv4(A, "198.51.100.9", fr.UDP, fr.transport(fr.UDP, 1)))
    multicast = fr.ether(fr.ipv4(A, SERVER_V4, fr.UDP, fr.transport(fr.UDP, 1)),
                         dst_mac=fr.MULTICAST_MAC)  # fmt: skip
    other_host = fr.ether(fr.ipv4(A, SERVER_V4, fr.UDP, fr.transport(fr.UDP, 1)),
                          dst_mac=fr.OTHER_MAC)  # fmt: skip
    link_local = fr.ether(fr.ipv6("fe80::7", "fe80::1", fr.UDP, fr.transport(fr.UDP, 1)))
    for frame in (to_other, multicast, other_host):
        feed_both(paths, frame)
        assert feed_both(paths, frame_for(udp(2))) == []
    feed_both(paths, link_local)
    link_local_2 = fr.ether(fr.ipv6("fe80::7", "fe80::1", fr.UDP, fr.transport(fr.UDP, 2)))
    assert feed_both(paths, link_local_2) == [("ev", "fe80::7")]


# -- the cross-check ---------------------------------------------------------------------------

FLAG_CHOICES = [None, 0, SYN, ACK, FIN | ACK]
PACKET_FLAGS = [0, SYN, ACK, FIN | ACK, ECE, SYN | ECE]
SOURCES = [A, B, A6]

small_frames = st.builds(
    lambda protocol, port, flags: Frame(protocol, port, flags if protocol == PROTO_TCP else None),
    st.sampled_from([PROTO_TCP, PROTO_UDP]),
    st.integers(1, 3),
    st.sampled_from(FLAG_CHOICES),
)

events_strategy = st.lists(
    st.builds(
        lambda frames, timeout, stop: (frames, timeout, stop),
        st.lists(small_frames, min_size=1, max_size=5).map(tuple),
        st.sampled_from([1.125, 2.125, 5.125]),
        st.booleans(),
    ),
    min_size=1,
    max_size=3,
).map(lambda specs: tuple(event(f"e{i}", *fs, timeout=t, stop=s)
                          for i, (fs, t, s) in enumerate(specs)))  # fmt: skip

#: How a frame is wrapped: most are plain, the rest exercise every parsing rule.
SHAPES = ["plain"] * 16 + [
    "ip-options", "first-fragment", "later-fragment", "vlan", "two-vlans", "multicast",
    "not-local", "v6-hop-by-hop", "v6-chain", "v6-later-fragment", "v6-esp",
    "v6-eleven-headers", "v6-ten-headers", "v6-long-dest-opts", "truncated", "short-ip-length",
    "bad-version", "ihl-below-5", "ip-length-below-header",
]  # fmt: skip


def shaped(shape: str, src: str, protocol: int, port: int, flags: int, cut: int) -> bytes:
    v6 = ":" in src
    dst = SERVER_V6 if v6 else SERVER_V4
    body = fr.transport(protocol, port, flags if protocol == PROTO_TCP else 0)
    exts: tuple[fr.Ext, ...] = ()
    if shape == "v6-hop-by-hop":
        exts = (fr.Ext(fr.HOP_BY_HOP),)
    elif shape == "v6-chain":
        exts = (fr.Ext(fr.HOP_BY_HOP), fr.Ext(fr.DEST_OPTS, 1), fr.Ext(fr.ROUTING, 2),
                fr.Ext(fr.FRAGMENT), fr.Ext(fr.AUTH, 4))  # fmt: skip
    elif shape == "v6-later-fragment":
        exts = (fr.Ext(fr.FRAGMENT, offset=3),)
    elif shape == "v6-esp":
        exts = (fr.Ext(fr.ESP),)
    elif shape in ("v6-eleven-headers", "v6-ten-headers"):
        exts = (fr.Ext(fr.DEST_OPTS),) * (11 if shape == "v6-eleven-headers" else 10)
    elif shape == "v6-long-dest-opts":
        exts = (fr.Ext(fr.DEST_OPTS, 40), fr.Ext(fr.DEST_OPTS, 20))  # past the 512-byte snap
    if shape.startswith("v6") and not v6:
        v6, src, dst = True, A6, SERVER_V6
    if shape == "not-local":
        dst = "2001:db8::9" if v6 else "198.51.100.9"
    if v6:
        packet = fr.ipv6(src, dst, protocol, body, exts)
    else:
        packet = fr.ipv4(
            src, dst, protocol, body,
            options=b"\x01\x01\x01\x00" if shape == "ip-options" else b"",
            fragment=(5 if cut % 2 else 0x1000) if shape == "later-fragment" else 0,
            more_fragments=shape == "first-fragment",
        )  # fmt: skip
    if shape == "short-ip-length":  # the IP length ends inside the transport header
        length_at = 4 if v6 else 2
        claimed = struct.unpack_from("!H", packet, length_at)[0] - cut
        packet = packet[:length_at] + struct.pack("!H", max(claimed, 0)) + packet[length_at + 2:]
    packet = corrupted(shape, packet, v6)
    frame = fr.ether(
        packet,
        ethertype=0x86DD if v6 else 0x0800,
        vlan_tags={"vlan": 1, "two-vlans": 2}.get(shape, 0),
        dst_mac=fr.MULTICAST_MAC if shape == "multicast" else fr.HOST_MAC,
    )
    return frame[:-cut] if shape == "truncated" else frame


def corrupted(shape: str, packet: bytes, v6: bool) -> bytes:
    """The IP header with one field made invalid (a shape that names one)."""
    first = packet[0]
    if shape == "bad-version":
        return bytes([(first & 0x0F) | (0x50 if not v6 else 0x40)]) + packet[1:]
    if shape == "ihl-below-5" and not v6:
        return bytes([0x44]) + packet[1:]
    if shape == "ip-length-below-header" and not v6:
        return packet[:2] + struct.pack("!H", 19) + packet[4:]
    return packet


#: The matcher fixture is loaded once per module; each example clears its attempts.
SLOW_WITH_A_FIXTURE = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


@st.composite
def streams(draw: st.DrawFn) -> tuple[tuple[Event, ...], list]:
    """Events, and frames with times: mostly the events' own frames, in and out of order."""
    events = draw(events_strategy)
    wanted = [f for e in events for f in e.frames]
    steps = []
    for _ in range(draw(st.integers(0, 40))):
        if draw(st.integers(0, 3)):
            f = draw(st.sampled_from(wanted))
            flags = f.flags if f.flags is not None else draw(st.sampled_from(PACKET_FLAGS))
            if not draw(st.integers(0, 7)):
                flags = draw(st.sampled_from(PACKET_FLAGS))
        else:
            f = draw(small_frames)
            flags = draw(st.sampled_from(PACKET_FLAGS))
        shape = draw(st.sampled_from(SHAPES))
        source = draw(st.sampled_from([A, A, A, B, A6]))
        cut = draw(st.integers(1, 20))
        dt = draw(st.integers(0, 12)) / 4
        steps.append((shape, source, f, flags, cut, dt))
    return events, steps


@settings(max_examples=500, deadline=None, suppress_health_check=SLOW_WITH_A_FIXTURE)
@given(stream=streams())
def test_kernel_agrees_with_the_python_engine(
    matcher: KernelMatcher, stream: tuple[tuple[Event, ...], list]
) -> None:
    events, steps = stream
    paths = both(matcher, events)
    completed = 0
    for shape, src, f, flags, cut, dt in steps:
        frame = shaped(shape, src, f.protocol, f.port, flags, cut)
        completed += len(feed_both(paths, frame, dt))
    hypothesis.event("completions", min(completed, 3))  # see --hypothesis-show-statistics


@settings(max_examples=200, deadline=None, suppress_health_check=SLOW_WITH_A_FIXTURE)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([SEED_SSH[0], SEED_SSH[1], SEED_SSH[3], udp(7)]),
            st.sampled_from(["plain", "vlan", "v6-chain", "ip-options"]),
            st.lists(st.tuples(st.integers(0, 95), st.integers(0, 255)), max_size=3),
        ),
        max_size=20,
    )
)
def test_mutated_frames_agree(matcher: KernelMatcher, steps: list) -> None:
    """Frames with bytes overwritten anywhere in their headers: both drop or both count."""
    paths = both(matcher, (event("ssh", *SEED_SSH[:4]), event("seven", udp(7), udp(1234))))
    completed = 0
    for f, shape, edits in steps:
        frame = bytearray(shaped(shape, A, f.protocol, f.port, f.flags or 0, 1))
        for position, value in edits:
            if position < len(frame):
                frame[position] = value
        completed += len(feed_both(paths, bytes(frame), 0.25))
    hypothesis.event("completions", min(completed, 3))


# -- time, for real --------------------------------------------------------------------------


def test_timeout_with_the_real_clock(matcher: KernelMatcher) -> None:
    clear(matcher)
    matcher.set_sequences([KnockSequence("ev", (udp(1), udp(2)), 0.3)])
    matcher.set_local_addresses(LOCAL)
    run = matcher.program.test_run
    run(frame_for(udp(1)))
    time.sleep(0.5)
    run(frame_for(udp(2)))
    assert matcher.completions() == []
    run(frame_for(udp(1)))
    time.sleep(0.1)
    run(frame_for(udp(2)))
    assert [c.sequence for c in matcher.completions()] == ["ev"]


# -- maps, not programs: what changes while running ------------------------------------------


def test_changes_are_map_updates(matcher: KernelMatcher) -> None:
    clear(matcher)
    program_fd = matcher.program.fd
    ssh = KnockSequence("ssh", (udp(1), udp(2), udp(3)), 10)
    matcher.set_local_addresses(LOCAL)
    matcher.set_sequences([ssh])
    run = matcher.program.test_run
    run(frame_for(udp(1)))
    run(frame_for(udp(2)))
    # A new one-time window arrives, another goes: the attempt at `ssh` carries on.
    windows = [KnockSequence(("otp", w), (tcp(20000 + w, SYN), udp(30000 + w)), 10)
               for w in (1, 2, 3)]  # fmt: skip
    matcher.set_sequences([ssh, *windows])
    run(frame_for(tcp(20002), flags=SYN))
    matcher.set_sequences([ssh, *windows[1:]])
    run(frame_for(udp(3)))
    run(frame_for(udp(30002)))
    run(frame_for(tcp(20001), flags=SYN))
    run(frame_for(udp(30001)))  # window 1 is gone
    assert [c.sequence for c in matcher.completions()] == ["ssh", ("otp", 2)]
    # A changed timeout is another sequence: its attempts start again (as Engine.reload).
    run(frame_for(udp(1)))
    run(frame_for(udp(2)))
    matcher.set_sequences([KnockSequence("ssh", ssh.frames, 11)])
    run(frame_for(udp(3)))
    assert matcher.completions() == []
    # Addresses come and go without a new program either.
    matcher.set_local_addresses([SERVER_V4])
    for port in (1, 2, 3):
        run(frame_for(udp(port), A6))
    assert matcher.completions() == []
    matcher.set_local_addresses([SERVER_V4, SERVER_V6])
    for port in (1, 2, 3):
        run(frame_for(udp(port), A6))
    assert [c[:2] for c in matcher.completions()] == [("ssh", address_bytes(A6))]
    assert matcher.program.fd == program_fd


def test_the_ring_polls_readable_while_completions_wait(matcher: KernelMatcher) -> None:
    clear(matcher)
    matcher.set_local_addresses(LOCAL)
    matcher.set_sequences([KnockSequence("one", (udp(9),), 10)])
    assert select.select([matcher], [], [], 0)[0] == []
    matcher.program.test_run(frame_for(udp(9)))
    assert select.select([matcher], [], [], 0)[0] == [matcher]
    assert len(matcher.completions()) == 1
    assert select.select([matcher], [], [], 0)[0] == []


def test_a_completion_read_after_its_sequence_was_dropped_still_counts(
    matcher: KernelMatcher,
) -> None:
    clear(matcher)
    matcher.set_local_addresses(LOCAL)
    old = [KnockSequence(("otp", 1), (udp(5), udp(6)), 10)]
    matcher.set_sequences(old)
    matcher.program.test_run(frame_for(udp(5)))
    matcher.program.test_run(frame_for(udp(6)))  # completes just before the window moves on
    matcher.set_sequences([KnockSequence(("otp", 2), (udp(7), udp(8)), 10)])
    assert [c[:2] for c in matcher.completions()] == [(("otp", 1), address_bytes(A))]
    matcher.set_sequences(old)
    matcher.program.test_run(frame_for(udp(5)))
    matcher.program.test_run(frame_for(udp(6)))
    matcher.set_sequences([])
    matcher.set_sequences([])  # two changes later, a sequence is forgotten
    assert matcher.completions() == []


def test_what_does_not_fit_changes_nothing(matcher: KernelMatcher) -> None:
    clear(matcher)
    matcher.set_local_addresses(LOCAL)
    matcher.set_sequences([KnockSequence("ok", (udp(1), udp(2)), 10)])
    crowd = [KnockSequence(i, (udp(1),), 10) for i in range(SMALL.max_hits + 1)]
    with pytest.raises(CapacityError, match="share a frame"):
        matcher.set_sequences(crowd)
    with pytest.raises(CapacityError, match="up to 64"):
        matcher.set_sequences([KnockSequence("long", (udp(1),) * 65, 10)])
    with pytest.raises(CapacityError, match="frame table entries"):
        matcher.set_sequences([KnockSequence("wide", tuple(tcp(p, None) for p in range(9)), 10)])
    matcher.program.test_run(frame_for(udp(1)))
    matcher.program.test_run(frame_for(udp(2)))
    assert [c.sequence for c in matcher.completions()] == ["ok"]


def test_a_sequence_given_twice_is_refused(matcher: KernelMatcher) -> None:
    twice = [KnockSequence("ev", (udp(1), udp(2)), 10)] * 2
    with pytest.raises(ValueError, match="twice"):
        matcher.set_sequences(twice)


# -- floods ----------------------------------------------------------------------------------


def spoofed(index: int, port: int) -> bytes:
    """A first frame from one of 198.18.0.0/15's addresses."""
    source = f"198.18.{index >> 8 & 0xFF}.{index & 0xFF}"
    return fr.knock(source, SERVER_V4, fr.UDP, port)


def test_a_first_frame_flood_cannot_evict_an_advanced_attempt() -> None:
    require_root(BPF)
    tiny = Capacity(fresh_attempts=256, advanced_attempts=64)
    with KernelMatcher(tiny) as m:
        m.set_local_addresses(LOCAL)
        m.set_sequences([KnockSequence("ev", (udp(1), udp(2), udp(3)), 10)])
        run = m.program.test_run
        run(frame_for(udp(1), A))
        run(frame_for(udp(2), A))  # A is advanced
        run(frame_for(udp(1), B))  # B is fresh
        for index in range(4000):  # 15 times what the fresh map holds
            run(spoofed(index, 1))
        run(frame_for(udp(3), A))
        run(frame_for(udp(2), B))
        run(frame_for(udp(3), B))
        # B's first frame was evicted
        assert [c[:2] for c in m.completions()] == [("ev", address_bytes(A))]
        fresh, advanced = m.attempts_held()
        assert fresh <= 256 and advanced == 0
        stats = m.statistics()
        assert stats.started == 4002 and stats.promoted == 1 and stats.completed == 1
        assert stats.advanced_deleted == 1 and stats.fresh_deleted == 0
        assert m.evictions() == (4001 - fresh, 0)


# -- the ring buffer -------------------------------------------------------------------------


def test_ring_buffer_wraps_round_and_counts_what_it_could_not_hold() -> None:
    require_root(BPF)
    # Records of 40 bytes: an 8-byte header, then kp.RECORD_SIZE (32).
    with KernelMatcher(Capacity(ring_bytes=4096)) as m:
        m.set_local_addresses(LOCAL)
        m.set_sequences([KnockSequence("one", (udp(9),), 10)])
        sent: list[bytes] = []
        got: list[bytes] = []
        for index in range(1000):  # about ten times round the ring
            m.program.test_run(spoofed(index, 9))
            sent.append(address_bytes(f"198.18.{index >> 8}.{index & 0xFF}"))
            if index % 50 == 49:
                got += [c.source for c in m.completions()]
        assert got == sent
        for index in range(200):  # now without reading
            m.program.test_run(spoofed(index, 9))
        record = 8 + kp.RECORD_SIZE
        held = (4096 - 1) // record  # the kernel keeps producer - consumer below the ring's size
        assert [c.source for c in m.completions()] == sent[:held]
        stats = m.statistics()
        assert stats.ring_full == 200 - held and stats.completed == 1200



def test_ring_buffer_data_pages_are_mapped_once() -> None:
    # The kernel maps every page at mmap time: a second copy of the data pages (for records
    # that wrap round, read in two pieces instead) would add the ring's size to the RSS.
    require_root(BPF)
    ring = syscalls.RingBuffer.create(1 << 16)
    try:
        assert len(ring._view) == mmap.PAGESIZE + (1 << 16)
    finally:
        ring.close()

# -- a real socket -----------------------------------------------------------------------------

# Runs in the server namespace: the matcher attached to an AF_PACKET socket bound to the veth.
RECEIVER = """
import json, select, socket, sys
from tportknockd.kernel.matcher import KernelMatcher, KnockSequence
from tportknockd.model import Frame
spec = json.loads(sys.argv[1])
m = KernelMatcher()
m.set_local_addresses(spec["local"])
m.set_sequences([KnockSequence(name, tuple(Frame(*f) for f in frames), 10)
                 for name, frames in spec["sequences"]])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
m.program.attach(sock)
sock.bind((spec["ifname"], 0x0003))
print("READY", flush=True)
sys.stdin.readline()
select.select([m], [], [], 1.0)
for c in m.completions():
    print(c.sequence, c.source.hex(), flush=True)
sock.setblocking(False)
try:
    sock.recv(65535)
    print("QUEUED", flush=True)
except BlockingIOError:
    pass
stats = m.statistics()
print("STATS", stats.packets, stats.knocks, flush=True)
"""

SENDER = """
import socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
sock.bind((sys.argv[1], 0))
for line in sys.stdin:
    sock.send(bytes.fromhex(line))
"""


@pytest.mark.e2e
def test_attached_to_a_packet_socket() -> None:
    """The program on a real AF_PACKET socket reads the bytes BPF_PROG_TEST_RUN gives it."""
    require_root(BPF)
    import json

    from netns import CLIENT_V4, CLIENT_V6, link_mac, veth_pair

    root = Path(__file__).resolve().parents[1]
    sequences = [["four", [[17, 1, None], [6, 2, SYN], [17, 3, None]]],
                 ["six", [[17, 1, None], [6, 2, SYN], [17, 4, None]]]]  # fmt: skip
    with veth_pair() as pair:
        mac = bytes.fromhex(link_mac(pair.server, pair.server_if).replace(":", ""))

        def to_server(packet: bytes, tags: int = 0) -> bytes:
            frame = fr.ether(packet, dst_mac=mac, vlan_tags=tags)
            return frame

        knocks4 = [fr.ipv4(CLIENT_V4, SERVER_V4, p, fr.transport(p, port, flags))
                   for p, port, flags in ((17, 1, 0), (6, 2, SYN), (17, 3, 0))]  # fmt: skip
        ext = (fr.Ext(fr.HOP_BY_HOP), fr.Ext(fr.FRAGMENT))
        knocks6 = [fr.ipv6(CLIENT_V6, SERVER_V6, p, fr.transport(p, port, flags), ext)
                   for p, port, flags in ((17, 1, 0), (6, 2, SYN), (17, 4, 0))]  # fmt: skip
        frames = [to_server(knocks4[0]), to_server(knocks4[1], tags=2), to_server(knocks4[2])]
        frames += [to_server(k) for k in knocks6]
        spec = {"local": [SERVER_V4, SERVER_V6], "sequences": sequences,
                "ifname": pair.server_if}  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(root / "src")}
        receiver = pair.popen(pair.server, [sys.executable, "-c", RECEIVER, json.dumps(spec)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)  # fmt: skip
        try:
            assert receiver.stdout is not None
            assert receiver.stdout.readline().strip() == "READY"
            hex_lines = "".join(f.hex() + "\n" for f in frames)
            pair.run(pair.client, [sys.executable, "-c", SENDER, pair.client_if],
                     input=hex_lines, check=True, timeout=30)  # fmt: skip
            out, _ = receiver.communicate("go\n", timeout=30)
        finally:
            if receiver.poll() is None:
                receiver.kill()
                receiver.wait()
    lines = out.split("\n")
    # The kernel moves the outer of the two VLAN tags into metadata: one is left, as in
    # today's filter. IPv4 "four" from the client, IPv6 "six" behind two extension headers.
    assert lines[:2] == [
        f"four {address_bytes(CLIENT_V4).hex()}",
        f"six {address_bytes(CLIENT_V6).hex()}",
    ]
    assert "QUEUED" not in out
    packets, knocks = map(int, lines[2].split()[1:])
    assert knocks == 6 and packets >= 6


# -- link-local destinations -------------------------------------------------------------------


def test_a_link_local_destination_counts_on_its_own_interface_only(
    matcher: KernelMatcher,
) -> None:
    """Test runs come in on lo (index 1): fe80::1 counts when it is lo's, not another's."""
    clear(matcher)
    matcher.set_sequences([KnockSequence("one", (udp(9),), 10)])
    knock = fr.knock(A6, "fe80::1", fr.UDP, 9)
    for address, completes in (("fe80::1%lo", True), ("fe80::1%4242", False),
                               ("fe80::1", True), ("fe80::2%lo", False)):  # fmt: skip
        matcher.set_local_addresses([address])
        matcher.program.test_run(knock)
        assert bool(matcher.completions()) is completes, address
