"""One-time knocks for real: sequences from a secret and the clock, and one-time lists.

The knocks are sent by `tportknock -c CONFIG -e EVENT`, captured with tcpdump on the client's
link, and replayed (tests/support/replay.py, scapy) from the same and from another address.
"""

from __future__ import annotations

import re
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    REPO,
    DaemonRun,
    StartDaemon,
    child_env,
    config_with_sentinel,
    wait_until,
)

from netns import CLIENT_V4, SERVER_V4, Pair

pytestmark = pytest.mark.e2e

WINDOW = 6  # seconds: short, so that tests see windows move
OTHER_V4 = "198.51.100.3"  # a second client address (the eavesdropper's)
REPLAY = REPO / "tests" / "support" / "replay.py"


def otp_block(secret: Path, *, stop: bool = True, delay: float = 1, window: int = WINDOW) -> str:
    lines = [
        "<ssh>",
        f" otp_secret    = {secret}",
        f" otp_window    = {window}",
        " timeout       = 4",
        " start_command = echo ssh open %IP% >> {out}",
    ]
    if stop:
        lines += [" stop_command  = echo ssh close %IP% >> {out}", f" command_delay = {delay:g}"]
    return "\n".join([*lines, "</ssh>"]) + "\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "ssh.key"
    path.write_text("a shared secret of the test, 32 bytes\n")
    path.chmod(0o600)
    return path


def at_window_start(margin: float = 0.3, room: float = 3.0, window: int = WINDOW) -> float:
    """Wait until the current window has just begun, so that a knock stays inside it; return
    the Unix time at which that window began."""
    while True:
        now = time.time()
        into = now % window
        if margin <= into <= window - room:
            return now - into
        time.sleep(0.05)


def otp_knock(run: DaemonRun, *options: str) -> None:
    run.knock(SERVER_V4, options=("-c", str(run.config), "-e", "ssh", *options))


class Capture:
    """tcpdump on the client's link, writing what the client sends to the server."""

    def __init__(self, pair: Pair, path: Path) -> None:
        self.pair, self.path = pair, path
        argv = ["tcpdump", "-n", "-U", "--immediate-mode", "-i", pair.client_if, "-w", str(path),
                f"dst host {SERVER_V4} and (tcp or udp)"]
        self.proc = pair.popen(pair.client, argv, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        # tcpdump says "listening on ..." once its capture is in place.
        line = self.proc.stderr.readline()
        if "listening" not in line:
            self.stop()
            pytest.fail(f"tcpdump did not start: {line}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # ours, by its PID
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def pcap_frames(path: Path) -> int:
    """How many packets a pcap file (tcpdump -w) holds so far."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    count, offset = 0, 24  # the file header
    while offset + 16 <= len(data):
        (captured,) = struct.unpack_from("=I", data, offset + 8)
        if offset + 16 + captured > len(data):
            break
        count, offset = count + 1, offset + 16 + captured
    return count


def capture_knock(run: DaemonRun, path: Path, frames: int = 4) -> None:
    capture = Capture(run.pair, path)
    try:
        otp_knock(run)
        # tcpdump -U writes each packet as it comes: wait until the last one is in the file.
        assert wait_until(lambda: pcap_frames(path) >= frames), f"{pcap_frames(path)} captured"
    finally:
        capture.stop()


class Replayer:
    """tests/support/replay.py in the client namespace, started ahead (scapy's import takes
    seconds on a loaded machine), replaying a pcap on request in some tens of milliseconds."""

    def __init__(self, pair: Pair) -> None:
        self.proc = pair.popen(pair.client, [sys.executable, str(REPLAY), pair.client_if],
                               env=child_env(), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def ready(self) -> Replayer:
        self._answer("ready")
        return self

    def replay(self, pcap: Path, source: str | None = None) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{pcap} {source or ''}\n")
        self.proc.stdin.flush()
        self._answer("replayed 4 frames")

    def _answer(self, expected: str, timeout: float = 60) -> None:
        assert self.proc.stdout is not None
        # It prints whole lines, flushed: once there is something to read, a line is there.
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().strip() if readable else "(nothing)"
        if line != expected:
            self.close()
            assert self.proc.stderr is not None
            pytest.fail(f"replay.py said {line!r}, not {expected!r}: {self.proc.stderr.read()}")

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # ours, by its PID
            self.proc.wait(5)


@pytest.fixture
def replayer(pair: Pair) -> Iterator[Replayer]:
    started = Replayer(pair)
    try:
        yield started
    finally:
        started.close()


def add_other_address(pair: Pair) -> None:
    subprocess.run(["ip", "-n", pair.client, "addr", "add", f"{OTHER_V4}/24", "dev",
                    pair.client_if], check=True)


def test_one_time_knock_opens_and_replays_open_nothing(
    start_daemon: StartDaemon, replayer: Replayer, secret: Path, tmp_path: Path
) -> None:
    # The replayer is ready before the knock, so a replay takes some tens of milliseconds:
    # the door's 3 s are ample for the two replays while it is open, and the late ones come
    # well before the knock's window is out of reach (two windows after it began).
    run = start_daemon(config_with_sentinel(otp_block(secret, delay=3)))
    add_other_address(run.pair)
    replayer.ready()
    pcap = tmp_path / "knock.pcap"
    start = at_window_start(room=WINDOW - 2)
    capture_knock(run, pcap)
    run.wait_action(f"ssh open {CLIENT_V4}")
    # Same window, another address: logged as a replay, nothing opens.
    replayer.replay(pcap, OTHER_V4)
    run.wait_log(rf"ssh: replayed sequence from {OTHER_V4}, first used by {CLIENT_V4}")
    # Same window, same address, door open: only pushes the stop back.
    replayer.replay(pcap)
    run.wait_log(rf"ssh: knock from {CLIENT_V4} while open: stop pushed back")
    run.wait_action(f"ssh close {CLIENT_V4}")
    # Later: the door has closed and the window has moved on (still within reach).
    wait_until(lambda: time.time() >= start + WINDOW, WINDOW)
    replayer.replay(pcap)
    run.wait_log(rf"ssh: replayed sequence from {CLIENT_V4}, first used by {CLIENT_V4}")
    replayer.replay(pcap, OTHER_V4)
    run.wait_log(rf"ssh: replayed sequence from {OTHER_V4}, first used by {CLIENT_V4}", count=2)
    assert time.time() < start + 2 * WINDOW, "too slow: the replays came after the window"
    run.sentinel()
    assert run.action_lines().count(f"ssh open {CLIENT_V4}") == 1
    assert f"ssh open {OTHER_V4}" not in run.action_lines()


def test_one_window_ahead_opens_two_behind_does_not(
    start_daemon: StartDaemon, secret: Path
) -> None:
    run = start_daemon(config_with_sentinel(otp_block(secret, stop=False)))
    at_window_start()
    otp_knock(run, "--window-offset=-2")
    run.sentinel()
    run.assert_not_fired("ssh")
    at_window_start()
    otp_knock(run, "--window-offset=1")
    run.wait_action(f"ssh open {CLIENT_V4}")


def test_the_kernel_filter_passes_only_the_live_windows(
    start_daemon: StartDaemon, secret: Path, engine: str
) -> None:
    run = start_daemon(config_with_sentinel(otp_block(secret, stop=False)), "-d")
    # The windows move while it runs, and the filter with them.
    run.wait_log(r"one-time windows moved: 4 sequences, 15 frames live", timeout=WINDOW + 5)
    # Packets that pass the classic filter reach the ring; the kernel engine counts the
    # packets that match a frame of a live sequence.
    counter = "kernel_knocks" if engine == "kernel" else "kernel_packets"
    at_window_start()
    before = run.statistics()[counter]
    otp_knock(run, "--window-offset=-2")  # out of reach: the kernel drops all four frames
    otp_knock(run, "--window-offset=2")
    # The sentinel's three frames, sent after those eight, are counted once they fired.
    run.sentinel()
    assert run.statistics()[counter] == before + 3
    otp_knock(run)
    run.wait_action(f"ssh open {CLIENT_V4}")
    assert run.statistics()[counter] == before + 3 + 4


def test_a_restart_after_sigkill_does_not_unburn(
    start_daemon: StartDaemon, replayer: Replayer, secret: Path, tmp_path: Path
) -> None:
    config = config_with_sentinel(otp_block(secret, stop=False))
    run = start_daemon(config)
    replayer.ready()
    pcap = tmp_path / "knock.pcap"
    at_window_start(room=4.5)
    capture_knock(run, pcap)
    run.wait_action(f"ssh open {CLIENT_V4}")
    run.signal(signal.SIGKILL)
    run.wait_exit()
    again = start_daemon(config)
    replayer.replay(pcap)
    again.wait_log(rf"ssh: replayed sequence from {CLIENT_V4}, first used by {CLIENT_V4}")
    again.sentinel()
    assert again.action_lines().count(f"ssh open {CLIENT_V4}") == 1


# --- one-time lists -----------------------------------------------------------------------


def list_block(path: Path) -> str:
    return (
        "<once>\n"
        f" one_time_sequences = {path}\n"
        " timeout       = 4\n"
        " start_command = echo once open %IP% >> {out}\n"
        "</once>\n"
    )


def test_a_list_advances_line_by_line_and_survives_a_restart(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    listing = tmp_path / "once.list"
    listing.write_text(
        "# knockd syntax and ours\n"
        "7000,8000:udp,9000\n"
        "tcp:7100:s udp:8100\n"
        "7200:udp,7300:udp\n"
    )
    config = config_with_sentinel(list_block(listing))
    run = start_daemon(config)
    run.knock(SERVER_V4, "tcp:7000:s", "udp:8000", "tcp:9000:s")  # knockd's any-flags TCP
    run.wait_action(f"once open {CLIENT_V4}")
    assert wait_until(lambda: "#7000,8000:udp,9000" in listing.read_text())
    # The used line again: nothing (it is no longer in the filter nor in the engine).
    run.knock(SERVER_V4, "tcp:7000:s", "udp:8000", "tcp:9000:s")
    run.knock(SERVER_V4, "tcp:7100:s", "udp:8100")
    run.wait_action(f"once open {CLIENT_V4}", count=2)
    run.sentinel()
    assert run.action_lines().count(f"once open {CLIENT_V4}") == 2
    run.signal(signal.SIGTERM)
    run.wait_exit()
    again = start_daemon(config)
    again.knock(SERVER_V4, "tcp:7100:s", "udp:8100")  # used before the restart
    again.knock(SERVER_V4, "udp:7200", "udp:7300")
    again.wait_action(f"once open {CLIENT_V4}", count=3)
    again.wait_log(r"once: the one-time list .* is used up")
    assert listing.read_text().splitlines()[1:] == [
        "#7000,8000:udp,9000",
        "#tcp:7100:s udp:8100",
        "#7200:udp,7300:udp",
    ]
    # The line used before the restart was knocked first and opened nothing: the third
    # opening is the last line's.
    assert again.action_lines().count(f"once open {CLIENT_V4}") == 3
    assert "line 3 of" not in again.log_text()
    # Refilled, then SIGHUP: the new line is the sequence.
    with listing.open("a") as stream:
        stream.write("udp:7400 udp:7500\n")
    again.signal(signal.SIGHUP)
    again.wait_log(r"configuration reloaded")
    again.knock(SERVER_V4, "udp:7400", "udp:7500")
    again.wait_action(f"once open {CLIENT_V4}", count=4)


def test_the_client_sends_the_lists_first_line(start_daemon: StartDaemon, tmp_path: Path) -> None:
    listing = tmp_path / "once.list"
    listing.write_text("7000,8000:udp\n")
    run = start_daemon(config_with_sentinel(list_block(listing)))
    run.knock(SERVER_V4, options=("-c", str(run.config), "-e", "once"))
    run.wait_action(f"once open {CLIENT_V4}")
    assert re.search(r"^#7000,8000:udp$", listing.read_text(), re.M)
