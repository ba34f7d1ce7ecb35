"""The daemon run the way packaging/tportknockd.service runs it, where no systemd runs: as an
unprivileged user with the unit's ambient capabilities, bounding set, no-new-privileges and
umask (taken from the unit file, through setpriv), on the system's Python. A real knock opens
and closes a real nftables door, and an iptables one, and a built-in door (the daemon's own
table), from inside that confinement.

The system call filter is checked against what really happens: under strace, every system
call the daemon and its commands make while a knock opens and closes a door must be one the
unit's SystemCallFilter= allows (a call it does not allow fails with EPERM under systemd).
The rest of the unit's sandbox (read-only file system, private devices, ...) needs systemd
itself; tests/test_packaging_unit.py checks it with systemd-analyze.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import DEADLINE, DaemonRun, child_env, wait_until
from test_firewall import PORT, SERVICE, answer

from netns import CLIENT_V4, SERVER_V4, Pair
from packaging_helpers import (
    REPO,
    SYSTEM_PYTHON,
    require_tool,
    unit_capabilities,
    unit_syscall_allowlist,
    unit_value,
)

# Daemons as an unused uid, a probe in /etc: on the same make-test worker as
# test_unit_install, which looks for every trace of the package on the machine.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("machine")]

#: Capability numbers (linux/capability.h), to read /proc/PID/status with.
CAPABILITY_BITS = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_BPF": 39}
SEQUENCE = "udp:7100 tcp:7101:fu udp:7102"


def _free_id() -> int:
    """A uid/gid that no user and no group has: the daemon's user, owning nothing else."""
    for candidate in range(64100, 65000):
        try:
            pwd.getpwuid(candidate)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(candidate)
        except KeyError:
            return candidate
    raise AssertionError("no free uid between 64100 and 65000")


def unit_setpriv(uid: int, gid: int | None = None) -> list[str]:
    """A command prefix that gives a process what the unit gives the daemon (User=, Group=
    as uid and gid)."""
    ambient = sorted(c.removeprefix("CAP_").lower()
                     for c in unit_capabilities("AmbientCapabilities"))
    bounding = sorted(c.removeprefix("CAP_").lower()
                      for c in unit_capabilities("CapabilityBoundingSet"))
    argv = [
        "setpriv", f"--reuid={uid}", f"--regid={uid if gid is None else gid}", "--clear-groups",
        "--inh-caps=" + ",".join(["-all", *(f"+{c}" for c in ambient)]),
        "--ambient-caps=" + ",".join(["-all", *(f"+{c}" for c in ambient)]),
        "--bounding-set=" + ",".join(["-all", *(f"+{c}" for c in bounding)]),
    ]
    if unit_value("NoNewPrivileges") == "yes":
        argv.append("--no-new-privs")
    # setpriv has no umask option: the shell sets it and execs setpriv in its place.
    return ["sh", "-c", f'umask {unit_value("UMask")} && exec "$@"', "sh", *argv]


@dataclass
class Confined:
    """The daemon's files, laid out as the package lays them out, owned as it owns them."""

    uid: int
    root: Path  # world-traversable, unlike pytest's tmp_path
    state: Path  # as StateDirectory=: the user's, 0700
    config: Path  # as /etc/tportknockd.conf: root:USER 0640
    door: Path


@pytest.fixture
def confined() -> Iterator[Confined]:
    uid = _free_id()
    root = Path(tempfile.mkdtemp(prefix="tpk-unit-", dir="/tmp"))
    try:
        root.chmod(0o755)
        shutil.copytree(REPO / "src" / "tportknockd", root / "lib" / "tportknockd",
                        ignore=shutil.ignore_patterns("__pycache__"))
        door = root / "door-nft"
        shutil.copy(REPO / "examples" / "door-nft", door)
        door.chmod(0o755)
        state = root / "state"
        state.mkdir(mode=0o700)
        os.chown(state, uid, uid)
        config = root / "tportknockd.conf"
        config.touch(mode=0o640)
        os.chown(config, 0, uid)
        yield Confined(uid, root, state, config, door)
    finally:
        shutil.rmtree(root)


def start_confined(pair: Pair, confined: Confined, tmp_path: Path, config: str,
                   trace: Path | None = None) -> DaemonRun:
    """The daemon as the unit runs it; with `trace`, under `strace -f -o trace`."""
    confined.config.write_text(config)
    actions = confined.state / "actions"
    run = DaemonRun(pair, tmp_path, confined.config, tmp_path / "daemon.log", actions)
    env = {**child_env(), "PYTHONPATH": str(confined.root / "lib")}
    argv = [*unit_setpriv(confined.uid), SYSTEM_PYTHON, "-m", "tportknockd",
            "-c", str(confined.config), "-i", pair.server_if,
            "--state-file", str(confined.state / "doors.json")]
    if trace is not None:
        argv = ["strace", "-f", "-qq", "-o", str(trace), *argv]
    with open(run.log, "w") as log:
        run.proc = pair.popen(pair.server, argv, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, env=env)
    # ip netns exec, sh and setpriv all exec in place: the daemon's pid is ours, or the one
    # strace started (the first one in its output).
    run.pid = run.proc.pid
    if trace is not None:
        assert wait_until(lambda: trace.exists() and trace.stat().st_size > 0)
        run.pid = int(trace.read_text().split(maxsplit=1)[0])
        run.extra_pids = [run.proc.pid]  # at the end: strace after the daemon
    run.wait_log(r"ready: \d+ events?")
    return run


@pytest.fixture
def service(pair: Pair) -> Iterator[None]:
    """A TCP service on port 22 of the server, behind whatever firewall the test loads."""
    proc = pair.popen(pair.server, [sys.executable, "-c", SERVICE, SERVER_V4, "::1", str(PORT)],
                      stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        yield
    finally:
        proc.kill()
        proc.wait()


def _status(pid: int | str) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _mask(capabilities: set[str]) -> int:
    return sum(1 << CAPABILITY_BITS[name] for name in capabilities)


FIREWALLS = {
    # name: (commands that load the firewall, as the administrator does; start; stop)
    "nftables": (
        [["nft", "-f", str(REPO / "examples" / "knock.nft")]],
        "{door} open %IP%",
        "{door} close %IP%",
    ),
    "iptables": (
        [["iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(PORT), "-j", "DROP"]],
        f"iptables -I INPUT -s %IP% -p tcp --dport {PORT} -j ACCEPT",
        f"iptables -D INPUT -s %IP% -p tcp --dport {PORT} -j ACCEPT",
    ),
}


@pytest.mark.parametrize("firewall", sorted(FIREWALLS))
def test_knock_opens_and_closes_a_real_door_as_the_unit_runs_it(
    pair: Pair, service: None, confined: Confined, tmp_path: Path, firewall: str
) -> None:
    load, start, stop = FIREWALLS[firewall]
    tool = shutil.which(load[0][0], path="/usr/sbin:/usr/bin:/sbin:/bin")
    if tool is None:
        message = f"{load[0][0]} is needed; `make deps` installs it"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    for command in load:
        pair.run(pair.server, command, check=True)
    door = str(confined.door)
    daemon = start_confined(pair, confined, tmp_path, f"""
<ssh>
 sequence      = {SEQUENCE}
 timeout       = 5
 start_command = {start.format(door=door)}
 stop_command  = {stop.format(door=door)}
 command_delay = 2
</ssh>
""")
    assert answer(pair, SERVER_V4).startswith("closed")

    daemon.knock(SERVER_V4, *SEQUENCE.split())
    daemon.wait_log(rf"ssh: knock from {CLIENT_V4} accepted")
    assert wait_until(lambda: answer(pair, SERVER_V4) == "hello"), daemon.log_text()
    # The open door is on record, in the state directory, as the unit's user and umask make it.
    record = confined.state / "doors.json"
    assert (record.stat().st_uid, record.stat().st_mode & 0o777) == (confined.uid, 0o600)

    daemon.wait_log(rf"ssh: closing for {CLIENT_V4}")
    assert wait_until(lambda: answer(pair, SERVER_V4).startswith("closed")), daemon.log_text()
    assert daemon.log_text().count("exit status 0") == 2, daemon.log_text()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0


DOOR_TIMEOUT = 3


def test_a_built_in_door_opens_and_closes_as_the_unit_runs_it(
    pair: Pair, service: None, confined: Confined, tmp_path: Path
) -> None:
    """The daemon's own table, installed and filled as the unit's user with the unit's
    capabilities (CAP_NET_ADMIN through libnftables): no firewall of the administrator's."""
    daemon = start_confined(pair, confined, tmp_path, f"""
<ssh>
 sequence     = {SEQUENCE}
 timeout      = 5
 door         = tcp:{PORT}
 door_timeout = {DOOR_TIMEOUT}
</ssh>
""")
    assert answer(pair, SERVER_V4).startswith("closed")

    daemon.knock(SERVER_V4, *SEQUENCE.split())
    daemon.wait_log(rf"door ssh opened for {CLIENT_V4} \(tcp:{PORT}\) for {DOOR_TIMEOUT} s via ")
    assert answer(pair, SERVER_V4) == "hello", daemon.log_text()
    # The kernel closes it at its timeout: a new connection fails again.
    assert wait_until(lambda: answer(pair, SERVER_V4).startswith("closed"),
                      DOOR_TIMEOUT + DEADLINE), daemon.log_text()
    assert "ERROR" not in daemon.log_text(), daemon.log_text()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_daemon_and_its_commands_hold_exactly_the_units_capabilities(
    pair: Pair, confined: Confined, tmp_path: Path
) -> None:
    status_file = confined.state / "command-status"
    probe = Path("/etc/tportknockd-unit-test-probe")
    daemon = start_confined(pair, confined, tmp_path, f"""
<probe>
 sequence      = udp:7200 udp:7201
 timeout       = 5
 start_command = cat /proc/$$/status > {status_file}; touch {probe}
</probe>
""")
    assert daemon.pid is not None
    ambient = _mask(unit_capabilities("AmbientCapabilities"))
    bounding = _mask(unit_capabilities("CapabilityBoundingSet"))
    status = _status(daemon.pid)
    assert status["Uid"].split() == [str(confined.uid)] * 4
    assert status["Gid"].split() == [str(confined.uid)] * 4
    assert status["Groups"] == ""
    assert int(status["CapEff"], 16) == int(status["CapAmb"], 16) == ambient
    assert int(status["CapBnd"], 16) == bounding
    assert status["NoNewPrivs"] == "1"

    daemon.knock(SERVER_V4, "udp:7200", "udp:7201")
    assert wait_until(lambda: status_file.exists() and "NoNewPrivs" in status_file.read_text(),
                      DEADLINE), daemon.log_text()
    command = dict(line.split(":", 1) for line in status_file.read_text().splitlines())
    # /bin/sh is no set-uid program: the ambient capabilities survive its execve.
    assert int(command["CapEff"], 16) == int(command["CapAmb"], 16) == ambient
    assert command["Uid"].split() == [str(confined.uid)] * 4
    # ... and nothing more: no root, so /etc stays out of reach.
    daemon.wait_log(r"probe \S+ start: exit status 1")
    assert not probe.exists()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def _system_calls_after_exec(trace: Path) -> set[str]:
    """The system calls in an `strace -f` log from the exec of the daemon's Python on (what
    setpriv did before it is what systemd does before it starts a unit's process)."""
    lines = trace.read_text().splitlines()
    start = next(index for index, line in enumerate(lines)
                 if f'execve("{SYSTEM_PYTHON}"' in line and line.endswith("= 0"))
    calls = set()
    for line in lines[start:]:
        match = re.match(r"^\d+\s+([a-z_0-9]+)\(", line)
        if match:
            calls.add(match.group(1))
    return calls


def test_every_system_call_made_is_one_the_unit_allows(
    pair: Pair, service: None, confined: Confined, tmp_path: Path
) -> None:
    require_tool("strace", "strace")
    require_tool("systemd-analyze", "systemd")
    for command in FIREWALLS["nftables"][0]:
        pair.run(pair.server, command, check=True)
    trace = tmp_path / "strace.log"
    door = confined.door
    daemon = start_confined(pair, confined, tmp_path, f"""
<ssh>
 sequence      = {SEQUENCE}
 timeout       = 5
 start_command = {door} open %IP%; iptables -I INPUT -s %IP% -j ACCEPT
 stop_command  = {door} close %IP%; iptables -D INPUT -s %IP% -j ACCEPT
 command_delay = 1
</ssh>
""", trace=trace)
    daemon.knock(SERVER_V4, *SEQUENCE.split())
    assert wait_until(lambda: answer(pair, SERVER_V4) == "hello"), daemon.log_text()
    daemon.wait_log(rf"ssh {CLIENT_V4} stop: exit status 0")
    daemon.signal(signal.SIGHUP)  # a reload, too
    daemon.wait_log(r"configuration reloaded")
    daemon.signal(signal.SIGUSR1)
    daemon.wait_log(r"statistics: ")
    daemon.signal(signal.SIGTERM)
    assert daemon.proc is not None and daemon.proc.wait(DEADLINE) == 0
    made = _system_calls_after_exec(trace)
    print(f"{len(made)} distinct system calls: {' '.join(sorted(made))}")
    assert {"socket", "setsockopt", "execve", "sendmsg"} <= made  # the trace saw the work
    refused = made - unit_syscall_allowlist()
    assert not refused, f"SystemCallFilter= would refuse {sorted(refused)}"
