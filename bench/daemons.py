"""The daemons compared: each one's config, command line, readiness and statistics.

A daemon here is a description (no test bed, no processes): the scenario runner starts it in
the server namespace. `DAEMONS` is the set compared, in the report's column order; the first
is the reference the others are measured against. Another column is another entry, e.g. the
same daemon with another engine or other options. tportknockd runs twice, once per engine
(`--engine python`, `--engine kernel`); each run checks the engine its log line names.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.settings import (
    DAEMON_CPU,
    DOOR,
    FLAG_DOOR,
    KNOCKD_DOOR,
    KNOCKD_FLAG_DOOR,
    SEQ_TIMEOUT,
)
from bench.testbed import Processes, Testbed, project_env


@dataclass
class Running:
    """A daemon started for one scenario."""

    proc: subprocess.Popen[str]
    startup_s: float
    lines: list[str]
    reader: threading.Thread
    engine: str = ""  # what the daemon says it matches with ("" if it does not say)


class Daemon:
    """One column of the report: a daemon and the options it runs with."""

    name = ""

    def config(self, out: Path) -> str:
        raise NotImplementedError

    def argv(self, conf: Path, interface: str) -> list[str]:
        raise NotImplementedError

    def is_ready(self, run: Running) -> bool:
        raise NotImplementedError

    def statistics(self, lines: list[str]) -> dict[str, int]:
        return {}

    def engine(self, run: Running) -> str:
        """Once ready: the engine the daemon says it runs ("" if it does not say). Raises
        RuntimeError when it is not the one this column stands for."""
        return ""

    def statistics_now(self, run: Running) -> dict[str, int]:
        """The daemon's counters at this moment, where it can tell them ({} otherwise)."""
        return {}

    def start(self, bed: Testbed, procs: Processes, conf: Path, text: str) -> Running:
        """Write the config `text` to `conf`, start the daemon pinned to its CPU, wait until
        ready. `text` is `config(out)` unless a scenario brings its own."""
        conf.write_text(text)
        lines: list[str] = []
        started = time.monotonic()
        proc = procs.start(
            bed.in_server(["taskset", "-c", str(DAEMON_CPU),
                           *self.argv(conf, bed.server_if)]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=project_env())
        reader = threading.Thread(target=collect_lines, args=(proc, lines), daemon=True)
        reader.start()
        run = Running(proc, 0.0, lines, reader)
        deadline = started + 10
        while not self.is_ready(run):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n" + "".join(lines))
            time.sleep(0.001)
        run.startup_s = time.monotonic() - started
        run.engine = self.engine(run)
        return run

    def stop(self, run: Running) -> dict[str, int]:
        run.proc.send_signal(signal.SIGTERM)
        try:
            run.proc.wait(15)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.proc.wait()
        run.reader.join(2)
        return self.statistics(run.lines)


def collect_lines(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)


def start_command(out: Path) -> str:
    """One process (date) per knock, the source written by %IP%: the same for both daemons."""
    return f"date '+%IP% %s.%N' >> {out}"


def tportknockd_config(out: Path) -> str:
    return (
        "<bench>\n"
        f" sequence      = {' '.join(DOOR)}\n"
        f" timeout       = {SEQ_TIMEOUT}\n"
        f" start_command = {start_command(out)}\n"
        "</bench>\n"
        "<flags>\n"
        f" sequence      = {' '.join(FLAG_DOOR)}\n"
        f" timeout       = {SEQ_TIMEOUT}\n"
        f" start_command = {start_command(out)}\n"
        "</flags>\n"
    )


def knockd_config(out: Path) -> str:
    return (
        "[bench]\n"
        f" sequence    = {KNOCKD_DOOR}\n"
        f" seq_timeout = {SEQ_TIMEOUT}\n"
        " tcpflags    = syn\n"
        f" command     = {start_command(out)}\n"
        "[flags]\n"
        f" sequence    = {KNOCKD_FLAG_DOOR}\n"
        f" seq_timeout = {SEQ_TIMEOUT}\n"
        " tcpflags    = urg,psh\n"
        f" command     = {start_command(out)}\n"
    )


#: How long a daemon may take to answer SIGUSR1 (it reads signals between ring blocks).
STATISTICS_WAIT_S = 5.0


def _statistics_lines(lines: list[str]) -> int:
    return sum(1 for line in lines if "statistics:" in line)


def parse_statistics(lines: list[str]) -> dict[str, int]:
    """The counters of tportknockd's last `statistics:` line (its exit line), by name."""
    for line in reversed(lines):
        if "statistics:" in line:
            return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    return {}


def engine_line(lines: list[str]) -> str | None:
    """What follows `engine: ` in tportknockd's log (logged right before `ready:`), e.g.
    "kernel (eBPF socket filter, ...)"; None if there is no such line."""
    for line in lines:
        found = re.search(r"(?:INFO|:) engine: (.*)", line)
        if found:
            return found.group(1).strip()
    return None


class Tportknockd(Daemon):
    """This project's daemon, from this checkout, with `--engine ENGINE` when `engine` is
    given (and that engine checked at start); `options` are added to its command line."""

    def __init__(self, name: str = "tportknockd", engine: str | None = None,
                 options: tuple[str, ...] = ()) -> None:
        self.name, self.engine_wanted, self.options = name, engine, options

    def config(self, out: Path) -> str:
        return tportknockd_config(out)

    def argv(self, conf: Path, interface: str) -> list[str]:
        engine = ("--engine", self.engine_wanted) if self.engine_wanted else ()
        return [sys.executable, "-m", "tportknockd", "-c", str(conf), "-i", interface,
                "--state-file", "none", *engine, *self.options]

    def is_ready(self, run: Running) -> bool:
        return any(" ready: " in line for line in run.lines)

    def engine(self, run: Running) -> str:
        line = engine_line(run.lines)
        if line is None:
            raise RuntimeError(f"{self.name}: no 'engine:' line before 'ready:':\n"
                               + "".join(run.lines))
        named = line.split(" ", 1)[0]
        if self.engine_wanted and named != self.engine_wanted:
            raise RuntimeError(f"{self.name} should run the {self.engine_wanted} engine, and "
                               f"runs: engine: {line}")
        return line

    def statistics(self, lines: list[str]) -> dict[str, int]:
        return parse_statistics(lines)

    def statistics_now(self, run: Running) -> dict[str, int]:
        """SIGUSR1 makes the daemon log a statistics line (kernel counters read afresh)."""
        before = _statistics_lines(run.lines)
        run.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + STATISTICS_WAIT_S
        while _statistics_lines(run.lines) == before:
            if time.monotonic() > deadline or run.proc.poll() is not None:
                raise RuntimeError(f"{self.name} logged no statistics on SIGUSR1")
            time.sleep(0.001)
        return parse_statistics(run.lines)


class Knockd(Daemon):
    """knockd in the foreground, without -v/-D and without a log file: every stage it logs
    would cost it a write per flood packet, which is not what this compares."""

    name = "knockd"

    def config(self, out: Path) -> str:
        return knockd_config(out)

    def argv(self, conf: Path, interface: str) -> list[str]:
        return ["knockd", "-i", interface, "-c", str(conf)]

    def is_ready(self, run: Running) -> bool:
        # knockd says nothing when quiet; it is listening once it blocks in poll() inside
        # pcap_dispatch, after the filter is set.
        try:
            number = Path(f"/proc/{run.proc.pid}/syscall").read_text().split()[0]
        except (OSError, IndexError):
            return False
        return number in ("7", "271")  # poll, ppoll (x86-64)


#: tportknockd's columns, one per engine.
TPORTKNOCKD_PYTHON = Tportknockd("tportknockd-python", "python")
TPORTKNOCKD_KERNEL = Tportknockd("tportknockd-kernel", "kernel")
#: The daemons compared, in column order; the first (knockd) is the reference.
DAEMONS: tuple[Daemon, ...] = (Knockd(), TPORTKNOCKD_PYTHON, TPORTKNOCKD_KERNEL)
#: The columns of tportknockd (scenarios for tportknockd alone run for each of them).
TPORTKNOCKD_COLUMNS = tuple(d.name for d in DAEMONS if isinstance(d, Tportknockd))
#: The two engines, compared with each other too (a ratio column of their own).
ENGINE_PAIR = (TPORTKNOCKD_KERNEL.name, TPORTKNOCKD_PYTHON.name)
#: The column the kernel cost per packet (bench.kernel_cost) belongs to.
KERNEL_COLUMN = TPORTKNOCKD_KERNEL.name
