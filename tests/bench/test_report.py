"""bench.report: the Markdown table, its target checks, ratios and column layout."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import pytest

from bench.kernel_cost import ROWS as KERNEL_COST_ROWS
from bench.kernel_cost import KernelCost
from bench.report import (
    Table,
    closing_line,
    fmt,
    kernel_cost_rows,
    one_line,
    overall_rows,
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
    cost = KernelCost.from_json(data["kernel_cost"]) if data.get("kernel_cost") else None
    sums, whole = summarize_all(outcomes), overall(outcomes, daemons)
    doors = data.get("doors")  # older results have no door figures
    assert results_json(data["machine"], settings, sums, whole, outcomes, cost, doors) == text
    markdown = render_markdown(Table(SCENARIOS, daemons, settings), data["machine"], sums, whole,
                               cost, doors)
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
    kernel = one_line(summary(ring_drops=0, program_runs=100_061, program_ns_per_run=402.6))
    assert kernel.endswith(", ring drops 0, program 100061 runs, 403 ns per run")


def test_results_json_round_trips() -> None:
    outcomes = [Outcome("a", "tportknockd", knocks=[{"source": "198.51.100.10", "kind": "",
                                                     "sent": True, "detected": True,
                                                     "latency_ms": 3.0}])]
    sums = summarize_all(outcomes)
    text = results_json(INFO, Settings(), sums, overall(outcomes, ["tportknockd"]), outcomes)
    data = json.loads(text)
    assert set(data) == {"machine", "settings", "targets", "summary", "overall", "outcomes",
                         "kernel_cost"}
    assert data["summary"]["a"]["tportknockd"]["detected"] == [1, 1]
    assert data["outcomes"][0]["knocks"][0]["latency_ms"] == 3.0
    assert data["kernel_cost"] is None
    with_cost = json.loads(results_json(INFO, Settings(), sums, {}, outcomes, COST))
    assert KernelCost.from_json(with_cost["kernel_cost"]) == COST


def one_time_rows(tportknockd: dict[str, Any]) -> dict[str, Any]:
    scenario = next(s for s in SCENARIOS if s.key == "ffull")
    return by_label(scenario_rows(scenario.rows, {"tportknockd-python": tportknockd},
                                  ["knockd", "tportknockd-python"], scenario.applies_to))


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
    assert rows["packets taken for knock frames in the kernel"].values == ("n/a", "50040")
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
        # knockd has no ring drops to report, and no kernel engine.
        assert all(row.values[0] != "n/a" or label == "kernel ring drops"
                   or label in KERNEL_COUNTER_LABELS + PROGRAM_LABELS
                   for label, row in rows.items())


KERNEL_COUNTER_LABELS = ["packets the kernel engine's program saw",
                         "… that matched a knock frame",
                         "… fresh attempts evicted (one frame matched)",
                         "… advanced attempts evicted (two or more)",
                         "… completions lost (ring buffer full)"]
PROGRAM_LABELS = ["kernel engine's program: runs (bpf stats)",
                  "… ns per run (bpf stats, their clock reads included)"]
THREE = ["knockd", "tportknockd-python", "tportknockd-kernel"]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.key)
def test_every_scenario_has_the_kernel_programs_bpf_stats(scenario: Any) -> None:
    """In the kernel engine's column; n/a for the daemons without an eBPF program; a dash
    where the kernel engine ran but the statistics were not taken (or in older results)."""
    kernel = summary(engine="kernel", program_runs=3_000_000, program_ns_per_run=151.4)
    rows = by_label(scenario_rows(scenario.rows,
                                  {"knockd": summary(engine=None),
                                   "tportknockd-python": summary(engine="python"),
                                   "tportknockd-kernel": kernel},
                                  THREE, pairs=Table(SCENARIOS, THREE, Settings()).ratio_pairs))
    labels = list(rows)
    start = labels.index(PROGRAM_LABELS[0])
    assert labels[start: start + 2] == PROGRAM_LABELS
    expected = {"kernel engine's program: runs (bpf stats)": "3000000",
                "… ns per run (bpf stats, their clock reads included)": "151"}
    for label, value in expected.items():
        assert rows[label].values == ("n/a", "n/a", value)
        assert rows[label].ratios == ("—", "—", "—") and rows[label].target == ""
    untaken = by_label(scenario_rows(scenario.rows, {"tportknockd-kernel": summary(
        engine="kernel")}, THREE))
    assert untaken[PROGRAM_LABELS[0]].values == ("—", "—", "—")
    assert untaken[PROGRAM_LABELS[1]].values == ("—", "—", "—")


def test_the_kernel_engines_counters_in_its_column_only() -> None:
    full = next(s for s in SCENARIOS if s.key == "cfull")
    kernel = summary(kernel_seen=3_000_020, kernel_matched=3_000_012,
                     kernel_evicted_fresh=2_900_000, kernel_evicted_advanced=0, kernel_lost=0,
                     cpu_s=0.02, ring_drops=0)
    rows = by_label(scenario_rows(full.rows, {"knockd": summary(cpu_s=7.0),
                                              "tportknockd-python": summary(cpu_s=5.7),
                                              "tportknockd-kernel": kernel},
                                  THREE, full.applies_to, Table(SCENARIOS, THREE,
                                                                Settings()).ratio_pairs))
    labels = list(rows)
    start = labels.index(KERNEL_COUNTER_LABELS[0])
    assert labels[start: start + 5] == KERNEL_COUNTER_LABELS
    assert rows[KERNEL_COUNTER_LABELS[0]].values == ("n/a", "n/a", "3000020")
    assert rows["… advanced attempts evicted (two or more)"].values == ("n/a", "n/a", "0 ✓")
    assert rows["… completions lost (ring buffer full)"].target == "0"
    # issue 8's full-rate targets: 0.1 s of daemon CPU, every knock, no ring drop.
    cpu = rows["daemon CPU (s)"]
    assert cpu.values == ("7.000", "5.700 ✗", "0.020 ✓") and cpu.target == "≤ 0.1"
    assert cpu.ratios == ("0.81×", "0.0029×", "0.0035×")  # python/knockd, kernel/ knockd, python
    assert rows["kernel ring drops"].values == ("n/a", "—", "0 ✓")
    # A daemon that did not run shows dashes, not n/a.
    missing = by_label(scenario_rows(full.rows, {"knockd": summary()}, THREE))
    assert missing[KERNEL_COUNTER_LABELS[0]].values == ("n/a", "—", "—")


def test_the_ratio_columns_add_kernel_over_python_when_both_run() -> None:
    assert Table(SCENARIOS, THREE, Settings()).ratio_pairs == [(1, 0), (2, 0), (2, 1)]
    assert Table(SCENARIOS, THREE, Settings()).ratio_headings() == [
        "tportknockd-python / knockd", "tportknockd-kernel / knockd",
        "tportknockd-kernel / tportknockd-python"]
    assert Table(SCENARIOS, THREE[:2], Settings()).ratio_pairs == [(1, 0)]
    assert Table(SCENARIOS, ["knockd", "tportknockd-kernel"], Settings()).ratio_pairs == [(1, 0)]


def test_spoofed_10k_pps_target_is_issue_8s() -> None:
    slow = next(s for s in SCENARIOS if s.key == "c10k")
    rows = by_label(scenario_rows(slow.rows, {"knockd": summary(cpu_s=11.0),
                                              "tportknockd-python": summary(cpu_s=0.54),
                                              "tportknockd-kernel": summary(cpu_s=0.01)},
                                  THREE))
    assert rows["daemon CPU (s)"].values == ("11.000", "0.540 ✗", "0.010 ✓")
    assert rows["daemon CPU (s)"].target == "≤ 0.05"


COST = KernelCost(instructions=3503, repeat=1_000_000, sources=100_000, rounds=5,
                  rows={"first_same": 142.0, "no_knock_port": 80.0, "no_knock_address": 99.0,
                        "first_inserted": 339.0, "first_new_source": 674.0},
                  fresh_held=32_765, fresh_capacity=65_536, started=3_300_001, map_mib=7.6)


def test_the_kernel_cost_rows_in_the_kernel_column() -> None:
    table = Table(SCENARIOS, THREE, Settings())
    rows = by_label(kernel_cost_rows(table, COST, "tportknockd-kernel"))
    assert list(rows) == [label for _, label in KERNEL_COST_ROWS] + [
        "program size (eBPF instructions)"]
    same = rows["first frame, same source (repeat)"]
    assert same.values == ("n/a", "n/a", "0.142 ✓") and same.target == "≤ 0.2"
    assert same.ratios == ("—", "—", "—")
    inserted = rows["first frame, inserted every run (repeat)"]
    assert inserted.values == ("n/a", "n/a", "0.339 ✗") and inserted.target == "≤ 0.2"
    new = rows["first frame, new source each run"]
    assert new.values == ("n/a", "n/a", "0.674") and new.target == ""
    assert rows["no knock: unused port (repeat)"].values[2] == "0.080"
    assert rows["program size (eBPF instructions)"].values == ("n/a", "n/a", "3503")
    # The bpf stats rows: a dash in results without them.
    assert rows["bpf stats: an empty program's time per run"].values == ("n/a", "n/a", "—")
    with_stats = KernelCost(**asdict(COST) | {"rows": COST.rows | {"stats_floor": 46.3,
                                                                    "stats_added": 65.0}})
    rows = by_label(kernel_cost_rows(table, with_stats, "tportknockd-kernel"))
    floor = rows["bpf stats: an empty program's time per run"]
    assert floor.values == ("n/a", "n/a", "0.046") and floor.target == ""
    assert rows["bpf stats: time added to each run"].values == ("n/a", "n/a", "0.065")


def test_the_report_has_a_kernel_cost_section_only_with_a_kernel_column() -> None:
    table = Table(SCENARIOS, THREE, Settings())
    markdown = render_markdown(table, INFO, {}, {}, COST)
    heading = ("| **kernel cost per packet (BPF_PROG_TEST_RUN, µs; repeat 1,000,000, best of 5)**"
               " | | | | | | | |")
    assert heading in markdown.splitlines()
    assert markdown.index(heading) < markdown.index("| **whole run**")
    without = render_markdown(Table(SCENARIOS, THREE[:2], Settings()), INFO, {}, {}, COST)
    assert "kernel cost per packet (BPF" not in without
    assert "kernel cost per packet (BPF" not in render_markdown(table, INFO, {}, {}, None)


def test_the_whole_run_rows_name_each_engine_and_its_kernel_memory() -> None:
    table = Table(SCENARIOS, THREE, Settings())
    figures: dict[str, Any] = {"startup_s": 0.2, "startup_max_s": 0.3, "rss_idle_mb": 19.5,
                               "rss_peak_mb": 30.0}
    whole = {"knockd": figures | {"engine": None, "kernel_memory_mib": None},
             "tportknockd-python": figures | {"engine": "python", "kernel_memory_mib": None},
             "tportknockd-kernel": figures | {"engine": "kernel", "kernel_memory_mib": 7.6,
                                              "rss_idle_mb": 21.0}}
    rows = by_label(overall_rows(table, whole))
    assert rows["engine (its log line at start, checked)"].values == ("n/a", "python", "kernel")
    memory = rows["kernel memory of the engine's BPF maps (MiB)"]
    assert memory.values == ("n/a", "n/a", "7.6")
    idle = rows["RSS idle (MB)"]
    assert idle.values == ("19.5", "19.5 ✓", "21.0 ✗") and idle.target == "≤ 20"
    assert idle.ratios == ("1×", "1.1×", "1.1×")
    unrun = by_label(overall_rows(table, {"knockd": whole["knockd"]}))
    assert unrun["engine (its log line at start, checked)"].values == ("n/a", "—", "—")
