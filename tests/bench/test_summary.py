"""bench.summary: latency percentiles, knock counts, CPU per packet, the whole-run figures."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.summary import (
    Outcome,
    engine_name,
    kernel_memory_mib,
    latency_stats,
    overall,
    summarize,
    summarize_all,
)

KERNEL_LINE = ("kernel (eBPF socket filter, 3503 instructions; attempts in BPF maps: 65536 "
               "fresh, 8192 advanced, about 7.6 MiB of kernel memory)")


def inclusive_percentile(values: list[float], q: float) -> float:
    """An independent reading: linear interpolation between closest ranks, rank (n-1)q."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def test_latency_stats_of_nothing_is_none() -> None:
    assert latency_stats([]) == {"median": None, "p95": None, "max": None}


def test_latency_stats_of_one_value_is_that_value() -> None:
    assert latency_stats([4.2]) == {"median": 4.2, "p95": 4.2, "max": 4.2}


def test_latency_stats_known_values() -> None:
    stats = latency_stats([float(v) for v in range(20, 0, -1)])  # 1..20, unordered
    assert stats["median"] == 10.5
    assert stats["p95"] == pytest.approx(19.05)
    assert stats["max"] == 20.0


@given(st.lists(st.floats(min_value=0.01, max_value=1e5), min_size=1, max_size=60))
def test_latency_stats_agree_with_an_independent_percentile(values: list[float]) -> None:
    stats = latency_stats(values)
    assert stats["p95"] == pytest.approx(inclusive_percentile(values, 0.95), rel=1e-9)
    assert stats["median"] == pytest.approx(inclusive_percentile(values, 0.5), rel=1e-9)
    assert stats["max"] == max(values)
    median, p95 = stats["median"], stats["p95"]
    assert median is not None and p95 is not None
    slack = 1e-9 * max(values)  # the median of two equal floats may be one ulp off
    assert min(values) - slack <= median <= p95 + slack <= max(values) + 2 * slack


def knock(kind: str, detected: bool, latency: float | None, sent: bool = True) -> dict[str, Any]:
    return {"source": "198.51.100.10", "kind": kind, "sent": sent, "detected": detected,
            "latency_ms": latency}


def test_summarize_counts_each_kind_of_knock_apart() -> None:
    outcome = Outcome("d", "tportknockd", knocks=[
        knock("exact", True, 3.0), knock("exact", False, None),
        knock("ece", True, 9.0), knock("ece", False, None), knock("ece", False, None),
        knock("exact", True, 5.0, sent=False),  # not sent: not counted
    ])
    summary = summarize(outcome)
    assert summary["detected"] == (1, 2)
    assert summary["ece_opened"] == (1, 3)
    assert summary["during"] == (0, 0) and summary["after"] == (0, 0)
    # An ECE knock that opened is a failure, not a latency.
    assert summary["latency_ms"]["max"] == 5.0
    assert summary["latency_ms"]["median"] == 4.0


def test_summarize_during_and_after_a_flood() -> None:
    outcome = Outcome("cfull", "tportknockd", knocks=[
        knock("during", False, None), knock("during", True, 30.0),
        knock("after", True, 3.0), knock("after", True, 3.0)])
    summary = summarize(outcome)
    assert summary["detected"] == (3, 4)
    assert summary["during"] == (1, 2)
    assert summary["after"] == (2, 2)


def test_cpu_per_packet_only_with_a_flood() -> None:
    idle = summarize(Outcome("a", "knockd", cpu_s=0.5, delivered=1000))
    assert idle["us_per_packet"] is None and idle["flood_pps"] is None
    flood = {"kind": "spoof", "sent": 10, "delivered": 10, "seconds": 1.0, "pps": 400_000.0}
    flooded = summarize(Outcome("cfull", "tportknockd", cpu_s=2.0, delivered=1_000_000,
                                floods=[flood], statistics={"packets": 400_000,
                                                            "kernel_drops": 600_000}))
    assert flooded["us_per_packet"] == pytest.approx(2.0)
    assert flooded["us_per_read_packet"] == pytest.approx(5.0)
    assert flooded["flood_pps"] == 400_000.0
    assert flooded["ring_drops"] == 600_000


def test_knockd_has_no_ring_drops_and_no_packets_read() -> None:
    flood = {"kind": "noise", "sent": 10, "delivered": 10, "seconds": 1.0, "pps": 10.0}
    summary = summarize(Outcome("b", "knockd", cpu_s=0.1, delivered=10, floods=[flood]))
    assert summary["ring_drops"] is None
    assert summary["us_per_read_packet"] is None


def test_memory_in_megabytes() -> None:
    summary = summarize(Outcome("a", "tportknockd", rss_start_kb=19_456, rss_peak_kb=20_480))
    assert summary["rss_start_mb"] == 19.0 and summary["rss_peak_mb"] == 20.0


def test_overall_per_daemon_in_the_order_given_and_only_those_that_ran() -> None:
    outcomes = [Outcome("a", "tportknockd", startup_s=0.2, rss_start_kb=1024, rss_peak_kb=2048),
                Outcome("b", "tportknockd", startup_s=0.4, rss_start_kb=3072, rss_peak_kb=9216),
                Outcome("c", "tportknockd", startup_s=0.3, rss_start_kb=2048, rss_peak_kb=4096)]
    result = overall(outcomes, ["knockd", "tportknockd"])
    assert list(result) == ["tportknockd"]
    figures = dict(result["tportknockd"])
    assert figures.pop("engine") is None and figures.pop("kernel_memory_mib") is None
    assert figures == pytest.approx(
        {"startup_s": 0.3, "startup_max_s": 0.4, "rss_idle_mb": 2.0, "rss_peak_mb": 9.0})


def test_the_engine_and_its_kernel_memory_from_the_engine_line() -> None:
    assert engine_name(KERNEL_LINE) == "kernel" and kernel_memory_mib(KERNEL_LINE) == 7.6
    assert engine_name("python (as asked)") == "python"
    assert kernel_memory_mib("python (as asked)") is None
    assert engine_name("") is None and kernel_memory_mib("") is None
    outcomes = [Outcome("a", "k", engine=KERNEL_LINE), Outcome("b", "k", engine=KERNEL_LINE),
                Outcome("a", "p", engine="python (as asked)"), Outcome("a", "knockd")]
    result = overall(outcomes, ["knockd", "p", "k"])
    assert [(r["engine"], r["kernel_memory_mib"]) for r in result.values()] == [
        (None, None), ("python", None), ("kernel", 7.6)]
    mixed = overall([Outcome("a", "t", engine=KERNEL_LINE), Outcome("b", "t", engine="python")],
                    ["t"])
    assert mixed["t"]["engine"] == "kernel / python"  # a column that changed engines shows it
    assert summarize(outcomes[0])["engine"] == "kernel"
    assert summarize(outcomes[0])["kernel_memory_mib"] == 7.6


KERNEL_STATISTICS = {"kernel_packets": 0, "kernel_drops": 0, "packets": 0,
                     "kernel_seen": 3_000_020, "kernel_knocks": 3_000_012,
                     "kernel_completed": 4, "kernel_lost": 0, "kernel_attempts_fresh": 65_000,
                     "kernel_attempts_advanced": 0, "kernel_evicted_fresh": 2_900_000,
                     "kernel_evicted_advanced": 0}


def test_the_kernel_engines_counters() -> None:
    flood = {"kind": "spoof", "sent": 10, "delivered": 10, "seconds": 1.0, "pps": 300_000.0}
    summary = summarize(Outcome("cfull", "tportknockd-kernel", cpu_s=0.02, delivered=3_000_000,
                                floods=[flood], statistics=KERNEL_STATISTICS))
    assert summary["kernel_seen"] == 3_000_020 and summary["kernel_matched"] == 3_000_012
    assert summary["kernel_evicted_fresh"] == 2_900_000
    assert summary["kernel_evicted_advanced"] == 0 and summary["kernel_lost"] == 0
    # What the kernel took for knock frames: what the program matched, not the ring's count.
    assert summary["kernel_passed"] == 3_000_012
    assert summary["ring_drops"] == 0
    assert summary["us_per_read_packet"] is None  # it read none from its ring
    python = summarize(Outcome("cfull", "tportknockd-python",
                               statistics={"kernel_packets": 9, "kernel_drops": 0}))
    assert python["kernel_seen"] is None and python["kernel_passed"] == 9


def test_the_kernel_programs_runs_and_time_per_run() -> None:
    stats = {"id": 41, "runs": 3_000_000, "run_time_ns": 450_000_000}
    summary = summarize(Outcome("cfull", "tportknockd-kernel", bpf_stats=stats))
    assert summary["program_runs"] == 3_000_000
    assert summary["program_ns_per_run"] == pytest.approx(150.0)
    idle = summarize(Outcome("a", "tportknockd-kernel",
                             bpf_stats={"id": 41, "runs": 0, "run_time_ns": 0}))
    assert idle["program_runs"] == 0 and idle["program_ns_per_run"] is None
    untaken = summarize(Outcome("a", "tportknockd-python"))
    assert untaken["program_runs"] is None and untaken["program_ns_per_run"] is None


def test_summarize_all_by_scenario_then_daemon() -> None:
    sums = summarize_all([Outcome("a", "knockd"), Outcome("a", "tportknockd"),
                          Outcome("b", "tportknockd")])
    assert {key: list(by) for key, by in sums.items()} == {"a": ["knockd", "tportknockd"],
                                                            "b": ["tportknockd"]}


def test_knocks_after_a_window_change_count_as_during_too() -> None:
    outcome = Outcome("ffull", "tportknockd", knocks=[
        knock("during", False, None), knock("moved", True, 4.0), knock("moved", True, 5.0),
        knock("after", True, 3.0)])
    summary = summarize(outcome)
    assert summary["detected"] == (3, 4)
    assert summary["during"] == (2, 3)
    assert summary["during_moved"] == (2, 2)
    assert summary["latency_ms"]["max"] == 5.0


def test_what_the_kernel_passed_before_and_after_the_window_change() -> None:
    moved = {"at": 1.8e9, "kernel_packets": 50_008.0, "kernel_drops": 0.0,
             "knock_packets_after": 48.0}
    outcome = Outcome("f10k", "tportknockd", statistics={"kernel_packets": 50_056},
                      snapshots={"window_moved": moved})
    summary = summarize(outcome)
    assert summary["kernel_passed"] == 50_056
    assert summary["kernel_passed_before_move"] == 50_008
    assert summary["flood_passed_after_move"] == 0  # 48 packets after it, all knocks'
    leaked = summarize(Outcome("f10k", "tportknockd", statistics={"kernel_packets": 50_100},
                               snapshots={"window_moved": moved}))
    assert leaked["flood_passed_after_move"] == 44


def test_the_kernel_engine_splits_what_its_program_matched_at_the_window_change() -> None:
    moved = {"at": 1.8e9, "kernel_packets": 0.0, "kernel_knocks": 50_008.0,
             "knock_packets_after": 48.0}
    outcome = Outcome("f10k", "tportknockd-kernel",
                      statistics={"kernel_packets": 0, "kernel_knocks": 50_056},
                      snapshots={"window_moved": moved})
    summary = summarize(outcome)
    assert summary["kernel_passed"] == 50_056
    assert summary["kernel_passed_before_move"] == 50_008
    assert summary["flood_passed_after_move"] == 0


def test_no_snapshot_no_split() -> None:
    summary = summarize(Outcome("c10k", "tportknockd", statistics={"kernel_packets": 9}))
    assert summary["kernel_passed"] == 9
    assert summary["kernel_passed_before_move"] is None
    assert summary["flood_passed_after_move"] is None
    assert summarize(Outcome("a", "knockd"))["kernel_passed"] is None
