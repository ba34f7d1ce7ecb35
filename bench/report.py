"""The report: the Markdown table (one column per daemon, the first being the reference the
others are divided by, and the kernel engine by the Python one), the targets checked, the
kernel cost per packet, how it is measured; and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from bench.daemons import ENGINE_PAIR, KERNEL_COLUMN
from bench.door_report import DOOR_NOTES, DOOR_TARGETS, door_summary, render_doors
from bench.doors import BUILTIN, COMMAND_SIDE, KNOCKD_SIDE
from bench.kernel_cost import ROWS as KERNEL_COST_ROWS
from bench.kernel_cost import KernelCost
from bench.scenarios import Rows, Scenario
from bench.settings import (
    DAEMON_CPU,
    DOOR,
    GENERATOR_CPU,
    KERNEL_COST_REPEAT,
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
    (columns; the first is the reference) and the size of the run. Ratio columns: each
    contender / the reference, then each of `extra_ratios` whose two daemons are columns."""

    scenarios: Sequence[Scenario]
    daemons: Sequence[str]
    settings: Settings
    extra_ratios: Sequence[tuple[str, str]] = (ENGINE_PAIR,)

    @property
    def reference(self) -> str:
        return self.daemons[0]

    @property
    def contenders(self) -> Sequence[str]:
        return self.daemons[1:]

    @property
    def ratio_pairs(self) -> list[tuple[int, int]]:
        """(numerator, denominator) column indices of the ratio columns."""
        pairs = [(i, 0) for i in range(1, len(self.daemons))]
        names = list(self.daemons)
        pairs += [(names.index(a), names.index(b)) for a, b in self.extra_ratios
                  if a in names and b in names]
        return pairs

    def ratio_headings(self) -> list[str]:
        return [f"{self.daemons[a]} / {self.daemons[b]}" for a, b in self.ratio_pairs]


class Row(NamedTuple):
    label: str
    values: tuple[str, ...]  # one per daemon, in column order
    target: str
    ratios: tuple[str, ...]  # one per ratio column (Table.ratio_pairs)


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


def default_pairs(daemons: Sequence[str]) -> list[tuple[int, int]]:
    """Each contender / the reference (the first)."""
    return [(i, 0) for i in range(1, len(daemons))]


class _Section:
    """The rows of one scenario, built from each daemon's summary. A daemon the scenario does
    not apply to shows n/a throughout (one that could have run but did not shows —). Ratio
    columns divide the figures of the (numerator, denominator) columns of `pairs`."""

    def __init__(self, by_daemon: dict[str, dict[str, Any]], daemons: Sequence[str],
                 applies: Callable[[str], bool] = lambda _: True,
                 pairs: Sequence[tuple[int, int]] | None = None) -> None:
        self.summaries = [by_daemon.get(name) for name in daemons]
        self.applies = [applies(name) for name in daemons]
        self.ratio_pairs = default_pairs(daemons) if pairs is None else list(pairs)
        self.rows: list[Row] = []

    def _add(self, label: str, values: Sequence[str], target: str,
             ratios: Sequence[str]) -> None:
        shown = tuple(v if ok else NOT_APPLICABLE for v, ok in zip(values, self.applies,
                                                                    strict=True))
        self.rows.append(Row(label, shown, target, tuple(ratios)))

    def _ratios(self, found: Sequence[float | None]) -> list[str]:
        return [ratio(found[a], found[b]) for a, b in self.ratio_pairs]

    def _no_ratios(self) -> list[str]:
        return ["—" for _ in self.ratio_pairs]

    def pairs(self, label: str, name: str, target: str = "",
              ok: Callable[[Sequence[int] | None], bool | None] = lambda _: None) -> None:
        found = [get(s, name) for s in self.summaries]
        values = [pair(p) if p else "—" for p in found]
        self._add(
            label,
            (values[0], *(v + check(ok(p)) for v, p in zip(values[1:], found[1:], strict=True))),
            target,
            self._ratios([fraction(p) if p else None for p in found]))

    def numbers(self, label: str, path: tuple[str, ...], digits: int = 1, target: str = "",
                limit: float | None = None, scale: float = 1.0,
                absent: str | Callable[[dict[str, Any]], str] = "—") -> None:
        """A figure per daemon, checked against `limit` for the contenders. `absent` is shown
        where a daemon ran and has no such figure (or what it gives for that daemon's
        summary)."""
        found = [get(s, *path) for s in self.summaries]
        found = [v * scale if v is not None else None for v in found]
        shown = [fmt(v, digits) if v is not None or s is None
                 else absent(s) if callable(absent) else absent
                 for v, s in zip(found, self.summaries, strict=True)]
        self._add(
            label,
            (shown[0],
             *(text + check(None if limit is None or v is None else v <= limit)
               for text, v in zip(shown[1:], found[1:], strict=True))),
            target,
            self._ratios(found))

    def texts(self, label: str, values: Sequence[str], target: str = "") -> None:
        """A row of given texts, without ratios."""
        self._add(label, values, target, self._no_ratios())

    def ring_drops(self, must_be_zero: bool) -> None:
        # knockd (the reference) does not report libpcap's drop count.
        drops = [get(s, "ring_drops") for s in self.summaries[1:]]
        self.texts(
            "kernel ring drops",
            (NOT_APPLICABLE, *(("—" if d is None else str(d))
                               + check(d == 0 if must_be_zero and d is not None else None)
                               for d in drops)),
            "0" if must_be_zero else "")

    def kernel_counters(self) -> None:
        """The kernel engine's counters (n/a for a daemon without them)."""
        self.numbers("packets the kernel engine's program saw", ("kernel_seen",), 0,
                     absent=NOT_APPLICABLE)
        self.numbers("… that matched a knock frame", ("kernel_matched",), 0,
                     absent=NOT_APPLICABLE)
        self.numbers("… fresh attempts evicted (one frame matched)", ("kernel_evicted_fresh",),
                     0, absent=NOT_APPLICABLE)
        self.numbers("… advanced attempts evicted (two or more)",
                     ("kernel_evicted_advanced",), 0, "0", 0, absent=NOT_APPLICABLE)
        self.numbers("… completions lost (ring buffer full)", ("kernel_lost",), 0, "0", 0,
                     absent=NOT_APPLICABLE)

    def kernel_program(self) -> None:
        """The kernel engine's program over the window, by the kernel's run statistics: n/a
        for a daemon without one, — where the kernel engine ran but they were not taken."""
        def absent(summary: dict[str, Any]) -> str:
            return "—" if summary.get("engine") == "kernel" else NOT_APPLICABLE

        self.numbers("kernel engine's program: runs (bpf stats)", ("program_runs",), 0,
                     absent=absent)
        self.numbers("… ns per run (bpf stats, their clock reads included)",
                     ("program_ns_per_run",), 0, absent=absent)


def scenario_rows(rows: Rows, by_daemon: dict[str, dict[str, Any]], daemons: Sequence[str],
                  applies: Callable[[str], bool] = lambda _: True,
                  pairs: Sequence[tuple[int, int]] | None = None) -> list[Row]:
    section = _Section(by_daemon, daemons, applies, pairs)
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
    if rows.kernel_counters:
        section.kernel_counters()
    section.kernel_program()
    if rows.window_move:
        section.numbers("packets taken for knock frames in the kernel", ("kernel_passed",), 0)
        section.numbers("… until the window moved", ("kernel_passed_before_move",), 0)
        section.numbers("… after it, flood packets only",
                        ("flood_passed_after_move",), 0, "0", 0)
    section.numbers("RSS peak (MB)", ("rss_peak_mb",), 1, at_most("rss_peak_mb"),
                    TARGETS["rss_peak_mb"])
    return section.rows


def table_rows(table: Table, sums: Summaries) -> list[tuple[str, list[Row]]]:
    """(scenario heading, its rows) for each scenario that was run."""
    return [(s.heading(table.settings),
             scenario_rows(s.rows, sums[s.key], table.daemons, s.applies_to,
                           table.ratio_pairs))
            for s in table.scenarios if s.key in sums]


def overall_rows(table: Table, overall: dict[str, dict[str, Any]]) -> list[Row]:
    section = _Section({name: dict(figures) for name, figures in overall.items()},
                       table.daemons, pairs=table.ratio_pairs)
    section.texts("engine (its log line at start, checked)",
                  ["—" if s is None else str(s.get("engine") or NOT_APPLICABLE)
                   for s in section.summaries])
    section.numbers("start-up until listening, median (s)", ("startup_s",), 3,
                    at_most("startup_s"), TARGETS["startup_s"])
    section.numbers("RSS idle (MB)", ("rss_idle_mb",), 1, at_most("rss_idle_mb"),
                    TARGETS["rss_idle_mb"])
    section.numbers("RSS peak over all scenarios (MB)", ("rss_peak_mb",), 1,
                    at_most("rss_peak_mb"), TARGETS["rss_peak_mb"])
    section.numbers("kernel memory of the engine's BPF maps (MiB)", ("kernel_memory_mib",), 1,
                    absent=NOT_APPLICABLE)
    return section.rows


def kernel_cost_heading(cost: KernelCost) -> str:
    return (f"kernel cost per packet (BPF_PROG_TEST_RUN, µs; repeat {cost.repeat:,}, "
            f"best of {cost.rounds})")


def kernel_cost_rows(table: Table, cost: KernelCost, column: str) -> list[Row]:
    """The kernel engine's cost per packet, in its column (n/a in the others). The first-frame
    rows measured with `repeat` runs per call carry issue 8's target."""
    target = "kernel_first_frame_us"
    rows = []
    for key, label in KERNEL_COST_ROWS:
        # The statistics rows are missing from older results, and where they were not taken.
        nanos = cost.rows.get(key)
        micro = None if nanos is None else nanos / 1000
        limit = TARGETS[target] if key in ("first_same", "first_inserted") else None
        values = tuple(fmt(micro, 3) + check(None if limit is None or micro is None
                                              else micro <= limit)
                       if name == column else NOT_APPLICABLE for name in table.daemons)
        rows.append(Row(label, values, at_most(target) if limit else "",
                        tuple("—" for _ in table.ratio_pairs)))
    size = tuple(str(cost.instructions) if name == column else NOT_APPLICABLE
                 for name in table.daemons)
    rows.append(Row("program size (eBPF instructions)", size, "",
                    tuple("—" for _ in table.ratio_pairs)))
    return rows


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_markdown(table: Table, info: dict[str, str], sums: Summaries,
                    overall: dict[str, dict[str, Any]],
                    kernel_cost: KernelCost | None = None,
                    doors: dict[str, Any] | None = None) -> str:
    """The report; `doors`: the door figures (bench.doors), a section of their own when
    given (older results have none)."""
    settings = table.settings
    ratios = table.ratio_headings()
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
    sections = table_rows(table, sums)
    if kernel_cost is not None and KERNEL_COLUMN in table.daemons:
        sections.append((kernel_cost_heading(kernel_cost),
                         kernel_cost_rows(table, kernel_cost, KERNEL_COLUMN)))
    sections.append(("whole run", overall_rows(table, overall)))
    for title, rows in sections:
        lines.append(f"| **{title}** |{blank}")
        lines += [_line([r.label, *r.values, r.target, *r.ratios]) for r in rows]
    if doors:
        lines += render_doors(doors, BUILTIN, COMMAND_SIDE, KNOCKD_SIDE)
    lines += ["", *NOTES, *(DOOR_NOTES if doors else [])]
    return "\n".join(lines) + "\n"


NOTES = [
    "How it is measured:",
    "",
    "- Columns: knockd (the reference), and tportknockd twice, with `--engine python` "
    "(matching in Python behind the classic BPF filter) and with `--engine kernel` (matching "
    "in an eBPF socket filter, attempts in BPF maps). Each tportknockd run must log the "
    "`engine:` line of the engine its column names right before `ready:`, or the bench "
    "fails. Ratio columns: each column / knockd, and the kernel engine / the Python one.",
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
    "`kernel_drops` statistic; knockd does not report libpcap's drop count (n/a). The kernel "
    "engine's program returns 0 for every packet, so it queues nothing on the ring; its "
    "counters (`kernel_seen`, `kernel_knocks`, `kernel_evicted_fresh`, "
    "`kernel_evicted_advanced`, `kernel_lost`) are those of the daemon's exit statistics "
    "line. The program runs in the kernel's receive path, which on a veth is the sending "
    "CPU's softirq: its cost is in no daemon CPU figure, hence the kernel cost rows.",
    "- Floods: trafgen `--no-sock-mem -Q` in the client namespace, bounded by `-n` and "
    "`timeout`, sent by sendto(2) from one worker on CPU 1 (trafgen's slow path: `-b` for "
    "a rate, `-t 0` for full rate), never from its TX_RING: a TX_RING packet reaches the "
    "veth's peer with all but its Ethernet header in page fragments, which no NIC's "
    "receive path produces and which the kernel engine's program does not read. Non-knock: "
    "random UDP/TCP-ACK to ports ≥ 10000 from random 198.18.0.0/15 "
    "sources. Spoofed: udp/7000 (the first frame) from 100,000 sources counting through "
    "198.18.0.0/15; at 10k pps (`-b 10000pps`, one pass; trafgen sends each second's "
    "10,000 packets in one burst at the start of that second) and at full rate (bounded by "
    "`timeout`: the flood's length plus 2 s). Delivered pps: "
    "the server veth's rx_packets over trafgen's sending time. Knocks: evenly spread over "
    "the flood, and (c) right after it.",
    "- knockd and IPv6: version 0.8 tracks IPv6 too, so scenario e is measured, not "
    "n/a.",
    f"- One-time door (f, tportknockd only, both engines: knockd has no time-based "
    f"sequences, n/a): one "
    f"event per knocking user, each with its own secret (mode 600), `otp_window = "
    f"{OTP_WINDOW}`, `timeout = {SEQ_TIMEOUT}`, otherwise the defaults (4 frames of `tcp:s "
    "udp` from 20000–59999); each user knocks its own event with `tportknock -c CONF -e "
    "EVENT`. The flood is spoofed copies of the first frame of the previous window's "
    "sequence (derived by `tportknockd.onetime.derivation` from the daemon's config: what "
    "someone who saw "
    "a knock in that window would send), 100,000 sources of 198.18.0.0/15. The window "
    "changes 4.5 s into the flood (1.5 s with --quick; between two of the 10k pps flood's "
    "bursts): until then that window is still accepted (w−1, for clock skew) and the "
    "kernel takes the frame for a knock frame; after it the recompiled filter (Python "
    "engine) or the updated frame table (kernel engine) no longer does. Packets taken for "
    "knock frames in the kernel: with the Python engine those the classic filter passed to "
    "the ring (`kernel_packets`, ring drops included), with the kernel engine those its "
    "program matched to a frame (`kernel_knocks`); read by "
    f"SIGUSR1 {MOVE_SNAPSHOT_DELAY_S:g} s after the change and at exit; after the change, "
    "the knock packets captured from then on are left out. *During it, after the window "
    "moved*: knocks whose first packet went out after the change.",
    "- Kernel cost per packet (the kernel engine's column): `bench/kernel_cost.py`'s "
    "measurement, run by the bench before the scenarios. The kernel engine's program for "
    "the README's `ssh` example runs over frames in memory (BPF_PROG_TEST_RUN: nothing is "
    f"sent), {KERNEL_COST_REPEAT:,} runs per call, the best of the rounds. *First frame, "
    "same source*: the attempt exists after the first run (the look-up path). *Inserted "
    "every run*: the attempt is made to expire at once, so each run takes it out and puts "
    "a new one in (a spoofed flood's path with warm caches). *New source each run*: one run "
    "per call for each of 100,000 spoofed sources (20,000 with --quick), the median less "
    "that of an empty program, the fresh table full (evictions) after the first round; "
    "each run starts with caches cold from the system call; what a real flood costs is in "
    "each scenario's *ns per run (bpf stats)* row. "
    "The target (≤ 0.2 µs, issue 8) is checked on the two first-frame rows "
    "measured with repeated runs.",
    "- Kernel engine's program, runs and ns per run (bpf stats): what the kernel's own run "
    "statistics say of the daemon's program over each scenario's window, in the receive path "
    "of the real traffic (in a spoofed flood every packet is a new source: an attempt "
    "inserted, another evicted). The bench holds them on (BPF_ENABLE_STATS) from after the "
    "kernel cost rows to its end; it finds the daemon's program by the `prog_id:` of the "
    "daemon's descriptors in /proc/PID/fdinfo, and reads its run_cnt and run_time_ns "
    "(BPF_OBJ_GET_INFO_BY_FD) at the window's start and end. Each run is then timed between "
    "two clock reads, which the time per run includes in part: the kernel cost rows *bpf "
    "stats* give what they report for an empty program (the floor under every figure) and "
    "the time they add to each run.",
    "- Kernel memory: the kernel engine's own figure in its `engine:` line (the "
    "preallocated fresh table and advanced LRU map, and the completions' ring buffer); it "
    "is not in the "
    "daemon's RSS.",
]


def closing_line(seconds: float, settings: Settings) -> str:
    return f"\nWhole run: {seconds:.0f} s{' (--quick)' if settings.is_quick else ''}.\n"


def one_line(summary: dict[str, Any]) -> str:
    """A scenario's figures for one daemon, printed as the run goes."""
    lat = summary["latency_ms"]
    line = (f"detected {pair(summary['detected'])}, latency median {fmt(lat['median'])} ms "
            f"p95 {fmt(lat['p95'])} max {fmt(lat['max'])}, CPU {summary['cpu_s']:.3f} s, "
            f"RSS peak {summary['rss_peak_mb']:.1f} MB, flood {fmt(summary['flood_pps'], 0)} pps"
            f", ring drops {summary['ring_drops']}")
    if summary.get("program_runs") is not None:
        line += (f", program {summary['program_runs']} runs, "
                 f"{fmt(summary['program_ns_per_run'], 0)} ns per run")
    return line


def results_json(info: dict[str, str], settings: Settings, sums: Summaries,
                 overall: dict[str, dict[str, Any]], outcomes: Sequence[Outcome],
                 kernel_cost: KernelCost | None = None,
                 doors: dict[str, Any] | None = None) -> str:
    """The JSON file; the door figures (raw, their summary and targets) only when given."""
    data: dict[str, Any] = {
        "machine": info, "settings": asdict(settings), "targets": TARGETS,
        "summary": sums, "overall": overall, "outcomes": [asdict(o) for o in outcomes],
        "kernel_cost": asdict(kernel_cost) if kernel_cost else None,
    }
    if doors:
        data |= {"doors": doors, "door_summary": door_summary(doors),
                 "door_targets": DOOR_TARGETS}
    return json.dumps(data, indent=1) + "\n"


def write(out: Path, markdown: str, results: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "latest.md", out / "latest.json"
    md.write_text(markdown)
    js.write_text(results)
    return md, js
