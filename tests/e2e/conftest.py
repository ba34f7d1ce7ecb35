"""Running the real daemon and client inside a throw-away veth pair.

Every test gets its own pair of namespaces (tests/support/netns.py), a config written into tmp_path
whose commands append lines to `tmp_path/actions`, and the daemon running in the server
namespace with its stderr in `tmp_path/daemon.log`. Success is waited for with a deadline by
polling those files; "did not fire" is proved by knocking a sentinel event afterwards and
waiting for it, so the wrong knock is known to have been processed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# tests/support/netns.py is shared by the test suites; the package itself may not be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
if "tportknockd" not in sys.modules:
    sys.path.append(str(Path(__file__).resolve().parents[2] / "src"))

from netns import CLIENT_V4, SERVER_V4, Pair, veth_pair  # noqa: E402
from privileges import NAMESPACES, require_root  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"

#: Long enough for a loaded CI machine; success paths return as soon as the line is there.
DEADLINE = 10.0
POLL = 0.02

#: The seed's three example sequences.
SSH_SEQUENCE = "udp:1234 tcp:543 tcp:543:i tcp:123:frap tcp:434:x tcp:2345:n"
VPN_SEQUENCE = "tcp:12430:a tcp:2711:i tcp:123:i tcp:8375:n tcp:1155:n"
FLAGS_SEQUENCE = "tcp:110:x tcp:110:up tcp:110:up tcp:110:n tcp:110:i"
#: An event of its own, knocked after a knock that must not fire (see DaemonRun.sentinel).
SENTINEL_SEQUENCE = "udp:7001 tcp:7002:s udp:7003"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


#: The engine every daemon a test starts runs with (see the `engine` fixture below).
ENGINE = {"name": "python"}


def daemon_argv(*args: str) -> list[str]:
    """The daemon's command line. A daemon run (-c) gets `--engine` of the test's engine."""
    engine = ("--engine", ENGINE["name"]) if "-c" in args and "--engine" not in args else ()
    return [sys.executable, "-m", "tportknockd", *args, *engine]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every e2e test runs once with each engine: the Python engine (the specification) and
    the eBPF program matching in the kernel; `--engine kernel` fails at start-up rather than
    fall back, so a kernel run is never silently a Python one. A test of the choice itself
    (marked `engine_choice`) runs once and picks its own `--engine`."""
    if metafunc.definition.get_closest_marker("engine_choice") is None:
        metafunc.parametrize("engine", ["python", "kernel"], indirect=True)


@pytest.fixture(autouse=True)
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The engine of this run of the test (see pytest_generate_tests)."""
    ENGINE["name"] = getattr(request, "param", "python")
    yield ENGINE["name"]
    ENGINE["name"] = "python"


def client_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tportknockd.client", *args]


def event_block(name: str, sequence: str, *, timeout: float = 5, stop: bool = False,
                delay: float | None = None, out: Path) -> str:
    """A config block whose commands append `NAME open IP` / `NAME close IP` to `out`."""
    lines = [
        f"<{name}>",
        f" sequence      = {sequence}",
        f" timeout       = {timeout:g}",
        f" start_command = echo {name} open %IP% >> {out}",
    ]
    if stop:
        lines.append(f" stop_command  = echo {name} close %IP% >> {out}")
        lines.append(f" command_delay = {delay if delay is not None else 1:g}")
    lines.append(f"</{name}>")
    return "\n".join(lines) + "\n"


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


@dataclass
class DaemonRun:
    """One daemon started by a test, and the files it talks through."""

    pair: Pair
    tmp: Path
    config: Path
    log: Path
    actions: Path
    proc: subprocess.Popen[str] | None = None
    pid: int | None = None
    extra_pids: list[int] = field(default_factory=list)

    # -- what the daemon said and did ----------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def action_lines(self) -> list[str]:
        return read_lines(self.actions)

    def wait_log(self, pattern: str, timeout: float = DEADLINE, count: int = 1) -> str:
        """Wait until `pattern` (a regex) has matched `count` log lines; return the last one."""
        regex = re.compile(pattern)
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self.log_text().splitlines() if regex.search(line)]
            return len(found) >= count

        if not wait_until(seen, timeout):
            self.fail(f"no log line matching {pattern!r} (x{count}) within {timeout} s")
        return found[count - 1]

    def wait_action(self, line: str, timeout: float = DEADLINE, count: int = 1) -> None:
        if not wait_until(lambda: self.action_lines().count(line) >= count, timeout):
            self.fail(f"command output {line!r} (x{count}) did not appear within {timeout} s")

    def statistics(self) -> dict[str, int]:
        """Ask for statistics (SIGUSR1) and return the figures of the line that answers."""
        seen = self.log_text().count("statistics: ")
        self.signal(signal.SIGUSR1)
        line = self.wait_log(r"statistics: ", count=seen + 1)
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}

    def wait_attempt_advanced(self, source: str, step: int, of: int) -> None:
        """Wait until an attempt from `source` has `step` of `of` frames matched: the debug
        trace says so with the Python engine; the kernel engine's maps say an attempt is
        past its first frame (-d traces no packet that never reaches Python)."""
        if ENGINE["name"] == "python":
            self.wait_log(rf"{re.escape(source)} advanced \({step}/{of}\)")
            return
        if not wait_until(lambda: self.statistics().get("kernel_attempts_advanced", 0) >= 1):
            self.fail("no attempt past its first frame in the kernel engine's maps")

    def fail(self, message: str) -> None:
        pytest.fail(
            f"{message}\n--- actions ---\n{chr(10).join(self.action_lines())}"
            f"\n--- daemon log ---\n{self.log_text()}"
        )

    # -- knocking ------------------------------------------------------------------------

    def knock(self, host: str, *frames: str, options: tuple[str, ...] = (),
              ns: str | None = None) -> None:
        knock(self.pair, host, *frames, options=options, ns=ns)

    def sentinel(self, host: str = SERVER_V4, source: str = CLIENT_V4) -> None:
        """Knock the sentinel event and wait until it fired: everything sent before it has
        been through the daemon by then."""
        seen = self.action_lines().count(f"sentinel open {source}")
        self.knock(host, *SENTINEL_SEQUENCE.split())
        self.wait_action(f"sentinel open {source}", count=seen + 1)
        self.wait_log(rf"sentinel: knock from {re.escape(source)} accepted", count=seen + 1)

    def assert_not_fired(self, event: str) -> None:
        opened = [line for line in self.action_lines() if line.startswith(f"{event} open")]
        accepted = re.findall(rf"{re.escape(event)}: knock from \S+ accepted", self.log_text())
        if opened or accepted:
            self.fail(f"event {event} fired but must not have")

    # -- signals and the end -------------------------------------------------------------

    def signal(self, signum: int) -> None:
        assert self.pid is not None
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"daemon did not exit within {timeout} s")
            raise

    def kill(self) -> None:
        """Teardown: end the daemon(s) this test started, by PID, whatever state they are in."""
        for pid in [p for p in [self.pid, *self.extra_pids] if p is not None]:
            if self.proc is not None and pid == self.proc.pid:
                if self.proc.poll() is None:
                    self.proc.terminate()
                    try:
                        self.proc.wait(5)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait(5)
            else:
                _kill_foreign(pid)


def _kill_foreign(pid: int) -> None:
    """End a process we started but that is not our child (a detached daemon)."""
    if not process_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not process_alive(pid), 5):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (not reaped by an init that does not reap) is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def knock(pair: Pair, host: str, *frames: str, options: tuple[str, ...] = (),
          ns: str | None = None) -> None:
    """Run the knock client (in the client namespace unless told otherwise)."""
    result = pair.run(ns or pair.client, client_argv(*options, host, *frames),
                      env=child_env(), capture_output=True, timeout=60)
    if result.returncode != 0:
        pytest.fail(f"tportknock {host} {' '.join(frames)} failed ({result.returncode}):\n"
                    f"{result.stdout}{result.stderr}")


@pytest.fixture
def pair() -> Iterator[Pair]:
    require_root(NAMESPACES)
    with veth_pair() as p:
        yield p


StartDaemon = Callable[..., DaemonRun]


@pytest.fixture
def start_daemon(pair: Pair, tmp_path: Path) -> Iterator[StartDaemon]:
    """`start_daemon(config_text, *options)` starts tportknockd in the server namespace and
    waits for `ready:`. The config text may use `{out}` for the actions file. With
    `wait_ready=False` it only starts it; `interfaces` is what -i gets (default: the pair's
    server end)."""
    runs: list[DaemonRun] = []

    def start(config_text: str, *options: str, wait_ready: bool = True,
              interfaces: str | None = None) -> DaemonRun:
        n = len(runs)
        actions = tmp_path / "actions"
        config = tmp_path / f"knock{n}.conf"
        config.write_text(config_text.replace("{out}", str(actions)))
        run = DaemonRun(pair, tmp_path, config, tmp_path / f"daemon{n}.log", actions)
        runs.append(run)
        if "--state-file" not in options:
            # Never the system-wide default: tests must not see each other's open doors.
            options = (*options, "--state-file", str(tmp_path / "doors.json"))
        with open(run.log, "w") as log:
            run.proc = pair.popen(
                pair.server,
                daemon_argv("-c", str(config), "-i", interfaces or pair.server_if, *options),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=child_env(),
            )
        # `ip netns exec` execs the command in place, so this is the daemon's own PID.
        run.pid = run.proc.pid
        if wait_ready:
            run.wait_log(r"ready: \d+ events?, \d+ frames?")
        return run

    try:
        yield start
    finally:
        for run in runs:
            run.kill()


def config_with_sentinel(*blocks: str, out: Path | None = None) -> str:
    """Join event blocks and add the sentinel event (its commands write to `{out}`)."""
    target = out if out is not None else Path("{out}")
    return "".join(blocks) + event_block("sentinel", SENTINEL_SEQUENCE, out=target)


def block(name: str, sequence: str, **kw: object) -> str:
    """An event block writing to the `{out}` placeholder that start_daemon fills in."""
    return event_block(name, sequence, out=Path("{out}"), **kw)  # type: ignore[arg-type]
