"""The kernel program's side in user space: the layout of what its maps hold and of its ring
records, and the parameters generate() takes. (What the program does is cross-checked against
the Python engine in test_kernel_engine.py; its listing in test_disassembler.py.)"""

from __future__ import annotations

import socket
import sys

import pytest

from tportknockd.kernel import program as kp
from tportknockd.model import PROTO_TCP, PROTO_UDP, address_bytes

MAPS = kp.MapFds(frames=3, local=4, fresh=5, advanced=6, clock=7, ring=8, counters=9)


def test_keys_keep_families_apart() -> None:
    v4 = address_bytes("198.51.100.7")
    assert kp.attempt_key(1, v4) != kp.attempt_key(1, v4 + bytes(12))
    assert kp.decode_record(kp.attempt_key(5, v4) + kp.RECORD_TAIL.pack(3)) == (5, v4, 3)
    v6 = address_bytes("2001:db8::7")
    assert kp.decode_record(kp.attempt_key(7, v6)) == (7, v6, 0)


def test_local_keys_of_link_local_addresses_name_their_interface() -> None:
    link_local = socket.inet_pton(socket.AF_INET6, "fe80::1")
    assert kp.local_key("fe80::1") == kp.LOCAL_KEY.pack(link_local, 6, 0)  # every interface
    assert kp.local_key("fe80::1%7") == kp.LOCAL_KEY.pack(link_local, 6, 7)
    assert kp.local_key("fe80::1%lo") == kp.LOCAL_KEY.pack(link_local, 6, 1)
    assert kp.local_key("2001:db8::1%lo") == kp.local_key("2001:db8::1")  # not link-local
    with pytest.raises(ValueError, match="no interface 'nosuchdev'"):
        kp.local_key("fe80::1%nosuchdev")


def test_frame_keys_put_protocol_flags_and_port_in_one_word() -> None:
    (key,) = kp.FRAME_KEY.unpack(kp.frame_key(PROTO_TCP, 7000, 0x02))
    assert key == 6 << 24 | 0x02 << 16 | 7000
    assert kp.frame_key(PROTO_UDP, 7000, 0) != kp.frame_key(PROTO_TCP, 7000, 0)


def test_frame_values_are_padded_to_the_most_hits() -> None:
    hits = [(10**9, 0b101, 1, 3), (2 * 10**9, 0b1, 2, 1)]
    value = kp.frame_value(hits, max_hits=4)
    assert len(value) == kp.frame_value_size(4)
    assert kp.FRAME_VALUE_HEAD.unpack_from(value) == (2,)
    assert kp.HIT.unpack_from(value, kp.FRAME_VALUE_HEAD.size + kp.HIT.size) == hits[1]
    assert value.endswith(bytes(2 * kp.HIT.size))
    with pytest.raises(ValueError, match="3 sequences share a frame"):
        kp.frame_value(hits + hits[:1], max_hits=2)


@pytest.mark.parametrize("buckets", [0, 1, 3, 1000])
def test_the_fresh_table_needs_a_power_of_two_buckets(buckets: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        kp.generate(MAPS, 1, buckets, seed=0)


def test_the_program_grows_with_the_hits_and_the_seed_is_in_it() -> None:
    one, two = (kp.generate(MAPS, hits, 1024, seed=0x0123456789ABCDEF) for hits in (1, 2))
    assert len(two) > len(one)
    assert (0x89ABCDEF).to_bytes(4, sys.byteorder) in one  # the seed's low word (ld_imm64)
    assert kp.generate(MAPS, 1, 1024, seed=0x0123456789ABCDEF) == one  # deterministic
    assert kp.generate(MAPS, 1, 1024, seed=1) != one
