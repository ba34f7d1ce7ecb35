"""The kernel engine's table of fresh attempts, against a literal model of it.

kernel/program.py keeps attempts with one frame matched in buckets of FRESH_WAYS slots, the
bucket chosen by a seeded hash; a new attempt takes the bucket's first free slot, or else the
slot of its oldest attempt. The model below says exactly that, in Python, and the table read
back from the kernel after every packet must hold the same attempts in the same slots.
(The rules themselves are cross-checked against the Python engine in test_kernel_engine.py.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import hypothesis
import hypothesis.strategies as st

import frames_raw as fr
from privileges import BPF, require_root
from test_kernel_engine import LOCAL, SERVER_V4
from tportknockd.kernel import program as kp
from tportknockd.kernel.matcher import Capacity, KernelMatcher, KnockSequence
from tportknockd.model import PROTO_UDP, Frame, address_bytes

SEED = 0x5EED_0F_7AB1E
#: Two buckets of eight: forty sources crowd them, so slots are taken and reused all the time.
TINY = Capacity(fresh_attempts=16, advanced_attempts=64)
SOURCES = [f"198.51.100.{n}" for n in range(10, 50)]
KNOCK = (Frame(PROTO_UDP, 1001, None), Frame(PROTO_UDP, 1002, None), Frame(PROTO_UDP, 1003, None))
MASK64 = (1 << 64) - 1


def bucket_of(key: bytes, buckets: int, seed: int = SEED) -> int:
    """The program's hash (kernel_program._hash_source and _fresh_bucket), written again."""
    first, low, high = struct.unpack("=QQQ", key)
    h = seed
    for word in (low, high, first):
        h = ((h ^ word) * kp.HASH_MULTIPLIER) & MASK64
    return h >> (64 - (buckets.bit_length() - 1))


@dataclass
class TableModel:
    """Slots by bucket (a key or None), and the advanced attempts (key -> frames matched)."""

    buckets: int
    slots: list[list[bytes | None]] = field(default_factory=list)
    ages: dict[bytes, int] = field(default_factory=dict)  # key -> when it went in (a count)
    advanced: dict[bytes, int] = field(default_factory=dict)
    clock: int = 0

    def __post_init__(self) -> None:
        self.slots = [[None] * kp.FRESH_WAYS for _ in range(self.buckets)]

    def frame(self, key: bytes, index: int) -> None:
        """Frame `index` (0, 1, 2) of KNOCK from the key's source."""
        self.clock += 1
        bucket = self.slots[bucket_of(key, self.buckets)]
        if key in bucket:  # checked out first, put back only for a retransmission
            bucket[bucket.index(key)] = None
            if index == 0:
                self._put(bucket, key, self.ages.pop(key))
            elif index == 1:
                self.advanced[key] = 2
            return
        if key in self.advanced:
            if index == 0:  # breaks the attempt, and starts a new one
                del self.advanced[key]
            else:  # frame 1 again: a retransmission; frame 2 completes
                if index == 2:
                    del self.advanced[key]
                return
        if index == 0:
            self._put(bucket, key, self.clock)

    def _put(self, bucket: list[bytes | None], key: bytes, age: int) -> None:
        if None in bucket:
            way = bucket.index(None)
        else:  # the oldest; on a tie the first (the program keeps the first minimum)
            way = min(range(len(bucket)), key=lambda w: self.ages[bucket[w]])  # type: ignore[index]
            del self.ages[bucket[way]]  # type: ignore[arg-type]
        bucket[way] = key
        self.ages[key] = age


def table_in_kernel(matcher: KernelMatcher) -> list[list[bytes | None]]:
    out = []
    for bucket in range(matcher.capacity.fresh_buckets):
        value = matcher.fresh.lookup(struct.pack("=I", bucket)) or b""
        ways = []
        for way in range(kp.FRESH_WAYS):
            _, key = kp.FRESH_SLOT.unpack_from(value, way * kp.FRESH_SLOT.size)
            ways.append(key if key[:8] != bytes(8) else None)
        out.append(ways)
    return out


def advanced_in_kernel(matcher: KernelMatcher) -> dict[bytes, int]:
    out = {}
    for key in matcher.advanced.walk_keys():
        value = matcher.advanced.lookup(key)
        if value is not None:
            out[key] = kp.ATTEMPT_VALUE.unpack(value)[1]
    return out


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    st.lists(st.tuples(st.sampled_from(SOURCES), st.sampled_from([0, 0, 0, 1, 1, 2])),
             min_size=1, max_size=120)
)  # fmt: skip
def test_the_table_holds_what_the_model_says(packets: list[tuple[str, int]]) -> None:
    require_root(BPF)
    with KernelMatcher(TINY, seed=SEED) as matcher:
        matcher.set_local_addresses(LOCAL)
        matcher.set_sequences([KnockSequence("knock", KNOCK, 1e6)])
        model = TableModel(TINY.fresh_buckets)
        for source, index in packets:
            # One second a packet: starts strictly in order, as the model's ages are.
            matcher.advance_clock(1.0)
            frame = fr.knock(source, SERVER_V4, fr.UDP, KNOCK[index].port)
            assert matcher.program.test_run(frame).retval == 0
            model.frame(kp.attempt_key(1, address_bytes(source)), index)
            assert table_in_kernel(matcher) == model.slots
            assert advanced_in_kernel(matcher) == model.advanced
        held = sum(key is not None for bucket in model.slots for key in bucket)
        assert matcher.attempts_held() == (held, len(model.advanced))


def test_the_hash_spreads_a_flood_over_every_bucket() -> None:
    """4,096 consecutive spoofed sources over 64 buckets: none empty, none with more than
    three times its share."""
    buckets = 64
    counts = [0] * buckets
    for n in range(4096):
        source = bytes([198, 18, n >> 8, n & 0xFF])
        counts[bucket_of(kp.attempt_key(1, source), buckets)] += 1
    assert min(counts) > 0 and max(counts) < 3 * 4096 // buckets
