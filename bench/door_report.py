"""The door figures' part of the report (bench.doors): summaries of what each side did, and
the Markdown section, with issue 17's targets checked on the built-in door's column. Old
results have no door figures: then there is no section."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.summary import latency_stats

#: Issue 17 §4's targets for the built-in door.
DOOR_TARGETS = {
    "open_median_ms": 1.0,
    "open_p95_ms": 2.0,
    "open_vs_knockd": 0.1,  # built-in median / knockd's, same run
    "probe_interval_ms": 0.25,  # connect attempts at least this often
    "flood_cpu_ratio": 1.5,  # daemon CPU with the flood / without, "about unchanged" ...
    "flood_cpu_slack_s": 0.02,  # ... or at most this much more
}


def _window(figures: dict[str, Any]) -> dict[str, Any]:
    knocks = figures["knocks"]
    sent = [k for k in knocks if k["sent"]]
    latencies = [k["latency_ms"] for k in sent if k["latency_ms"] is not None]
    intervals = [k["interval_ms"] for k in knocks if k["interval_ms"] is not None]
    return {
        "opened": (sum(1 for k in sent if k["opened"]), len(sent)),
        "open_before_knock": sum(1 for k in sent if k["latency_ms"] is not None
                                 and k["latency_ms"] < 0),
        "latency_ms": latency_stats(latencies),
        "probe_interval_ms": max(intervals) if intervals else None,
        "cpu_s": figures["cpu_s"], "stat_cpu_s": figures["stat_cpu_s"],
        "children_cpu_s": figures["children_cpu_s"], "forks": figures["forks"],
    }


def door_summary(doors: dict[str, Any]) -> dict[str, Any]:
    """Per part, per side: the figures the report shows."""
    summary: dict[str, Any] = {}
    for side, figures in doors.get("dopen", {}).items():
        summary.setdefault("dopen", {})[side] = _window(figures)
    for side, figures in doors.get("dspoof", {}).items():
        summary.setdefault("dspoof", {})[side] = {
            key: figures[key] for key in (
                "knockers", "elements_seen", "elements_foreign", "elements_at_end", "all_in_s",
                "forks", "fork_overruns", "cpu_s", "stat_cpu_s", "children_cpu_s", "fired",
                "door_failures", "send_s")}
    for side, figures in doors.get("dflood", {}).items():
        quiet, flood = _window(figures["quiet"]), _window(figures["flood"])
        sent_s = figures["flood"]["flood_s"]
        flood["flood_pps"] = figures["flood"]["flood_delivered"] / sent_s if sent_s else None
        summary.setdefault("dflood", {})[side] = {"quiet": quiet, "flood": flood}
    return summary


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_doors(doors: dict[str, Any], builtin: str, command: str, knockd: str) -> list[str]:
    """The Markdown lines of the door section: one column per side, targets checked in the
    built-in door's (`builtin`); `command` and `knockd` name the sides it is compared with."""
    s = doors["settings"]
    sides: list[str] = doors["sides"]
    summary = door_summary(doors)
    t = DOOR_TARGETS
    lines = ["", "## Doors (issue 17 §4)", "",
             _line(["door / metric", *sides, "target"]),
             "|---|" + "--:|" * (len(sides) + 1)]
    blank = " |" * (len(sides) + 1)

    def row(label: str, cells: dict[str, str], target: str = "") -> None:
        lines.append(_line([label, *(cells.get(side, "—") for side in sides), target]))

    def by_side(part: dict[str, Any], show: Any, check: Any = None) -> dict[str, str]:
        cells = {}
        for side, figures in part.items():
            text = show(figures)
            cells[side] = text + (_mark(check(figures)) if check and side == builtin else "")
        return cells

    opened = summary.get("dopen")
    if opened:
        lines.append(f"| **knock to door open: {s['knocks']} knocks one by one, a new connection "
                     f"to tcp/22 tried every {s['probe_interval_us']} µs + the loop** |{blank}")
        knockd_median = (opened.get(knockd) or {}).get("latency_ms", {}).get("median")
        row("doors opened/knocks", by_side(opened, lambda f: f"{f['opened'][0]}/{f['opened'][1]}",
                                           lambda f: f["opened"][0] == f["opened"][1] > 0),
            "all")
        row("median (ms)", by_side(opened, lambda f: _num(f["latency_ms"]["median"], 2),
                                   lambda f: _le(f["latency_ms"]["median"],
                                                 t["open_median_ms"])),
            f"≤ {t['open_median_ms']:g}")
        row("p95 (ms)", by_side(opened, lambda f: _num(f["latency_ms"]["p95"], 2),
                                lambda f: _le(f["latency_ms"]["p95"], t["open_p95_ms"])),
            f"≤ {t['open_p95_ms']:g}")
        row("max (ms)", by_side(opened, lambda f: _num(f["latency_ms"]["max"], 2)))
        row(f"median / {knockd}'s median",
            by_side(opened, lambda f: _ratio(f["latency_ms"]["median"], knockd_median),
                    lambda f: _le(_div(f["latency_ms"]["median"], knockd_median),
                                  t["open_vs_knockd"])),
            f"≤ {t['open_vs_knockd']:g}×")
        row("longest mean interval between connect attempts (ms)",
            by_side(opened, lambda f: _num(f["probe_interval_ms"], 3),
                    lambda f: _le(f["probe_interval_ms"], t["probe_interval_ms"])),
            f"≤ {t['probe_interval_ms']:g}")
        row("connections through before the knock ended", by_side(
            opened, lambda f: str(f["open_before_knock"]), lambda f: f["open_before_knock"] == 0),
            "0")
        row("processes forked by the daemon", by_side(opened, lambda f: str(f["forks"]),
                                                      lambda f: f["forks"] == 0), "0")
    spoof = summary.get("dspoof")
    if spoof:
        command_cpu = (spoof.get(command) or {}).get("stat_cpu_s")
        lines.append(f"| **{s['spoofed_knockers']:,} spoofed knockers of 198.18.0.0/15, the "
                     f"whole sequence each, within {s['spoof_s']:g} s** |{blank}")
        row("their elements that appeared in the set", by_side(
            spoof, lambda f: f"{f['elements_seen']}/{f['knockers']}",
            lambda f: f["elements_seen"] == f["knockers"] and f["elements_foreign"] == 0),
            "all")
        row("… all there after (s, from the first knock)",
            by_side(spoof, lambda f: _num(f["all_in_s"], 2)))
        row("processes forked by the daemon", by_side(
            spoof, lambda f: str(f["forks"]),
            lambda f: f["forks"] == 0 and f["fork_overruns"] == 0), "0")
        row("events fired (daemon statistics)", by_side(
            spoof, lambda f: "n/a" if f["fired"] is None else str(f["fired"])))
        row("daemon CPU, utime+stime (s)", by_side(
            spoof, lambda f: _num(f["stat_cpu_s"], 2),
            lambda f: None if command_cpu is None else f["stat_cpu_s"] < command_cpu),
            f"< {command}'s")
        row("… its process CPU clock (s)", by_side(spoof, lambda f: _num(f["cpu_s"], 3)))
        row("… its children's, cutime+cstime (s)",
            by_side(spoof, lambda f: _num(f["children_cpu_s"], 2)))
    flood = summary.get("dflood")
    if flood:
        lines.append(f"| **non-knock flood to tcp/22 (SYNs from random 198.18.0.0/15 sources) "
                     f"at {s['flood_pps'] // 1000}k pps for {s['flood_s']:g} s, "
                     f"{s['flood_knocks']} knocks during it** |{blank}")
        row("flood delivered (k pps)", by_side(
            flood, lambda f: _num(None if f["flood"]["flood_pps"] is None
                                  else f["flood"]["flood_pps"] / 1000, 1)))
        row(f"daemon CPU over {s['flood_s']:g} s of knocks without the flood (s)",
            by_side(flood, lambda f: _num(f["quiet"]["cpu_s"], 3)))
        row("… with the flood (s)", by_side(
            flood, lambda f: _num(f["flood"]["cpu_s"], 3),
            lambda f: f["flood"]["cpu_s"] <= max(t["flood_cpu_ratio"] * f["quiet"]["cpu_s"],
                                                 f["quiet"]["cpu_s"] + t["flood_cpu_slack_s"])),
            f"≈ without (≤ {t['flood_cpu_ratio']:g}× or +{t['flood_cpu_slack_s'] * 1000:g} ms)")
        row("doors opened/knocks during the flood", by_side(
            flood, lambda f: f"{f['flood']['opened'][0]}/{f['flood']['opened'][1]}",
            lambda f: f["flood"]["opened"][0] == f["flood"]["opened"][1] > 0), "all")
        row("… knock to door open during the flood, median / p95 (ms)", by_side(
            flood, lambda f: f"{_num(f['flood']['latency_ms']['median'], 2)} / "
                             f"{_num(f['flood']['latency_ms']['p95'], 2)}"))
        row("… without the flood, median / p95 (ms)", by_side(
            flood, lambda f: f"{_num(f['quiet']['latency_ms']['median'], 2)} / "
                             f"{_num(f['quiet']['latency_ms']['p95'], 2)}"))
    return lines


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _ratio(a: float | None, b: float | None) -> str:
    value = _div(a, b)
    return "—" if value is None else f"{value:.2g}×"


DOOR_NOTES = [
    "- Doors: three sides, each part with a fresh daemon and a clean ruleset in the server "
    "namespace (`nft flush ruleset` there). *tportknockd door*: `door = tcp:22`, "
    "`door_timeout = 30` (the daemon's table `inet tportknockd`, libnftables, no fork). "
    "*tportknockd nft command*: `start_command = nft add element inet knock allowed "
    "'{ %IP% timeout 30s }'` on the ruleset of docs/firewall-recipes.md (*doors that close "
    "themselves*: a set with `flags timeout`, tcp/22 dropped at input unless the source is "
    "in it). *knockd nft command*: knockd with the same command. Same sequence as scenario "
    "a; tportknockd with `--engine kernel`. A listener in the server namespace accepts on "
    "tcp/22.",
    "- Knock to door open: before each knock a prober (bench/door_probe.py) starts in the "
    "client namespace and makes a new non-blocking connect(2) from the knock's source to "
    "tcp/22 every 50 µs plus its loop (the longest mean interval is in the table), each on "
    "its own socket and so its own conntrack entry. A SYN the door drops gets no answer "
    "(its retransmission would come 1 s later), so an attempt completes within the veth's "
    "round trip or never; each is given up after 5 ms. Latency: from the capture time of the "
    "knock's last frame (tcpdump on the client veth, the probes left out) to the time just "
    "before the connect(2) of the first attempt that completed (both CLOCK_REALTIME); late "
    "by at most one interval. The probes share CPU 1 with the knock client and tcpdump.",
    "- Spoofed knockers: trafgen sends the three frames of the sequence for each source in "
    "turn (three packet blocks counting through the same sources, `-b` at the rate that "
    "spreads them over the time given, `-n` and `timeout` as bounds). The door's set is "
    "read every 0.25 s (`nft -j list set`, server namespace) and the elements seen are "
    "collected, so a door that timed out before the end still counts. Forks: the kernel's "
    "process events connector (bench/forks.py: every fork on the system, counted where the "
    "parent is the daemon and the child a process, not a thread), from the flood's start to "
    "the end of the wait. CPU: the daemon's utime+stime (/proc/PID/stat) and process CPU "
    "clock; its children's (sh, nft) are in cutime+cstime, which counts those it has "
    "waited for.",
    "- Non-knock flood to the door port: trafgen `-b` at the rate given, bounded by `-n` "
    "and `timeout`, SYNs to tcp/22 from random 198.18.0.0/15 sources, which the door drops. "
    "Daemon CPU (process CPU clock) over a window of knocks spread over the flood's length "
    "without it, then over one with it; the knocks in both windows are probed as above.",
]
