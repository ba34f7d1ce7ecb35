"""The scenarios: what each one sends, and which rows it has in the report.

A scenario is one `Scenario` entry in `SCENARIOS`: a key, a title (formatted with the run's
`Settings`), a short label for the figure, a `drive` function that sends its traffic and
returns the knocks it sent, and the `Rows` of its part of the report with their targets.
It runs against every daemon compared unless it names the ones it applies to (`daemons`;
the report shows n/a for the others), and each daemon runs its usual config unless the
scenario brings one of its own for it (`configs`). The runner (`bench.runner`) starts a
fresh daemon for each scenario and measures around `drive`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bench.daemons import TPORTKNOCKD_COLUMNS, Daemon, Running
from bench.measure import Capture
from bench.onetime import event_name, flood_target, next_change_after, tportknockd_otp_config
from bench.settings import DOOR, KNOCK_V4, KNOCK_V6, MOVE_SNAPSHOT_DELAY_S, Settings
from bench.testbed import Processes, Testbed
from bench.traffic import Flood, FloodResult, Knock, Knocker


@dataclass
class Context:
    """What a scenario's `drive` works with; the runner sets the daemon's part per run."""

    bed: Testbed
    procs: Processes
    workdir: Path
    settings: Settings
    knocker: Knocker
    flood: Flood
    flood_results: list[FloodResult] = field(default_factory=list)
    daemon: Daemon | None = None
    run: Running | None = None
    conf: Path | None = None  # the config the daemon runs
    capture: Capture | None = None  # the knocks' packets as sent
    #: The daemon's counters taken during the run, by name, with "at" (Unix time).
    snapshots: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The kernel's run statistics are on: the runner reads the daemon's eBPF program.
    watch_programs: bool = False

    def snapshot(self, name: str) -> None:
        """Record the daemon's counters now (if it can tell them) as `name`."""
        assert self.daemon is not None and self.run is not None
        at = time.time()
        figures = self.daemon.statistics_now(self.run)
        if figures:
            self.snapshots[name] = {"at": at, **figures}


#: A scenario's own config for a daemon: (context, start_command's output file) → text.
ConfigMaker = Callable[[Context, Path], str]


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
    window_move: bool = False  # a one-time window moves halfway through the flood (f)
    per_read_packet: bool = False  # CPU per packet the daemon read from its ring
    per_packet_target: str | None = None
    no_ring_drops: bool = False
    kernel_counters: bool = False  # what the kernel engine's program saw, matched, evicted


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    label: str  # on the figure's axis
    drive: Callable[[Context], list[Knock]]
    rows: Rows
    flood_wait: bool = False  # detections may lag behind a flood: wait longer for them
    daemons: tuple[str, ...] | None = None  # the daemons it applies to (names); None: all
    configs: Mapping[str, ConfigMaker] = field(default_factory=dict)  # by daemon name

    def heading(self, settings: Settings) -> str:
        return self.title.format(**asdict(settings))

    def applies_to(self, daemon: str) -> bool:
        return self.daemons is None or daemon in self.daemons

    def config(self, daemon: Daemon, ctx: Context, out: Path) -> str:
        """The config `daemon` runs in this scenario: the scenario's own, or its usual one."""
        own = self.configs.get(daemon.name)
        return own(ctx, out) if own else daemon.config(out)


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
    for when, source in zip(_spread_times(seconds, len(sources)), sources, strict=True):
        time.sleep(max(0.0, start + when - time.monotonic()))
        knocks.append(ctx.knocker.client(source, DOOR, kind))
    return knocks


def otp_users(settings: Settings) -> int:
    """Scenario f: one user (event, secret, source address) per knock."""
    return settings.during_knocks + settings.after_knocks


def otp_config(ctx: Context, out: Path) -> str:
    return tportknockd_otp_config(ctx.workdir, otp_users(ctx.settings), out)


def drive_otp_flood(ctx: Context, pps: int | None) -> list[Knock]:
    """Spoofed copies of the previous window's first frame, the flood spanning a window
    change halfway: until the change that window is still accepted (w-1, for clock skew) and
    the kernel passes the frame; after it the window is out of reach and the kernel filter,
    recompiled at the change, drops it. The daemon's counters are taken just after the
    change. Each user knocks its own event, by the client with -c/-e; a knock sent wholly
    after the change counts as "moved"."""
    s, conf = ctx.settings, ctx.conf
    assert conf is not None
    # About halfway; trafgen's -b sends each second's packets in one burst at the start of
    # that second, so the change falls halfway between two bursts, never in one.
    lead = change_into_flood(s.flood_s)
    change = next_change_after(time.time(), lead + 0.2)
    _sleep_until(change - lead)
    _, _, frame = flood_target(conf, time.time())
    users = list(enumerate(KNOCK_V4[: otp_users(s)]))
    during, after = users[: s.during_knocks], users[s.during_knocks:]
    kind = "otp10k" if pps else "otp"
    knocks = []
    with ctx.flood.flood(kind, s.flood_s, pps, ctx.flood_results, frame):
        snapshot = threading.Timer(change + MOVE_SNAPSHOT_DELAY_S - time.time(),
                                   ctx.snapshot, ("window_moved",))
        snapshot.start()
        for when, (user, source) in zip(_spread_times(s.flood_s, len(during)), during,
                                        strict=True):
            _sleep_until(change - lead + when)
            knocks.append(ctx.knocker.client_event(source, conf, event_name(user), "during"))
        snapshot.join()
    _after_the_change(ctx, knocks, change)
    for user, source in after:  # right after the flood
        knocks.append(ctx.knocker.client_event(source, conf, event_name(user), "after"))
        time.sleep(0.05)
    return knocks


def change_into_flood(flood_s: float) -> float:
    """How far into the flood the window changes: 4.5 s of 10 s, 1.5 s of 3 s."""
    return math.floor(flood_s / 2 + 0.5) - 0.5


def _after_the_change(ctx: Context, knocks: Sequence[Knock], change: float) -> None:
    """Mark "moved" the knocks sent wholly after the window change (from their first packet
    on: one that began before it met the old window's flood)."""
    assert ctx.capture is not None
    for knock in knocks:
        knock.sent()
    first = ctx.capture.first_sent()
    for knock in knocks:
        if first.get(knock.source, 0.0) >= change:
            knock.kind = "moved"


def _spread_times(seconds: float, count: int) -> list[float]:
    """Offsets into a flood of `seconds` spreading `count` knocks from its first tenth on."""
    step = 0.8 * seconds / max(1, count)
    return [0.1 * seconds + i * step for i in range(count)]


def _sleep_until(unix_time: float) -> None:
    time.sleep(max(0.0, unix_time - time.time()))


def drive_flags(ctx: Context) -> list[Knock]:
    n = ctx.settings.flag_knocks
    knocks = []
    for source in KNOCK_V4[:n]:
        knocks.append(ctx.knocker.hping_flags(source, ["-U", "-P"], "exact"))
    for source in KNOCK_V4[n: 2 * n]:
        knocks.append(ctx.knocker.hping_flags(source, ["-U", "-P", "-X"], "ece"))
    return knocks


SPOOF_ROWS = Rows(all_detected=True, during_after=True, flood=True, per_read_packet=True,
                  kernel_counters=True)
OTP_ROWS = replace(SPOOF_ROWS, window_move=True)
#: Scenario f is for tportknockd alone (knockd has no time-based sequences): both engines.
ONE_TIME_CONFIGS: Mapping[str, ConfigMaker] = {name: otp_config for name in TPORTKNOCKD_COLUMNS}

SCENARIOS = (
    Scenario("a", "(a) {idle_knocks} knocks at idle", "a idle", drive_idle,
             Rows(all_detected=True, latency_targets=("idle_median_ms", "idle_p95_ms"))),
    Scenario("b", "(b) non-knock flood at full rate, {noise_knocks} knocks during it",
             "b noise flood", drive_noise,
             # The daemon reads only the knocks here: no per-packet cost to see.
             Rows(all_detected=True, cpu_target="noise_cpu_s", flood=True, kernel_counters=True),
             flood_wait=True),
    Scenario("c10k", "(c) spoofed first frames at 10k pps, {during_knocks} knocks during and "
             "{after_knocks} right after", "c spoof 10k pps",
             lambda ctx: drive_spoof(ctx, ctx.settings.slow_pps),
             replace(SPOOF_ROWS, cpu_target="spoof10k_cpu_s"), flood_wait=True),
    Scenario("cfull", "(c) spoofed first frames at full rate, {during_knocks} knocks during "
             "and {after_knocks} right after", "c spoof full rate",
             lambda ctx: drive_spoof(ctx, None),
             replace(SPOOF_ROWS, cpu_target="spoof_full_cpu_s",
                     per_packet_target="spoof_full_us_per_packet", no_ring_drops=True),
             flood_wait=True),
    Scenario("d", "(d) flag exactness, door tcp/110 URG+PSH then udp/111: {flag_knocks} exact "
             "knocks, {flag_knocks} with URG+PSH+ECE", "d flags (exact)", drive_flags,
             Rows(flag_door=True, all_detected=True)),
    Scenario("e", "(e) {v6_knocks} IPv6 knocks at idle", "e IPv6", drive_v6, Rows()),
    Scenario("f10k", "(f) one-time door: spoofed copies of the previous window's first frame "
             "at 10k pps across a window change, {during_knocks} knocks during and "
             "{after_knocks} right after", "f OTP 10k pps",
             lambda ctx: drive_otp_flood(ctx, ctx.settings.slow_pps), OTP_ROWS,
             flood_wait=True, daemons=TPORTKNOCKD_COLUMNS, configs=ONE_TIME_CONFIGS),
    Scenario("ffull", "(f) one-time door: spoofed copies of the previous window's first "
             "frame at full rate across a window change, {during_knocks} knocks during and "
             "{after_knocks} right after", "f OTP full rate",
             lambda ctx: drive_otp_flood(ctx, None), OTP_ROWS,
             flood_wait=True, daemons=TPORTKNOCKD_COLUMNS, configs=ONE_TIME_CONFIGS),
)
