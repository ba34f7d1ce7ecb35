"""bench.report: the Markdown table, its target checks, ratios and column layout."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.report import (
    Table,
    closing_line,
    fmt,
    one_line,
    ratio,
    render_markdown,
    results_json,
    scenario_rows,
)
from bench.scenarios import SCENARIOS, Rows
from bench.settings import REPO, Settings
from bench.summary import Outcome, overall, summarize_all

RESULTS = REPO / "bench" / "results"
INFO = {"date": "2026-01-01 00:00 UTC", "nproc": "2", "cpu": "a CPU", "kernel": "6.1",
        "python": "3.11", "knockd": "0.8", "trafgen": "0.6", "tportknockd": "abc1234"}


def summary(**figures: Any) -> dict[str, Any]:
    """A scenario summary with every figure the report reads; `figures` override."""
    base: dict[str, Any] = {
        "detected": (5, 5), "during": (0, 0), "after": (0, 0), "ece_opened": (0, 0),
        "latency_ms": {"median": 3.0, "p95": 4.0, "max": 4.5}, "cpu_s": 0.01,
        "rss_start_mb": 19.0, "rss_peak_mb": 19.5, "startup_s": 0.2, "ring_drops": None,
        "flood_pps": None, "flood_delivered": None, "us_per_packet": None,
        "us_per_read_packet": None, "during_moved": (0, 0), "kernel_passed": None,
        "kernel_passed_before_move": None, "flood_passed_after_move": None,
    }
    return base | figures


def by_label(rows: list[Any]) -> dict[str, Any]:
    return {row.label: row for row in rows}


@pytest.mark.skipif(not (RESULTS / "latest.json").exists(), reason="no committed results")
def test_committed_results_render_to_the_committed_report() -> None:
    """The report and summary code regenerate bench/results/latest.md and latest.json from the
    outcomes recorded in latest.json, byte for byte."""
    text = (RESULTS / "latest.json").read_text()
    data = json.loads(text)
    settings = Settings(**data["settings"])
    outcomes = [Outcome(**o) for o in data["outcomes"]]
    daemons = list(data["overall"])
    sums, whole = summarize_all(outcomes), overall(outcomes, daemons)
    assert results_json(data["machine"], settings, sums, whole, outcomes) == text
    markdown = render_markdown(Table(SCENARIOS, daemons, settings), data["machine"], sums, whole)
    markdown += closing_line(float(data["machine"]["run_seconds"]), settings)
    assert markdown == (RESULTS / "latest.md").read_text()


def test_ratio_and_number_formats() -> None:
    assert ratio(0.5, 2.0) == "0.25×"
    assert ratio(3.0, 0.0003) == "10000×"
    assert ratio(9.5, 1.0) == "9.5×"
    assert ratio(99.6, 1.0) == "100×"  # whole numbers from 10 up, never 1e+02
    assert ratio(None, 1.0) == ratio(1.0, None) == ratio(1.0, 0.0) == "—"
    assert fmt(None) == "—" and fmt(2.345, 2) == "2.35" and fmt(7.0, 0) == "7"


def test_idle_targets_are_checked_for_the_contender_only() -> None:
    rows = by_label(scenario_rows(
        SCENARIOS[0].rows,
        {"knockd": summary(latency_ms={"median": 28.0, "p95": 48.0, "max": 50.0}),
         "tportknockd": summary(latency_ms={"median": 3.1, "p95": 4.9, "max": 6.0})},
        ["knockd", "tportknockd"]))
    assert rows["latency median (ms)"].values == ("28.0", "3.1 ✗")
    assert rows["latency median (ms)"].target == "≤ 3"
    assert rows["latency p95 (ms)"].values == ("48.0", "4.9 ✓")
    assert rows["latency p95 (ms)"].target == "≤ 5"
    assert rows["latency max (ms)"].values == ("50.0", "6.0")
    assert rows["latency max (ms)"].target == ""
    assert rows["knocks detected/sent"].values == ("5/5", "5/5 ✓")
    assert rows["knocks detected/sent"].ratios == ("1×",)
    assert rows["RSS peak (MB)"].values == ("19.5", "19.5 ✓")


def test_a_knock_missed_fails_the_all_target() -> None:
    rows = by_label(scenario_rows(Rows(all_detected=True),
                                  {"knockd": summary(detected=(1, 4)),
                                   "tportknockd": summary(detected=(3, 4))},
                                  ["knockd", "tportknockd"]))
    row = rows["knocks detected/sent"]
    assert row.values == ("1/4", "3/4 ✗") and row.target == "all" and row.ratios == ("3×",)


def test_no_target_no_mark() -> None:
    rows = by_label(scenario_rows(Rows(), {"knockd": summary(), "tportknockd": summary()},
                                  ["knockd", "tportknockd"]))
    assert rows["knocks detected/sent"].values == ("5/5", "5/5")
    assert rows["daemon CPU (s)"].values == ("0.010", "0.010")
    assert "kernel ring drops" not in rows


def test_flag_door_rows_count_ece_knocks_that_opened_as_failures() -> None:
    flags = next(s for s in SCENARIOS if s.rows.flag_door)
    rows = by_label(scenario_rows(flags.rows,
                                  {"knockd": summary(ece_opened=(5, 5)),
                                   "tportknockd": summary(ece_opened=(1, 5))},
                                  ["knockd", "tportknockd"]))
    assert rows["exact URG+PSH knocks: opened/sent"].values == ("5/5", "5/5 ✓")
    ece = rows["URG+PSH+ECE knocks: opened/sent"]
    assert ece.values == ("5/5", "1/5 ✗") and ece.target == "0"


def test_full_rate_flood_rows_and_their_targets() -> None:
    full = next(s for s in SCENARIOS if s.key == "cfull")
    flood = {"flood_pps": 480_000.0, "us_per_packet": 2.07, "us_per_read_packet": 4.74}
    rows = by_label(scenario_rows(full.rows,
                                  {"knockd": summary(**flood | {"us_per_read_packet": None}),
                                   "tportknockd": summary(**flood, ring_drops=12)},
                                  ["knockd", "tportknockd"]))
    assert rows["flood delivered (k pps)"].values == ("480.0", "480.0")
    assert rows["daemon CPU per flood packet (µs)"].values == ("2.07", "2.07 ✗")
    assert rows["daemon CPU per flood packet (µs)"].target == "≤ 1.6"
    assert rows["… per packet read from the ring (µs)"].values == ("—", "4.74")
    drops = rows["kernel ring drops"]
    assert drops.values == ("n/a", "12 ✗") and drops.target == "0" and drops.ratios == ("—",)
    assert "… during the flood" in rows and "… right after it" in rows


def test_noise_flood_has_no_per_read_row_and_drops_are_not_a_target() -> None:
    noise = next(s for s in SCENARIOS if s.key == "b")
    rows = by_label(scenario_rows(noise.rows,
                                  {"knockd": summary(cpu_s=0.008),
                                   "tportknockd": summary(cpu_s=0.06, ring_drops=0)},
                                  ["knockd", "tportknockd"]))
    assert "… per packet read from the ring (µs)" not in rows
    assert rows["kernel ring drops"].values == ("n/a", "0")
    assert rows["daemon CPU (s)"].values == ("0.008", "0.060 ✗")
    assert rows["daemon CPU (s)"].target == "≤ 0.05"


def test_a_daemon_that_did_not_run_shows_dashes() -> None:
    rows = by_label(scenario_rows(SCENARIOS[0].rows, {"tportknockd": summary()},
                                  ["knockd", "tportknockd"]))
    assert rows["knocks detected/sent"].values == ("—", "5/5 ✓")
    assert rows["knocks detected/sent"].ratios == ("—",)
    assert rows["latency median (ms)"].ratios == ("—",)


def test_a_third_daemon_gets_its_column_checks_and_ratio() -> None:
    daemons = ["knockd", "tportknockd", "tportknockd-kernel"]
    settings = Settings.quick()
    sums = {"a": {"knockd": summary(latency_ms={"median": 30.0, "p95": 40.0, "max": 50.0}),
                  "tportknockd": summary(),
                  "tportknockd-kernel": summary(latency_ms={"median": 6.0, "p95": 8.0,
                                                            "max": 9.0})}}
    figures: dict[str, float | None] = {"startup_s": 0.1, "startup_max_s": 0.1,
                                        "rss_idle_mb": 19.0, "rss_peak_mb": 19.0}
    whole = {name: figures for name in daemons}
    markdown = render_markdown(Table(SCENARIOS, daemons, settings), INFO, sums, whole)
    lines = markdown.splitlines()
    header = lines.index("| scenario / metric | knockd | tportknockd | tportknockd-kernel "
                         "| target | tportknockd / knockd | tportknockd-kernel / knockd |")
    assert lines[header + 1] == "|---|--:|--:|--:|--:|--:|--:|"
    assert "| latency median (ms) | 30.0 | 3.0 ✓ | 6.0 ✗ | ≤ 3 | 0.1× | 0.2× |" in lines
    table = [line for line in lines if line.startswith("|")]
    assert all(line.count(" |") == 7 for line in table[2:]), table


def test_two_daemons_make_the_familiar_table() -> None:
    settings = Settings()
    sums = {"a": {"knockd": summary(), "tportknockd": summary()}}
    figures: dict[str, float | None] = {"startup_s": 0.25, "startup_max_s": 0.3,
                                        "rss_idle_mb": 19.3, "rss_peak_mb": 44.0}
    whole = {"tportknockd": figures}
    markdown = render_markdown(Table(SCENARIOS, ["knockd", "tportknockd"], settings), INFO,
                               sums, whole)
    lines = markdown.splitlines()
    assert "| scenario / metric | knockd | tportknockd | target | tportknockd / knockd |" in lines
    assert "| **(a) 20 knocks at idle** | | | | |" in lines
    assert "| **whole run** | | | | |" in lines
    assert "| start-up until listening, median (s) | — | 0.250 ✓ | ≤ 0.3 | — |" in lines
    assert "| RSS idle (MB) | — | 19.3 ✓ | ≤ 20 | — |" in lines
    assert "| RSS peak over all scenarios (MB) | — | 44.0 ✓ | ≤ 48 | — |" in lines
    assert "(b)" not in markdown  # only the scenarios that ran
    assert "- floods: 10 s each; spoofed sources: 100000 distinct" in markdown
    assert closing_line(131.4, settings) == "\nWhole run: 131 s.\n"
    assert closing_line(54.0, Settings.quick()) == "\nWhole run: 54 s (--quick).\n"


def test_one_line_progress() -> None:
    line = one_line(summary(flood_pps=10_000.4, ring_drops=0))
    assert line == ("detected 5/5, latency median 3.0 ms p95 4.0 max 4.5, CPU 0.010 s, "
                    "RSS peak 19.5 MB, flood 10000 pps, ring drops 0")


def test_results_json_round_trips() -> None:
    outcomes = [Outcome("a", "tportknockd", knocks=[{"source": "198.51.100.10", "kind": "",
                                                     "sent": True, "detected": True,
                                                     "latency_ms": 3.0}])]
    sums = summarize_all(outcomes)
    text = results_json(INFO, Settings(), sums, overall(outcomes, ["tportknockd"]), outcomes)
    data = json.loads(text)
    assert set(data) == {"machine", "settings", "targets", "summary", "overall", "outcomes"}
    assert data["summary"]["a"]["tportknockd"]["detected"] == [1, 1]
    assert data["outcomes"][0]["knocks"][0]["latency_ms"] == 3.0


def one_time_rows(tportknockd: dict[str, Any]) -> dict[str, Any]:
    scenario = next(s for s in SCENARIOS if s.key == "ffull")
    return by_label(scenario_rows(scenario.rows, {"tportknockd": tportknockd},
                                  ["knockd", "tportknockd"], scenario.applies_to))


def test_a_scenario_not_for_a_daemon_shows_n_a_in_its_column() -> None:
    rows = one_time_rows(summary(detected=(15, 20), during=(5, 10), during_moved=(5, 5),
                                 after=(10, 10), ring_drops=12, flood_pps=300_000.0))
    assert all(row.values[0] == "n/a" for row in rows.values())
    assert all(row.ratios == ("—",) for row in rows.values())
    assert rows["knocks detected/sent"].values == ("n/a", "15/20 ✗")
    assert rows["… during it, after the window moved"].values == ("n/a", "5/5")
    assert rows["kernel ring drops"].values == ("n/a", "12")


def test_the_one_time_rows_split_what_the_kernel_passed_at_the_window_change() -> None:
    rows = one_time_rows(summary(kernel_passed=50_040, kernel_passed_before_move=50_000,
                                 flood_passed_after_move=0))
    labels = list(rows)
    start = labels.index("… during the flood")
    assert labels[start: start + 3] == ["… during the flood",
                                        "… during it, after the window moved",
                                        "… right after it"]
    assert rows["packets the kernel filter passed to the daemon"].values == ("n/a", "50040")
    assert rows["… until the window moved"].values == ("n/a", "50000")
    after = rows["… after it, flood packets only"]
    assert after.values == ("n/a", "0 ✓") and after.target == "0"
    leaked = one_time_rows(summary(flood_passed_after_move=7))
    assert leaked["… after it, flood packets only"].values == ("n/a", "7 ✗")
    # Without the snapshot (an old results file, or SIGUSR1 unanswered): dashes, no mark.
    assert one_time_rows(summary())["… until the window moved"].values == ("n/a", "—")


def test_other_scenarios_have_no_window_rows() -> None:
    for scenario in SCENARIOS:
        if scenario.rows.window_move:
            continue
        rows = by_label(scenario_rows(scenario.rows, {"knockd": summary(),
                                                      "tportknockd": summary()},
                                      ["knockd", "tportknockd"], scenario.applies_to))
        assert not any("window" in label for label in rows)
        assert all(row.values[0] != "n/a" or label == "kernel ring drops"
                   for label, row in rows.items())
