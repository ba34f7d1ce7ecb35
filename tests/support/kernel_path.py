"""The kernel engine's path for a frame: the generated eBPF program, run by the kernel over
the frame's bytes (BPF_PROG_TEST_RUN: nothing is sent), completions read from its ring
buffer. Shared by the kernel engine's cross-check (test_kernel_engine.py) and `make fuzz`
(scripts/fuzzing), beside python_path.py.

Time: the kernel's clock is real and cannot be set. The program adds an offset from a map to
it (0 in the daemon), which KernelPath moves forward by dt: the program under test is the one
that ships."""

from __future__ import annotations

from collections.abc import Sequence

from python_path import Completions
from tportknockd.kernel.matcher import KernelMatcher, KnockSequence
from tportknockd.model import Event, address_text


class KernelPath:
    def __init__(self, matcher: KernelMatcher, events: Sequence[Event], local: Sequence[str]):
        self.matcher = matcher
        matcher.set_sequences([KnockSequence(e.name, e.frames, e.timeout) for e in events])
        matcher.set_local_addresses(local)
        self.reset()

    def reset(self) -> None:
        """Forget every attempt and unread completion."""
        self.matcher.forget_attempts()
        self.matcher.completions()
        self.knocks_before = self.matcher.statistics().knocks

    @property
    def knocks(self) -> int:
        return self.matcher.statistics().knocks - self.knocks_before

    def feed(self, frame: bytes, dt: float) -> Completions:
        """Raises TestRunRefused when the kernel will not run the program on the frame."""
        if dt:
            self.age(dt)
        if too_short_for_test_run(frame):
            raise TooShort
        retval = self.matcher.program.test_run(frame).retval
        if retval != 0:
            raise QueuedSomething(retval)
        done = self.matcher.completions()
        return [(str(c.sequence), address_text(c.source)) for c in done]

    def age(self, seconds: float) -> None:
        """As if `seconds` had passed: the program's clock runs that much ahead."""
        self.matcher.advance_clock(seconds)


class TooShort(Exception):
    """BPF_PROG_TEST_RUN refuses the frame (see too_short_for_test_run)."""


class QueuedSomething(Exception):
    """The program returned non-zero: it would have queued the packet on the socket."""


def too_short_for_test_run(frame: bytes) -> bool:
    """BPF_PROG_TEST_RUN refuses (EINVAL) a frame shorter than an Ethernet header, and an
    untagged IPv4 or IPv6 frame shorter than the fixed IP header; on a socket the program
    would get it, and drop it."""
    minimum = {b"\x08\x00": 14 + 20, b"\x86\xdd": 14 + 40}.get(frame[12:14], 14)
    return len(frame) < minimum
