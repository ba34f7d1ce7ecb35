"""One listened interface: reading its ring into the engine, and what it notices."""

from __future__ import annotations

import select

import pytest

from test_ring import PACKET_HOST, fill_block, ring_capture, udp_frame
from tportknockd.capture import netif
from tportknockd.capture.listener import EMPTY_WAKEUPS_BEFORE_CHECK, Listener
from tportknockd.capture.statistics import Counters
from tportknockd.matching.engine import Action, RunStart
from tportknockd.model import Packet, address_text

MALFORMED = bytes(12) + b"\x08\x00" + b"\x45"  # IPv4 cut short after one byte


class Recorder:
    """The engine's feed and the doorkeeper's perform, recording what they get."""

    def __init__(self, fire_on_port: int | None = None) -> None:
        self.fed: list[tuple[str, int]] = []
        self.performed: list[tuple[list[Action], str]] = []
        self.fire_on_port = fire_on_port

    def feed(self, packet: Packet, now: float) -> list[Action]:
        self.fed.append((address_text(packet.src), packet.port))
        if packet.port == self.fire_on_port:
            return [RunStart("ssh", address_text(packet.src), "open")]
        return []

    def perform(self, actions: list[Action], via: str) -> None:
        self.performed.append((actions, via))


def listener_on_a_ring() -> tuple[Listener, bytearray]:
    listener = Listener("knk0", Counters())
    capture, ring = ring_capture()
    listener.capture = capture
    listener.set_addresses({"198.51.100.1"}, {"198.51.100.1"})
    return listener, ring


def test_feeds_packets_to_its_addresses_and_counts_the_rest() -> None:
    listener, ring = listener_on_a_ring()
    fill_block(ring, 0, 1, [
        (udp_frame("198.18.0.1", 7000), PACKET_HOST),
        (MALFORMED, PACKET_HOST),
        (udp_frame("198.18.0.2", 7001), PACKET_HOST),
    ])
    fill_block(ring, 1, 2, [(udp_frame("198.18.0.3", 7002), PACKET_HOST)])
    recorder = Recorder()
    assert listener.read(recorder.feed, recorder.perform) == 4
    assert recorder.fed == [("198.18.0.1", 7000), ("198.18.0.2", 7001), ("198.18.0.3", 7002)]
    # The address moved away: a packet still addressed to it is no longer ours.
    listener.set_addresses({"198.51.100.9"}, {"198.51.100.9"})
    fill_block(ring, 2, 3, [(udp_frame("198.18.0.4", 7003), PACKET_HOST)])
    assert listener.read(recorder.feed, recorder.perform) == 1
    assert len(recorder.fed) == 3
    c = listener.counters
    assert (c.packets, c.malformed, c.not_local) == (3, 1, 1)


def test_actions_go_to_the_doorkeeper_with_the_interface_name() -> None:
    listener, ring = listener_on_a_ring()
    fill_block(ring, 0, 1, [(udp_frame("198.18.0.1", 7000), PACKET_HOST),
                            (udp_frame("198.18.0.1", 7001), PACKET_HOST)])
    recorder = Recorder(fire_on_port=7001)
    listener.read(recorder.feed, recorder.perform)
    assert recorder.performed == [([RunStart("ssh", "198.18.0.1", "open")], "knk0")]


def test_a_socket_readable_with_nothing_in_it_asks_for_a_check() -> None:
    listener, _ = listener_on_a_ring()
    recorder = Recorder()
    answers = [listener.on_ready(select.POLLIN, recorder.feed, recorder.perform)
               for _ in range(EMPTY_WAKEUPS_BEFORE_CHECK)]
    assert answers == [False] * (EMPTY_WAKEUPS_BEFORE_CHECK - 1) + [True]


def test_packets_in_between_reset_the_empty_wakeup_count() -> None:
    listener, ring = listener_on_a_ring()
    recorder = Recorder()
    for _ in range(EMPTY_WAKEUPS_BEFORE_CHECK - 1):
        listener.on_ready(select.POLLIN, recorder.feed, recorder.perform)
    fill_block(ring, 0, 1, [(udp_frame("198.18.0.1", 7000), PACKET_HOST)])
    assert not listener.on_ready(select.POLLIN, recorder.feed, recorder.perform)
    assert not listener.on_ready(select.POLLIN, recorder.feed, recorder.perform)


def test_down_and_up_are_noted_once_each(caplog: pytest.LogCaptureFixture) -> None:
    listener, _ = listener_on_a_ring()
    down = netif.Interface("knk0", 5, False, "down")
    listener.follow_state(down)
    listener.follow_state(down)
    listener.follow_state(netif.Interface("knk0", 5, True, "up"))
    assert [r.getMessage() for r in caplog.records] == [
        "interface knk0 is down", "interface knk0 is up again"
    ]
    assert listener.up
