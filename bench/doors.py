"""Door figures (issue 17 §4): how soon a knock lets the knocker's first connection through,
and what opening doors costs, side by side for three ways of opening a door:

- `tportknockd door`: the daemon's built-in door (`door = tcp:22`, its own nftables table
  `inet tportknockd`, one libnftables transaction per batch of knocks, no fork);
- `tportknockd nft command`: the same daemon with the classic command door, a start_command
  `nft add element inet knock allowed '{ %IP% timeout 30s }'` on the ruleset of
  docs/firewall-recipes.md (a set whose elements time out): sh and nft forked per knock;
- `knockd nft command`: knockd with that same command.

tportknockd runs its kernel engine (what `--engine auto` picks here) on both of its sides.
Three parts, each side with a fresh daemon and a clean ruleset in the server namespace
(`nft flush ruleset` there, never elsewhere):

- open: knocks one by one, each from its own source; a prober (bench/door_probe.py) in the
  client namespace tries a new non-blocking connect(2) to tcp/22 from the knock's source
  every DoorSettings.probe_interval_us from before the knock on; latency is from the capture
  time of the knock's last frame (tcpdump on the client veth) to the first attempt that
  completed.
- spoof: spoofed_knockers distinct sources of 198.18.0.0/15 each send the whole sequence
  (trafgen, three frames per source in order), bounded in count and time; the elements that
  appear in the door's set are read every 0.25 s (nft -j list set, server namespace); forks
  of the daemon are counted by the proc connector (bench.forks).
- flood: non-knock TCP SYNs to tcp/22 from random 198.18.0.0/15 sources at flood_pps,
  bounded; daemon CPU over a window of knocks without the flood and one of the same length
  with it, and whether the knocks during the flood open the door.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.daemons import TPORTKNOCKD_KERNEL, Daemon, Knockd, Running
from bench.forks import ForkCounter, children_cpu_seconds
from bench.measure import Capture, cpu_seconds, stat_cpu_seconds
from bench.settings import (
    DOOR,
    GENERATOR_CPU,
    KNOCK_V4,
    KNOCKD_DOOR,
    SEQ_TIMEOUT,
    SERVER_V4,
    SPOOF_BASE,
    SPOOF_LAST,
)
from bench.testbed import Processes, Testbed, signal_quietly
from bench.traffic import Knocker, _keep_on_cpu, flood_bounds, trafgen_figures, transport
from tportknockd.firewall.ruleset import set_name
from tportknockd.model import PROTO_TCP, PROTO_UDP, SYN, Frame

DOOR_PORT = 22
DOOR_TIMEOUT_S = 30
EVENT = "door"
PROBE = Path(__file__).resolve().parent / "door_probe.py"
#: The command of the two command doors (docs/firewall-recipes.md, doors that close
#: themselves), and the ruleset it adds to.
NFT_COMMAND = f"nft add element inet knock allowed '{{ %IP% timeout {DOOR_TIMEOUT_S}s }}'"
KNOCK_RULESET = f"""table inet knock {{
    set allowed {{ type ipv4_addr; flags timeout; }}
    set allowed6 {{ type ipv6_addr; flags timeout; }}
    chain input {{
        type filter hook input priority 0; policy accept;
        ct state established,related accept
        tcp dport {DOOR_PORT} ip saddr @allowed accept
        tcp dport {DOOR_PORT} ip6 saddr @allowed6 accept
        tcp dport {DOOR_PORT} drop
    }}
}}
"""
#: The door sequence as frames (what the spoofed knockers send): udp/7000, SYN tcp/7001,
#: udp/7002.
SEQUENCE = (Frame(PROTO_UDP, 7000, None), Frame(PROTO_TCP, 7001, SYN), Frame(PROTO_UDP, 7002,
                                                                           None))
#: The spoofed knockers' first address (198.18.0.1; the /15's network address left out).
SPOOF_FIRST = SPOOF_BASE + 1

PARTS = ("dopen", "dspoof", "dflood")
PROBE_PRIORITY = 10


@dataclass(frozen=True)
class DoorSettings:
    knocks: int = 20  # open: knocks per side
    probe_interval_us: int = 50  # between connect attempts (the loop adds its own ~50 µs)
    # A prober gives up after this long: the knock's own timeout, since a knock client that
    # shares its CPU with the real-time prober may take over a second to send.
    probe_s: float = 10.0
    spoofed_knockers: int = 1000
    spoof_s: float = 10.0  # ... all within this long
    spoof_wait_s: float = 40.0  # after the flood, for the last elements
    flood_pps: int = 300_000
    flood_s: float = 10.0
    flood_knocks: int = 10  # in each window (without, with the flood)

    @classmethod
    def quick(cls) -> DoorSettings:
        return cls(knocks=5, spoofed_knockers=200, spoof_s=2.0, spoof_wait_s=20.0,
                   flood_s=3.0, flood_knocks=3)


@dataclass(frozen=True)
class Side:
    name: str
    daemon: Daemon
    builtin: bool  # the built-in door; else the nft command on KNOCK_RULESET

    def config(self) -> str:
        if isinstance(self.daemon, Knockd):
            return (f"[{EVENT}]\n sequence    = {KNOCKD_DOOR}\n seq_timeout = {SEQ_TIMEOUT}\n"
                    f" tcpflags    = syn\n command     = {NFT_COMMAND}\n")
        effect = (f" door          = tcp:{DOOR_PORT}\n door_timeout  = {DOOR_TIMEOUT_S}\n"
                  if self.builtin else f" start_command = {NFT_COMMAND}\n")
        return (f"<{EVENT}>\n sequence      = {' '.join(DOOR)}\n timeout       = {SEQ_TIMEOUT}\n"
                f"{effect}</{EVENT}>\n")

    def set_ref(self) -> tuple[str, str]:
        """(table, set) of IPv4 doors, in family inet."""
        return ("tportknockd", set_name(EVENT, 4)) if self.builtin else ("knock", "allowed")


BUILTIN = "tportknockd door"
SIDES = (Side(BUILTIN, TPORTKNOCKD_KERNEL, True),
         Side("tportknockd nft command", TPORTKNOCKD_KERNEL, False),
         Side("knockd nft command", Knockd(), False))
SIDE_NAMES = tuple(s.name for s in SIDES)
KNOCKD_SIDE = SIDES[2].name
COMMAND_SIDE = SIDES[1].name


class DoorCapture(Capture):
    """The knocks' frames as sent, without the probers' connection attempts."""

    FILTER = f"{Capture.FILTER} and not dst port {DOOR_PORT}"


# -- trafgen configs (pure) -------------------------------------------------------------------


def knockers_config(server_mac: str, count: int) -> str:
    """One packet block per frame of the sequence, each counting through the same `count`
    sources: trafgen sends the blocks in turn, so each source sends the whole sequence in
    order before the next begins."""
    last = SPOOF_FIRST + count - 1
    assert last <= SPOOF_LAST
    return "".join(
        f"{{\n  eth(da={server_mac}),\n"
        f"  ipv4(sa=198.18.0.1, sa=dinc({SPOOF_FIRST}, {last}), da={SERVER_V4}, ttl=64),\n"
        f"  {transport(frame)}\n}}\n" for frame in SEQUENCE)


def syn_flood_config(server_mac: str) -> str:
    """New connections to the door port (a SYN each) from random 198.18.0.0/15 sources."""
    return (f"{{\n  eth(da={server_mac}),\n"
            f"  ipv4(sa=198.18.0.1, sa=drnd({SPOOF_BASE}, {SPOOF_LAST}), da={SERVER_V4}, "
            "ttl=64),\n"
            f"  tcp(sp=drnd(1024, 65535), dp={DOOR_PORT}, syn, seq=drnd(), win=1024)\n}}\n")


def spoofed_sources(count: int) -> list[str]:
    return [str(ipaddress.IPv4Address(SPOOF_FIRST + i)) for i in range(count)]


def element_addresses(listing: dict[str, Any]) -> set[str]:
    """The source address of each element of a set, from `nft -j list set` (an element is
    an address, a prefix, or a concatenation whose first part is one of these)."""
    found: set[str] = set()
    for item in listing.get("nftables", []):
        for elem in item.get("set", {}).get("elem", []):
            address = _first_address(elem)
            if address:
                found.add(address)
    return found


def _first_address(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return None
    if isinstance(value, dict):
        if "prefix" in value:
            return _first_address(value["prefix"].get("addr"))
        for key in ("elem", "val", "concat"):
            if key in value:
                return _first_address(value[key])
        return None
    if isinstance(value, list):
        for part in value:
            found = _first_address(part)
            if found:
                return found
    return None


def latency_records(probes: Sequence[dict[str, Any]],
                    last: dict[str, float]) -> list[dict[str, Any]]:
    """Per knock: when it was sent (its last frame), when the door let a connection
    through, the latency between (ms), and the prober's mean interval between attempts."""
    records = []
    for probe in probes:
        source = probe["source"]
        sent = last.get(source)
        opened = probe.get("opened")
        attempts = probe.get("attempts") or 0
        interval = ((probe["last"] - probe["first"]) / (attempts - 1) * 1000
                    if attempts > 1 else None)
        records.append({
            "source": source, "kind": probe.get("kind", ""), "sent": sent is not None,
            "opened": opened is not None,
            "latency_ms": (opened - sent) * 1000 if opened is not None and sent else None,
            "attempts": attempts, "interval_ms": interval})
    return records


# -- running --------------------------------------------------------------------------------


class DoorBench:
    """The door parts, in the test bed the scenarios ran in."""

    def __init__(self, bed: Testbed, procs: Processes, workdir: Path,
                 settings: DoorSettings) -> None:
        self.bed, self.procs, self.workdir, self.settings = bed, procs, workdir, settings
        self.knocker = Knocker(bed, procs)
        self.forks = ForkCounter()
        #: The last daemon's exit statistics (tportknockd's; {} for knockd).
        self.exit_statistics: dict[str, int] = {}

    def close(self) -> None:
        self.forks.close()

    def nft(self, *args: str, stdin: str | None = None) -> str:
        return subprocess.run(self.bed.in_server(["nft", *args]), input=stdin, check=True,
                              capture_output=True, text=True).stdout

    def reset(self, side: Side) -> None:
        """A clean ruleset in the server namespace, and the knock table for a command side."""
        self.nft("flush", "ruleset")
        if not side.builtin:
            self.nft("-f", "-", stdin=KNOCK_RULESET)

    def elements(self, side: Side) -> set[str]:
        table, name = side.set_ref()
        try:
            return element_addresses(json.loads(self.nft("-j", "list", "set", "inet", table,
                                                         name)))
        except subprocess.CalledProcessError:
            return set()  # not there yet

    @contextmanager
    def listener(self) -> Iterator[None]:
        proc = self.procs.start(self.bed.in_server([sys.executable, str(PROBE), "listen",
                                                    "0.0.0.0", str(DOOR_PORT)]),
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the door's listener did not start")
        try:
            yield
        finally:
            signal_quietly(proc.pid, signal.SIGTERM)
            proc.wait(5)

    @contextmanager
    def daemon(self, side: Side, stem: str) -> Iterator[Running]:
        self.reset(side)
        conf = self.workdir / f"{stem}.conf"
        run = side.daemon.start(self.bed, self.procs, conf, side.config())
        try:
            time.sleep(0.3)  # start-up work out of the window
            yield run
        finally:
            self.exit_statistics = side.daemon.stop(run)
            (self.workdir / f"{stem}.log").write_text("".join(run.lines))
            self.nft("flush", "ruleset")

    def knock_and_probe(self, source: str, kind: str = "") -> dict[str, Any]:
        """A knock from `source`, with its prober started first."""
        s = self.settings
        # Real-time (SCHED_FIFO) on the generator CPU: it sleeps between attempts, so the
        # client and tcpdump still run, but it is never kept waiting behind them.
        argv = self.bed.in_client(["taskset", "-c", str(GENERATOR_CPU), "chrt", "-f",
                                   str(PROBE_PRIORITY), sys.executable,
                                   str(PROBE), "probe", source, SERVER_V4, str(DOOR_PORT),
                                   str(s.probe_interval_us), f"{s.probe_s:g}"])
        prober = self.procs.start(argv, stdout=subprocess.PIPE, text=True)
        assert prober.stdout is not None
        if prober.stdout.readline().strip() != "ready":
            raise RuntimeError("the door prober did not start")
        knock = self.knocker.client(source, DOOR)
        sent = knock.sent()
        out, _ = prober.communicate(timeout=s.probe_s + 10)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result | {"source": source, "kind": kind, "client_ok": sent}

    def measured(self, run: Running) -> Callable[[], dict[str, Any]]:
        """The daemon's CPU and forks from now; call the result to read them."""
        pid = run.proc.pid
        cpu0, stat0 = cpu_seconds(pid), stat_cpu_seconds(pid)
        child0, forks0 = children_cpu_seconds(pid), self.forks.of(pid)
        started = time.monotonic()

        def read() -> dict[str, Any]:
            return {"cpu_s": cpu_seconds(pid) - cpu0, "stat_cpu_s": stat_cpu_seconds(pid) - stat0,
                    "children_cpu_s": children_cpu_seconds(pid) - child0,
                    "forks": self.forks.of(pid) - forks0, "window_s": time.monotonic() - started,
                    "fork_overruns": self.forks.overruns}
        return read

    # -- part 1: knock to door open ---------------------------------------------------------

    def part_open(self, side: Side) -> dict[str, Any]:
        stem = f"dopen-{side.name.replace(' ', '-')}"
        with self.daemon(side, stem) as run, \
                DoorCapture(self.bed, self.procs, self.workdir / f"{stem}.pcap") as capture:
            read = self.measured(run)
            probes = []
            for source in KNOCK_V4[: self.settings.knocks]:
                probes.append(self.knock_and_probe(source))
                time.sleep(0.05)
            figures = read()
        figures["knocks"] = latency_records(probes, capture.last_sent())
        return figures

    # -- part 2: spoofed knockers -----------------------------------------------------------

    def part_spoof(self, side: Side) -> dict[str, Any]:
        s = self.settings
        stem = f"dspoof-{side.name.replace(' ', '-')}"
        cfg = self.workdir / f"{stem}.cfg"
        cfg.write_text(knockers_config(self.bed.server_mac, s.spoofed_knockers))
        count = s.spoofed_knockers * len(SEQUENCE)
        pps = max(1, round(count / s.spoof_s))
        wanted = set(spoofed_sources(s.spoofed_knockers))
        with self.daemon(side, stem) as run:
            read = self.measured(run)
            started = time.monotonic()
            flood = self._trafgen(cfg, count, ["-b", f"{pps}pps"], s.spoof_s)
            seen: set[str] = set()
            all_at = None
            deadline = time.monotonic() + s.spoof_s + s.spoof_wait_s
            while time.monotonic() < deadline:
                seen |= self.elements(side)
                if flood.poll() is not None and wanted <= seen:
                    all_at = time.monotonic() - started
                    break
                time.sleep(0.25)
            out, _ = flood.communicate(timeout=s.spoof_s + 10)
            sent, busy = trafgen_figures(out, s.spoof_s)
            figures = read()
            final = self.elements(side)
        figures |= {
            "knockers": s.spoofed_knockers, "packets_sent": sent, "send_s": busy,
            "elements_seen": len(seen & wanted), "elements_foreign": len(seen - wanted),
            "elements_at_end": len(final), "all_in_s": all_at,
            "fired": self.exit_statistics.get("fired"),
            "door_failures": self.exit_statistics.get("door_failures")}
        return figures

    def _trafgen(self, cfg: Path, count: int, rate: list[str],
                 seconds: float) -> subprocess.Popen[str]:
        """trafgen bounded by -n and by timeout, sendto(2) from one worker on CPU 1."""
        argv = ["timeout", "-s", "INT", "-k", "3", f"{seconds + 2:g}",
                *self.bed.in_client(["taskset", "-c", str(GENERATOR_CPU), "trafgen",
                                     "--no-sock-mem", "-Q", *rate, "-n", str(count),
                                     "-i", str(cfg), "-o", self.bed.client_if])]
        proc = self.procs.start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        _keep_on_cpu(proc.pid, GENERATOR_CPU, 0.5)
        return proc

    # -- part 3: a non-knock flood to the door port -----------------------------------------

    def part_flood(self, side: Side) -> dict[str, Any]:
        s = self.settings
        stem = f"dflood-{side.name.replace(' ', '-')}"
        cfg = self.workdir / f"{stem}.cfg"
        cfg.write_text(syn_flood_config(self.bed.server_mac))
        quiet_sources = KNOCK_V4[: s.flood_knocks]
        flood_sources = KNOCK_V4[s.flood_knocks: 2 * s.flood_knocks]
        count, _ = flood_bounds(s.flood_s, s.flood_pps)
        with self.daemon(side, stem) as run, \
                DoorCapture(self.bed, self.procs, self.workdir / f"{stem}.pcap") as capture:
            read = self.measured(run)
            quiet_probes = self._spread(quiet_sources, "quiet")
            quiet = read()
            read = self.measured(run)
            before = self.bed.rx_packets()
            flood = self._trafgen(cfg, count, ["-b", f"{s.flood_pps}pps"], s.flood_s)
            flood_probes = self._spread(flood_sources, "during")
            out, _ = flood.communicate(timeout=s.flood_s + 10)
            during = read()
            delivered = self.bed.rx_packets() - before
            sent, busy = trafgen_figures(out, s.flood_s)
        last = capture.last_sent()
        quiet["knocks"] = latency_records(quiet_probes, last)
        during["knocks"] = latency_records(flood_probes, last)
        during |= {"flood_sent": sent, "flood_delivered": delivered, "flood_s": busy}
        return {"quiet": quiet, "flood": during}

    def _spread(self, sources: Sequence[str], kind: str) -> list[dict[str, Any]]:
        """Knocks spread over flood_s (from its first tenth to its last), then the rest of
        the window waited out, so both windows are as long."""
        s = self.settings
        start = time.monotonic()
        step = 0.8 * s.flood_s / max(1, len(sources))
        probes = []
        for i, source in enumerate(sources):
            time.sleep(max(0.0, start + 0.1 * s.flood_s + i * step - time.monotonic()))
            probes.append(self.knock_and_probe(source, kind))
        time.sleep(max(0.0, start + s.flood_s - time.monotonic()))
        return probes


def run_doors(bed: Testbed, procs: Processes, workdir: Path, settings: DoorSettings,
              parts: Sequence[str], results: dict[str, Any]) -> None:
    """The chosen parts (PARTS), each for every side, into `results` as they come."""
    results["settings"] = asdict(settings)
    results["sides"] = list(SIDE_NAMES)
    bench = DoorBench(bed, procs, workdir, settings)
    try:
        with bench.listener():
            for part, method in (("dopen", bench.part_open), ("dspoof", bench.part_spoof),
                                 ("dflood", bench.part_flood)):
                if part not in parts:
                    continue
                for side in SIDES:
                    print(f"doors, {part}: {side.name} ...", flush=True)
                    figures = method(side)
                    results.setdefault(part, {})[side.name] = figures
                    print("   ", _progress(part, figures), flush=True)
    finally:
        bench.close()
        subprocess.run(bed.in_server(["nft", "flush", "ruleset"]), capture_output=True)


def _progress(part: str, figures: dict[str, Any]) -> str:
    if part == "dspoof":
        return (f"{figures['elements_seen']}/{figures['knockers']} elements, "
                f"{figures['forks']} forks, CPU {figures['stat_cpu_s']:.3f} s "
                f"(+ children {figures['children_cpu_s']:.3f} s)")
    windows = [figures] if part == "dopen" else [figures["quiet"], figures["flood"]]
    lines = []
    for window in windows:
        lat = sorted(k["latency_ms"] for k in window["knocks"] if k["latency_ms"] is not None)
        opened = sum(1 for k in window["knocks"] if k["opened"])
        median = lat[len(lat) // 2] if lat else None
        lines.append(f"opened {opened}/{len(window['knocks'])}, median "
                     f"{'—' if median is None else f'{median:.2f}'} ms, "
                     f"CPU {window['cpu_s']:.3f} s, forks {window['forks']}")
    return "; ".join(lines)
