"""Streams of frames with times, for one config: knocks in order and out of it, among noise.

Half the frames follow a script (an event's frames in order, from one source, now and then
one sent twice or skipped), so that sequences do complete; the rest are the config's frames in
any order, near misses and random bytes. A quarter of all frames are mutated.

Times: most frames come at once (dt 0), some after whole seconds, a few after more than any
timeout. Timeouts end in .5 (see configs_for_streams), so the real time a stream takes (a few
milliseconds) cannot move a comparison.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tportknockd.model import Event, Frame

from .frames import FrameMaker, Step, random_source

MAX_STEPS = 60
MUTATED = 0.25


class _Script:
    """A knock in progress: which event, from where, how far."""

    def __init__(self, rng: random.Random, events: Sequence[Event], sources: list[str]) -> None:
        self.rng, self.events, self.sources = rng, events, sources
        self.restart()

    def restart(self) -> None:
        self.event = self.rng.choice(self.events)
        self.source = self.rng.choice(self.sources)
        self.position = 0

    def next_frame(self) -> Frame:
        frames = self.event.frames
        roll = self.rng.random()
        if roll < 0.08 and self.position > 0:
            return frames[self.position - 1]  # sent twice
        if roll < 0.12:
            self.position += 1  # one lost
        if self.position >= len(frames):
            self.restart()
        frame = frames[self.position]
        self.position += 1
        return frame


def stream(maker: FrameMaker, events: Sequence[Event]) -> list[Step]:
    rng = maker.rng
    sources = [random_source(rng) for _ in range(rng.choice([1, 1, 2, 3]))]
    script = _Script(rng, events, sources)
    steps = []
    for _ in range(rng.randint(1, MAX_STEPS)):
        roll = rng.random()
        source = sources[0] if rng.random() < 0.7 else rng.choice(sources)
        if roll < 0.5:
            frame = script.next_frame()
            data = maker.knock(script.source, maker.fields_of(frame))
        elif roll < 0.8:
            data = maker.knock(source, maker.fields_of(rng.choice(maker.wanted)))
        elif roll < 0.94:
            data = maker.knock(source, maker.near_miss())
        else:
            data = maker.raw()
        if rng.random() < MUTATED:
            data = maker.mutate(data)
        maker.remember(data)
        dt = 0 if rng.random() < 0.9 else rng.choice([1, 1, 1, 2, 3, 5, 31, 40])
        probe = (rng.randint(-2, 40), rng.randint(-1, len(data) + 2))
        steps.append(Step(data, dt, probe))
    return steps
