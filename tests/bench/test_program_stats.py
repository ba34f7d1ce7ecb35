"""bench.program_stats: finding a daemon's eBPF program by its pid and reading the kernel's run
statistics of it over a window (root: against a child process that holds a program, as the
daemon does)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench.program_stats import PROGRAM_NAME, ProgramWatch, fdinfo_program_id, ns_per_run
from privileges import BPF, require_root
from tportknockd.bpf import syscalls

PROGRAM_FDINFO = ("pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\nprog_type:\t1\n"
                  "prog_jited:\t1\nprog_tag:\t59f4a931744dcdc6\nmemlock:\t4096\n"
                  "prog_id:\t1816\nrun_time_ns:\t46308340\nrun_cnt:\t1000000\n"
                  "recursion_misses:\t0\nverified_insns:\t2\n")
MAP_FDINFO = ("pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\nmap_type:\t2\n"
              "key_size:\t4\nvalue_size:\t8\nmax_entries:\t1\nmap_flags:\t0x0\n"
              "map_extra:\t0x0\nmemlock:\t320\nmap_id:\t77\nfrozen:\t0\n")


def test_the_program_id_of_a_descriptor() -> None:
    assert fdinfo_program_id(PROGRAM_FDINFO) == 1816
    assert fdinfo_program_id(MAP_FDINFO) is None
    assert fdinfo_program_id("pos:\t0\nflags:\t0100000\nmnt_id:\t25\nino:\t12\n") is None


def test_time_per_run() -> None:
    assert ns_per_run({"id": 1, "runs": 4, "run_time_ns": 600}) == 150.0
    assert ns_per_run({"id": 1, "runs": 0, "run_time_ns": 0}) is None
    assert ns_per_run({}) is None


# A process that loads a program (named by argv[1], none if empty) and holds it, as the
# daemon does; "close" on stdin makes it close it, "end" makes it exit.
HOLDER = """
import sys
from tportknockd.bpf import syscalls
from tportknockd.bpf.ebpf_assembler import Assembler
asm = Assembler()
asm.ret(0)
program = None
if sys.argv[1]:
    program = syscalls.Program.load(syscalls.BPF_PROG_TYPE_SOCKET_FILTER, asm.assemble(),
                                  name=sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "close" and program:
        program.close()
        print("closed", flush=True)
    if line.strip() == "end":
        break
"""


class Holder:
    def __init__(self, name: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, name], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"

    def say(self, word: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline()

    def end(self) -> None:
        if self.proc.poll() is None:
            self.say("end")
        self.proc.wait(10)


@pytest.fixture
def holder(request: pytest.FixtureRequest) -> Iterator[Holder]:
    require_root(BPF)
    running = Holder(request.param)
    try:
        yield running
    finally:
        running.end()


FRAME = bytes(12) + b"\x08\x00" + bytes(40)


@pytest.mark.parametrize("holder", [PROGRAM_NAME], indirect=True)
def test_the_runs_of_the_daemons_program_over_a_window(holder: Holder) -> None:
    with syscalls.RunStatistics():
        watch = ProgramWatch.of_daemon(holder.proc.pid)
        assert watch is not None
        try:
            assert watch.program.info().name == PROGRAM_NAME
            watch.program.test_run(FRAME, repeat=2500)  # the runs the socket would cause
            figures = watch.figures()
            assert figures["id"] == watch.program.info().id
            assert figures["runs"] == 2500 and figures["run_time_ns"] > 0
            # The daemon dropping its program (a new one in its place would go unwatched):
            # no figures rather than those of a program it no longer runs.
            assert holder.say("close") == "closed\n"
            assert watch.figures() == {}
        finally:
            watch.close()


@pytest.mark.parametrize("holder", ["", "tpk_other"], indirect=True)
def test_no_program_of_that_name_no_watch(holder: Holder) -> None:
    assert ProgramWatch.of_daemon(holder.proc.pid) is None
