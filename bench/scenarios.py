"""The scenarios: what each one sends, and which rows it has in the report.

A scenario is one `Scenario` entry in `SCENARIOS`: a key, a title (formatted with the run's
`Settings`), a short label for the figure, a `drive` function that sends its traffic and
returns the knocks it sent, and the `Rows` of its part of the report with their targets.
The runner (`bench.runner`) starts a fresh daemon for each scenario and measures around
`drive`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bench.settings import DOOR, KNOCK_V4, KNOCK_V6, Settings
from bench.testbed import Processes, Testbed
from bench.traffic import Flood, FloodResult, Knock, Knocker


@dataclass
class Context:
    """What a scenario's `drive` works with."""

    bed: Testbed
    procs: Processes
    workdir: Path
    settings: Settings
    knocker: Knocker
    flood: Flood
    flood_results: list[FloodResult] = field(default_factory=list)


@dataclass(frozen=True)
class Rows:
    """Which rows a scenario has in the report, and which targets (keys of TARGETS) the
    daemons other than the reference are checked against. Latency, daemon CPU and RSS peak
    rows are always there."""

    flag_door: bool = False  # exact knocks and URG+PSH+ECE knocks counted apart (scenario d)
    all_detected: bool = False  # every (good) knock must open
    during_after: bool = False  # knocks during a flood and right after it, counted apart
    latency_targets: tuple[str, str] | None = None  # median, p95
    cpu_target: str | None = None
    flood: bool = False  # flood rate, CPU per flood packet, ring drops
    per_read_packet: bool = False  # CPU per packet the daemon read from its ring
    per_packet_target: str | None = None
    no_ring_drops: bool = False


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    label: str  # on the figure's axis
    drive: Callable[[Context], list[Knock]]
    rows: Rows
    flood_wait: bool = False  # detections may lag behind a flood: wait longer for them

    def heading(self, settings: Settings) -> str:
        return self.title.format(**asdict(settings))


def drive_idle(ctx: Context) -> list[Knock]:
    return _one_by_one(ctx, KNOCK_V4[: ctx.settings.idle_knocks])


def drive_v6(ctx: Context) -> list[Knock]:
    return _one_by_one(ctx, KNOCK_V6[: ctx.settings.v6_knocks])


def _one_by_one(ctx: Context, sources: Sequence[str]) -> list[Knock]:
    knocks = []
    for source in sources:
        knock = ctx.knocker.client(source, DOOR)
        knock.sent()  # one after the other, each knock alone on the wire
        knocks.append(knock)
        time.sleep(0.05)
    return knocks


def drive_noise(ctx: Context) -> list[Knock]:
    s = ctx.settings
    with ctx.flood.flood("noise", s.flood_s, None, ctx.flood_results):
        return _spread(ctx, KNOCK_V4[: s.noise_knocks], s.flood_s, "during")


def drive_spoof(ctx: Context, pps: int | None) -> list[Knock]:
    s = ctx.settings
    during = KNOCK_V4[: s.during_knocks]
    after = KNOCK_V4[s.during_knocks: s.during_knocks + s.after_knocks]
    kind = "spoof10k" if pps else "spoof"
    with ctx.flood.flood(kind, s.flood_s, pps, ctx.flood_results):
        knocks = _spread(ctx, during, s.flood_s, "during")
    for source in after:  # right after the flood
        knocks.append(ctx.knocker.client(source, DOOR, "after"))
        time.sleep(0.05)
    return knocks


def _spread(ctx: Context, sources: Sequence[str], seconds: float, kind: str) -> list[Knock]:
    """Knocks spread evenly over the flood, from its first tenth to its last."""
    knocks = []
    start = time.monotonic()
    step = 0.8 * seconds / max(1, len(sources))
    for i, source in enumerate(sources):
        time.sleep(max(0.0, start + 0.1 * seconds + i * step - time.monotonic()))
        knocks.append(ctx.knocker.client(source, DOOR, kind))
    return knocks


def drive_flags(ctx: Context) -> list[Knock]:
    n = ctx.settings.flag_knocks
    knocks = []
    for source in KNOCK_V4[:n]:
        knocks.append(ctx.knocker.hping_flags(source, ["-U", "-P"], "exact"))
    for source in KNOCK_V4[n: 2 * n]:
        knocks.append(ctx.knocker.hping_flags(source, ["-U", "-P", "-X"], "ece"))
    return knocks


SPOOF_ROWS = Rows(all_detected=True, during_after=True, flood=True, per_read_packet=True)

SCENARIOS = (
    Scenario("a", "(a) {idle_knocks} knocks at idle", "a idle", drive_idle,
             Rows(all_detected=True, latency_targets=("idle_median_ms", "idle_p95_ms"))),
    Scenario("b", "(b) non-knock flood at full rate, {noise_knocks} knocks during it",
             "b noise flood", drive_noise,
             # The daemon reads only the knocks here: no per-packet cost to see.
             Rows(all_detected=True, cpu_target="noise_cpu_s", flood=True), flood_wait=True),
    Scenario("c10k", "(c) spoofed first frames at 10k pps, {during_knocks} knocks during and "
             "{after_knocks} right after", "c spoof 10k pps",
             lambda ctx: drive_spoof(ctx, ctx.settings.slow_pps),
             replace(SPOOF_ROWS, cpu_target="spoof10k_cpu_s"), flood_wait=True),
    Scenario("cfull", "(c) spoofed first frames at full rate, {during_knocks} knocks during "
             "and {after_knocks} right after", "c spoof full rate",
             lambda ctx: drive_spoof(ctx, None),
             replace(SPOOF_ROWS, per_packet_target="spoof_full_us_per_packet",
                     no_ring_drops=True), flood_wait=True),
    Scenario("d", "(d) flag exactness, door tcp/110 URG+PSH then udp/111: {flag_knocks} exact "
             "knocks, {flag_knocks} with URG+PSH+ECE", "d flags (exact)", drive_flags,
             Rows(flag_door=True, all_detected=True)),
    Scenario("e", "(e) {v6_knocks} IPv6 knocks at idle", "e IPv6", drive_v6, Rows()),
)
