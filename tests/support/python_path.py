"""The Python engine's path for a frame, as the daemon runs it with `--engine python`: the
classic filter of filter.py (run by bpfvm.py), packet.py's parser on the bytes it passes, the
destination check, engine.Engine. Shared by the kernel engine's cross-check
(test_kernel_engine.py) and `make fuzz` (scripts/fuzzing)."""

from __future__ import annotations

from collections.abc import Sequence

import bpfvm
import frames_raw as fr
from tportknockd.capture import knock_filter as cbpf
from tportknockd.capture.packet import parse_ethernet
from tportknockd.matching.engine import DoorExtended, Engine, RunStart
from tportknockd.model import Config, Event, address_bytes

Completions = list[tuple[str, str]]


class PythonPath:
    def __init__(self, events: Sequence[Event], local: Sequence[str]) -> None:
        self.config = Config("test.conf", tuple(events))
        frames = [frame for event in events for frame in event.frames]
        self.program = cbpf.compile_filter(frames, local)
        self.local = {address_bytes(text.split("%")[0]) for text in local}
        self.reset()

    def reset(self) -> None:
        """A fresh engine, its clock at 0."""
        self.engine = Engine(self.config)
        self.now = 0.0
        self.knocks = 0  # packets that reached the engine and match some frame

    def feed(self, frame: bytes, dt: float = 0.0) -> Completions:
        """The completions (event, source) this frame causes, `dt` seconds after the last."""
        self.now += dt
        if frame[:6] != fr.HOST_MAC:
            return []  # capture.py skips what is not PACKET_HOST
        snap = bpfvm.run(self.program, frame)
        packet = parse_ethernet(frame[:snap]) if snap else None
        if packet is None or packet.dst not in self.local:
            return []
        self.knocks += packet[2:] in self.engine._table
        actions = self.engine.feed(packet, self.now)
        return [(a.event, a.address) for a in actions if isinstance(a, RunStart | DoorExtended)]
