#!/usr/bin/env python3
"""`make bench`: tportknockd and knockd side by side, on the same knocks and the same floods.

Everything happens between two network namespaces that this script creates and joins with
one veth pair (created inside the server namespace, its peer put straight into the client
namespace). There is no default route, only documentation addresses are used, and spoofed
sources come only from 198.18.0.0/15. Every flood is bounded by a packet count (trafgen -n)
and by time (timeout). The daemon under test is pinned to CPU 0, everything that generates
traffic (trafgen, the knock clients, tcpdump, this script) to CPU 1.

Each scenario starts a fresh daemon, so CPU, RSS peak and ring drops belong to one scenario.
Each knock comes from its own source address, so the line that the start_command writes
(`date '+%IP% %s.%N' >> FILE`) can be matched to its knock. Latency runs from the capture
timestamp of the knock's last packet on the client's veth (tcpdump, CLOCK_REALTIME) to the
time that command wrote (CLOCK_REALTIME); it includes the fork of /bin/sh and date (~2 ms).

Results: bench/results/latest.md (printed too), latest.json and latest.png.
Run as root: `python3 bench/run.py [--quick]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

SERVER_V4, CLIENT_V4 = "198.51.100.1", "198.51.100.2"
SERVER_V6, CLIENT_V6 = "2001:db8::1", "2001:db8::2"
#: One source address per knock, so every detection can be matched to its knock.
KNOCK_V4 = tuple(f"198.51.100.{i}" for i in range(10, 50))
KNOCK_V6 = tuple(f"2001:db8::{i:x}" for i in range(0x10, 0x20))
SPOOF_BASE = 0xC6120000  # 198.18.0.0
SPOOF_LAST = 0xC613FFFF  # 198.19.255.255: the whole /15
SPOOF_SOURCES = 100_000

DAEMON_CPU, GENERATOR_CPU = 0, 1

#: The door for scenarios a-c and e, written so that both daemons mean the same thing: the
#: client sends a bare SYN, which matches tportknockd's exact `s` and knockd's `syn` (set).
#: UDP first, as the tportknockd docs advise (a SYN first frame occurs in ordinary traffic).
DOOR = ("udp:7000", "tcp:7001:s", "udp:7002")
KNOCKD_DOOR = "7000:udp,7001:tcp,7002:udp"
#: The flag door for scenario d: URG+PSH exactly, then a UDP frame.
FLAG_DOOR = ("tcp:110:up", "udp:111")
KNOCKD_FLAG_DOOR = "110:tcp,111:udp"
SEQ_TIMEOUT = 10
CLIENT_DELAY_MS = 10

TARGETS = {
    "idle_median_ms": 3.0,
    "idle_p95_ms": 5.0,
    "noise_cpu_s": 0.05,
    "spoof10k_cpu_s": 0.2,
    "spoof_full_us_per_packet": 1.6,
    "rss_idle_mb": 20.0,
    "rss_peak_mb": 48.0,
    "startup_s": 0.3,
}

APT_TOOLS = {"knockd": "knockd", "hping3": "hping3", "trafgen": "netsniff-ng",
             "tcpdump": "tcpdump", "ip": "iproute2", "taskset": "util-linux",
             "timeout": "coreutils"}


@dataclass(frozen=True)
class Settings:
    idle_knocks: int = 20
    noise_knocks: int = 20
    during_knocks: int = 10
    after_knocks: int = 10
    flag_knocks: int = 5  # of each kind: exact and with ECE
    v6_knocks: int = 5
    flood_s: float = 10.0
    slow_pps: int = 10_000
    idle_wait_s: float = 3.0
    flood_wait_s: float = 12.0

    @classmethod
    def quick(cls) -> Settings:
        return cls(idle_knocks=5, noise_knocks=5, during_knocks=3, after_knocks=3,
                   flag_knocks=2, v6_knocks=2, flood_s=3.0, idle_wait_s=2.0, flood_wait_s=5.0)


# --- processes we start, and only those --------------------------------------------------


class Processes:
    """Every process this script starts, so the finally block can end exactly those."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def start(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(list(argv), **kw)
        self._procs.append(proc)
        return proc

    def end_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                _signal(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        for proc in self._procs:
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


# --- the test bed --------------------------------------------------------------------------


class Testbed:
    """Two namespaces joined by a veth pair, with one source address per knock on the client."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.server, self.client = f"tpkb-s-{tag}", f"tpkb-c-{tag}"
        self.server_if, self.client_if = "tkb0", "tkb1"
        self.server_mac = ""
        self._made: list[str] = []

    def __enter__(self) -> Testbed:
        try:
            for ns in (self.server, self.client):
                sh("ip", "netns", "add", ns)
                self._made.append(ns)
            self._wire()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()

    def _wire(self) -> None:
        s, c = self.server, self.client
        sh("ip", "-n", s, "link", "add", self.server_if, "type", "veth",
           "peer", "name", self.client_if, "netns", c)
        for ns, ifname in ((s, self.server_if), (c, self.client_if)):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        sh("ip", "-n", s, "addr", "add", f"{SERVER_V4}/24", "dev", self.server_if)
        sh("ip", "-n", s, "addr", "add", f"{SERVER_V6}/64", "dev", self.server_if, "nodad")
        sh("ip", "-n", c, "addr", "add", f"{CLIENT_V4}/24", "dev", self.client_if)
        sh("ip", "-n", c, "addr", "add", f"{CLIENT_V6}/64", "dev", self.client_if, "nodad")
        # The primary goes first: the knock addresses are its secondaries.
        for address in KNOCK_V4:
            sh("ip", "-n", c, "addr", "add", f"{address}/24", "dev", self.client_if)
        for address in KNOCK_V6:
            sh("ip", "-n", c, "addr", "add", f"{address}/64", "dev", self.client_if, "nodad")
        link = json.loads(sh("ip", "-n", s, "-j", "link", "show", "dev", self.server_if))
        self.server_mac = str(link[0]["address"])

    def in_server(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.server, *argv]

    def in_client(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.client, *argv]

    def rx_packets(self) -> int:
        link = json.loads(sh("ip", "-n", self.server, "-s", "-j", "link", "show",
                             "dev", self.server_if))
        return int(link[0]["stats64"]["rx"]["packets"])


# --- measuring a process -----------------------------------------------------------------


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
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
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


# --- the daemons ---------------------------------------------------------------------------


@dataclass
class Running:
    """A daemon started for one scenario."""

    proc: subprocess.Popen[str]
    startup_s: float
    lines: list[str]
    reader: threading.Thread


class Daemon:
    name = ""

    def __init__(self, bed: Testbed, procs: Processes, workdir: Path) -> None:
        self.bed, self.procs, self.workdir = bed, procs, workdir

    def config(self, out: Path) -> str:
        raise NotImplementedError

    def argv(self, conf: Path) -> list[str]:
        raise NotImplementedError

    def is_ready(self, run: Running) -> bool:
        raise NotImplementedError

    def start(self, key: str, out: Path) -> Running:
        conf = self.workdir / f"{key}-{self.name}.conf"
        conf.write_text(self.config(out))
        lines: list[str] = []
        env = dict(os.environ, PYTHONPATH=_pythonpath())
        started = time.monotonic()
        proc = self.procs.start(
            self.bed.in_server(["taskset", "-c", str(DAEMON_CPU), *self.argv(conf)]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        reader = threading.Thread(target=_collect, args=(proc, lines), daemon=True)
        reader.start()
        run = Running(proc, 0.0, lines, reader)
        deadline = started + 10
        while not self.is_ready(run):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n" + "".join(lines))
            time.sleep(0.001)
        run.startup_s = time.monotonic() - started
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

    def statistics(self, lines: list[str]) -> dict[str, int]:
        return {}


def _pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH")
    return f"{REPO / 'src'}{os.pathsep}{existing}" if existing else str(REPO / "src")


def _collect(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)


def _command(out: Path) -> str:
    # One process (date) per knock, the source written by %IP%: the same for both daemons.
    return f"date '+%IP% %s.%N' >> {out}"


class Tportknockd(Daemon):
    name = "tportknockd"

    def config(self, out: Path) -> str:
        return (
            "<bench>\n"
            f" sequence      = {' '.join(DOOR)}\n"
            f" timeout       = {SEQ_TIMEOUT}\n"
            f" start_command = {_command(out)}\n"
            "</bench>\n"
            "<flags>\n"
            f" sequence      = {' '.join(FLAG_DOOR)}\n"
            f" timeout       = {SEQ_TIMEOUT}\n"
            f" start_command = {_command(out)}\n"
            "</flags>\n"
        )

    def argv(self, conf: Path) -> list[str]:
        return [sys.executable, "-m", "tportknockd", "-c", str(conf), "-i", self.bed.server_if,
                "--state-file", "none"]

    def is_ready(self, run: Running) -> bool:
        return any(" ready: " in line for line in run.lines)

    def statistics(self, lines: list[str]) -> dict[str, int]:
        for line in reversed(lines):
            if "statistics:" in line:
                return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
        return {}


class Knockd(Daemon):
    """knockd in the foreground, without -v/-D and without a log file: every stage it logs
    would cost it a write per flood packet, which is not what this compares."""

    name = "knockd"

    def config(self, out: Path) -> str:
        return (
            "[bench]\n"
            f" sequence    = {KNOCKD_DOOR}\n"
            f" seq_timeout = {SEQ_TIMEOUT}\n"
            " tcpflags    = syn\n"
            f" command     = {_command(out)}\n"
            "[flags]\n"
            f" sequence    = {KNOCKD_FLAG_DOOR}\n"
            f" seq_timeout = {SEQ_TIMEOUT}\n"
            " tcpflags    = urg,psh\n"
            f" command     = {_command(out)}\n"
        )

    def argv(self, conf: Path) -> list[str]:
        return ["knockd", "-i", self.bed.server_if, "-c", str(conf)]

    def is_ready(self, run: Running) -> bool:
        # knockd says nothing when quiet; it is listening once it blocks in poll() inside
        # pcap_dispatch, after the filter is set.
        try:
            number = Path(f"/proc/{run.proc.pid}/syscall").read_text().split()[0]
        except (OSError, IndexError):
            return False
        return number in ("7", "271")  # poll, ppoll (x86-64)


# --- traffic -------------------------------------------------------------------------------


@dataclass
class Knock:
    source: str
    kind: str  # "", "during", "after", "exact", "ece"
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def sent(self) -> bool:
        return all(proc.wait(30) == 0 for proc in self.procs)


class Knocker:
    """Sends knocks from the client namespace, pinned to the generator CPU."""

    def __init__(self, bed: Testbed, procs: Processes) -> None:
        self.bed, self.procs = bed, procs

    def _pinned(self, argv: Sequence[str]) -> list[str]:
        return self.bed.in_client(["taskset", "-c", str(GENERATOR_CPU), *argv])

    def client(self, source: str, frames: Sequence[str], kind: str = "") -> Knock:
        """The project's own client: `python -m tportknockd.client -s SOURCE HOST FRAME...`."""
        server = SERVER_V6 if ":" in source else SERVER_V4
        argv = self._pinned([sys.executable, "-m", "tportknockd.client", "-d",
                             str(CLIENT_DELAY_MS), "-s", source, server, *frames])
        env = dict(os.environ, PYTHONPATH=_pythonpath())
        proc = self.procs.start(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        return Knock(source, kind, [proc])

    def hping_flags(self, source: str, tcp_flags: Sequence[str], kind: str) -> Knock:
        """The flag door by hping3 (it can set ECE, `-X`): tcp/110 with flags, then udp/111.

        hping3 returns as soon as the server answers (RST, port unreachable), so the frames go
        out one after the other, like the client's.
        """
        first = self._pinned(["hping3", "-q", "-c", "1", "-a", source, "-p", "110",
                              *tcp_flags, SERVER_V4])
        second = self._pinned(["hping3", "-q", "-c", "1", "-2", "-a", source, "-p", "111",
                               SERVER_V4])
        knock = Knock(source, kind)
        for argv in (first, second):
            proc = self.procs.start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            knock.procs.append(proc)
            proc.wait(10)
            time.sleep(CLIENT_DELAY_MS / 1000)
        return knock


@dataclass
class FloodResult:
    kind: str
    sent: int
    delivered: int
    seconds: float

    @property
    def pps(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0


class Flood:
    """trafgen in the client namespace: bounded by -n and by timeout, `--no-sock-mem -Q`."""

    def __init__(self, bed: Testbed, procs: Processes, workdir: Path) -> None:
        self.bed, self.procs, self.workdir = bed, procs, workdir

    def noise_config(self) -> str:
        """Non-knock traffic: random UDP and TCP (ACK) to random ports 10000+, random sources."""
        head = (f"eth(da={self.bed.server_mac}),\n"
                f"  ipv4(sa=198.18.0.1, sa=drnd({SPOOF_BASE}, {SPOOF_LAST}), "
                f"da={SERVER_V4}, ttl=64),\n")
        return (
            f"cpu({GENERATOR_CPU}): {{\n  {head}"
            "  udp(sp=drnd(1024, 65535), dp=drnd(10000, 65535)),\n  fill(0x41, 18)\n}\n"
            f"cpu({GENERATOR_CPU}): {{\n  {head}"
            "  tcp(sp=drnd(1024, 65535), dp=drnd(10000, 65535), ack, seq=drnd(), aseq=drnd(),"
            " win=1024)\n}\n"
        )

    def spoof_config(self, pinned: bool) -> str:
        """The door's first frame (udp/7000), sources counting through 100k of 198.18.0.0/15."""
        prefix = f"cpu({GENERATOR_CPU}): " if pinned else ""
        return (
            f"{prefix}{{\n  eth(da={self.bed.server_mac}),\n"
            f"  ipv4(sa=198.18.0.0, sa=dinc({SPOOF_BASE}, {SPOOF_BASE + SPOOF_SOURCES - 1}), "
            f"da={SERVER_V4}, ttl=64),\n"
            "  udp(sp=40000, dp=7000),\n  fill(0x6b, 5)\n}\n"
        )

    @contextmanager
    def flood(self, kind: str, seconds: float, pps: int | None,
              result: list[FloodResult]) -> Iterator[None]:
        """Run the flood while the body runs; the body must not outlast it by much."""
        cfg = self.workdir / f"{kind}.cfg"
        if kind == "noise":
            cfg.write_text(self.noise_config())
        else:
            cfg.write_text(self.spoof_config(pinned=pps is None))
        if pps is None:
            count = int(seconds * 2_000_000)  # above what one CPU can send: time bounds it
            rate = ["-P", "2"]  # the cpu(1) packets: only the CPU 1 worker sends
        else:
            count = int(seconds * pps)
            rate = ["-b", f"{pps}pps"]  # slow path: one worker that trafgen pins to CPU 0
        argv = ["timeout", "-s", "INT", "-k", "3", f"{seconds + 2:g}",
                *self.bed.in_client(["taskset", "-c", str(GENERATOR_CPU), "trafgen",
                                     "--no-sock-mem", "-Q", *rate, "-n", str(count),
                                     "-i", str(cfg), "-o", self.bed.client_if])]
        before = self.bed.rx_packets()
        started = time.monotonic()
        proc = self.procs.start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        if pps is not None:
            _keep_on_cpu(proc.pid, GENERATOR_CPU, 1.0)
        try:
            yield
        except BaseException:
            _signal(proc.pid, signal.SIGINT)  # timeout passes it on to trafgen
            raise
        finally:
            out, _ = proc.communicate(timeout=seconds + 10)
            elapsed = time.monotonic() - started
            delivered = self.bed.rx_packets() - before
            sent = sum(int(n) for n in re.findall(r"(\d+) packets outgoing", out))
            busy = [int(s) + int(u) / 1e6 for s, u in
                    re.findall(r"(\d+) sec, (\d+) usec on CPU\d+ \((?!0 packets)", out)]
            result.append(FloodResult(kind, sent, delivered, max(busy, default=elapsed)))


def _keep_on_cpu(root: int, cpu: int, seconds: float) -> None:
    """Move the trafgen worker to `cpu`: in slow mode (-b/-t) trafgen pins its one worker to
    CPU 0 itself, right after fork, which is the daemon's CPU. Re-pin it for a while, since
    our move can come before its own sched_setaffinity."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for pid in _descendants(root):
            try:
                if os.sched_getaffinity(pid) != {cpu}:
                    os.sched_setaffinity(pid, {cpu})
            except OSError:
                pass
        time.sleep(0.005)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


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
        last: dict[str, float] = {}
        for stamp, source in read_pcap_sources(self.path):
            last[source] = max(stamp, last.get(source, 0.0))
        return last


def read_pcap_sources(path: Path) -> Iterator[tuple[float, str]]:
    """(timestamp, source address) of each IPv4/IPv6 packet of an Ethernet pcap file."""
    import ipaddress

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
    deadline = time.monotonic() + seconds
    wanted = set(sources)
    while time.monotonic() < deadline and not wanted <= detections(path).keys():
        time.sleep(0.02)


# --- scenarios -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one daemon did in one scenario."""

    scenario: str
    daemon: str
    knocks: list[dict[str, Any]] = field(default_factory=list)
    cpu_s: float = 0.0
    stat_cpu_s: float = 0.0
    rss_start_kb: int = 0
    rss_peak_kb: int = 0
    hwm_kb: int = 0
    startup_s: float = 0.0
    statistics: dict[str, int] = field(default_factory=dict)
    floods: list[dict[str, Any]] = field(default_factory=list)
    window_s: float = 0.0
    delivered: int = 0


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    drive: Callable[[Context], list[Knock]]
    flood_wait: bool = False

    def heading(self, settings: Settings) -> str:
        return self.title.format(**asdict(settings))


@dataclass
class Context:
    bed: Testbed
    procs: Processes
    workdir: Path
    settings: Settings
    knocker: Knocker
    flood: Flood
    flood_results: list[FloodResult] = field(default_factory=list)


def drive_idle(ctx: Context) -> list[Knock]:
    knocks = []
    for source in KNOCK_V4[: ctx.settings.idle_knocks]:
        knock = ctx.knocker.client(source, DOOR)
        knock.sent()  # one after the other, each knock alone on the wire
        knocks.append(knock)
        time.sleep(0.05)
    return knocks


def drive_noise(ctx: Context) -> list[Knock]:
    s = ctx.settings
    with ctx.flood.flood("noise", s.flood_s, None, ctx.flood_results):
        return _spread(ctx, KNOCK_V4[: s.noise_knocks], s.flood_s, "during")


def _spread(ctx: Context, sources: Sequence[str], seconds: float, kind: str) -> list[Knock]:
    """Knocks spread evenly over the flood, from its first tenth to its last."""
    knocks = []
    start = time.monotonic()
    step = 0.8 * seconds / max(1, len(sources))
    for i, source in enumerate(sources):
        _sleep_until(start + 0.1 * seconds + i * step)
        knocks.append(ctx.knocker.client(source, DOOR, kind))
    return knocks


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def drive_spoof(ctx: Context, pps: int | None) -> list[Knock]:
    s = ctx.settings
    during = KNOCK_V4[: s.during_knocks]
    after = KNOCK_V4[s.during_knocks: s.during_knocks + s.after_knocks]
    kind = "spoof10k" if pps else "spoof"
    with ctx.flood.flood(kind, s.flood_s, pps, ctx.flood_results):
        knocks = _spread(ctx, during, s.flood_s, "during")
    for source in after:  # right after the flood
        knocks.append(ctx.knocker.client(source, DOOR, "after"))
        time.sleep(0.05)
    return knocks


def drive_flags(ctx: Context) -> list[Knock]:
    n = ctx.settings.flag_knocks
    knocks = []
    for source in KNOCK_V4[:n]:
        knocks.append(ctx.knocker.hping_flags(source, ["-U", "-P"], "exact"))
    for source in KNOCK_V4[n: 2 * n]:
        knocks.append(ctx.knocker.hping_flags(source, ["-U", "-P", "-X"], "ece"))
    return knocks


def drive_v6(ctx: Context) -> list[Knock]:
    knocks = []
    for source in KNOCK_V6[: ctx.settings.v6_knocks]:
        knock = ctx.knocker.client(source, DOOR)
        knock.sent()
        knocks.append(knock)
        time.sleep(0.05)
    return knocks


SCENARIOS = (
    Scenario("a", "(a) {idle_knocks} knocks at idle", drive_idle),
    Scenario("b", "(b) non-knock flood at full rate, {noise_knocks} knocks during it",
             drive_noise, flood_wait=True),
    Scenario("c10k", "(c) spoofed first frames at 10k pps, {during_knocks} knocks during and "
             "{after_knocks} right after",
             lambda ctx: drive_spoof(ctx, ctx.settings.slow_pps), flood_wait=True),
    Scenario("cfull", "(c) spoofed first frames at full rate, {during_knocks} knocks during "
             "and {after_knocks} right after",
             lambda ctx: drive_spoof(ctx, None), flood_wait=True),
    Scenario("d", "(d) flag exactness, door tcp/110 URG+PSH then udp/111: {flag_knocks} exact "
             "knocks, {flag_knocks} with URG+PSH+ECE", drive_flags),
    Scenario("e", "(e) {v6_knocks} IPv6 knocks at idle", drive_v6),
)


def run_scenario(ctx: Context, scenario: Scenario, daemon: Daemon) -> Outcome:
    out = ctx.workdir / f"{scenario.key}-{daemon.name}.txt"
    outcome = Outcome(scenario.key, daemon.name)
    ctx.flood_results = []
    run = daemon.start(scenario.key, out)
    pid = run.proc.pid
    outcome.startup_s = run.startup_s
    try:
        time.sleep(0.3)  # let start-up work (imports, first poll) settle out of the window
        outcome.rss_start_kb = memory_kb(pid)["VmRSS"]
        with Capture(ctx.bed, ctx.procs, ctx.workdir / f"{scenario.key}-{daemon.name}.pcap") \
                as capture, RssSampler(pid) as rss:
            cpu0, stat0, rx0 = cpu_seconds(pid), stat_cpu_seconds(pid), ctx.bed.rx_packets()
            started = time.monotonic()
            knocks = scenario.drive(ctx)
            sent = [k for k in knocks if k.sent()]
            wait = ctx.settings.flood_wait_s if scenario.flood_wait else ctx.settings.idle_wait_s
            expected = [k.source for k in sent if k.kind != "ece"]
            wait_for(out, expected, wait)
            if any(k.kind == "ece" for k in knocks):
                time.sleep(0.5)  # give a wrong open the chance to show
            outcome.cpu_s = cpu_seconds(pid) - cpu0
            outcome.stat_cpu_s = stat_cpu_seconds(pid) - stat0
            outcome.window_s = time.monotonic() - started
            outcome.delivered = ctx.bed.rx_packets() - rx0
            outcome.hwm_kb = memory_kb(pid)["VmHWM"]
        outcome.rss_peak_kb = max(rss.peak_kb, outcome.hwm_kb)
    finally:
        outcome.statistics = daemon.stop(run)
        (ctx.workdir / f"{scenario.key}-{daemon.name}.log").write_text("".join(run.lines))
    found = detections(out)
    last = capture.last_sent()
    for knock in knocks:
        sent_ok = knock.sent()
        at = found.get(knock.source)
        latency = (at - last[knock.source]) * 1000 if at and knock.source in last else None
        outcome.knocks.append({"source": knock.source, "kind": knock.kind, "sent": sent_ok,
                               "detected": at is not None, "latency_ms": latency})
    outcome.floods = [asdict(f) | {"pps": f.pps} for f in ctx.flood_results]
    return outcome


# --- summary -------------------------------------------------------------------------------


def latency_stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[0] if len(ordered) == 1 else statistics.quantiles(
        ordered, n=20, method="inclusive")[18]
    return {"median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def summarize(outcome: Outcome) -> dict[str, Any]:
    def count(kinds: Sequence[str]) -> tuple[int, int]:
        chosen = [k for k in outcome.knocks if k["kind"] in kinds and k["sent"]]
        return sum(1 for k in chosen if k["detected"]), len(chosen)

    good = ("", "during", "after", "exact")
    latencies = [k["latency_ms"] for k in outcome.knocks
                 if k["kind"] in good and k["latency_ms"] is not None]
    flood = outcome.floods[0] if outcome.floods else None
    summary: dict[str, Any] = {
        "detected": count(good),
        "during": count(("during",)),
        "after": count(("after",)),
        "ece_opened": count(("ece",)),
        "latency_ms": latency_stats(latencies),
        "cpu_s": outcome.cpu_s,
        "rss_start_mb": outcome.rss_start_kb / 1024,
        "rss_peak_mb": outcome.rss_peak_kb / 1024,
        "startup_s": outcome.startup_s,
        "ring_drops": outcome.statistics.get("kernel_drops"),
        "flood_pps": flood["pps"] if flood else None,
        "flood_delivered": flood["delivered"] if flood else None,
        "us_per_packet": (outcome.cpu_s / outcome.delivered * 1e6
                          if flood and outcome.delivered else None),
        # Per packet the daemon actually read (tportknockd's count; the rest the ring dropped).
        "us_per_read_packet": (outcome.cpu_s / outcome.statistics["packets"] * 1e6
                               if flood and outcome.statistics.get("packets") else None),
    }
    return summary


def machine() -> dict[str, str]:
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


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "—"
    return f"{ours / theirs:.2g}×" if ours / theirs < 10 else f"{ours / theirs:.0f}×"


def _pair(pair: tuple[int, int]) -> str:
    return f"{pair[0]}/{pair[1]}"


def _fraction(pair: tuple[int, int]) -> float | None:
    return pair[0] / pair[1] if pair[1] else None


def _check(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


Row = tuple[str, str, str, str, str]


def table_rows(sums: dict[str, dict[str, dict[str, Any]]],
               settings: Settings) -> list[tuple[str, list[Row]]]:
    """(scenario title, rows of metric | knockd | tportknockd | target | tportknockd / knockd)."""
    sections: list[tuple[str, list[Row]]] = []
    for scenario in SCENARIOS:
        if scenario.key not in sums:
            continue
        k, t = sums[scenario.key].get("knockd"), sums[scenario.key].get("tportknockd")
        sections.append((scenario.heading(settings), _scenario_rows(scenario.key, k, t)))
    return sections


def _get(summary: dict[str, Any] | None, *path: str) -> Any:
    value: Any = summary
    for key in path:
        if value is None:
            return None
        value = value.get(key)
    return value


def _scenario_rows(key: str, k: dict[str, Any] | None, t: dict[str, Any] | None) -> list[Row]:
    rows: list[Row] = []

    def pair_row(label: str, name: str, target: str = "", ok: bool | None = None) -> None:
        kp, tp = _get(k, name), _get(t, name)
        rows.append((label, _pair(kp) if kp else "—", (_pair(tp) if tp else "—") + _check(ok),
                     target, _ratio(_fraction(tp) if tp else None,
                                    _fraction(kp) if kp else None)))

    def num_row(label: str, path: tuple[str, ...], digits: int = 1, target: str = "",
                limit: float | None = None, scale: float = 1.0) -> None:
        kv, tv = _get(k, *path), _get(t, *path)
        kv = kv * scale if kv is not None else None
        tv = tv * scale if tv is not None else None
        ok = None if limit is None or tv is None else tv <= limit
        rows.append((label, _fmt(kv, digits), _fmt(tv, digits) + _check(ok), target,
                     _ratio(tv, kv)))

    all_detected = (lambda s: s is not None and s[1] > 0 and s[0] == s[1])(_get(t, "detected"))
    if key == "d":
        pair_row("exact URG+PSH knocks: opened/sent", "detected", "all", all_detected)
        ece = _get(t, "ece_opened")
        pair_row("URG+PSH+ECE knocks: opened/sent", "ece_opened", "0",
                 None if ece is None else ece[0] == 0)
    else:
        pair_row("knocks detected/sent", "detected",
                 "all" if key in ("a", "b", "c10k", "cfull") else "",
                 all_detected if key in ("a", "b", "c10k", "cfull") else None)
    if key in ("c10k", "cfull"):
        pair_row("… during the flood", "during")
        pair_row("… right after it", "after")
    idle = key == "a"
    num_row("latency median (ms)", ("latency_ms", "median"), 1, "≤ 3" if idle else "",
            TARGETS["idle_median_ms"] if idle else None)
    num_row("latency p95 (ms)", ("latency_ms", "p95"), 1, "≤ 5" if idle else "",
            TARGETS["idle_p95_ms"] if idle else None)
    num_row("latency max (ms)", ("latency_ms", "max"), 1)
    cpu_limit = {"b": TARGETS["noise_cpu_s"], "c10k": TARGETS["spoof10k_cpu_s"]}.get(key)
    num_row("daemon CPU (s)", ("cpu_s",), 3, f"≤ {cpu_limit:g}" if cpu_limit else "", cpu_limit)
    if key in ("b", "c10k", "cfull"):
        num_row("flood delivered (k pps)", ("flood_pps",), 1, scale=1e-3)
        num_row("daemon CPU per flood packet (µs)", ("us_per_packet",), 2,
                "≤ 1.6" if key == "cfull" else "",
                TARGETS["spoof_full_us_per_packet"] if key == "cfull" else None)
        if key != "b":  # in b the daemon reads only the knocks: no per-packet cost to see
            num_row("… per packet read from the ring (µs)", ("us_per_read_packet",), 2)
        drops = _get(t, "ring_drops")
        full = key == "cfull"
        rows.append(("kernel ring drops", "n/a",
                     ("—" if drops is None else str(drops))
                     + _check(drops == 0 if full and drops is not None else None),
                     "0" if full else "", "—"))
    num_row("RSS peak (MB)", ("rss_peak_mb",), 1, "≤ 48", TARGETS["rss_peak_mb"])
    return rows


def render_markdown(info: dict[str, str], sums: dict[str, dict[str, dict[str, Any]]],
                    overall: dict[str, dict[str, float | None]], settings: Settings) -> str:
    lines = [
        "# tportknockd vs knockd",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}",
        f"- Python {info['python']}; knockd {info['knockd']}; trafgen (netsniff-ng) "
        f"{info['trafgen']}; tportknockd {info['tportknockd']}",
        f"- daemon pinned to CPU {DAEMON_CPU}; trafgen, knock clients and tcpdump on CPU "
        f"{GENERATOR_CPU}; veth between two network namespaces",
        f"- floods: {settings.flood_s:g} s each; spoofed sources: {SPOOF_SOURCES} distinct "
        "addresses of 198.18.0.0/15",
        "",
        "| scenario / metric | knockd | tportknockd | target | tportknockd / knockd |",
        "|---|--:|--:|--:|--:|",
    ]
    for title, rows in table_rows(sums, settings):
        lines.append(f"| **{title}** | | | | |")
        for label, kv, tv, target, ratio in rows:
            lines.append(f"| {label} | {kv} | {tv} | {target} | {ratio} |")
    lines.append("| **whole run** | | | | |")
    k, t = overall.get("knockd", {}), overall.get("tportknockd", {})

    def overall_row(label: str, name: str, digits: int, target: str, limit: float) -> None:
        tv = t.get(name)
        ok = None if tv is None else tv <= limit
        lines.append(f"| {label} | {_fmt(k.get(name), digits)} | {_fmt(tv, digits)}"
                     f"{_check(ok)} | {target} | {_ratio(tv, k.get(name))} |")

    overall_row("start-up until listening, median (s)", "startup_s", 3, "≤ 0.3",
                TARGETS["startup_s"])
    overall_row("RSS idle (MB)", "rss_idle_mb", 1, "≤ 20", TARGETS["rss_idle_mb"])
    overall_row("RSS peak over all scenarios (MB)", "rss_peak_mb", 1, "≤ 48",
                TARGETS["rss_peak_mb"])
    lines += ["", *NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    "How it is measured:",
    "",
    f"- Doors: scenarios a–c and e use `{' '.join(DOOR)}` for tportknockd and "
    f"`sequence = {KNOCKD_DOOR}`, `tcpflags = syn` for knockd, {SEQ_TIMEOUT} s; the knock "
    "client (`python -m tportknockd.client -d 10 -s SRC`) sends a bare SYN, which both "
    "accept. Scenario d uses `tcp:110:up udp:111` vs `110:tcp,111:udp` with "
    "`tcpflags = urg,psh` (knockd cannot test ECE/CWR); its knocks are sent by hping3 "
    "(`-U -P`, and `-U -P -X` for ECE).",
    "- Both daemons run the same start_command, `date '+%IP% %s.%N' >> FILE`. Latency: "
    "from the capture timestamp (tcpdump on the client veth) of the knock's last packet to "
    "the time written by that command; both CLOCK_REALTIME. It includes the fork of "
    "/bin/sh and date (about 2 ms here).",
    "- knockd runs in the foreground without -v/-D/log file (its per-stage logging would "
    "cost it a write per flood packet); it counts as listening once it blocks in poll(). "
    "tportknockd: process start → its `ready:` log line.",
    "- Each scenario starts a fresh daemon. CPU: the daemon's process CPU clock "
    "(utime+stime to the ns, all threads) from just before the first packet until "
    "detection ended. RSS: VmRSS sampled every 20 ms and VmHWM. Ring drops: tportknockd's "
    "`kernel_drops` statistic; knockd does not report libpcap's drop count (n/a).",
    "- Floods: trafgen `--no-sock-mem -Q` in the client namespace, bounded by `-n` and "
    "`timeout`. Non-knock: random UDP/TCP-ACK to ports ≥ 10000 from random 198.18.0.0/15 "
    "sources. Spoofed: udp/7000 (the first frame) from 100,000 sources counting through "
    "198.18.0.0/15; at 10k pps (`-b 10000pps`, one pass) and at full rate. Delivered pps: "
    "the server veth's rx_packets over trafgen's sending time. Knocks: evenly spread over "
    "the flood, and (c) right after it.",
    "- knockd and IPv6: version 0.8 tracks IPv6 too, so scenario e is measured, not "
    "n/a.",
]


def plot(path: Path, outcomes: list[Outcome], sums: dict[str, dict[str, dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [s.key for s in SCENARIOS if s.key in sums]
    labels = {"a": "a idle", "b": "b noise flood", "c10k": "c spoof 10k pps",
              "cfull": "c spoof full rate", "d": "d flags (exact)", "e": "e IPv6"}
    colors = {"knockd": "#d62728", "tportknockd": "#1f77b4"}
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(11, 12))
    for offset, name in ((-0.18, "knockd"), (0.18, "tportknockd")):
        data, positions = [], []
        for i, key in enumerate(keys):
            values = [k["latency_ms"] for o in outcomes if o.scenario == key and o.daemon == name
                      for k in o.knocks if k["latency_ms"] is not None and k["kind"] != "ece"]
            if values:
                data.append(values)
                positions.append(i + offset)
            elif any(o.scenario == key and o.daemon == name for o in outcomes):
                top.annotate("none\nopened", (i + offset, 0.02), xycoords=("data", "axes fraction"),
                             ha="center", fontsize=8, color=colors[name])
        if data:
            parts = top.boxplot(data, positions=positions, widths=0.3, patch_artist=True,
                                showfliers=False)
            for box in parts["boxes"]:
                box.set_facecolor(colors[name])
                box.set_alpha(0.35)
            for pos, values in zip(positions, data, strict=True):
                top.scatter([pos] * len(values), values, s=10, color=colors[name], zorder=3)
        top.plot([], [], color=colors[name], label=name, linewidth=6, alpha=0.5)
    top.set_yscale("log")
    top.set_ylabel("knock → start_command (ms, log)")
    top.set_title("Latency per scenario (each dot one knock)")
    top.axhline(TARGETS["idle_median_ms"], color="grey", linestyle=":", linewidth=1,
                label="3 ms (idle median target)")
    top.set_xticks(range(len(keys)), [labels[k] for k in keys])
    top.legend(loc="upper left")
    top.grid(axis="y", which="both", alpha=0.3)

    width = 0.36
    # Scenario d twice: its exact knocks must open, its URG+PSH+ECE knocks must not.
    groups = [(key, "detected") for key in keys]
    if "d" in keys:
        groups.insert(keys.index("d") + 1, ("d", "ece_opened"))
    group_labels = [labels[key] if what == "detected" else "d +ECE (must stay shut)"
                    for key, what in groups]
    for offset, name in ((-width / 2, "knockd"), (width / 2, "tportknockd")):
        fractions, texts = [], []
        for key, what in groups:
            summary = sums[key].get(name)
            pair = summary[what] if summary else (0, 0)
            fractions.append(pair[0] / pair[1] if pair[1] else 0)
            texts.append(f"{pair[0]}/{pair[1]}")
        bars = middle.bar([i + offset for i in range(len(groups))], fractions, width,
                          color=colors[name], label=name)
        for bar, text in zip(bars, texts, strict=True):
            middle.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8)
    middle.set_ylim(0, 1.15)
    middle.set_ylabel("opened / sent")
    middle.set_title("Knocks that opened the door")
    middle.set_xticks(range(len(groups)), group_labels, fontsize=8)
    middle.legend(loc="lower left")

    for offset, name in ((-width / 2, "knockd"), (width / 2, "tportknockd")):
        values = [max(_get(sums[key].get(name), "cpu_s") or 0.0, 1e-4) for key in keys]
        bars = bottom.bar([i + offset for i in range(len(keys))], values, width,
                          color=colors[name], label=name)
        for bar, value in zip(bars, values, strict=True):
            bottom.annotate(f"{value:.3g}", (bar.get_x() + bar.get_width() / 2,
                                             bar.get_height()),
                            ha="center", va="bottom", fontsize=8)
    bottom.set_yscale("log")
    bottom.set_ylabel("daemon CPU (s, log)")
    bottom.set_title("Daemon CPU time per scenario")
    bottom.set_xticks(range(len(keys)), [labels[k] for k in keys])
    bottom.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- set-up and main -----------------------------------------------------------------------


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
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("installing matplotlib ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer knocks and 3 s floods, to try it out (~1.5 min)")
    parser.add_argument("--scenarios", default=",".join(s.key for s in SCENARIOS),
                        help="comma-separated subset of: a,b,c10k,cfull,d,e")
    parser.add_argument("--daemons", default="knockd,tportknockd",
                        help="comma-separated subset of: knockd,tportknockd")
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
    os.sched_setaffinity(0, {GENERATOR_CPU})
    workdir = Path(tempfile.mkdtemp(prefix="tpk-bench-"))
    procs = Processes()
    outcomes: list[Outcome] = []
    began = time.monotonic()
    try:
        with Testbed() as bed:
            try:
                run_all(bed, procs, workdir, settings, scenarios, args.daemons.split(","),
                        outcomes)
            finally:
                procs.end_all()  # before the namespaces go
    finally:
        procs.end_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"working files kept in {workdir}")
    report(outcomes, settings, args.out, time.monotonic() - began)
    return 0


def run_all(bed: Testbed, procs: Processes, workdir: Path, settings: Settings,
            scenarios: Sequence[Scenario], names: Sequence[str], outcomes: list[Outcome]) -> None:
    ctx = Context(bed, procs, workdir, settings, Knocker(bed, procs), Flood(bed, procs, workdir))
    daemons = [cls(bed, procs, workdir) for cls in (Knockd, Tportknockd) if cls.name in names]
    for scenario in scenarios:
        for daemon in daemons:
            print(f"{scenario.heading(settings)}: {daemon.name} ...", flush=True)
            outcome = run_scenario(ctx, scenario, daemon)
            outcomes.append(outcome)
            print("   ", _one_line(summarize(outcome)), flush=True)


def _one_line(summary: dict[str, Any]) -> str:
    lat = summary["latency_ms"]
    return (f"detected {_pair(summary['detected'])}, latency median {_fmt(lat['median'])} ms "
            f"p95 {_fmt(lat['p95'])} max {_fmt(lat['max'])}, CPU {summary['cpu_s']:.3f} s, "
            f"RSS peak {summary['rss_peak_mb']:.1f} MB, flood {_fmt(summary['flood_pps'], 0)} pps"
            f", ring drops {summary['ring_drops']}")


def report(outcomes: list[Outcome], settings: Settings, out: Path, seconds: float) -> None:
    sums: dict[str, dict[str, dict[str, Any]]] = {}
    for outcome in outcomes:
        sums.setdefault(outcome.scenario, {})[outcome.daemon] = summarize(outcome)
    overall: dict[str, dict[str, float | None]] = {}
    for name in ("knockd", "tportknockd"):
        mine = [o for o in outcomes if o.daemon == name]
        if not mine:
            continue
        overall[name] = {
            "startup_s": statistics.median(o.startup_s for o in mine),
            "startup_max_s": max(o.startup_s for o in mine),
            "rss_idle_mb": statistics.median(o.rss_start_kb for o in mine) / 1024,
            "rss_peak_mb": max(o.rss_peak_kb for o in mine) / 1024,
        }
    info = machine()
    info["run_seconds"] = f"{seconds:.0f}"
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(info, sums, overall, settings)
    markdown += f"\nWhole run: {seconds:.0f} s{' (--quick)' if settings.flood_s < 10 else ''}.\n"
    (out / "latest.md").write_text(markdown)
    (out / "latest.json").write_text(json.dumps({
        "machine": info, "settings": asdict(settings), "targets": TARGETS,
        "summary": sums, "overall": overall, "outcomes": [asdict(o) for o in outcomes],
    }, indent=1) + "\n")
    plot(out / "latest.png", outcomes, sums)
    print()
    print(markdown)
    print(f"written: {out / 'latest.md'}, {out / 'latest.json'}, {out / 'latest.png'}")


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("bench interrupted; namespaces removed and our processes ended", file=sys.stderr)
        raise SystemExit(130) from None
