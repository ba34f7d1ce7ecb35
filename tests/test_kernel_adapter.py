"""The kernel engine behind the matching interface: its answers to the daemon, without bpf()
(the program itself is tested in test_kernel_engine.py and cross-checked in the fuzz)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Hashable

import pytest

from privileges import BPF, require_root
from tportknockd.capture.ring import RingGeometry
from tportknockd.kernel.adapter import KernelMatching, load
from tportknockd.kernel.matcher import Attempts, Capacity, Completion, KernelStats, KnockSequence
from tportknockd.matching.engine import Engine
from tportknockd.matching.outcomes import RunStart
from tportknockd.matching.sequences import static_sequences
from tportknockd.model import PROTO_UDP, Config, Event, Frame, address_bytes

FRAMES = (Frame(PROTO_UDP, 7000, None), Frame(PROTO_UDP, 8000, None))
EVENT = Event("ssh", FRAMES, 10.0, "open %IP%")


class FakeMatcher:
    program = [(0x06, 0, 0, 0)]
    instructions = 3500
    capacity = Capacity()

    def __init__(self) -> None:
        self.sequences: list[KnockSequence] = []
        self.waiting: list[Completion] = []

    def set_sequences(self, sequences: list[KnockSequence]) -> None:
        self.sequences = sequences

    def completions(self) -> list[Completion]:
        waiting, self.waiting = self.waiting, []
        return waiting

    def fileno(self) -> int:
        return 42

    def statistics(self) -> KernelStats:
        zero = dict.fromkeys(f.name for f in dataclasses.fields(KernelStats))
        counts: dict[str, int] = {name: 0 for name in zero}
        counts.update(packets=10, knocks=4, completed=1)
        return KernelStats(**counts)

    def attempts(self, stats: KernelStats) -> Attempts:
        return Attempts(2, 1, 0, 0)


def kernel_matching() -> tuple[KernelMatching, FakeMatcher]:
    matcher = FakeMatcher()
    return KernelMatching(matcher), matcher  # type: ignore[arg-type]


def test_says_what_it_loaded() -> None:
    matching, _ = kernel_matching()
    assert matching.description.startswith("engine: kernel (eBPF socket filter, 3500 instr")
    assert f"{Capacity().fresh_slots} fresh" in matching.description


def test_its_program_on_ethernet_links_the_classic_filter_elsewhere() -> None:
    matching, matcher = kernel_matching()
    assert matching.program_for({"198.51.100.1"}, False, FRAMES) is matcher.program
    classic = matching.program_for({"198.51.100.1"}, True, FRAMES)
    assert isinstance(classic, list) and len(classic) > 1 and classic != matcher.program
    assert matching.ring_for(False) == RingGeometry.for_kernel_engine()
    assert matching.ring_for(True) == RingGeometry()
    assert matching.fds() == (42,)


def test_completions_become_the_engines_actions() -> None:
    engine = Engine(Config("t.conf", (EVENT,)))
    engine.set_sequences(engine.sequences)
    matching, matcher = kernel_matching()
    matching.set_sequences(engine.sequences)
    key: Hashable = matcher.sequences[0].id
    matcher.waiting = [Completion(key, address_bytes("198.51.100.7"), 5)]
    [(actions, ifindex)] = matching.completions(engine, 100.0)
    assert ifindex == 5
    assert RunStart("ssh", "198.51.100.7", "open %IP%") in actions


def test_statistics_line() -> None:
    matching, _ = kernel_matching()
    assert matching.summary().startswith(
        "kernel_seen=10 kernel_knocks=4 kernel_completed=1 kernel_lost=0 kernel_passed=0 "
        "kernel_attempts_fresh=2"
    )


def test_debug_logs_the_loaded_programs_listing(caplog: pytest.LogCaptureFixture) -> None:
    """-d shows the eBPF program as it shows the classic filter: one line per instruction."""
    require_root(BPF)
    caplog.set_level("DEBUG")
    matching = load(static_sequences(Config("t.conf", (EVENT,))), 1000, debug=True)
    try:
        [record] = [r for r in caplog.records if "kernel engine program" in r.getMessage()]
        head, *listing = record.getMessage().splitlines()
        instructions = matching.matcher.instructions
        assert head == f"kernel engine program ({instructions} instructions):"
        assert listing[-1].endswith("exit")
        slots = [int(line[1:5]) for line in listing]  # a 64-bit load takes two
        assert slots[0] == 0 and slots[-1] == instructions - 1
        assert {after - before for before, after in itertools.pairwise(slots)} == {1, 2}
    finally:
        matching.close()
