"""Where knocks are matched, behind one interface: `Matching`, chosen once at start-up.

* `PythonMatching`: every capture gets the classic filter of capture/knock_filter.py, which
  passes the packets that may be knock frames; the engine matches them in Python.
* the kernel engine (kernel/adapter.py): an eBPF program matches the knocks in the kernel and
  hands over only completed sequences, through a ring buffer.

Either way the engine (matching/engine.py) decides what a completed knock does. The daemon, the
interfaces and the sequencer talk to a `Matching` and never ask which one runs; `choose` is the
one place that knows both.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from typing import Protocol

from tportknockd.bpf import classic
from tportknockd.capture.interfaces import Filters
from tportknockd.capture.knock_filter import classic_filter
from tportknockd.capture.listener import Listener
from tportknockd.capture.ring import RingGeometry
from tportknockd.matching.engine import Action, Engine
from tportknockd.matching.sequences import LiveSequence
from tportknockd.model import Frame

log = logging.getLogger("tportknockd")

#: What --engine accepts: `auto` is the kernel engine where the kernel allows it, else Python.
ENGINES = ("auto", "kernel", "python")


class EngineError(Exception):
    """`--engine kernel` was asked for and the kernel engine cannot run: one line for people."""


class Matching(Filters, Protocol):
    #: The line the daemon logs when it is ready: which engine runs, and why.
    description: str

    def set_sequences(self, sequences: Sequence[LiveSequence]) -> None:
        """Match `sequences` from now on. ValueError, changing nothing, when they do not fit."""

    def fds(self) -> tuple[int, ...]:
        """Descriptors to poll; readable means `completions` has something."""

    def completions(self, engine: Engine, now: float) -> list[tuple[list[Action], int]]:
        """What the knocks completed outside the engine make it do, each with the index of the
        interface the completing frame came in on."""

    def summary(self) -> str:
        """`name=value` pairs for the statistics line ('' for none)."""

    def close(self) -> None: ...


class PythonMatching:
    """Classic filters in the kernel, matching in Python (the engine is fed by the captures)."""

    def __init__(self, description: str, debug: bool = False) -> None:
        self.description = description
        self.debug = debug

    def set_sequences(self, sequences: Sequence[LiveSequence]) -> None:
        pass  # the filters are recompiled from the frames; nothing else holds sequences

    def set_local_addresses(self, links: Iterable[Listener]) -> None:
        pass  # the addresses are compiled into each capture's filter

    def program_for(
        self, accepted: Collection[str], raw_ip: bool, frames: Iterable[Frame]
    ) -> classic.Program:
        return classic_filter(frames, accepted, raw_ip, self.debug)

    def ring_for(self, raw_ip: bool) -> RingGeometry:
        return RingGeometry()

    def fds(self) -> tuple[int, ...]:
        return ()

    def completions(self, engine: Engine, now: float) -> list[tuple[list[Action], int]]:
        return []

    def summary(self) -> str:
        return ""

    def close(self) -> None:
        pass


def choose(
    mode: str, sequences: Sequence[LiveSequence], max_attempts: int, debug: bool = False
) -> Matching:
    """The matching --engine `mode` asks for: `auto` falls back to Python and says why in the
    description, `kernel` raises EngineError instead."""
    if mode == "python":
        # The kernel engine's modules (and ctypes) stay out of a Python-only daemon.
        return PythonMatching("engine: python (as asked)", debug)
    from tportknockd.kernel import adapter

    try:
        return adapter.load(sequences, max_attempts, debug)
    except Exception as exc:  # every reason the kernel gives is reported, none is fatal here
        reason = adapter.explain(exc)
        if mode == "kernel":
            raise EngineError(f"the kernel engine cannot run: {reason}") from None
        return PythonMatching(f"engine: python (the kernel engine cannot run: {reason})", debug)
