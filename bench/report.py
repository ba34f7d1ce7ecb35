"""The report: the Markdown table (one column per daemon, the first being the reference the
others are divided by), the targets checked, how it is measured; and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from bench.scenarios import Rows, Scenario
from bench.settings import (
    DAEMON_CPU,
    DOOR,
    GENERATOR_CPU,
    KNOCKD_DOOR,
    MOVE_SNAPSHOT_DELAY_S,
    OTP_WINDOW,
    SEQ_TIMEOUT,
    SPOOF_SOURCES,
    TARGETS,
    Settings,
)
from bench.summary import Outcome, Summaries


@dataclass(frozen=True)
class Table:
    """What the report is laid out by: the scenarios (sections, in order), the daemons
    (columns; the first is the reference) and the size of the run."""

    scenarios: Sequence[Scenario]
    daemons: Sequence[str]
    settings: Settings

    @property
    def reference(self) -> str:
        return self.daemons[0]

    @property
    def contenders(self) -> Sequence[str]:
        return self.daemons[1:]


class Row(NamedTuple):
    label: str
    values: tuple[str, ...]  # one per daemon, in column order
    target: str
    ratios: tuple[str, ...]  # each contender / the reference


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "—"
    return f"{ours / theirs:.2g}×" if ours / theirs < 10 else f"{ours / theirs:.0f}×"


def pair(counts: Sequence[int]) -> str:
    return f"{counts[0]}/{counts[1]}"


def fraction(counts: Sequence[int]) -> float | None:
    return counts[0] / counts[1] if counts[1] else None


def check(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def at_most(target: str) -> str:
    return f"≤ {TARGETS[target]:g}"


def get(summary: dict[str, Any] | None, *path: str) -> Any:
    """summary[path[0]][path[1]]..., None where any step is missing."""
    value: Any = summary
    for key in path:
        if value is None:
            return None
        value = value.get(key)
    return value


def all_opened(counts: Sequence[int] | None) -> bool:
    return counts is not None and counts[1] > 0 and counts[0] == counts[1]


NOT_APPLICABLE = "n/a"


class _Section:
    """The rows of one scenario, built from each daemon's summary. A daemon the scenario does
    not apply to shows n/a throughout (one that could have run but did not shows —)."""

    def __init__(self, by_daemon: dict[str, dict[str, Any]], daemons: Sequence[str],
                 applies: Callable[[str], bool] = lambda _: True) -> None:
        self.summaries = [by_daemon.get(name) for name in daemons]
        self.applies = [applies(name) for name in daemons]
        self.rows: list[Row] = []

    def _add(self, label: str, values: Sequence[str], target: str,
             ratios: Sequence[str]) -> None:
        shown = tuple(v if ok else NOT_APPLICABLE for v, ok in zip(values, self.applies,
                                                                    strict=True))
        self.rows.append(Row(label, shown, target, tuple(ratios)))

    def pairs(self, label: str, name: str, target: str = "",
              ok: Callable[[Sequence[int] | None], bool | None] = lambda _: None) -> None:
        found = [get(s, name) for s in self.summaries]
        values = [pair(p) if p else "—" for p in found]
        ref = fraction(found[0]) if found[0] else None
        self._add(
            label,
            (values[0], *(v + check(ok(p)) for v, p in zip(values[1:], found[1:], strict=True))),
            target,
            [ratio(fraction(p) if p else None, ref) for p in found[1:]])

    def numbers(self, label: str, path: tuple[str, ...], digits: int = 1, target: str = "",
                limit: float | None = None, scale: float = 1.0) -> None:
        found = [get(s, *path) for s in self.summaries]
        found = [v * scale if v is not None else None for v in found]
        self._add(
            label,
            (fmt(found[0], digits),
             *(fmt(v, digits) + check(None if limit is None or v is None else v <= limit)
               for v in found[1:])),
            target,
            [ratio(v, found[0]) for v in found[1:]])

    def ring_drops(self, must_be_zero: bool) -> None:
        # knockd (the reference) does not report libpcap's drop count.
        drops = [get(s, "ring_drops") for s in self.summaries[1:]]
        self._add(
            "kernel ring drops",
            (NOT_APPLICABLE, *(("—" if d is None else str(d))
                               + check(d == 0 if must_be_zero and d is not None else None)
                               for d in drops)),
            "0" if must_be_zero else "",
            ["—" for _ in drops])


def scenario_rows(rows: Rows, by_daemon: dict[str, dict[str, Any]], daemons: Sequence[str],
                  applies: Callable[[str], bool] = lambda _: True) -> list[Row]:
    section = _Section(by_daemon, daemons, applies)
    every = "all" if rows.all_detected else ""
    if rows.flag_door:
        section.pairs("exact URG+PSH knocks: opened/sent", "detected", every, all_opened)
        section.pairs("URG+PSH+ECE knocks: opened/sent", "ece_opened", "0",
                      lambda ece: None if ece is None else ece[0] == 0)
    else:
        section.pairs("knocks detected/sent", "detected", every,
                      all_opened if rows.all_detected else lambda _: None)
    if rows.during_after:
        section.pairs("… during the flood", "during")
        if rows.window_move:
            section.pairs("… during it, after the window moved", "during_moved")
        section.pairs("… right after it", "after")
    median, p95 = rows.latency_targets or (None, None)
    section.numbers("latency median (ms)", ("latency_ms", "median"), 1,
                    at_most(median) if median else "", TARGETS[median] if median else None)
    section.numbers("latency p95 (ms)", ("latency_ms", "p95"), 1,
                    at_most(p95) if p95 else "", TARGETS[p95] if p95 else None)
    section.numbers("latency max (ms)", ("latency_ms", "max"), 1)
    cpu = rows.cpu_target
    section.numbers("daemon CPU (s)", ("cpu_s",), 3, at_most(cpu) if cpu else "",
                    TARGETS[cpu] if cpu else None)
    if rows.flood:
        section.numbers("flood delivered (k pps)", ("flood_pps",), 1, scale=1e-3)
        per_packet = rows.per_packet_target
        section.numbers("daemon CPU per flood packet (µs)", ("us_per_packet",), 2,
                        at_most(per_packet) if per_packet else "",
                        TARGETS[per_packet] if per_packet else None)
        if rows.per_read_packet:
            section.numbers("… per packet read from the ring (µs)", ("us_per_read_packet",), 2)
        section.ring_drops(rows.no_ring_drops)
    if rows.window_move:
        section.numbers("packets the kernel filter passed to the daemon", ("kernel_passed",), 0)
        section.numbers("… until the window moved", ("kernel_passed_before_move",), 0)
        section.numbers("… after it, flood packets only",
                        ("flood_passed_after_move",), 0, "0", 0)
    section.numbers("RSS peak (MB)", ("rss_peak_mb",), 1, at_most("rss_peak_mb"),
                    TARGETS["rss_peak_mb"])
    return section.rows


def table_rows(table: Table, sums: Summaries) -> list[tuple[str, list[Row]]]:
    """(scenario heading, its rows) for each scenario that was run."""
    return [(s.heading(table.settings),
             scenario_rows(s.rows, sums[s.key], table.daemons, s.applies_to))
            for s in table.scenarios if s.key in sums]


def overall_rows(table: Table, overall: dict[str, dict[str, float | None]]) -> list[Row]:
    section = _Section({name: dict(figures) for name, figures in overall.items()},
                       table.daemons)
    section.numbers("start-up until listening, median (s)", ("startup_s",), 3,
                    at_most("startup_s"), TARGETS["startup_s"])
    section.numbers("RSS idle (MB)", ("rss_idle_mb",), 1, at_most("rss_idle_mb"),
                    TARGETS["rss_idle_mb"])
    section.numbers("RSS peak over all scenarios (MB)", ("rss_peak_mb",), 1,
                    at_most("rss_peak_mb"), TARGETS["rss_peak_mb"])
    return section.rows


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_markdown(table: Table, info: dict[str, str], sums: Summaries,
                    overall: dict[str, dict[str, float | None]]) -> str:
    settings = table.settings
    ratios = [f"{name} / {table.reference}" for name in table.contenders]
    blank = " |" * (len(table.daemons) + 1 + len(ratios))
    lines = [
        "# tportknockd vs knockd",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}",
        f"- Python {info['python']}; knockd {info['knockd']}; trafgen (netsniff-ng) "
        f"{info['trafgen']}; tportknockd {info['tportknockd']}",
        f"- daemon pinned to CPU {DAEMON_CPU}; trafgen, knock clients and tcpdump on CPU "
        f"{GENERATOR_CPU}; veth between two network namespaces",
        f"- floods: {settings.flood_s:g} s each; spoofed sources: {SPOOF_SOURCES} distinct "
        "addresses of 198.18.0.0/15",
        "",
        _line(["scenario / metric", *table.daemons, "target", *ratios]),
        "|---|" + "--:|" * (len(table.daemons) + 1 + len(ratios)),
    ]
    sections = [*table_rows(table, sums), ("whole run", overall_rows(table, overall))]
    for title, rows in sections:
        lines.append(f"| **{title}** |{blank}")
        lines += [_line([r.label, *r.values, r.target, *r.ratios]) for r in rows]
    lines += ["", *NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    "How it is measured:",
    "",
    f"- Doors: scenarios a–c and e use `{' '.join(DOOR)}` for tportknockd and "
    f"`sequence = {KNOCKD_DOOR}`, `tcpflags = syn` for knockd, {SEQ_TIMEOUT} s; the knock "
    "client (`python -m tportknockd.client -d 10 -s SRC`) sends a bare SYN, which both "
    "accept. Scenario d uses `tcp:110:up udp:111` vs `110:tcp,111:udp` with "
    "`tcpflags = urg,psh` (knockd cannot test ECE/CWR); its knocks are sent by hping3 "
    "(`-U -P`, and `-U -P -X` for ECE).",
    "- Both daemons run the same start_command, `date '+%IP% %s.%N' >> FILE`. Latency: "
    "from the capture timestamp (tcpdump on the client veth) of the knock's last packet to "
    "the time written by that command; both CLOCK_REALTIME. It includes the fork of "
    "/bin/sh and date (about 2 ms here).",
    "- knockd runs in the foreground without -v/-D/log file (its per-stage logging would "
    "cost it a write per flood packet); it counts as listening once it blocks in poll(). "
    "tportknockd: process start → its `ready:` log line.",
    "- Each scenario starts a fresh daemon. CPU: the daemon's process CPU clock "
    "(utime+stime to the ns, all threads) from just before the first packet until "
    "detection ended. RSS: VmRSS sampled every 20 ms and VmHWM. Ring drops: tportknockd's "
    "`kernel_drops` statistic; knockd does not report libpcap's drop count (n/a).",
    "- Floods: trafgen `--no-sock-mem -Q` in the client namespace, bounded by `-n` and "
    "`timeout`. Non-knock: random UDP/TCP-ACK to ports ≥ 10000 from random 198.18.0.0/15 "
    "sources. Spoofed: udp/7000 (the first frame) from 100,000 sources counting through "
    "198.18.0.0/15; at 10k pps (`-b 10000pps`, one pass; trafgen sends each second's "
    "10,000 packets in one burst at the start of that second) and at full rate (bounded by "
    "`timeout`: the flood's length plus 2 s). Delivered pps: "
    "the server veth's rx_packets over trafgen's sending time. Knocks: evenly spread over "
    "the flood, and (c) right after it.",
    "- knockd and IPv6: version 0.8 tracks IPv6 too, so scenario e is measured, not "
    "n/a.",
    f"- One-time door (f, tportknockd only: knockd has no time-based sequences, n/a): one "
    f"event per knocking user, each with its own secret (mode 600), `otp_window = "
    f"{OTP_WINDOW}`, `timeout = {SEQ_TIMEOUT}`, otherwise the defaults (4 frames of `tcp:s "
    "udp` from 20000–59999); each user knocks its own event with `tportknock -c CONF -e "
    "EVENT`. The flood is spoofed copies of the first frame of the previous window's "
    "sequence (derived by `tportknockd.otp` from the daemon's config: what someone who saw "
    "a knock in that window would send), 100,000 sources of 198.18.0.0/15. The window "
    "changes 4.5 s into the flood (1.5 s with --quick; between two of the 10k pps flood's "
    "bursts): until then that window is still accepted (w−1, for clock skew) "
    "and the kernel passes the frame; after it the recompiled filter drops it. Packets the "
    "kernel filter passed: tportknockd's `kernel_packets` (ring drops included), read by "
    f"SIGUSR1 {MOVE_SNAPSHOT_DELAY_S:g} s after the change and at exit; after the change, "
    "the knock packets captured from then on are left out. *During it, after the window "
    "moved*: knocks whose first packet went out after the change.",
]


def closing_line(seconds: float, settings: Settings) -> str:
    return f"\nWhole run: {seconds:.0f} s{' (--quick)' if settings.is_quick else ''}.\n"


def one_line(summary: dict[str, Any]) -> str:
    """A scenario's figures for one daemon, printed as the run goes."""
    lat = summary["latency_ms"]
    return (f"detected {pair(summary['detected'])}, latency median {fmt(lat['median'])} ms "
            f"p95 {fmt(lat['p95'])} max {fmt(lat['max'])}, CPU {summary['cpu_s']:.3f} s, "
            f"RSS peak {summary['rss_peak_mb']:.1f} MB, flood {fmt(summary['flood_pps'], 0)} pps"
            f", ring drops {summary['ring_drops']}")


def results_json(info: dict[str, str], settings: Settings, sums: Summaries,
                 overall: dict[str, dict[str, float | None]], outcomes: Sequence[Outcome]) -> str:
    return json.dumps({
        "machine": info, "settings": asdict(settings), "targets": TARGETS,
        "summary": sums, "overall": overall, "outcomes": [asdict(o) for o in outcomes],
    }, indent=1) + "\n"


def write(out: Path, markdown: str, results: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "latest.md", out / "latest.json"
    md.write_text(markdown)
    js.write_text(results)
    return md, js
