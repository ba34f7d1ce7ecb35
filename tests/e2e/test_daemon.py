"""The daemon and the client end to end: real packets on a veth pair between two namespaces."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import (
    FLAGS_SEQUENCE,
    SSH_SEQUENCE,
    VPN_SEQUENCE,
    StartDaemon,
    block,
    child_env,
    config_with_sentinel,
    daemon_argv,
    process_alive,
    wait_until,
)

from netns import (
    CLIENT_V4,
    CLIENT_V6,
    SERVER_V4,
    SERVER_V6,
    Pair,
    ip,
    link_mac,
    relink,
    send_raw_tcp,
)
from tportknockd.model import ECE, PSH, URG

pytestmark = pytest.mark.e2e


# --- the seed's examples fire -------------------------------------------------------------


@pytest.mark.parametrize(
    "name, sequence",
    [("ssh", SSH_SEQUENCE), ("openvpn", VPN_SEQUENCE), ("flags", FLAGS_SEQUENCE)],
    ids=["ssh", "openvpn", "flag-knocking"],
)
def test_seed_examples_fire(start_daemon: StartDaemon, name: str, sequence: str) -> None:
    daemon = start_daemon(block(name, sequence))
    daemon.knock(SERVER_V4, *sequence.split())
    daemon.wait_action(f"{name} open {CLIENT_V4}")
    daemon.wait_log(rf"{name}: knock from {re.escape(CLIENT_V4)} accepted: opening")


def test_ipv6_knock_fires_with_ipv6_address(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(block("ssh", SSH_SEQUENCE))
    daemon.knock(SERVER_V6, *SSH_SEQUENCE.split(), options=("-6",))
    daemon.wait_action(f"ssh open {CLIENT_V6}")


def test_retransmitted_frames_still_fire(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(block("ssh", SSH_SEQUENCE))
    # The first frame and a middle frame each arrive twice, as after a retransmission.
    daemon.knock(SERVER_V4, "udp:1234", "udp:1234", "tcp:543", "tcp:543:i", "tcp:123:frap",
                 "tcp:123:frap", "tcp:434:x", "tcp:2345:n")
    daemon.wait_action(f"ssh open {CLIENT_V4}")


# --- knocks that must not fire ------------------------------------------------------------


def test_wrong_order_does_not_fire(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config_with_sentinel(block("ssh", SSH_SEQUENCE)))
    frames = SSH_SEQUENCE.split()
    frames[3], frames[4] = frames[4], frames[3]
    daemon.knock(SERVER_V4, *frames)
    daemon.sentinel()
    daemon.assert_not_fired("ssh")
    # The same door opens for the right order: the refusal was about the order alone.
    daemon.knock(SERVER_V4, *SSH_SEQUENCE.split())
    daemon.wait_action(f"ssh open {CLIENT_V4}")


def test_extra_ece_flag_does_not_match(start_daemon: StartDaemon, pair: Pair) -> None:
    """URG+PSH+ECE at a `tcp:110:up` door: all eight flag bits count (knockd lets it in)."""
    daemon = start_daemon(config_with_sentinel(block("flags", FLAGS_SEQUENCE)))
    daemon.knock(SERVER_V4, "tcp:110:x")
    # The client can only spell the six classic flags; ECE needs a hand-made segment.
    send_raw_tcp(pair, pair.client, CLIENT_V4, SERVER_V4, 110, URG | PSH | ECE)
    daemon.knock(SERVER_V4, "tcp:110:up", "tcp:110:n", "tcp:110:i")
    daemon.sentinel()
    daemon.assert_not_fired("flags")


def test_syn_instead_of_no_flags_does_not_match(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config_with_sentinel(block("flags", FLAGS_SEQUENCE)))
    daemon.knock(SERVER_V4, "tcp:110:x", "tcp:110:up", "tcp:110:up", "tcp:110:s", "tcp:110:i")
    daemon.sentinel()
    daemon.assert_not_fired("flags")


def test_too_slow_does_not_fire(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config_with_sentinel(block("quick", "udp:5001 udp:5002", timeout=1)))
    daemon.knock(SERVER_V4, "udp:5001", "udp:5002", options=("-d", "1500"))
    daemon.sentinel()
    daemon.assert_not_fired("quick")
    daemon.knock(SERVER_V4, "udp:5001", "udp:5002")
    daemon.wait_action(f"quick open {CLIENT_V4}")


def test_knock_to_a_foreign_address_is_not_counted(
    start_daemon: StartDaemon, pair: Pair
) -> None:
    """Frames for an address the interface does not have reach the interface (a static
    neighbour entry sends them there) but must not count."""
    foreign = "198.51.100.7"
    server_mac = link_mac(pair.server, pair.server_if)
    ip("-n", pair.client, "neigh", "replace", foreign, "lladdr", server_mac,
       "dev", pair.client_if, "nud", "permanent")
    daemon = start_daemon(config_with_sentinel(block("ssh", SSH_SEQUENCE)))
    daemon.knock(foreign, *SSH_SEQUENCE.split())
    daemon.sentinel()
    daemon.assert_not_fired("ssh")


def test_outgoing_packets_are_not_counted(start_daemon: StartDaemon, pair: Pair) -> None:
    daemon = start_daemon(config_with_sentinel(block("flags", FLAGS_SEQUENCE)))
    # The server knocks at the client: outgoing packets on the watched interface.
    daemon.knock(CLIENT_V4, *FLAGS_SEQUENCE.split(), ns=pair.server)
    # Harder: outgoing frames written onto the link by hand, addressed to the server's own
    # address, so only their direction tells them apart from a real knock.
    client_mac = link_mac(pair.client, pair.client_if)
    for flags in (0x3F, URG | PSH, URG | PSH, 0, 0x02):
        send_raw_tcp(pair, pair.server, "198.18.0.5", SERVER_V4, 110, flags,
                     out_if=pair.server_if, dst_mac=client_mac)
    daemon.sentinel()
    daemon.assert_not_fired("flags")


# --- doors: start, stop, re-knock ----------------------------------------------------------


def test_stop_command_runs_after_command_delay(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(block("ssh", SSH_SEQUENCE, stop=True, delay=1))
    daemon.knock(SERVER_V4, *SSH_SEQUENCE.split())
    daemon.wait_action(f"ssh open {CLIENT_V4}")
    opened = time.monotonic()
    daemon.wait_action(f"ssh close {CLIENT_V4}")
    # 0.1 s of slack for the poll interval of the test, not of the daemon.
    assert time.monotonic() - opened >= 0.9
    daemon.wait_log(rf"ssh: closing for {re.escape(CLIENT_V4)}")


def test_reknock_while_open_does_not_start_twice(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(block("ssh", SSH_SEQUENCE, stop=True, delay=1.5))
    daemon.knock(SERVER_V4, *SSH_SEQUENCE.split())
    daemon.wait_action(f"ssh open {CLIENT_V4}")
    # A gap, so that a stop that was not pushed back would come clearly too early.
    time.sleep(0.5)
    reknocked = time.monotonic()
    daemon.knock(SERVER_V4, *SSH_SEQUENCE.split())
    daemon.wait_log(rf"ssh: knock from {re.escape(CLIENT_V4)} while open: stop pushed back")
    daemon.wait_action(f"ssh close {CLIENT_V4}")
    assert time.monotonic() - reknocked >= 1.4, "the stop was not pushed back"
    assert daemon.action_lines() == [f"ssh open {CLIENT_V4}", f"ssh close {CLIENT_V4}"]


def test_sigterm_runs_pending_stop_commands(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(block("ssh", SSH_SEQUENCE, stop=True, delay=300))
    daemon.knock(SERVER_V4, *SSH_SEQUENCE.split())
    daemon.wait_action(f"ssh open {CLIENT_V4}")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert daemon.action_lines() == [f"ssh open {CLIENT_V4}", f"ssh close {CLIENT_V4}"]
    assert "stopped" in daemon.log_text()
    assert "Traceback" not in daemon.log_text()


# --- daemon mode, address changes, reload ----------------------------------------------------


def test_daemon_mode_detaches_and_stops_by_pid_file(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    pid_file, log_file = tmp_path / "knockd.pid", tmp_path / "knockd.log"
    daemon = start_daemon(block("ssh", SSH_SEQUENCE), "-D", "--pid-file", str(pid_file),
                          "--log-file", str(log_file), wait_ready=False)
    # The parent returns once the pid file is written; the daemon lives on without it.
    assert daemon.wait_exit() == 0
    pid = int(pid_file.read_text().strip())
    daemon.pid = pid
    daemon.extra_pids.append(pid)  # teardown ends it even if the test fails from here on
    assert process_alive(pid)
    daemon.log = log_file
    daemon.wait_log(r"ready: ")
    daemon.knock(SERVER_V4, *SSH_SEQUENCE.split())
    daemon.wait_action(f"ssh open {CLIENT_V4}")
    # A second daemon with the same pid file refuses to start: commands would run twice.
    second = daemon.pair.run(
        daemon.pair.server,
        daemon_argv("-c", str(daemon.config), "-i", daemon.pair.server_if, "-D",
                    "--pid-file", str(pid_file), "--state-file", "none"),
        env=child_env(), capture_output=True, timeout=30,
    )
    assert second.returncode == 1 and f"already running as pid {pid}" in second.stderr
    daemon.signal(signal.SIGTERM)
    assert wait_until(lambda: not process_alive(pid)), "daemon did not end on SIGTERM"
    daemon.wait_log(r"stopped")
    assert not pid_file.exists(), "pid file left behind"


def test_refresh_follows_a_moved_address(start_daemon: StartDaemon, pair: Pair) -> None:
    moved = "198.51.100.3"
    daemon = start_daemon(block("ssh", SSH_SEQUENCE), "-r", "1")
    # Delete first, then add: deleting a primary address would take a secondary with it.
    ip("-n", pair.server, "addr", "del", f"{SERVER_V4}/24", "dev", pair.server_if)
    ip("-n", pair.server, "addr", "add", f"{moved}/24", "dev", pair.server_if)
    daemon.wait_log(rf"addresses of {pair.server_if} changed:.*{re.escape(moved)}")
    daemon.knock(moved, *SSH_SEQUENCE.split())
    daemon.wait_action(f"ssh open {CLIENT_V4}")


def test_address_change_is_followed_at_once_without_r(
    start_daemon: StartDaemon, pair: Pair
) -> None:
    daemon = start_daemon(block("ssh", SSH_SEQUENCE))
    ip("-n", pair.server, "addr", "add", "203.0.113.1/24", "dev", pair.server_if)
    ip("-n", pair.client, "addr", "add", "203.0.113.2/24", "dev", pair.client_if)
    # Netlink tells at once (no -r: no periodic refresh); 5 s only for a loaded machine.
    daemon.wait_log(rf"addresses of {pair.server_if} changed:.*203\.0\.113\.1", timeout=5)
    daemon.knock("203.0.113.1", *SSH_SEQUENCE.split())
    daemon.wait_action("ssh open 203.0.113.2")


def test_sighup_with_broken_config_keeps_the_old_one(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(block("ssh", SSH_SEQUENCE))
    daemon.config.write_text("<ssh>\n sequence = tcp:99999\n</ssh>\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reload rejected")
    daemon.knock(SERVER_V4, *SSH_SEQUENCE.split())
    daemon.wait_action(f"ssh open {CLIENT_V4}")
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_sighup_with_good_config_switches_sequences(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(block("ssh", SSH_SEQUENCE))
    daemon.config.write_text(
        block("vpn", VPN_SEQUENCE).replace("{out}", str(daemon.actions))
    )
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"configuration reloaded")
    daemon.knock(SERVER_V4, *VPN_SEQUENCE.split())
    daemon.wait_action(f"vpn open {CLIENT_V4}")
    daemon.knock(SERVER_V4, *SSH_SEQUENCE.split())
    # The vpn door fired after the reload; an ssh knock now must not.
    daemon.knock(SERVER_V4, *VPN_SEQUENCE.split())
    daemon.wait_log(r"vpn: knock from .* (accepted|while open)", count=2)
    daemon.assert_not_fired("ssh")


# --- the interface comes and goes ---------------------------------------------------------


def test_interface_deleted_and_recreated(start_daemon: StartDaemon, pair: Pair) -> None:
    daemon = start_daemon(block("ssh", SSH_SEQUENCE))
    ip("-n", pair.server, "link", "del", pair.server_if)
    daemon.wait_log(rf"interface {pair.server_if} is gone")
    relink(pair)
    # The new interface has a new index: the daemon must open a new capture on it.
    daemon.wait_log(rf"listening on {pair.server_if} ", count=2)
    daemon.knock(SERVER_V4, *SSH_SEQUENCE.split())
    daemon.wait_action(f"ssh open {CLIENT_V4}")


def test_interface_down_and_up_again(start_daemon: StartDaemon, pair: Pair) -> None:
    daemon = start_daemon(block("ssh", SSH_SEQUENCE))
    ip("-n", pair.server, "link", "set", pair.server_if, "down")
    daemon.wait_log(rf"interface {pair.server_if} is down")
    ip("-n", pair.server, "link", "set", pair.server_if, "up")
    daemon.wait_log(rf"interface {pair.server_if} is up again")
    daemon.knock(SERVER_V4, *SSH_SEQUENCE.split())
    daemon.wait_action(f"ssh open {CLIENT_V4}")
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_daemon_mode_with_relative_paths(pair: Pair, tmp_path: Path) -> None:
    config = tmp_path / "knock.conf"
    config.write_text(block("ssh", SSH_SEQUENCE).replace("{out}", str(tmp_path / "actions")))
    result = pair.run(pair.server, daemon_argv("-c", "knock.conf", "-i", pair.server_if, "-D",
                                               "--pid-file", "knockd.pid",
                                               "--log-file", "knockd.log"),
                      cwd=tmp_path, env=child_env(), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    pid_file = tmp_path / "knockd.pid"
    if not pid_file.exists():
        _end_stray_daemon(Path("/knockd.pid"), Path("/knockd.log"))
        pytest.fail("pid file not written where -D --pid-file said (relative to the cwd)")
    pid = int(pid_file.read_text())
    try:
        log = tmp_path / "knockd.log"
        assert wait_until(lambda: "ready:" in log.read_text()), "log not where --log-file said"
        os.kill(pid, signal.SIGHUP)
        assert wait_until(lambda: "configuration reloaded" in log.read_text()), log.read_text()
    finally:
        _kill_daemon_by_pid(pid)


def _kill_daemon_by_pid(pid: int) -> None:
    if process_alive(pid):
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not process_alive(pid), 5):
            os.kill(pid, signal.SIGKILL)


def _end_stray_daemon(pid_file: Path, log_file: Path) -> None:
    """The buggy daemon wrote its files relative to /: end it and remove what it left."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        _kill_daemon_by_pid(int(pid_file.read_text()))
    wait_until(lambda: not pid_file.exists(), 5)
    for path in (pid_file, log_file):
        path.unlink(missing_ok=True)
