"""The cross-check: every frame through both engines, which must agree.

Structure from hypothesis, bulk from a seeded random generator. Hypothesis draws a config
(one to four events of one to eight frames, written out as config text and read back by
parse_config, so they are configs the daemon accepts) and a seed; from the seed,
streams.py makes a batch of streams of frames for that config. Hypothesis costs about a
millisecond per example, too much per packet but nothing per batch.

For each frame: the Python side must not raise, the kernel must run the program (and queue
nothing), and both must report the same completions (sequence, source, in order) and the same
count of knocks. A stream that fails is cut down to the frames that still make it fail (the
shrinking hypothesis would do, here by hand: the failure lives in the stream, not in the
draws) and reported with its config.

Time: each stream starts from no attempts. The dt of a frame is whole seconds and timeouts
end in .5, so a stream would have to take half a second of real time for the kernel's clock to
change a result; a failing stream that did take over a quarter of a second is run again before
it counts.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tportknockd.config import parse_config
from tportknockd.frame_syntax import format_frame
from tportknockd.kernel.matcher import KernelMatcher
from tportknockd.model import PROTO_TCP, PROTO_UDP, Frame

from .frames import LOCAL, FrameMaker, Step, random_source
from .paths import (
    KernelPath,
    PythonPath,
    QueuedSomething,
    TooShort,
    probe_parsers,
    too_short_for_test_run,
)
from .streams import stream

#: Frames per hypothesis example.
BATCH = 500
SLOW_STREAM = 0.25  # seconds; timeouts are half a second away from any whole dt
MINIMISE_RUNS = 400
KEEP_FAILURES = 20
GIVE_UP_AFTER = 200  # failures: past this the engines are broken, not a corner of them

TIMEOUTS = [0.5, 1.5, 2.5, 4.5, 30.5]
frames = st.builds(
    lambda protocol, port, flags: Frame(protocol, port, flags if protocol == PROTO_TCP else None),
    st.sampled_from([PROTO_TCP, PROTO_UDP]),
    st.one_of(st.sampled_from([1, 2, 3]), st.integers(1, 65535)),
    st.one_of(st.none(), st.sampled_from([0, 0x02, 0x10, 0x11, 0x3F]), st.integers(0, 0x3F)),
)
event_specs = st.lists(
    st.tuples(
        st.lists(frames, min_size=1, max_size=8),
        st.sampled_from(TIMEOUTS),
        st.booleans(),
    ),
    min_size=1,
    max_size=4,
)


def config_text(specs: Sequence[tuple[list[Frame], float, bool]]) -> str:
    lines = []
    for index, (event_frames, timeout, stop) in enumerate(specs):
        lines += [
            f"<e{index}>",
            f" sequence = {' '.join(format_frame(f) for f in event_frames)}",
            f" timeout = {timeout}",
            " start_command = true",
        ]
        if stop:
            lines += [" stop_command = true", " command_delay = 30"]
        lines.append(f"</e{index}>")
    return "\n".join(lines) + "\n"


@dataclass
class Tally:
    both: int = 0  # frames run through both engines
    too_short: int = 0  # frames BPF_PROG_TEST_RUN refuses; the Python side must drop them
    python_only: int = 0  # frames without a kernel to compare with
    parser_only: int = 0  # jumbo frames, too long for a test run: the parsers alone
    streams: int = 0
    configs: int = 0
    completions: int = 0
    knocks: int = 0
    slow_reruns: int = 0
    failures: int = 0

    @property
    def frames(self) -> int:
        return self.both + self.python_only


@dataclass
class Problem:
    index: int  # the frame at which it showed
    kind: str
    detail: str


@dataclass
class Failure:
    config: str
    kind: str
    detail: str
    steps: list[Step] = field(default_factory=list)

    def render(self) -> str:
        frames = "\n".join(f"    dt {s.dt} frame {s.frame.hex()}" for s in self.steps)
        return f"{self.kind}: {self.detail}\n  config:\n{self.config}  stream:\n{frames}"


class CrossCheck:
    def __init__(self, matcher: KernelMatcher | None, tally: Tally) -> None:
        self.matcher = matcher
        self.tally = tally
        self.failures: list[Failure] = []

    def run(self, total: int, seed: int | None, progress: Callable[[], None]) -> None:
        """Until `total` frames went through both engines (or the Python one alone)."""
        while self.tally.frames < total and self.tally.failures < GIVE_UP_AFTER:
            examples = max(1, (total - self.tally.frames) // BATCH + 1)

            @settings(max_examples=examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(event_specs, st.integers(0, 2**64 - 1))
            def batch(specs: list[tuple[list[Frame], float, bool]], batch_seed: int) -> None:
                if self.tally.frames < total and self.tally.failures < GIVE_UP_AFTER:
                    self.run_config(config_text(specs), batch_seed, progress)

            if seed is not None:
                batch = hypothesis_seed(seed + self.tally.configs)(batch)
            batch()

    def run_config(self, text: str, batch_seed: int, progress: Callable[[], None]) -> None:
        events = parse_config(text, "fuzz.conf").events
        python = PythonPath(events, LOCAL)
        kernel = KernelPath(self.matcher, events, LOCAL) if self.matcher else None
        rng = random.Random(batch_seed)
        maker = FrameMaker(rng, [f for e in events for f in e.frames])
        self.tally.configs += 1
        done = self.tally.frames + BATCH
        while self.tally.frames < done:
            steps = stream(maker, events)
            self.check_stream(text, python, kernel, steps)
            if rng.random() < 0.02:
                self.check_jumbo(text, maker.jumbo(random_source(rng)))
            progress()

    def check_stream(
        self, text: str, python: PythonPath, kernel: KernelPath | None, steps: list[Step]
    ) -> None:
        self.tally.streams += 1
        started = time.monotonic()
        problem = run_stream(python, kernel, steps, self.tally)
        if problem is None:
            return
        if time.monotonic() - started > SLOW_STREAM:
            self.tally.slow_reruns += 1
            problem = run_stream(python, kernel, steps)
            if problem is None:
                return
        self.tally.failures += 1
        if len(self.failures) < KEEP_FAILURES:
            shortest = minimise(python, kernel, steps[: problem.index + 1], problem.kind)
            found = run_stream(python, kernel, shortest) or problem
            self.failures.append(Failure(text, found.kind, found.detail, shortest))

    def check_jumbo(self, text: str, frame: bytes) -> None:
        self.tally.parser_only += 1
        try:
            probe_parsers(frame, 14, len(frame))
        except Exception:
            self.tally.failures += 1
            detail = traceback.format_exc()
            self.failures.append(Failure(text, "parser raised", detail, [Step(frame, 0, (14, 0))]))


def run_stream(
    python: PythonPath, kernel: KernelPath | None, steps: Sequence[Step], tally: Tally | None = None
) -> Problem | None:
    """Feed `steps` to both engines from a clean start; the first disagreement, if any."""
    python.reset()
    if kernel is not None:
        kernel.reset()
    for index, step in enumerate(steps):
        try:
            expected = python.feed(step.frame, step.dt)
            probe_parsers(step.frame, *step.probe)
        except Exception:
            return Problem(index, "the Python side raised", traceback.format_exc())
        if kernel is not None:
            problem = kernel_step(kernel, step, expected, python.knocks, index)
            if problem is not None:
                return problem
        if tally:
            count(tally, step.frame, expected, kernel is not None)
    if tally:
        tally.knocks += python.knocks
    return None


def count(tally: Tally, frame: bytes, completions: list[tuple[str, str]], kernel: bool) -> None:
    tally.completions += len(completions)
    if not kernel:
        tally.python_only += 1
    elif too_short_for_test_run(frame):
        tally.too_short += 1
    else:
        tally.both += 1


def kernel_step(
    kernel: KernelPath, step: Step, expected: list[tuple[str, str]], knocks: int, index: int
) -> Problem | None:
    try:
        got = kernel.feed(step.frame, step.dt)
    except TooShort:
        got = []
    except QueuedSomething as exc:
        return Problem(index, "the program returned non-zero", str(exc))
    except OSError as exc:
        return Problem(index, "BPF_PROG_TEST_RUN refused the frame", repr(exc))
    if got != expected:
        return Problem(index, "the engines disagree", f"python {expected}, kernel {got}")
    if kernel.knocks != knocks:
        detail = f"python {knocks}, kernel {kernel.knocks}"
        return Problem(index, "the engines count knocks differently", detail)
    return None


def minimise(
    python: PythonPath, kernel: KernelPath | None, steps: list[Step], kind: str
) -> list[Step]:
    """Drop frames one at a time while the stream still fails the same way."""
    runs = 0
    changed = True
    while changed and runs < MINIMISE_RUNS:
        changed = False
        for index in reversed(range(len(steps))):
            candidate = steps[:index] + steps[index + 1 :]
            runs += 1
            problem = run_stream(python, kernel, candidate)
            if problem is not None and problem.kind == kind:
                steps = candidate[: problem.index + 1]
                changed = True
                break
    return steps
