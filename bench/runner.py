"""Running the scenarios against the daemons compared, and measuring around each run.

Each scenario starts a fresh daemon, so CPU, RSS peak and ring drops belong to one scenario.
Each knock comes from its own source address, so the line that the start_command writes can
be matched to its knock. Latency runs from the capture timestamp of the knock's last packet
on the client's veth to the time that command wrote (both CLOCK_REALTIME).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.daemons import Daemon
from bench.measure import (
    Capture,
    RssSampler,
    cpu_seconds,
    detections,
    memory_kb,
    stat_cpu_seconds,
    wait_for,
)
from bench.program_stats import ProgramWatch
from bench.report import one_line
from bench.scenarios import Context, Scenario
from bench.settings import Settings
from bench.summary import Outcome, summarize
from bench.testbed import Processes, Testbed
from bench.traffic import Flood, Knock, Knocker


def run_all(bed: Testbed, procs: Processes, workdir: Path, settings: Settings,
            scenarios: Sequence[Scenario], daemons: Sequence[Daemon],
            outcomes: list[Outcome], watch_programs: bool = False) -> None:
    """Every scenario against every daemon, in that order; outcomes are appended as they
    come, so an interrupted run keeps what it measured. `watch_programs`: the kernel's run
    statistics are on, so the kernel engine's program is read around each window."""
    ctx = Context(bed, procs, workdir, settings, Knocker(bed, procs), Flood(bed, procs, workdir),
                  watch_programs=watch_programs)
    for scenario in scenarios:
        for daemon in daemons:
            if not scenario.applies_to(daemon.name):
                print(f"{scenario.heading(settings)}: not for {daemon.name}", flush=True)
                continue
            print(f"{scenario.heading(settings)}: {daemon.name} ...", flush=True)
            outcome = run_scenario(ctx, scenario, daemon)
            outcomes.append(outcome)
            print("   ", one_line(summarize(outcome)), flush=True)


def run_scenario(ctx: Context, scenario: Scenario, daemon: Daemon) -> Outcome:
    stem = f"{scenario.key}-{daemon.name}"
    out = ctx.workdir / f"{stem}.txt"
    outcome = Outcome(scenario.key, daemon.name)
    ctx.flood_results, ctx.snapshots = [], {}
    conf = ctx.workdir / f"{stem}.conf"
    run = daemon.start(ctx.bed, ctx.procs, conf, scenario.config(daemon, ctx, out))
    ctx.daemon, ctx.run, ctx.conf = daemon, run, conf
    pid = run.proc.pid
    outcome.startup_s, outcome.engine = run.startup_s, run.engine
    watch: ProgramWatch | None = None
    try:
        time.sleep(0.3)  # let start-up work (imports, first poll) settle out of the window
        outcome.rss_start_kb = memory_kb(pid)["VmRSS"]
        with Capture(ctx.bed, ctx.procs, ctx.workdir / f"{stem}.pcap") as capture, \
                RssSampler(pid) as rss:
            ctx.capture = capture
            watch = ProgramWatch.of_daemon(pid) if ctx.watch_programs else None
            cpu0, stat0, rx0 = cpu_seconds(pid), stat_cpu_seconds(pid), ctx.bed.rx_packets()
            started = time.monotonic()
            knocks = scenario.drive(ctx)
            _wait_for_detections(ctx.settings, scenario, knocks, out)
            outcome.cpu_s = cpu_seconds(pid) - cpu0
            outcome.bpf_stats = watch.figures() if watch else {}
            outcome.stat_cpu_s = stat_cpu_seconds(pid) - stat0
            outcome.window_s = time.monotonic() - started
            outcome.delivered = ctx.bed.rx_packets() - rx0
            outcome.hwm_kb = memory_kb(pid)["VmHWM"]
        outcome.rss_peak_kb = max(rss.peak_kb, outcome.hwm_kb)
    finally:
        if watch:
            watch.close()
        outcome.statistics = daemon.stop(run)
        (ctx.workdir / f"{stem}.log").write_text("".join(run.lines))
    outcome.knocks = knock_records(knocks, detections(out), capture.last_sent())
    outcome.floods = [asdict(f) | {"pps": f.pps} for f in ctx.flood_results]
    outcome.snapshots = {
        name: figures | {"knock_packets_after": capture.sent_since(figures["at"])}
        for name, figures in ctx.snapshots.items()}
    return outcome


def _wait_for_detections(settings: Settings, scenario: Scenario, knocks: Sequence[Knock],
                         out: Path) -> None:
    sent = [k for k in knocks if k.sent()]
    wait = settings.flood_wait_s if scenario.flood_wait else settings.idle_wait_s
    wait_for(out, [k.source for k in sent if k.kind != "ece"], wait)
    if any(k.kind == "ece" for k in knocks):
        time.sleep(0.5)  # give a wrong open the chance to show


def knock_records(knocks: Sequence[Knock], found: dict[str, float],
                  last: dict[str, float]) -> list[dict[str, Any]]:
    """Per knock: sent, detected, and the latency from its last packet to its detection."""
    records: list[dict[str, Any]] = []
    for knock in knocks:
        at = found.get(knock.source)
        latency = (at - last[knock.source]) * 1000 if at and knock.source in last else None
        records.append({"source": knock.source, "kind": knock.kind, "sent": knock.sent(),
                        "detected": at is not None, "latency_ms": latency})
    return records
