"""KernelMatcher's side in user space: the frame table it writes, the capacity it sizes, why it
cannot be used. (What the loaded program does with them is cross-checked against the Python
engine in test_kernel_engine.py.)"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tportknockd.bpf import syscalls
from tportknockd.kernel import program as kp
from tportknockd.kernel.matcher import (
    Capacity,
    CapacityError,
    KnockSequence,
    capacity_for,
    explain,
    frame_table,
)
from tportknockd.matching.engine import _frame_masks
from tportknockd.matching.sequences import static_sequences
from tportknockd.model import ACK, FIN, PROTO_TCP, PROTO_UDP, Config, Event, Frame


def tcp(port: int, flags: int | None = 0) -> Frame:
    return Frame(PROTO_TCP, port, flags)


def udp(port: int) -> Frame:
    return Frame(PROTO_UDP, port, None)


def event(name: str, *frames: Frame) -> Event:
    return Event(name, frames, 10.125, f"open {name}")


def hits_of(value: bytes) -> list[tuple[int, int, int, int]]:
    """(timeout ns, frame mask, number, length) of each hit of a frame table value."""
    (count,) = kp.FRAME_VALUE_HEAD.unpack_from(value)
    return [kp.HIT.unpack_from(value, kp.FRAME_VALUE_HEAD.size + kp.HIT.size * index)
            for index in range(count)]  # fmt: skip


def test_the_frame_table_holds_the_python_engines_masks() -> None:
    events = (
        event("a", udp(1234), tcp(543), tcp(543, None), tcp(123, FIN | ACK)),
        event("b", tcp(543), tcp(2711, None), tcp(123, None)),
        event("c", tcp(110, 0x3F), tcp(110), tcp(110, 0x3F)),
    )
    numbered = [(n + 1, KnockSequence(e.name, e.frames, e.timeout)) for n, e in enumerate(events)]
    table = frame_table(numbered, Capacity())
    masks = _frame_masks(static_sequences(Config("x", events)))
    assert len(table) == len(masks)
    for (protocol, port, flags), hits in masks.items():
        decoded = hits_of(table[kp.frame_key(protocol, port, flags)])
        assert [(number - 1, mask) for _, mask, number, _ in decoded] == list(hits)
        for timeout_ns, _, number, length in decoded:
            assert timeout_ns == 10_125_000_000
            assert length == len(events[number - 1].frames)


def test_capacity_grows_to_fit() -> None:
    crowd = [KnockSequence(i, (udp(1), udp(i + 2)), 10) for i in range(20)]
    grown = capacity_for(crowd)
    assert grown.max_hits == 32 and grown.frame_keys == Capacity().frame_keys
    wide = [KnockSequence("wide", tuple(tcp(p, None) for p in range(60)), 10)]
    assert capacity_for(wide).frame_keys == 2 * 60 * 256
    assert capacity_for([]) == Capacity()
    numbered = list(enumerate(crowd, 1))
    with pytest.raises(CapacityError):
        frame_table(numbered, Capacity())
    assert len(frame_table(numbered, grown)) == 21


def test_reasons_for_falling_back() -> None:
    assert "CAP_BPF" in explain(PermissionError(errno.EPERM, "Operation not permitted"))
    assert "5.11" in explain(syscalls.BpfError(errno.EINVAL, "Invalid argument"))
    refused = syscalls.VerifierError(errno.EACCES, "0: R1=ctx() R10=fp0\nthe whole log")
    assert explain(refused).endswith("0: R1=ctx() R10=fp0\nthe whole log")
    assert explain(CapacityError("17 sequences share a frame")) == "17 sequences share a frame"


def test_the_python_engine_path_does_not_import_ctypes() -> None:
    code = ("import sys, tportknockd.cli, tportknockd.kernel.matcher; "
            "print('ctypes' in sys.modules)")  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)  # fmt: skip
    assert out.stdout.strip() == "False"
