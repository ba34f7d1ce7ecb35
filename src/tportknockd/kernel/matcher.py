"""The kernel engine: the matcher of kernel_program.py loaded, and its maps kept up to date.

User space tells it which sequences to match (`set_sequences`) and which addresses are ours
(`set_local_addresses`); both are map updates, so the program is loaded once. Completed
sequences come back through a ring buffer (`fileno()` polls readable; `completions()` reads
them). Firing, doors, stop commands and the state file stay with the caller.

Each sequence gets a number, the key of its attempts in the kernel. A sequence handed over
again with the same id, frames and timeout keeps its number, so attempts in progress survive a
reload exactly when engine.Engine.reload keeps them. Numbers are never reused: attempts of a
retired sequence can match nothing and are evicted in time.

Requires CAP_BPF (or root) and Linux 5.11+ (BPF ring buffers, the coarse clock); `explain`
turns the errors of a failed start into a sentence for the log.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import struct
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from tportknockd.bpf import syscalls
from tportknockd.kernel import program as kp
from tportknockd.model import Frame


class CapacityError(ValueError):
    """The sequences do not fit the loaded program or its maps."""


@dataclass(frozen=True)
class KnockSequence:
    """A sequence to match: completions report `id` (an event name, or an event and window)."""

    id: Hashable
    frames: tuple[Frame, ...]
    timeout: float


class Attempts(NamedTuple):
    fresh_held: int
    advanced_held: int
    fresh_evicted: int
    advanced_evicted: int


class Completion(NamedTuple):
    sequence: Hashable  # the KnockSequence.id
    source: bytes  # packed address, 4 or 16 bytes
    ifindex: int = 0  # the interface the completing frame came in on


@dataclass(frozen=True)
class Capacity:
    """Sizes fixed when the program is loaded."""

    max_hits: int = 16  # sequences that may share one (protocol, port, flag byte)
    frame_keys: int = 16384  # (protocol, port, flag byte) entries; an `i` frame takes 256
    fresh_attempts: int = 65536  # attempts with one frame matched (what a flood fills): at
    # least this many slots, in buckets of kp.FRESH_WAYS, a power of two of them
    advanced_attempts: int = 8192  # attempts with two or more frames matched
    local_addresses: int = 1024
    ring_bytes: int = 1 << 18  # completions waiting for user space, 32 bytes each + 8

    @property
    def fresh_buckets(self) -> int:
        wanted = max(2, -(-self.fresh_attempts // kp.FRESH_WAYS))
        return 1 << (wanted - 1).bit_length()

    @property
    def fresh_slots(self) -> int:
        """The fresh attempts the table holds: fresh_attempts rounded up."""
        return self.fresh_buckets * kp.FRESH_WAYS

    def map_bytes(self) -> int:
        """A rough figure for the kernel memory the maps take (the fresh table and the LRU
        map are preallocated; the frame and address tables grow as entries are added)."""
        per_advanced = kp.ATTEMPT_KEY.size + kp.ATTEMPT_VALUE.size + 64  # + hash/LRU node
        fresh = self.fresh_buckets * kp.FRESH_BUCKET_SIZE
        return fresh + self.advanced_attempts * per_advanced + self.ring_bytes


@dataclass(frozen=True)
class KernelStats:
    packets: int  # packets the program saw
    knocks: int  # of which matched a frame and were addressed to us
    started: int
    promoted: int
    advanced: int
    retransmissions: int
    broken: int
    expired: int
    completed: int
    ring_full: int  # completions lost: the ring was full
    fresh_deleted: int
    advanced_deleted: int
    passed: int  # handed to user space whole (headers not in the linear part)
    fresh_evicted: int  # fresh attempts whose slot a new one took


def frame_table(
    numbered: Sequence[tuple[int, KnockSequence]], capacity: Capacity
) -> dict[bytes, bytes]:
    """The frame table for sequences with their numbers: key -> value bytes, as the program
    reads them. Like engine._frame_masks, a frame with any flags (`i`) is expanded into all
    256 flag values, so that a packet needs one lookup."""
    hits = _hits_by_key(numbered)
    if len(hits) > capacity.frame_keys:
        raise CapacityError(
            f"the sequences need {len(hits)} frame table entries; the map holds "
            f"{capacity.frame_keys}"
        )
    table = {}
    for key, entry in hits.items():
        if len(entry) > capacity.max_hits:
            raise CapacityError(
                f"{len(entry)} sequences share a frame; the program handles {capacity.max_hits}"
            )
        table[kp.FRAME_KEY.pack(key)] = kp.frame_value(entry, capacity.max_hits)
    return table


def capacity_for(sequences: Sequence[KnockSequence], base: Capacity | None = None) -> Capacity:
    """`base` (default: Capacity()), grown where these sequences need more, with room to
    spare (twice as many frame entries; hits rounded up to a power of two)."""
    base = base or Capacity()
    hits = _hits_by_key(list(enumerate(sequences)))
    most = max((len(entry) for entry in hits.values()), default=0)
    max_hits = max(base.max_hits, 1 << (most - 1).bit_length() if most else 1)
    frame_keys = max(base.frame_keys, 2 * len(hits))
    return dataclasses.replace(base, max_hits=max_hits, frame_keys=frame_keys)


def _hits_by_key(
    numbered: Sequence[tuple[int, KnockSequence]],
) -> dict[int, list[tuple[int, int, int, int]]]:
    """Frame key -> (timeout ns, frame mask, number, length) of each sequence that has it."""
    hits: dict[int, list[tuple[int, int, int, int]]] = {}
    for number, sequence in numbered:
        if len(sequence.frames) > kp.MAX_FRAMES:
            raise CapacityError(
                f"{sequence.id}: {len(sequence.frames)} frames; the kernel engine matches "
                f"sequences of up to {kp.MAX_FRAMES}"
            )
        timeout_ns = round(sequence.timeout * 1e9)
        masks: dict[int, int] = {}
        for index, frame in enumerate(sequence.frames):
            for key in _frame_keys(frame):
                masks[key] = masks.get(key, 0) | 1 << index
        for key, mask in masks.items():
            hits.setdefault(key, []).append((timeout_ns, mask, number, len(sequence.frames)))
    return hits


def _frame_keys(frame: Frame) -> Iterable[int]:
    return (frame.protocol << 24 | flags << 16 | frame.port for flags in frame.flag_bytes())


class KernelMatcher:
    """The loaded program and its maps. Close it to free them (a socket the program is
    attached to keeps the program and its maps alive until the socket closes)."""

    def __init__(self, capacity: Capacity | None = None, seed: int | None = None) -> None:
        """`seed` keys the fresh table's hash; the default, drawn from os.urandom, is what
        keeps a flood from aiming at one address's bucket (tests give their own)."""
        self.capacity = capacity or Capacity()
        self._opened: list[syscalls.Map | syscalls.RingBuffer | syscalls.Program] = []
        try:
            self._create_maps()
            fds = kp.MapFds(
                frames=self.frames.fd,
                local=self.local.fd,
                fresh=self.fresh.fd,
                advanced=self.advanced.fd,
                clock=self.clock.fd,
                ring=self.ring.fileno(),
                counters=self.counters.fd,
            )
            if seed is None:
                seed = int.from_bytes(os.urandom(8), "little")
            code = kp.generate(fds, self.capacity.max_hits, self.capacity.fresh_buckets, seed)
            program = syscalls.Program.load(
                syscalls.BPF_PROG_TYPE_SOCKET_FILTER, code, name="tportknockd"
            )
            self._opened.append(program)
            self.program = program
        except BaseException:
            self.close()
            raise
        self.code: bytes = code  # what was loaded, for a listing (-d)
        self.instructions = len(code) // 8
        self._numbers: dict[tuple[Hashable, tuple[Frame, ...], float], int] = {}
        self._ids: dict[int, Hashable] = {}
        self._retired: dict[int, Hashable] = {}  # dropped by the last set_sequences
        self._next_number = 1
        self._table: dict[bytes, bytes] = {}
        self._local: set[bytes] = set()
        self._cpus = syscalls.possible_cpus()

    def _create_maps(self) -> None:
        cap, create = self.capacity, syscalls.Map.create
        attempt = (kp.ATTEMPT_KEY.size, kp.ATTEMPT_VALUE.size)
        self.frames = self._map(
            create(
                syscalls.BPF_MAP_TYPE_HASH,
                kp.FRAME_KEY.size,
                kp.frame_value_size(cap.max_hits),
                cap.frame_keys,
                syscalls.BPF_F_NO_PREALLOC,
                "knock_frames",
            )
        )
        self.local = self._map(
            create(
                syscalls.BPF_MAP_TYPE_HASH,
                kp.LOCAL_KEY.size,
                kp.LOCAL_VALUE.size,
                cap.local_addresses,
                syscalls.BPF_F_NO_PREALLOC,
                "knock_local",
            )
        )
        array = syscalls.BPF_MAP_TYPE_ARRAY
        self.fresh = self._map(
            create(array, 4, kp.FRESH_BUCKET_SIZE, cap.fresh_buckets, name="knock_fresh")
        )
        self.advanced = self._map(
            create(
                syscalls.BPF_MAP_TYPE_LRU_HASH, *attempt, cap.advanced_attempts,
                name="knock_advanced",
            )  # fmt: skip
        )
        self.clock = self._map(create(array, 4, kp.CLOCK_VALUE.size, 1, name="knock_clock"))
        per_cpu = syscalls.BPF_MAP_TYPE_PERCPU_ARRAY
        self.counters = self._map(
            create(per_cpu, 4, kp.COUNTERS_VALUE.size, 1, name="knock_stats")
        )
        ring = syscalls.RingBuffer.create(cap.ring_bytes, "knock_done")
        self._opened.append(ring)
        self.ring = ring

    def _map(self, created: syscalls.Map) -> syscalls.Map:
        self._opened.append(created)
        return created

    # -- what to match ---------------------------------------------------------------------

    def set_sequences(self, sequences: Sequence[KnockSequence]) -> None:
        """Match exactly these sequences from now on (in this order, as Engine does events).

        Raises CapacityError, changing nothing, when they do not fit the program's maps, and
        ValueError when a sequence is given twice (it would be matched twice per packet)."""
        identities = [(s.id, s.frames, s.timeout) for s in sequences]
        if len(set(identities)) != len(identities):
            raise ValueError("a sequence is given twice")
        numbered = [(self._number_of(sequence), sequence) for sequence in sequences]
        table = frame_table(numbered, self.capacity)
        for key, value in table.items():
            if self._table.get(key) != value:
                self.frames.update(key, value)
        for key in self._table.keys() - table.keys():
            self.frames.delete(key)
        self._table = table
        live = {number for number, _ in numbered}
        self._retired = {n: i for n, i in self._ids.items() if n not in live}
        self._ids = {number: self._ids[number] for number in live}
        self._numbers = {k: n for k, n in self._numbers.items() if n in live}

    def _number_of(self, sequence: KnockSequence) -> int:
        identity = (sequence.id, sequence.frames, sequence.timeout)
        number = self._numbers.get(identity)
        if number is None:
            number = self._next_number
            self._next_number += 1
            self._numbers[identity] = number
        self._ids[number] = sequence.id
        return number

    def set_local_addresses(self, addresses: Iterable[str]) -> None:
        """Only packets to these addresses count (as the classic filter of filter.py)."""
        wanted = {kp.local_key(text) for text in addresses}
        if len(wanted) > self.capacity.local_addresses:
            raise CapacityError(
                f"{len(wanted)} local addresses; the map holds {self.capacity.local_addresses}"
            )
        for key in wanted - self._local:
            self.local.update(key, kp.LOCAL_VALUE.pack(1))
        for key in self._local - wanted:
            self.local.delete(key)
        self._local = wanted

    # -- what comes back -------------------------------------------------------------------

    def fileno(self) -> int:
        """Readable (poll) when completions are waiting."""
        return self.ring.fileno()

    def completions(self) -> list[Completion]:
        """Completed sequences since the last call, in the order the kernel saw them.

        A sequence dropped by the last set_sequences still counts: its knock may have
        completed just before the switch. Older ones are left out."""
        out = []
        for record in self.ring.records():
            number, source, ifindex = kp.decode_record(record)
            sequence = self._ids.get(number, self._retired.get(number))
            if sequence is not None:
                out.append(Completion(sequence, source, ifindex))
        return out

    def statistics(self) -> KernelStats:
        """Counters since the program was loaded, summed over CPUs."""
        stride = (kp.COUNTERS_VALUE.size + 7) & ~7
        raw = self.counters.lookup(struct.pack("=I", 0), stride * self._cpus)
        totals = [0] * len(kp.Counter)
        if raw is not None:
            for cpu in range(self._cpus):
                for slot, value in enumerate(kp.COUNTERS_VALUE.unpack_from(raw, cpu * stride)):
                    totals[slot] += value
        return KernelStats(*totals)

    def attempts(self, stats: KernelStats | None = None) -> Attempts:
        """Attempts held and evicted, from one reading of the counters (`stats`, if the
        caller has one) and one count of the advanced map.

        Held: expired ones included (they leave when looked up again or evicted). Fresh ones
        by the counters: what went in, less what the rules took out or promoted, less what
        was evicted (reading the table would cost a copy of it). Evicted: the program counts
        the fresh ones; the LRU map's are what went in, less what the rules took out, less
        what is held (this holds as long as nothing else deletes attempts)."""
        stats = stats or self.statistics()
        advanced_held = self.advanced.count()
        fresh_held = stats.started - stats.promoted - stats.fresh_deleted - stats.fresh_evicted
        return Attempts(
            fresh_held=max(0, fresh_held),
            advanced_held=advanced_held,
            fresh_evicted=stats.fresh_evicted,
            advanced_evicted=stats.promoted - stats.advanced_deleted - advanced_held,
        )

    def attempts_held(self) -> tuple[int, int]:
        """(fresh, advanced) attempts held (see `attempts`)."""
        figures = self.attempts()
        return figures.fresh_held, figures.advanced_held

    def evictions(self) -> tuple[int, int]:
        """(fresh, advanced) attempts evicted to make room (see `attempts`)."""
        figures = self.attempts()
        return figures.fresh_evicted, figures.advanced_evicted

    # -- for tests: the kernel's clock cannot be set, its attempts not otherwise reset --------

    def advance_clock(self, seconds: float) -> None:
        """As if `seconds` had passed, for the program: its clock runs that much ahead."""
        key = struct.pack("=I", 0)
        (offset,) = kp.CLOCK_VALUE.unpack(self.clock.lookup(key) or bytes(kp.CLOCK_VALUE.size))
        self.clock.update(key, kp.CLOCK_VALUE.pack(offset + round(seconds * 1e9)))

    def forget_attempts(self) -> None:
        """Drop every attempt (the counters stay as they are)."""
        empty = bytes(kp.FRESH_BUCKET_SIZE)
        for bucket in range(self.capacity.fresh_buckets):
            self.fresh.update(struct.pack("=I", bucket), empty)
        for key in list(self.advanced.walk_keys()):
            self.advanced.delete(key)

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> KernelMatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for thing in reversed(self._opened):
            thing.close()
        self._opened.clear()


def explain(error: BaseException) -> str:
    """Why the kernel engine cannot run, in a sentence (for `--engine auto`'s log line)."""
    if isinstance(error, syscalls.VerifierError):
        return f"the kernel's verifier refused the program:\n{error.log}"
    if isinstance(error, CapacityError):
        return str(error)
    if isinstance(error, OSError):
        if error.errno == errno.EPERM:
            return (
                "not allowed to use bpf() (needs CAP_BPF, or root; "
                "see also kernel.unprivileged_bpf_disabled)"
            )
        if error.errno == errno.ENOSYS:
            return f"no bpf() system call: {error.strerror}"
        if error.errno == errno.EINVAL:
            return "the kernel lacks a feature the program needs (Linux 5.11+)"
        return f"bpf() failed: {error.strerror}"
    return str(error)
