"""Traffic: knocks (the project's client, hping3) and floods (trafgen), all from the client
namespace and pinned to the generator CPU.

Every flood is bounded twice: by a packet count (trafgen -n) and by time (timeout). Spoofed
sources come only from 198.18.0.0/15; every frame names the server veth's MAC.

Floods go out by sendto(2) (trafgen's slow path, one worker), never by its TX_RING: a packet
sent from a TX_RING reaches the veth's peer with everything after the Ethernet header in page
fragments, which no NIC's receive path produces and which the kernel engine's program does
not read (its packet loads reach the linear part only). A packet sent by sendto(2) arrives
whole in the linear part, as a NIC's small packets do.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.settings import (
    CLIENT_DELAY_MS,
    GENERATOR_CPU,
    SERVER_V4,
    SERVER_V6,
    SPOOF_BASE,
    SPOOF_LAST,
    SPOOF_SOURCES,
)
from bench.testbed import Processes, Testbed, project_env, signal_quietly
from tportknockd.model import ACK, CWR, ECE, FIN, PROTO_UDP, PSH, RST, SYN, URG, Frame


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
        return self._client(source, [], frames, kind)

    def client_event(self, source: str, conf: Path, event: str, kind: str = "") -> Knock:
        """The client knocking an event of a config (`-c CONF -e EVENT`): for a one-time
        event, the sequence of the window it is sent in."""
        return self._client(source, ["-c", str(conf), "-e", event], [], kind)

    def _client(self, source: str, options: Sequence[str], frames: Sequence[str],
                kind: str) -> Knock:
        server = SERVER_V6 if ":" in source else SERVER_V4
        argv = self._pinned([sys.executable, "-m", "tportknockd.client", "-d",
                             str(CLIENT_DELAY_MS), "-s", source, *options, server, *frames])
        proc = self.procs.start(argv, env=project_env(), stdout=subprocess.DEVNULL,
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


def noise_config(server_mac: str) -> str:
    """Non-knock traffic: random UDP and TCP (ACK) to random ports 10000+, random sources."""
    head = (f"eth(da={server_mac}),\n"
            f"  ipv4(sa=198.18.0.1, sa=drnd({SPOOF_BASE}, {SPOOF_LAST}), "
            f"da={SERVER_V4}, ttl=64),\n")
    return (
        f"{{\n  {head}"
        "  udp(sp=drnd(1024, 65535), dp=drnd(10000, 65535)),\n  fill(0x41, 18)\n}\n"
        f"{{\n  {head}"
        "  tcp(sp=drnd(1024, 65535), dp=drnd(10000, 65535), ack, seq=drnd(), aseq=drnd(),"
        " win=1024)\n}\n"
    )


#: The door's first frame (udp/7000): what the floods of scenario c send.
DOOR_FIRST_FRAME = Frame(PROTO_UDP, 7000, None)
#: trafgen's tcp() keyword for each flag bit.
TRAFGEN_FLAGS = ((FIN, "fin"), (SYN, "syn"), (RST, "rst"), (PSH, "psh"), (ACK, "ack"),
                 (URG, "urg"), (ECE, "ece"), (CWR, "cwr"))


def spoof_config(server_mac: str, frame: Frame = DOOR_FIRST_FRAME) -> str:
    """A first frame (the door's, udp/7000, unless given), sources counting through 100k of
    198.18.0.0/15."""
    return (
        f"{{\n  eth(da={server_mac}),\n"
        f"  ipv4(sa=198.18.0.0, sa=dinc({SPOOF_BASE}, {SPOOF_BASE + SPOOF_SOURCES - 1}), "
        f"da={SERVER_V4}, ttl=64),\n"
        f"  {transport(frame)}\n}}\n"
    )


def transport(frame: Frame) -> str:
    """The trafgen lines of a frame's TCP or UDP header (and payload): exactly the frame's
    flags (a SYN for `i`, as the client sends), a small payload after UDP."""
    if frame.protocol == PROTO_UDP:
        return f"udp(sp=40000, dp={frame.port}),\n  fill(0x6b, 5)"
    flags = SYN if frame.flags is None else frame.flags
    names = "".join(f", {name}" for bit, name in TRAFGEN_FLAGS if flags & bit)
    return f"tcp(sp=40000, dp={frame.port}{names}, seq=1, win=1024)"


def flood_bounds(seconds: float, pps: int | None) -> tuple[int, list[str]]:
    """trafgen's packet count (-n) and rate options for a flood of `seconds` at `pps`
    (None: as fast as one CPU sends). Both are its slow path, sendto(2) by one worker, which
    trafgen pins to CPU 0 (Flood moves it to the generator CPU)."""
    if pps is None:
        # -t 0: sendto(2) with no gap. Above what one CPU can send: time bounds it.
        return int(seconds * 2_000_000), ["-t", "0"]
    return int(seconds * pps), ["-b", f"{pps}pps"]


def trafgen_figures(output: str, elapsed: float) -> tuple[int, float]:
    """From trafgen's closing lines: packets sent, and the time its busiest worker sent for
    (`elapsed` when it printed none)."""
    sent = sum(int(n) for n in re.findall(r"(\d+) packets outgoing", output))
    busy = [int(s) + int(u) / 1e6 for s, u in
            re.findall(r"(\d+) sec, (\d+) usec on CPU\d+ \((?!0 packets)", output)]
    return sent, max(busy, default=elapsed)


class Flood:
    """trafgen in the client namespace: bounded by -n and by timeout, `--no-sock-mem -Q`."""

    def __init__(self, bed: Testbed, procs: Processes, workdir: Path) -> None:
        self.bed, self.procs, self.workdir = bed, procs, workdir

    @contextmanager
    def flood(self, kind: str, seconds: float, pps: int | None, result: list[FloodResult],
              frame: Frame = DOOR_FIRST_FRAME) -> Iterator[None]:
        """Run the flood while the body runs; the body must not outlast it by much. A
        `noise` flood is non-knock traffic; any other kind is spoofed copies of `frame`."""
        cfg = self.workdir / f"{kind}.cfg"
        if kind == "noise":
            cfg.write_text(noise_config(self.bed.server_mac))
        else:
            cfg.write_text(spoof_config(self.bed.server_mac, frame))
        count, rate = flood_bounds(seconds, pps)
        argv = ["timeout", "-s", "INT", "-k", "3", f"{seconds + 2:g}",
                *self.bed.in_client(["taskset", "-c", str(GENERATOR_CPU), "trafgen",
                                     "--no-sock-mem", "-Q", *rate, "-n", str(count),
                                     "-i", str(cfg), "-o", self.bed.client_if])]
        before = self.bed.rx_packets()
        started = time.monotonic()
        proc = self.procs.start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        _keep_on_cpu(proc.pid, GENERATOR_CPU, 1.0)
        try:
            yield
        except BaseException:
            signal_quietly(proc.pid, signal.SIGINT)  # timeout passes it on to trafgen
            raise
        finally:
            out, _ = proc.communicate(timeout=seconds + 10)
            elapsed = time.monotonic() - started
            delivered = self.bed.rx_packets() - before
            sent, busy = trafgen_figures(out, elapsed)
            result.append(FloodResult(kind, sent, delivered, busy))


def _keep_on_cpu(root: int, cpu: int, seconds: float) -> None:
    """Move the trafgen worker to `cpu`: in slow mode (-b/-t, the only one used) trafgen pins
    its one worker to CPU 0 itself, right after fork, which is the daemon's CPU. Re-pin it
    for a while, since our move can come before its own sched_setaffinity."""
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
