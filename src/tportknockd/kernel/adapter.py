"""Matching in the kernel, for the daemon: choosing the engine, keeping the eBPF matcher in step
with the live sequences and the listened addresses, and turning its completions into the
engine's actions.

With the kernel engine, the program of kernel_program.py is attached to every capture socket
of a link with an Ethernet header, in place of the classic filter. It keeps the attempts in
BPF maps and returns 0 for every packet, so the rings stay empty; only a completed sequence
reaches user space, through a ring buffer. Firing, doors, stops, burning and the state file
stay with the Python engine (`Engine.complete`). Links without an Ethernet header (tun,
WireGuard) keep the classic filter and Python matching.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

from tportknockd.bpf import syscalls
from tportknockd.kernel.matcher import Capacity, KernelMatcher, KnockSequence, capacity_for, explain
from tportknockd.matching.engine import Action, Engine, advanced_limit
from tportknockd.matching.sequences import LiveSequence, SequenceKey


class KernelEngineError(Exception):
    """`--engine kernel` was asked for and the kernel engine cannot run: one line for people."""


@dataclass
class KernelMatching:
    """The loaded matcher (kernel_engine.KernelMatcher) and what the daemon asks of it."""

    matcher: KernelMatcher

    @property
    def program(self) -> syscalls.Program:
        """What to attach to a capture socket (`.attach(sock)`)."""
        return self.matcher.program

    def fileno(self) -> int:
        return self.matcher.fileno()

    def set_sequences(self, sequences: Sequence[LiveSequence]) -> None:
        """Match these sequences from now on (map updates; attempts of those that stay are
        kept). CapacityError (a ValueError) when they do not fit the loaded program."""
        self.matcher.set_sequences(
            [KnockSequence(seq.key, seq.frames, seq.event.timeout) for seq in sequences]
        )

    def set_local_addresses(self, addresses: Iterable[str]) -> None:
        self.matcher.set_local_addresses(addresses)

    def completed(self, engine: Engine, now: float) -> list[tuple[list[Action], int]]:
        """What the completions waiting in the ring buffer make the engine do, each with the
        index of the interface the completing frame came in on."""
        done = []
        for completion in self.matcher.completions():
            # The ids are the LiveSequence keys set_sequences gave the matcher.
            key = cast(SequenceKey, completion.sequence)
            done.append((engine.complete(key, completion.source, now), completion.ifindex))
        return done

    def summary(self) -> str:
        """`name=value` pairs for the statistics line."""
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


def choose(
    mode: str, sequences: Sequence[LiveSequence], max_attempts: int
) -> tuple[KernelMatching | None, str]:
    """The kernel engine when `mode` asks for it and the kernel allows it (None: Python),
    and the line that says which engine runs and, after a fall-back, why.

    `auto` falls back to Python; `kernel` raises KernelEngineError instead.
    """
    if mode == "python":
        return None, "engine: python (as asked)"
    try:
        matching = _load(sequences, max_attempts)
    except Exception as exc:  # every reason the kernel gives is reported, none is fatal here
        reason = explain(exc)
        if mode == "kernel":
            raise KernelEngineError(f"the kernel engine cannot run: {reason}") from None
        return None, f"engine: python (the kernel engine cannot run: {reason})"
    matcher = matching.matcher
    capacity = matcher.capacity
    line = (
        f"engine: kernel (eBPF socket filter, {matcher.instructions} instructions; attempts "
        f"in BPF maps: {capacity.fresh_slots} fresh, {capacity.advanced_attempts} "
        f"advanced, about {capacity.map_bytes() / (1 << 20):.1f} MiB of kernel memory)"
    )
    return matching, line


def _load(sequences: Sequence[LiveSequence], max_attempts: int) -> KernelMatching:
    base = Capacity(
        fresh_attempts=max_attempts,
        advanced_attempts=advanced_limit(max_attempts),
    )
    knock_sequences = [KnockSequence(s.key, s.frames, s.event.timeout) for s in sequences]
    # capacity_for leaves room for what a reload or the one-time windows may bring.
    matcher = KernelMatcher(capacity_for(knock_sequences, base))
    matching = KernelMatching(matcher)
    try:
        matching.set_sequences(sequences)
    except BaseException:
        matcher.close()
        raise
    return matching
