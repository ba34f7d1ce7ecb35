"""Measurement: a daemon's CPU and memory, the send time of each knock (tcpdump on the client
veth), the time each knock was detected (the start_command's output), and the machine."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import platform
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.settings import GENERATOR_CPU, REPO
from bench.testbed import Processes, Testbed


def cpu_seconds(pid: int) -> float:
    """CPU time of the whole process (all threads, dead ones too), to the nanosecond.

    The process CPU clock of another process: clockid ((~pid) << 3) | CPUCLOCK_SCHED, the
    same sum_exec_runtime that /proc/PID/stat's utime+stime are cut from in clock ticks.
    """
    return time.clock_gettime(((~pid) << 3) | 2)


def stat_cpu_seconds(pid: int) -> float:
    """utime+stime from /proc/PID/stat (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of a process."""
    return parse_memory(Path(f"/proc/{pid}/status").read_text())


def parse_memory(status: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


class RssSampler:
    """Samples VmRSS every 20 ms; the kernel's VmHWM is read at the end as well."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak_kb = max(self.peak_kb, memory_kb(self.pid).get("VmRSS", 0))
            except OSError:
                return


class Capture:
    """tcpdump on the client's veth: the send time of every knock packet (CLOCK_REALTIME)."""

    FILTER = "(tcp or udp) and (src net 198.51.100.0/24 or src net 2001:db8::/32)"

    def __init__(self, bed: Testbed, procs: Processes, path: Path) -> None:
        self.bed, self.procs, self.path = bed, procs, path
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Capture:
        argv = self.bed.in_client(["taskset", "-c", str(GENERATOR_CPU), "tcpdump", "-i",
                                   self.bed.client_if, "-Q", "out", "-nn", "-U", "--immediate-mode",
                                   "-B", "16384", "--time-stamp-precision=nano",
                                   "-w", str(self.path),
                                   self.FILTER])
        self.proc = self.procs.start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on ..." once the socket is set up
        if "listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=10)

    def last_sent(self) -> dict[str, float]:
        """Per source address: the capture time of its last packet."""
        return last_sent(self.path)

    def first_sent(self) -> dict[str, float]:
        """Per source address: the capture time of its first packet."""
        return first_sent(self.path)

    def sent_since(self, unix_time: float) -> int:
        """How many knock packets were sent at or after `unix_time`."""
        return sent_since(self.path, unix_time)


def last_sent(path: Path) -> dict[str, float]:
    """Per source address of a pcap file: the capture time of its last packet."""
    last: dict[str, float] = {}
    for stamp, source in read_pcap_sources(path):
        last[source] = max(stamp, last.get(source, 0.0))
    return last


def first_sent(path: Path) -> dict[str, float]:
    """Per source address of a pcap file: the capture time of its first packet."""
    first: dict[str, float] = {}
    for stamp, source in read_pcap_sources(path):
        first[source] = min(stamp, first.get(source, stamp))
    return first


def sent_since(path: Path, unix_time: float) -> int:
    """How many packets of a pcap file were captured at or after `unix_time`."""
    return sum(1 for stamp, _ in read_pcap_sources(path) if stamp >= unix_time)


def read_pcap_sources(path: Path) -> Iterator[tuple[float, str]]:
    """(timestamp, source address) of each IPv4/IPv6 packet of an Ethernet pcap file."""
    data = path.read_bytes()
    if len(data) < 24:
        return
    magic = struct.unpack_from("<I", data)[0]
    order = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    divisor = 1e9 if struct.unpack_from(order + "I", data)[0] == 0xA1B23C4D else 1e6
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(order + "IIII", data, offset)
        frame = data[offset + 16: offset + 16 + caplen]
        offset += 16 + caplen
        ethertype = int.from_bytes(frame[12:14], "big")
        if ethertype == 0x0800 and len(frame) >= 34:
            source = str(ipaddress.IPv4Address(frame[26:30]))
        elif ethertype == 0x86DD and len(frame) >= 54:
            source = str(ipaddress.IPv6Address(frame[22:38]))
        else:
            continue
        yield sec + frac / divisor, source


def detections(path: Path) -> dict[str, float]:
    """Source address → the first time its start_command ran."""
    found: dict[str, float] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            found.setdefault(parts[0], float(parts[1]))
    return found


def wait_for(path: Path, sources: Sequence[str], seconds: float) -> None:
    """Until every source has been detected, or `seconds` have passed."""
    deadline = time.monotonic() + seconds
    wanted = set(sources)
    while time.monotonic() < deadline and not wanted <= detections(path).keys():
        time.sleep(0.02)


def machine() -> dict[str, str]:
    """The machine and the versions measured, for the report's header."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "knockd": _package_version("knockd"),
        "trafgen": _package_version("netsniff-ng"),
        "tportknockd": _git_revision(),
    }


def _package_version(package: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                            capture_output=True, text=True)
    return result.stdout.strip() or "?"


def _git_revision() -> str:
    result = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True)
    return result.stdout.strip() or "?"
