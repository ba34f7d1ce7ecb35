"""The kernel engine's program as the kernel's run statistics see it during a scenario: how
many times it ran and the time per run, in the receive path of the real traffic (a spoofed
flood: a new source every packet, a fresh-table insert and an eviction each).

The bench holds the statistics on while the scenarios run (`syscalls.RunStatistics`: nothing
is left on when it ends). The daemon's program is found by the daemon's pid: each program
descriptor it holds shows a `prog_id:` line in /proc/PID/fdinfo; the one named `tportknockd`
is its program (knockd and the Python engine hold none). The bench opens the program by id
for the scenario's window, so that it can be read at the end whatever the daemon did with
it; the figures are kept only if the daemon still holds the same program then.

Each run is timed between two clock reads, so the time per run includes part of that cost
(an empty program shows it: bench.kernel_cost's statistics rows).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tportknockd.bpf import syscalls

#: The name the kernel engine loads its program with.
PROGRAM_NAME = "tportknockd"


def start_statistics() -> syscalls.RunStatistics | None:
    """Run statistics on for as long as the result is open; None (and why, printed) where the
    kernel cannot (before Linux 5.8) or will not."""
    try:
        return syscalls.RunStatistics()
    except syscalls.BpfError as error:
        print(f"kernel program statistics not taken: BPF_ENABLE_STATS failed ({error})",
              flush=True)
        return None


def fdinfo_program_id(text: str) -> int | None:
    """The program id in the text of /proc/PID/fdinfo/FD, None for a descriptor of anything
    else."""
    found = re.search(r"^prog_id:\s*(\d+)$", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def program_ids_of(pid: int) -> list[int]:
    """The ids of the BPF programs whose descriptors process `pid` holds, in fd order."""
    return [i for i in map(fdinfo_program_id, _fdinfo_texts(pid)) if i is not None]


def _fdinfo_texts(pid: int) -> list[str]:
    texts = []
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for name in sorted(os.listdir(fdinfo), key=int):
        try:
            texts.append((fdinfo / name).read_text())
        except OSError:  # closed since the listing
            continue
    return texts


def figures(program_id: int, before: syscalls.ProgramInfo,
            after: syscalls.ProgramInfo) -> dict[str, int]:
    """What the program did between two readings (the Outcome's `bpf_stats`)."""
    return {"id": program_id, "runs": after.run_cnt - before.run_cnt,
            "run_time_ns": after.run_time_ns - before.run_time_ns}


def ns_per_run(stats: dict[str, int]) -> float | None:
    """The program's time per run from an Outcome's `bpf_stats`; None without runs."""
    runs = stats.get("runs")
    return stats["run_time_ns"] / runs if runs else None


class ProgramWatch:
    """The daemon's program, held open from the start of a scenario's window (when the watch
    is made) to its end (`figures`)."""

    def __init__(self, pid: int, program: syscalls.Program) -> None:
        self.pid, self.program = pid, program
        self.before = program.info()

    @classmethod
    def of_daemon(cls, pid: int) -> ProgramWatch | None:
        """The program named PROGRAM_NAME among those `pid` holds; None if it holds none (or,
        which the daemon never does, several)."""
        named: list[syscalls.Program] = []
        for program_id in dict.fromkeys(program_ids_of(pid)):  # one fd each is enough
            try:
                program = syscalls.Program.from_id(program_id)
            except syscalls.BpfError:  # unloaded since the listing
                continue
            if program.info().name == PROGRAM_NAME:
                named.append(program)
            else:
                program.close()
        if len(named) != 1:
            for program in named:
                program.close()
            if named:
                print(f"    {len(named)} programs named {PROGRAM_NAME} in process {pid}: "
                      "kernel program statistics not taken", flush=True)
            return None
        return cls(pid, named[0])

    def figures(self) -> dict[str, int]:
        """Runs and run time since the watch began; {} (and why, printed) if the daemon no
        longer holds this program (it replaced it: the new one's runs were not watched)."""
        after = self.program.info()
        if after.id not in program_ids_of(self.pid):
            print(f"    the daemon replaced its program {after.id} during the scenario: "
                  "kernel program statistics not taken", flush=True)
            return {}
        return figures(after.id, self.before, after)

    def close(self) -> None:
        self.program.close()
