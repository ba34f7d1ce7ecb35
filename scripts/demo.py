#!/usr/bin/env python3
"""A guided tour of tportknockd: a real daemon, real packets, a real firewall, two namespaces.

Run as root (`make demo`). It builds a "server" and a "client" network namespace joined by a
veth pair (documentation addresses only, no default route, so nothing leaves the pair). In the
server namespace a small service answers on TCP port 22, and tportknockd runs with a built-in
door on that port: its own nftables table (in the server namespace) closes the port, and a
right knock opens it for the knocker until door_timeout. The client finds the port closed; a
knock with one flag missing opens nothing; the right knock opens it (and runs the event's
start_command too); `tportknockd --doors` lists the door; the kernel closes it on time; IPv6
works the same way; a stopped daemon leaves the port closed, and `tportknockd --remove-table`
takes the table away. Everything is removed at the end, also after a failure or Ctrl-C. Exit
status 0 when every step did what it should.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent

SERVER_IF, CLIENT_IF = "knk0", "knk1"
SERVER_V4, CLIENT_V4 = "198.51.100.1", "198.51.100.2"
SERVER_V6, CLIENT_V6 = "2001:db8::1", "2001:db8::2"

SERVICE_PORT = 22
#: The seed's first example sequence.
SEQUENCE = "udp:1234 tcp:543 tcp:543:i tcp:123:frap tcp:434:x tcp:2345:n"
#: The same knock with one flag missing from the Xmas frame (`x` is all six flags).
WRONG_SEQUENCE = SEQUENCE.replace("tcp:434:x", "tcp:434:fsrpa")
DOOR_TIMEOUT = 5
DEADLINE = 10.0  # seconds for anything the demo waits for, beyond the delays it configures

CONFIG_TEMPLATE = """\
# tportknockd demo: the README's first event, with the seed's first sequence.
<ssh>
 sequence      = {sequence}
 timeout       = 10
 door          = tcp:{port}
 door_timeout  = {door_timeout}
 # A command still runs for each knock, once the door is open: here it only takes notes.
 start_command = echo "knock from %IP%" | tee -a {knocks}
</ssh>
"""

#: The service behind the firewall: greets every connection, like an SSH server would.
SERVICE = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for family, address in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, int(sys.argv[3])))
    s.listen()
    sel.register(s, selectors.EVENT_READ)
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.sendall(b"SSH-2.0-demo\\r\\n")
        conn.close()
"""

#: One connection attempt from the client: what the service said, or why there was nothing.
CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
        print("answered:", s.recv(64).decode().strip())
except OSError as exc:
    print("no answer:", exc)
"""


class DemoFailure(Exception):
    """Something the demo expected did not happen."""


# --- output -------------------------------------------------------------------------------


def _print(text: str) -> None:
    # Whoever reads our output may go away (`make demo | head`): the demo must still run to
    # its end and clean up, so a closed pipe only silences it.
    try:
        print(text, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def heading(text: str) -> None:
    _print(f"\n=== {text} " + "=" * max(3, 72 - len(text)))


def say(text: str) -> None:
    _print(text)


def show(prefix: str, text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        _print(f"  {prefix} | {line}")


# --- namespaces -----------------------------------------------------------------------------


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Namespaces:
    """A server and a client namespace joined by a veth pair; `remove()` deletes both."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.server = f"tpk-demo-s-{tag}"
        self.client = f"tpk-demo-c-{tag}"
        self.created: list[str] = []

    def create(self) -> None:
        for ns in (self.server, self.client):
            ip("netns", "add", ns)
            self.created.append(ns)
        # The veth is born in the server namespace and its peer placed straight into the
        # client's: at no moment does either end exist in the host's namespace.
        ip("-n", self.server, "link", "add", SERVER_IF, "type", "veth",
           "peer", "name", CLIENT_IF, "netns", self.client)
        for ns, ifname, v4, v6 in ((self.server, SERVER_IF, SERVER_V4, SERVER_V6),
                                   (self.client, CLIENT_IF, CLIENT_V4, CLIENT_V6)):
            # Without duplicate address detection the IPv6 address is usable at once.
            self.run(ns, ["sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0"], check=True)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", ifname, "up")
            ip("-n", ns, "addr", "add", f"{v4}/24", "dev", ifname)
            ip("-n", ns, "addr", "add", f"{v6}/64", "dev", ifname, "nodad")

    def remove(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()

    def argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, argv: Sequence[str], check: bool = False
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(ns, argv), text=True, capture_output=True,
                              env=package_env(), check=check)


def package_env() -> dict[str, str]:
    """The environment for our children: the package is found in the source tree even when
    it is not installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"),
                                                      env.get("PYTHONPATH")]))
    return env


# --- the daemon -----------------------------------------------------------------------------


class Daemon:
    """tportknockd in the foreground: its output is shown as it comes and kept for waiting."""

    def __init__(self, nets: Namespaces, config: Path) -> None:
        # Its own state file: the demo must not touch a real installation's open doors.
        state_file = str(config.parent / "doors.json")
        args = ["-c", str(config), "-i", SERVER_IF, "--state-file", state_file]
        argv = nets.argv(nets.server, [sys.executable, "-m", "tportknockd", *args])
        say("$ " + " ".join(nets.argv(nets.server, ["tportknockd", *args])))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=package_env())
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            show("tportknockd", line)
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, pattern: str, what: str, timeout: float = DEADLINE,
                 after: int = 0) -> re.Match[str]:
        """Wait for a line matching `pattern` (from line number `after` on)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines[after:]:
                    match = regex.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise DemoFailure(f"the daemon never reported {what}")
                self.changed.wait(min(left, 0.2))

    def mark(self) -> int:
        with self.changed:
            return len(self.lines)

    def stop(self, timeout: float = DEADLINE) -> int:
        """SIGTERM, then wait for the exit; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise DemoFailure(f"the daemon did not stop within {timeout:g} s of SIGTERM") from None
        self.reader.join(2)
        return status

    def kill(self) -> None:
        """Clean-up after a failure or Ctrl-C: this one process, by its PID."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- the steps ------------------------------------------------------------------------------


def knock(nets: Namespaces, *args: str) -> None:
    argv = [sys.executable, "-m", "tportknockd.client", "-v", *args]
    say("$ " + " ".join(nets.argv(nets.client, ["tportknock", "-v", *args])))
    result = nets.run(nets.client, argv)
    show("tportknock ", result.stdout + result.stderr)
    if result.returncode != 0:
        raise DemoFailure(f"tportknock failed with exit status {result.returncode}")


def wait_file_line(path: Path, line: str, timeout: float) -> float:
    """Wait until `path` holds `line`; return the moment it was seen (monotonic clock)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if line in path.read_text().splitlines():
                return time.monotonic()
        except FileNotFoundError:
            pass
        if time.monotonic() >= deadline:
            raise DemoFailure(f"{line!r} never appeared in {path}")
        time.sleep(0.02)


def count_lines(path: Path, prefix: str) -> int:
    try:
        return sum(line.startswith(prefix) for line in path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def statistics(daemon: Daemon, until: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """Ask the daemon for its counters (SIGUSR1) until `until` holds for them.

    A knock may still sit in the capture ring for a few milliseconds after the client has
    sent it, so one answer may come too early; asking again costs nothing.
    """
    deadline = time.monotonic() + DEADLINE
    while True:
        mark = daemon.mark()
        daemon.proc.send_signal(signal.SIGUSR1)
        match = daemon.wait_for(r"statistics: (.*)", "its statistics", after=mark)
        counters = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match[1])}
        if until(counters) or time.monotonic() >= deadline:
            return counters
        time.sleep(0.2)


def tportknockd(nets: Namespaces, *args: str, prefix: str = "tportknockd") -> str:
    """The command line, run in the server namespace (where the daemon's table is)."""
    say("$ " + " ".join(nets.argv(nets.server, ["tportknockd", *args])))
    result = nets.run(nets.server, [sys.executable, "-m", "tportknockd", *args])
    show(prefix, result.stdout + result.stderr)
    if result.returncode != 0:
        raise DemoFailure(f"tportknockd {' '.join(args)} failed with exit status "
                          f"{result.returncode}")
    return result.stdout


def check_config(nets: Namespaces, config: Path) -> None:
    heading("The configuration")
    say(f"{config}:")
    show("config     ", config.read_text())
    say("\nChecked and spelled out by the daemon itself:")
    tportknockd(nets, "-C", str(config))


def attempt(nets: Namespaces, host: str) -> str:
    """One connection attempt from the client: "answered: ..." or "no answer: ..."."""
    result = nets.run(nets.client, [sys.executable, "-c", CONNECT, host, str(SERVICE_PORT)])
    return result.stdout.strip() or result.stderr.strip()


def target(host: str) -> str:
    return f"[{host}]:{SERVICE_PORT}" if ":" in host else f"{host}:{SERVICE_PORT}"


def connect(nets: Namespaces, host: str, expect_answer: bool) -> None:
    """Try the service from the client, once; fail the demo if the outcome is not `expect`."""
    outcome = attempt(nets, host)
    say(f"client -> {target(host)}: {outcome}")
    if outcome.startswith("answered") != expect_answer:
        raise DemoFailure(f"port {SERVICE_PORT} was {'closed' if expect_answer else 'open'} "
                          f"for the client, but should have been the opposite")


def wait_closed(nets: Namespaces, host: str, opened: float) -> None:
    """Try the service until it no longer answers (the door's timeout, in the kernel), and
    say when that was."""
    deadline = opened + DOOR_TIMEOUT + DEADLINE
    while True:
        tried = time.monotonic()
        outcome = attempt(nets, host)
        if not outcome.startswith("answered"):
            break
        if tried >= deadline:
            raise DemoFailure(f"the door to {target(host)} did not close at its timeout")
        time.sleep(0.2)
    say(f"client -> {target(host)}: {outcome}")
    say(f"\n>> closed by the kernel {tried - opened:.1f} s after the door opened "
        f"(door_timeout = {DOOR_TIMEOUT} s)")


def service(nets: Namespaces, started: list[subprocess.Popen[str]]) -> None:
    heading(f"A service on TCP port {SERVICE_PORT} in the server namespace")
    proc = subprocess.Popen(
        nets.argv(nets.server, [sys.executable, "-c", SERVICE, SERVER_V4, SERVER_V6,
                                str(SERVICE_PORT)]),
        stdout=subprocess.PIPE, text=True)
    started.append(proc)
    if proc.stdout is None or proc.stdout.readline().strip() != "listening":
        raise DemoFailure("the demo service did not start")
    say("No firewall yet: the service answers everyone.")
    connect(nets, SERVER_V4, expect_answer=True)


def start_daemon(nets: Namespaces, config: Path, started: list[Daemon]) -> Daemon:
    heading("Starting tportknockd: its own nftables table closes the door port")
    daemon = Daemon(nets, config)
    started.append(daemon)
    daemon.wait_for(r"ready: \d+ events?", "that it is ready")
    say("\nThe table it installed in the server namespace (the set elements are open doors):")
    say(f"$ ip netns exec {nets.server} nft list table inet tportknockd")
    table = nets.run(nets.server, ["nft", "list", "table", "inet", "tportknockd"], check=True)
    show("nft        ", table.stdout)
    say("\nThe same client, the same service, now:")
    connect(nets, SERVER_V4, expect_answer=False)
    return daemon


def wrong_knock(nets: Namespaces, daemon: Daemon, knocks: Path) -> None:
    heading("A wrong knock opens nothing")
    say("The sequence, but frame 5 carries FIN+SYN+RST+PSH+ACK instead of all six flags")
    say("(URG is missing). Every flag bit must be exactly right.")
    before = statistics(daemon, lambda c: True)
    # With the kernel engine packets never reach the daemon: its program counts the knocks.
    counted = "kernel_knocks" if "kernel_knocks" in before else "packets"
    knocks_before = count_lines(knocks, "knock from")
    knock(nets, SERVER_V4, *WRONG_SEQUENCE.split())
    frames = len(WRONG_SEQUENCE.split())
    # The frame with the wrong flags may never reach the daemon: where a port's frames all
    # name exact flags, the kernel filter already drops other flags. The others must arrive.
    right_ones = frames - 1
    after = statistics(daemon, lambda c: c[counted] >= before[counted] + right_ones)
    seen = after[counted] - before[counted]
    if seen < right_ones:
        raise DemoFailure(f"the daemon saw only {seen} of the {frames} frames of the wrong knock")
    time.sleep(0.3)  # a last look, in case the wrong frame is still on its way
    after = statistics(daemon, lambda c: True)
    seen = after[counted] - before[counted]
    if (after["fired"] != before["fired"] or count_lines(knocks, "knock from") != knocks_before
            or any(" opened for " in line for line in daemon.lines)):
        raise DemoFailure("the wrong knock opened the door")
    connect(nets, SERVER_V4, expect_answer=False)
    if seen < frames:
        say("\n>> the frame with the wrong flags was dropped by the kernel filter already;")
        say(f">> the daemon counted the other {seen} frames and fired nothing "
            f"(fired stays {after['fired']})")
    else:
        say(f"\n>> the daemon counted all {seen} frames and fired nothing "
            f"(fired stays {after['fired']})")


def right_knock(nets: Namespaces, daemon: Daemon, knocks: Path) -> None:
    heading("A right knock opens the door, for the knocker alone")
    say(f"The client knocks the six frames of the sequence at {SERVER_V4}.")
    knock(nets, SERVER_V4, *SEQUENCE.split())
    match = daemon.wait_for(rf"door ssh opened for {re.escape(CLIENT_V4)} "
                            rf"\(tcp:{SERVICE_PORT}\) for {DOOR_TIMEOUT} s via {SERVER_IF}",
                            "the open door")
    opened = time.monotonic()
    say(f"\n>> the daemon: {match.group(0)}")
    connect(nets, SERVER_V4, expect_answer=True)
    wait_file_line(knocks, f"knock from {CLIENT_V4}", DEADLINE)
    say(f">> and the start_command ran alongside the door: {knocks} now holds "
        f"\"knock from {CLIENT_V4}\"")

    say("\nThe doors open now, read from the kernel:")
    listing = tportknockd(nets, "--doors")
    if f"{CLIENT_V4}/32" not in listing or "1 open door" not in listing:
        raise DemoFailure("tportknockd --doors does not list the open door")

    heading(f"The kernel closes the door at its door_timeout ({DOOR_TIMEOUT} s)")
    say("The client tries again until it gets no answer:")
    wait_closed(nets, SERVER_V4, opened)


def ipv6_knock(nets: Namespaces, daemon: Daemon) -> float:
    heading("IPv6 works the same way")
    connect(nets, SERVER_V6, expect_answer=False)
    knock(nets, "-6", SERVER_V6, *SEQUENCE.split())
    match = daemon.wait_for(rf"door ssh opened for {re.escape(CLIENT_V6)} "
                            rf"\(tcp:{SERVICE_PORT}\)", "the open IPv6 door")
    opened = time.monotonic()
    say(f"\n>> the daemon: {match.group(0)}")
    connect(nets, SERVER_V6, expect_answer=True)
    return opened


def stop_daemon(nets: Namespaces, daemon: Daemon, opened_v6: float) -> None:
    heading("Stopping the daemon leaves the port closed")
    say("SIGTERM, while the IPv6 door is still open:")
    status = daemon.stop()
    if status != 0:
        raise DemoFailure(f"the daemon exited with status {status}")
    say(f"\n>> exit status {status}; the table stays in the kernel:")
    listing = tportknockd(nets, "--doors")
    if f"{CLIENT_V6}/128" not in listing:
        raise DemoFailure("the IPv6 door was gone with the daemon")
    say("\nNo daemon, and the port is still closed to whoever has no open door:")
    connect(nets, SERVER_V4, expect_answer=False)
    say("The IPv6 door stays open until its own timeout, then the kernel closes it:")
    wait_closed(nets, SERVER_V6, opened_v6)

    heading("Removing the table")
    say("`tportknockd --remove-table` takes the daemon's table away (the package's")
    say("uninstall does the same): the port is no longer guarded.")
    tportknockd(nets, "--remove-table")
    connect(nets, SERVER_V4, expect_answer=True)


def tour(nets: Namespaces, workdir: Path, started: list[Daemon],
         helpers: list[subprocess.Popen[str]]) -> None:
    heading("Two network namespaces joined by a veth pair")
    nets.create()
    say(f"server namespace {nets.server}: {SERVER_IF} {SERVER_V4}/24 {SERVER_V6}/64")
    say(f"client namespace {nets.client}: {CLIENT_IF} {CLIENT_V4}/24 {CLIENT_V6}/64")
    say("(documentation addresses, no default route: nothing leaves the pair)")

    knocks = workdir / "knocks"
    config = workdir / "knock.conf"
    config.write_text(CONFIG_TEMPLATE.format(sequence=SEQUENCE, port=SERVICE_PORT,
                                             door_timeout=DOOR_TIMEOUT, knocks=knocks))
    service(nets, helpers)
    check_config(nets, config)
    daemon = start_daemon(nets, config, started)
    wrong_knock(nets, daemon, knocks)
    right_knock(nets, daemon, knocks)
    opened_v6 = ipv6_knock(nets, daemon)
    stop_daemon(nets, daemon, opened_v6)


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "the demo needs root (network namespaces and raw sockets): sudo make demo"
    if shutil.which("ip") is None:
        return "the demo needs the `ip` command (Debian: apt-get install iproute2)"
    if shutil.which("nft") is None:
        return "the demo needs the `nft` command (Debian: apt-get install nftables)"
    return None


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception, so that the clean-up below runs for it too.
    raise KeyboardInterrupt


def main() -> int:
    problem = preflight()
    if problem:
        print(f"demo: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C must reach the clean-up even when started with SIGINT ignored (as a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    nets = Namespaces()
    workdir = Path(tempfile.mkdtemp(prefix="tportknockd-demo-"))
    started: list[Daemon] = []
    helpers: list[subprocess.Popen[str]] = []
    status = 1
    try:
        tour(nets, workdir, started, helpers)
        status = 0
    except DemoFailure as exc:
        print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        status = 130
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        print(f"\nDEMO FAILED: {exc} {detail}".rstrip(), file=sys.stderr)
    finally:
        for daemon in started:
            daemon.kill()
        for helper in helpers:  # the demo service: this process, by its PID
            helper.kill()
            helper.wait()
        nets.remove()
        shutil.rmtree(workdir, ignore_errors=True)
        heading("Cleaning up")
        say("daemon and service stopped, namespaces and temporary files removed")
    if status == 0:
        heading("Demo finished: every step did what it should")
    return status


if __name__ == "__main__":
    sys.exit(main())
