"""`make fuzz`: generated and mutated packets through both engines, configs through the parser.

Packets: knocks for hypothesis-drawn configs, wrapped in every shape the parsers know, a
quarter of them cut, spliced and bit-flipped, a few random bytes, each fed to the Python
engine (classic filter, parser, engine) and to the kernel engine's eBPF program
(BPF_PROG_TEST_RUN over the same bytes: nothing is sent). They must agree on every completion
and knock, and the Python side must never raise. Without root (no bpf()), the Python side
alone. Configs: the parser must answer with a config or FILE:LINE errors, never a traceback.
See scripts/fuzzing/ for how.

Prints the counts, failures and the time; exits non-zero on any failure.

    python scripts/fuzz.py [--packets N] [--configs N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
# tportknockd without the venv too; tests/ for frames_raw (frames by hand) and bpfvm (the
# classic-BPF interpreter that runs the Python side's filter).
sys.path[1:1] = [str(CHECKOUT / "src")]
sys.path.append(str(CHECKOUT / "tests" / "support"))

from fuzzing.configs import fuzz_configs  # noqa: E402
from fuzzing.crosscheck import CrossCheck, Tally  # noqa: E402

from tportknockd.kernel.matcher import Capacity, KernelMatcher, explain  # noqa: E402

#: Small maps: a stream holds a few hundred attempts at most, far from any eviction.
CAPACITY = Capacity(fresh_attempts=4096, advanced_attempts=1024)
PROGRESS_EVERY = 100_000
SHOWN_FAILURES = 5


def open_matcher() -> tuple[KernelMatcher | None, str]:
    try:
        matcher = KernelMatcher(CAPACITY)
    except Exception as exc:  # anything that stops the kernel engine: say why, go on without
        return None, explain(exc)
    return matcher, f"loaded, {matcher.instructions} instructions"


def fuzz_packets(total: int, seed: int | None, failures: list[str]) -> Tally:
    matcher, how = open_matcher()
    if matcher is None:
        print(f"fuzz: no kernel engine ({how}): the Python side only", flush=True)
    else:
        print(f"fuzz: kernel engine {how}", flush=True)
    tally = Tally()
    check = CrossCheck(matcher, tally)
    started = time.monotonic()
    next_report = PROGRESS_EVERY

    def progress() -> None:
        nonlocal next_report
        if tally.frames >= next_report:
            next_report += PROGRESS_EVERY
            print(f"  packets: {tally.frames:,} in {time.monotonic() - started:.0f} s",
                  flush=True)  # fmt: skip

    try:
        check.run(total, seed, progress)
        if matcher is not None:
            rules = matcher.statistics()
            print(f"fuzz: the kernel's counters: {rules.started:,} attempts started, "
                  f"{rules.promoted:,} promoted (two frames in), {rules.advanced:,} advanced "
                  f"further, {rules.retransmissions:,} retransmissions, {rules.broken:,} "
                  f"broken, {rules.expired:,} expired, {rules.completed:,} completed",
                  flush=True)  # fmt: skip
    finally:
        if matcher is not None:
            matcher.close()
    failures += [failure.render() for failure in check.failures]
    failures += ["(not kept)"] * (tally.failures - len(check.failures))
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=1_000_000, help="default 1,000,000")
    parser.add_argument("--configs", type=int, default=100_000, help="default 100,000")
    parser.add_argument("--seed", type=int, help="repeat a run (default: a random seed)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"fuzz: seed {seed}", flush=True)
    failures: list[str] = []

    started = time.monotonic()
    tally = fuzz_packets(args.packets, seed, failures)
    packets_time = time.monotonic() - started
    if tally.both:
        engines = (
            f"both engines (and {tally.too_short:,} too short for BPF_PROG_TEST_RUN, "
            "which the Python side must drop)"
        )
    else:
        engines = "the Python side (no kernel engine)"
    print(
        f"fuzz: {tally.frames:,} packets through {engines} in {packets_time:.0f} s: "
        f"{tally.configs:,} configs, {tally.streams:,} streams, {tally.knocks:,} knocks, "
        f"{tally.completions:,} completions; {tally.parser_only:,} jumbo frames through the "
        f"parsers alone; {tally.slow_reruns} slow streams run again",
        flush=True,
    )

    config_started = time.monotonic()
    failed_before = len(failures)

    def config_progress(ran: int) -> None:
        print(f"  configs: {ran:,} in {time.monotonic() - config_started:.0f} s", flush=True)

    configs = fuzz_configs(args.configs, seed, failures, config_progress)
    print(f"fuzz: {configs:,} configs through the parser in "
          f"{time.monotonic() - config_started:.0f} s, "
          f"{len(failures) - failed_before} failures", flush=True)  # fmt: skip

    for failure in failures[:SHOWN_FAILURES]:
        print("FAIL", failure[:4000])
    print(f"fuzz: {len(failures)} failures, {time.monotonic() - started:.0f} s in all")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
