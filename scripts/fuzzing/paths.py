"""The two engines, each fed a frame and the time since the last one.

* PythonPath: what the daemon does with `--engine python`: the classic filter of filter.py
  (run by tests/bpfvm.py), packet.py's parser on the bytes it passes, the destination check,
  engine.Engine. Every frame also goes to the parsers unfiltered and in odd slices (the
  property there: None or a Packet, never an exception).
* KernelPath: the generated eBPF program, run by the kernel over the same bytes
  (BPF_PROG_TEST_RUN: nothing is sent), completions read from its ring buffer.

Both answer the completions a frame caused, as (sequence, source) in order, and how many
frames so far were well-formed knocks to us (the kernel's `knocks` counter).

Both are shared with the kernel engine's cross-check (tests/python_path.py,
tests/kernel_path.py).
"""

from __future__ import annotations

from kernel_path import KernelPath, QueuedSomething, TooShort, too_short_for_test_run
from python_path import Completions, PythonPath
from tportknockd.capture.packet import parse_ethernet, parse_ip

__all__ = [
    "Completions",
    "KernelPath",
    "PythonPath",
    "QueuedSomething",
    "TooShort",
    "probe_parsers",
    "too_short_for_test_run",
]


def probe_parsers(frame: bytes, offset: int, length: int) -> None:
    """The parsers on the whole frame and on slices of it: they may only answer."""
    parse_ethernet(frame)
    parse_ethernet(memoryview(frame), offset, length)
    parse_ethernet(bytearray(frame), 0, length)
    parse_ip(frame, offset, length)
    parse_ip(memoryview(frame), 14)


