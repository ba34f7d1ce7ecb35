"""What one daemon did in one scenario (`Outcome`), and the figures drawn from it: knocks
detected, latency percentiles, CPU per flood packet; and per daemon over the whole run."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.program_stats import ns_per_run

#: Knock kinds that must open the door (an "ece" knock must not). "moved": during a flood,
#: after the one-time window moved (scenario f).
GOOD_KINDS = ("", "during", "moved", "after", "exact")

#: scenario key → daemon name → summary
Summaries = dict[str, dict[str, dict[str, Any]]]


@dataclass
class Outcome:
    """What one daemon did in one scenario."""

    scenario: str
    daemon: str
    knocks: list[dict[str, Any]] = field(default_factory=list)
    cpu_s: float = 0.0
    stat_cpu_s: float = 0.0
    rss_start_kb: int = 0
    rss_peak_kb: int = 0
    hwm_kb: int = 0
    startup_s: float = 0.0
    statistics: dict[str, int] = field(default_factory=dict)
    floods: list[dict[str, Any]] = field(default_factory=list)
    window_s: float = 0.0
    delivered: int = 0
    #: The daemon's counters taken during the run, by name: "at" (Unix time), its
    #: statistics, and "knock_packets_after" (knock packets sent from then on).
    snapshots: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The engine the daemon said it runs (tportknockd's `engine:` line; "" for knockd).
    engine: str = ""
    #: The kernel engine's program over the window, by the kernel's run statistics (bench.
    #: program_stats): "id", "runs", "run_time_ns"; {} for a daemon without one, or when the
    #: statistics were not taken.
    bpf_stats: dict[str, int] = field(default_factory=dict)


def engine_name(line: str) -> str | None:
    """"kernel" or "python" from an engine line; None without one."""
    return line.split(" ", 1)[0] or None


def kernel_memory_mib(line: str) -> float | None:
    """The kernel memory of the kernel engine's maps, as its engine line gives it."""
    found = re.search(r"about ([\d.]+) MiB of kernel memory", line)
    return float(found.group(1)) if found else None


def passed_counter(statistics: dict[str, int]) -> str:
    """The counter of packets taken for knock frames in the kernel: with the kernel engine,
    those its program matched (`kernel_knocks`); with the Python one, those the classic filter
    passed to the ring (`kernel_packets`)."""
    return "kernel_knocks" if "kernel_knocks" in statistics else "kernel_packets"


#: The kernel engine's own counters shown in the report: summary key -> statistics name.
KERNEL_COUNTERS = {
    "kernel_seen": "kernel_seen",
    "kernel_matched": "kernel_knocks",
    "kernel_evicted_fresh": "kernel_evicted_fresh",
    "kernel_evicted_advanced": "kernel_evicted_advanced",
    "kernel_lost": "kernel_lost",
}


def latency_stats(values: Sequence[float]) -> dict[str, float | None]:
    """Median, 95th percentile (inclusive method: within the values measured) and maximum."""
    if not values:
        return {"median": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[0] if len(ordered) == 1 else statistics.quantiles(
        ordered, n=20, method="inclusive")[18]
    return {"median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def summarize(outcome: Outcome) -> dict[str, Any]:
    def count(kinds: Sequence[str]) -> tuple[int, int]:
        chosen = [k for k in outcome.knocks if k["kind"] in kinds and k["sent"]]
        return sum(1 for k in chosen if k["detected"]), len(chosen)

    latencies = [k["latency_ms"] for k in outcome.knocks
                 if k["kind"] in GOOD_KINDS and k["latency_ms"] is not None]
    flood = outcome.floods[0] if outcome.floods else None
    return {
        "detected": count(GOOD_KINDS),
        "during": count(("during", "moved")),
        "during_moved": count(("moved",)),
        "after": count(("after",)),
        "ece_opened": count(("ece",)),
        "latency_ms": latency_stats(latencies),
        "cpu_s": outcome.cpu_s,
        "rss_start_mb": outcome.rss_start_kb / 1024,
        "rss_peak_mb": outcome.rss_peak_kb / 1024,
        "startup_s": outcome.startup_s,
        "ring_drops": outcome.statistics.get("kernel_drops"),
        "flood_pps": flood["pps"] if flood else None,
        "flood_delivered": flood["delivered"] if flood else None,
        "us_per_packet": (outcome.cpu_s / outcome.delivered * 1e6
                          if flood and outcome.delivered else None),
        # Per packet the daemon actually read (tportknockd's count; the rest the ring dropped).
        "us_per_read_packet": (outcome.cpu_s / outcome.statistics["packets"] * 1e6
                               if flood and outcome.statistics.get("packets") else None),
        "kernel_passed": outcome.statistics.get(passed_counter(outcome.statistics)),
        **window_move(outcome),
        "engine": engine_name(outcome.engine),
        "kernel_memory_mib": kernel_memory_mib(outcome.engine),
        **{key: outcome.statistics.get(name) for key, name in KERNEL_COUNTERS.items()},
        "program_runs": outcome.bpf_stats.get("runs"),
        "program_ns_per_run": ns_per_run(outcome.bpf_stats),
    }


def window_move(outcome: Outcome) -> dict[str, int | None]:
    """The packets taken for knock frames in the kernel (`passed_counter`) before the one-time
    window moved, and the flood packets taken after (all taken then, less the knocks' own
    packets)."""
    moved = outcome.snapshots.get("window_moved")
    counter = passed_counter(outcome.statistics)
    total = outcome.statistics.get(counter)
    if moved is None or total is None or counter not in moved:
        return {"kernel_passed_before_move": None, "flood_passed_after_move": None}
    before = int(moved[counter])
    return {"kernel_passed_before_move": before,
            "flood_passed_after_move": total - before - int(moved["knock_packets_after"])}


def summarize_all(outcomes: Sequence[Outcome]) -> Summaries:
    sums: Summaries = {}
    for outcome in outcomes:
        sums.setdefault(outcome.scenario, {})[outcome.daemon] = summarize(outcome)
    return sums


def overall(outcomes: Sequence[Outcome], daemons: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per daemon (those that ran, in `daemons`' order): start-up and memory over all
    scenarios, the engine it ran and its kernel memory (the kernel engine's maps)."""
    result: dict[str, dict[str, Any]] = {}
    for name in daemons:
        mine = [o for o in outcomes if o.daemon == name]
        if not mine:
            continue
        result[name] = {
            "startup_s": statistics.median(o.startup_s for o in mine),
            "startup_max_s": max(o.startup_s for o in mine),
            "rss_idle_mb": statistics.median(o.rss_start_kb for o in mine) / 1024,
            "rss_peak_mb": max(o.rss_peak_kb for o in mine) / 1024,
            "engine": " / ".join(sorted({engine_name(o.engine) or "" for o in mine}))
            or None,
            "kernel_memory_mib": max((m for o in mine
                                      if (m := kernel_memory_mib(o.engine)) is not None),
                                     default=None),
        }
    return result
