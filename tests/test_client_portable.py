"""The knock client on macOS and Windows, as far as a Linux machine can tell (issue 16).

Each test runs the client in a fresh interpreter that first makes the system look like the
other one: `sys.platform` says so, the Linux-only modules (and the daemon's parts built on them)
cannot be imported, and the socket and os constants that system lacks are gone. What must work
there: the help, the frames of a config event (`--print`), the one-time derivation, a knock of
SYN and UDP frames (to listening sockets of this test on the loopback), and the daemon's
commands saying in one line that they need Linux.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Never importable off Linux: modules Windows (or both) lack, ctypes (loading libc), and the
#: daemon's parts built on AF_PACKET, eBPF and nftables.
BLOCKED = (
    "fcntl", "ctypes", "termios", "pwd", "grp", "resource",
    "tportknockd.bpf", "tportknockd.capture", "tportknockd.kernel", "tportknockd.daemon",
    "tportknockd.firewall",
)  # fmt: skip
#: Socket constants only Linux has.
LINUX_SOCKET = ("AF_PACKET", "AF_NETLINK", "SO_BINDTODEVICE", "SOCK_CLOEXEC", "SOCK_NONBLOCK",
                "PACKET_HOST", "PACKET_OUTGOING", "SO_ATTACH_FILTER", "SO_ATTACH_BPF")
#: What Windows' os module lacks besides (of what the package could reach for).
POSIX_ONLY_OS = ("O_NONBLOCK", "O_CLOEXEC", "O_DIRECTORY", "O_NOFOLLOW", "fchmod", "fchown",
                 "geteuid", "getegid", "getuid", "getgid", "uname", "fork", "setsid")

BOOTSTRAP = """
import importlib.abc, os, socket, sys
PLATFORM, BLOCKED, LINUX_SOCKET, POSIX_ONLY_OS = {setup!r}

class LinuxOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == blocked or name.startswith(blocked + ".") for blocked in BLOCKED):
            raise ImportError(f"No module named {{name!r}} (not on {{PLATFORM}})", name=name)
        return None

assert not [name for name in sys.modules if name.split(".")[0] in BLOCKED]
sys.meta_path.insert(0, LinuxOnly())
for name in LINUX_SOCKET:
    if hasattr(socket, name):
        delattr(socket, name)
for name in POSIX_ONLY_OS if PLATFORM == "win32" else ():
    if hasattr(os, name):
        delattr(os, name)
sys.platform = PLATFORM
"""

RUN_CLIENT = "from tportknockd.client import main\nraise SystemExit(main(sys.argv[1:]))"
RUN_DAEMON_SCRIPT = "from tportknockd.cli import main\nraise SystemExit(main())"
RUN_DAEMON_MODULE = "import runpy\nrunpy.run_module('tportknockd', run_name='__main__')"

PLATFORMS = ["darwin", "win32"]


def run_as(platform: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    setup = (platform, BLOCKED, LINUX_SOCKET, POSIX_ONLY_OS)
    program = BOOTSTRAP.format(setup=setup) + code
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_the_bootstrap_blocks_what_it_says() -> None:
    for module in ("fcntl", "ctypes", "tportknockd.capture.ring", "tportknockd.daemon"):
        result = run_as("win32", f"import {module}")
        assert result.returncode == 1 and "ImportError" in result.stderr, module
    result = run_as("win32", "print(sys.platform, hasattr(socket, 'AF_PACKET'), "
                             "hasattr(os, 'O_NONBLOCK'))")
    assert result.stdout == "win32 False False\n"


@pytest.mark.parametrize("platform", PLATFORMS)
def test_help(platform: str) -> None:
    result = run_as(platform, RUN_CLIENT, "-h")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("usage: tportknock") and "--connect" in result.stdout


@pytest.mark.parametrize("platform", PLATFORMS)
def test_print_a_config_event(platform: str, tmp_path: Path) -> None:
    config = tmp_path / "knock.conf"
    config.write_text("<ssh>\n sequence = udp:7000 tcp:7001:s udp:7002\n timeout = 10\n"
                      " start_command = x\n</ssh>\n")
    result = run_as(platform, RUN_CLIENT, "-c", str(config), "-e", "ssh", "--print")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "udp:7000 tcp:7001:s udp:7002\n"


def otp_config(tmp_path: Path) -> Path:
    secret = tmp_path / "secret"
    secret.write_text("correct horse battery staple, portable\n")
    secret.chmod(0o600)
    config = tmp_path / "knock.conf"
    config.write_text(f"<ssh>\n otp_secret = {secret}\n timeout = 10\n start_command = x\n"
                      "</ssh>\n")
    return config


def test_one_time_derivation_on_macos(tmp_path: Path) -> None:
    config = otp_config(tmp_path)
    args = ("-c", str(config), "-e", "ssh", "--print")
    def here() -> str:
        result = subprocess.run([sys.executable, "-m", "tportknockd.client", *args],
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(SRC)}, check=True)
        return result.stdout

    before = here()
    there = run_as("darwin", RUN_CLIENT, *args)
    after = here()
    assert (there.returncode, there.stderr) == (0, "")
    # The same window's sequence (the window may end between the runs: then the next one's).
    assert there.stdout in (before, after) and there.stdout.count(":") >= 2


def test_one_time_derivation_on_windows(tmp_path: Path) -> None:
    result = run_as("win32", RUN_CLIENT, "-c", str(otp_config(tmp_path)), "-e", "ssh",
                    "--print")
    assert (result.returncode, result.stderr) == (0, "")


@pytest.fixture(params=["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def listeners(request: pytest.FixtureRequest) -> Iterator[tuple[str, socket.socket,
                                                                 socket.socket]]:
    """A UDP socket and a listening TCP socket of this test, on the loopback."""
    address: str = request.param
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        pytest.skip(f"no {address}")
    with udp, tcp:
        try:
            udp.bind((address, 0))
            tcp.bind((address, 0))
        except OSError:
            pytest.skip(f"no {address}")
        tcp.listen(4)
        udp.settimeout(5)
        tcp.settimeout(5)
        yield address, udp, tcp


@pytest.mark.parametrize(("platform", "options"), [("darwin", ("--connect",)), ("win32", ())],
                         ids=["darwin-connect", "win32-default"])
def test_knock_syn_and_udp_over_loopback(
        platform: str, options: tuple[str, ...],
        listeners: tuple[str, socket.socket, socket.socket]) -> None:
    address, udp, tcp = listeners
    udp_port, tcp_port = udp.getsockname()[1], tcp.getsockname()[1]
    result = run_as(platform, RUN_CLIENT, "-v", *options, address, f"udp:{udp_port}",
                    f"tcp:{tcp_port}:s", f"udp:{udp_port}")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        f"sent udp/{udp_port} to {address} (udp)",
        f"sent tcp/{tcp_port} SYN to {address} (connect)",
        f"sent udp/{udp_port} to {address} (udp)",
    ]
    assert [udp.recvfrom(64)[0] for _ in range(2)] == [b"knock", b"knock"]
    # The SYN reached the listening socket: the loopback completes the handshake at once,
    # before the client closes its socket.
    connection, _ = tcp.accept()
    connection.close()


@pytest.mark.parametrize("platform", PLATFORMS)
def test_other_flags_are_refused_without_a_raw_socket(platform: str) -> None:
    result = run_as(platform, RUN_CLIENT, "--connect", "127.0.0.1", "udp:9", "tcp:7001:fu")
    assert result.returncode == 1
    assert result.stderr == ("tportknock: tcp:7001:fu needs a raw socket (--connect sends only "
                             "SYN frames); only tcp:s and udp frames can be sent without\n")


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("code", [RUN_DAEMON_SCRIPT, RUN_DAEMON_MODULE], ids=["script", "-m"])
def test_the_daemon_says_it_needs_linux(platform: str, code: str) -> None:
    result = run_as(platform, code, "-c", "knock.conf", "-i", "eth0")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (f"tportknockd: the daemon needs Linux (this is {platform}); the "
                             "knock client, tportknock, runs here\n")
