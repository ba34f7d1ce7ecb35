"""The kernel engine behind the daemon's matching interface (daemon/matching.py `Matching`).

The program of kernel/program.py goes on every capture socket of a link with an Ethernet
header, in place of the classic filter. It keeps the attempts in BPF maps and returns 0 for
every packet, so the rings stay empty; only a completed sequence reaches user space, through a
ring buffer. Firing, doors, stops, burning and the state file stay with the engine
(`Engine.complete`). Links without an Ethernet header (tun, WireGuard) keep the classic filter
and Python matching.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from typing import cast

from tportknockd.bpf import classic
from tportknockd.capture.knock_filter import classic_filter
from tportknockd.capture.listener import Listener
from tportknockd.capture.ring import RingGeometry
from tportknockd.kernel.matcher import (
    Capacity,
    KernelMatcher,
    KnockSequence,
    capacity_for,
    explain,
)
from tportknockd.matching.engine import Action, Engine, advanced_limit
from tportknockd.matching.sequences import LiveSequence, SequenceKey
from tportknockd.model import Frame, is_link_local

__all__ = ["KernelMatching", "explain", "load"]

log = logging.getLogger("tportknockd")


class KernelMatching:
    """The loaded matcher (kernel/matcher.py) and what the daemon asks of it."""

    def __init__(self, matcher: KernelMatcher, debug: bool = False) -> None:
        self.matcher = matcher
        self.debug = debug
        capacity = matcher.capacity
        self.description = (
            f"engine: kernel (eBPF socket filter, {matcher.instructions} instructions; "
            f"attempts in BPF maps: {capacity.fresh_slots} fresh, "
            f"{capacity.advanced_attempts} advanced, about "
            f"{capacity.map_bytes() / (1 << 20):.1f} MiB of kernel memory)"
        )

    def set_sequences(self, sequences: Sequence[LiveSequence]) -> None:
        """Map updates; attempts of the sequences that stay are kept. CapacityError (a
        ValueError) when they do not fit the loaded program, before anything changes."""
        self.matcher.set_sequences(_knock_sequences(sequences))

    def set_local_addresses(self, links: Iterable[Listener]) -> None:
        """One map for every socket the program is on: each destination that counts on some
        Ethernet link, a link-local one with the index of its own interface (`fe80::1%5`)."""
        wanted: set[str] = set()
        for link in links:
            if not link.raw_ip:
                wanted.update(
                    f"{a}%{link.index}" if is_link_local(a) else a for a in link.accepted
                )
        try:
            self.matcher.set_local_addresses(wanted)
        except ValueError as exc:
            log.error("kernel engine: %s; keeping its old addresses", exc)

    def program_for(
        self, accepted: Collection[str], raw_ip: bool, frames: Iterable[Frame]
    ) -> classic.Program:
        if raw_ip:  # the program reads an Ethernet header
            return classic_filter(frames, accepted, raw_ip, self.debug)
        return self.matcher.program

    def ring_for(self, raw_ip: bool) -> RingGeometry:
        # Where the program is attached, the ring waits only for the rare packets it passes.
        return RingGeometry() if raw_ip else RingGeometry.for_kernel_engine()

    def fds(self) -> tuple[int, ...]:
        return (self.matcher.fileno(),)

    def completions(self, engine: Engine, now: float) -> list[tuple[list[Action], int]]:
        done = []
        for completion in self.matcher.completions():
            # The ids are the LiveSequence keys set_sequences gave the matcher.
            key = cast(SequenceKey, completion.sequence)
            done.append((engine.complete(key, completion.source, now), completion.ifindex))
        return done

    def summary(self) -> str:
        stats = self.matcher.statistics()
        attempts = self.matcher.attempts(stats)
        return (
            f"kernel_seen={stats.packets} kernel_knocks={stats.knocks} "
            f"kernel_completed={stats.completed} kernel_lost={stats.ring_full} "
            f"kernel_passed={stats.passed} "
            f"kernel_attempts_fresh={attempts.fresh_held} "
            f"kernel_attempts_advanced={attempts.advanced_held} "
            f"kernel_evicted_fresh={attempts.fresh_evicted} "
            f"kernel_evicted_advanced={attempts.advanced_evicted}"
        )

    def close(self) -> None:
        self.matcher.close()


def load(
    sequences: Sequence[LiveSequence], max_attempts: int, debug: bool = False
) -> KernelMatching:
    """Load the program and its maps for `sequences`; the kernel's errors go through
    (`explain` turns them into a sentence)."""
    base = Capacity(fresh_attempts=max_attempts, advanced_attempts=advanced_limit(max_attempts))
    knock_sequences = _knock_sequences(sequences)
    # capacity_for leaves room for what a reload or the one-time windows may bring.
    matcher = KernelMatcher(capacity_for(knock_sequences, base))
    try:
        matcher.set_sequences(knock_sequences)
    except BaseException:
        matcher.close()
        raise
    if debug:
        # Only -d needs the disassembler: it stays out of the daemon's memory otherwise.
        from tportknockd.bpf.disassembler import disassemble_ebpf

        log.debug(
            "kernel engine program (%d instructions):\n%s",
            matcher.instructions,
            disassemble_ebpf(matcher.code),
        )
    return KernelMatching(matcher, debug)


def _knock_sequences(sequences: Sequence[LiveSequence]) -> list[KnockSequence]:
    return [KnockSequence(seq.key, seq.frames, seq.event.timeout) for seq in sequences]
