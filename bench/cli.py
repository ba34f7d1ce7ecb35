"""The command line of `make bench` (`python3 bench/run.py [--quick]`): checks and installs
what the bench needs, runs the scenarios, writes the report."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.daemons import DAEMONS, KERNEL_COLUMN
from bench.doors import PARTS, DoorSettings, run_doors
from bench.kernel_cost import KernelCost, describe, measure
from bench.measure import machine
from bench.plot import plot
from bench.program_stats import start_statistics
from bench.report import Table, closing_line, render_markdown, results_json, write
from bench.runner import run_all
from bench.scenarios import SCENARIOS
from bench.settings import GENERATOR_CPU, KERNEL_COST_REPEAT, RESULTS, Settings
from bench.summary import Outcome, overall, summarize_all
from bench.testbed import Processes, Testbed

APT_TOOLS = {"knockd": "knockd", "hping3": "hping3", "trafgen": "netsniff-ng",
             "tcpdump": "tcpdump", "ip": "iproute2", "taskset": "util-linux",
             "timeout": "coreutils"}


def ensure_root() -> None:
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root: it creates network namespaces, captures packets "
                 "and installs knockd, hping3, netsniff-ng and tcpdump if they are missing "
                 "(run: sudo make bench)")


def ensure_tools() -> None:
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = sorted({pkg for tool, pkg in APT_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    if importlib.util.find_spec("matplotlib") is None:
        print("installing matplotlib ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="`make bench`: tportknockd and knockd side by side, on the same knocks "
        "and the same floods.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer knocks and 3 s floods, to try it out (~1.5 min)")
    keys = [s.key for s in SCENARIOS] + list(PARTS)
    parser.add_argument("--scenarios", default=",".join(keys),
                        help="comma-separated subset of: " + ",".join(keys)
                        + " (dopen, dspoof, dflood: the door figures, bench.doors)")
    parser.add_argument("--daemons", default=",".join(d.name for d in DAEMONS),
                        help="comma-separated subset of: " + ",".join(d.name for d in DAEMONS))
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where latest.md/.json/.png go (default bench/results)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (configs, pcaps, outputs)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_root()
    ensure_tools()
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench/run.py needs 2 CPUs: one for the daemon, one for the traffic")
    settings = Settings.quick() if args.quick else Settings()
    wanted = set(args.scenarios.split(","))
    scenarios = [s for s in SCENARIOS if s.key in wanted]
    chosen = set(args.daemons.split(","))
    daemons = [d for d in DAEMONS if d.name in chosen]
    parts = [p for p in PARTS if p in wanted]
    door_settings = DoorSettings.quick() if args.quick else DoorSettings()
    doors: dict[str, Any] = {}
    os.sched_setaffinity(0, {GENERATOR_CPU})
    began = time.monotonic()
    kernel = any(d.name == KERNEL_COLUMN for d in daemons)
    cost = kernel_cost(settings) if kernel else None
    # On from here (not during the kernel cost above, which they would slow) to the end.
    statistics = start_statistics() if kernel else None
    workdir = Path(tempfile.mkdtemp(prefix="tpk-bench-"))
    procs = Processes()
    outcomes: list[Outcome] = []
    try:
        with Testbed() as bed:
            try:
                run_all(bed, procs, workdir, settings, scenarios, daemons, outcomes,
                        watch_programs=statistics is not None)
                if parts:
                    run_doors(bed, procs, workdir, door_settings, parts, doors)
            finally:
                procs.end_all()  # before the namespaces go
    finally:
        if statistics:
            statistics.close()
        procs.end_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"working files kept in {workdir}")
    # Every daemon known gets its column, run or not (an unrun one shows "—").
    table = Table(SCENARIOS, [d.name for d in DAEMONS], settings)
    report(table, outcomes, cost, args.out, time.monotonic() - began, doors or None)
    return 0


def kernel_cost(settings: Settings) -> KernelCost:
    """The kernel engine's cost per packet (BPF_PROG_TEST_RUN; nothing is sent), measured
    before any traffic runs."""
    print(f"kernel cost per packet (BPF_PROG_TEST_RUN, repeat {KERNEL_COST_REPEAT:,}) ...",
          flush=True)
    cost = measure(KERNEL_COST_REPEAT, settings.kernel_cost_sources, settings.kernel_cost_rounds)
    print("\n".join("    " + line for line in describe(cost)), flush=True)
    return cost


def report(table: Table, outcomes: list[Outcome], cost: KernelCost | None, out: Path,
           seconds: float, doors: dict[str, Any] | None = None) -> None:
    sums = summarize_all(outcomes)
    whole = overall(outcomes, table.daemons)
    info = machine()
    info["run_seconds"] = f"{seconds:.0f}"
    markdown = (render_markdown(table, info, sums, whole, cost, doors)
                + closing_line(seconds, table.settings))
    md, js = write(out, markdown,
                   results_json(info, table.settings, sums, whole, outcomes, cost, doors))
    png = out / "latest.png"
    plot(png, table.scenarios, table.daemons, outcomes, sums)
    print()
    print(markdown)
    print(f"written: {md}, {js}, {png}")



def run() -> None:
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("bench interrupted; namespaces removed and our processes ended", file=sys.stderr)
        raise SystemExit(130) from None
