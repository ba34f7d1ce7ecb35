"""The daemon's command line, where it needs no root: help, usage errors, -C."""

from __future__ import annotations

from pathlib import Path

import pytest

from tportknockd.capture import netif
from tportknockd.cli import main

GOOD = """\
<ssh>
 sequence      = udp:1234 tcp:543 tcp:543:i tcp:123:frap tcp:434:x tcp:2345:n
 timeout       = 10
 start_command = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
 stop_command  = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
 command_delay = 30
</ssh>
"""


def test_help_lists_every_classic_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    for option in ("-c CONFIG", "-C CONFIG", "-i DEVICE", "-r SEC", "-l", "-d", "-D", "-h"):
        assert f"  {option}" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "-c CONFIG is required"),
        (["-c", "x.conf"], "-i DEVICE is required"),
        (["-c", "x.conf", "-i", "eth0", "-r", "soon"], "not a number"),
        (["-c", "x.conf", "-i", "eth0", "-r", "0"], "must be a positive number"),
        (["--max-attempts", "0", "-c", "x", "-i", "y"], "must be at least 1"),
        (["--command-timeout", "1e300", "-c", "x", "-i", "y"], "at most 86400 seconds"),
        (["-x"], "unrecognized arguments: -x"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tportknockd: ") and message in err
    assert err.count("\n") == 1


def test_check_good_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.conf"
    path.write_text(GOOD)
    assert main(["-C", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tcp/123 FIN+RST+PSH+ACK" in out and "1 event OK" in out


def test_check_bad_config_lists_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.conf"
    path.write_text(GOOD.replace("tcp:543:i", "tcp:543:q").replace("timeout ", "timeuot "))
    assert main(["-C", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: " in err and f"{path}:3: " in err
    assert "Traceback" not in err


def test_run_with_bad_config_exits_1_before_capturing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.conf"
    path.write_text("<a>\n")
    assert main(["-c", str(path), "-i", "lo"]) == 1
    assert f"{path}:1: " in capsys.readouterr().err


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-C", "/nonexistent/k.conf"]) == 1
    assert "/nonexistent/k.conf: cannot read" in capsys.readouterr().err


def test_check_warns_about_a_config_others_can_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.conf"
    path.write_text(GOOD)
    path.chmod(0o666)
    assert main(["-C", str(path)]) == 0
    assert "writable by group or others" in capsys.readouterr().err
    path.chmod(0o600)
    assert main(["-C", str(path)]) == 0
    assert "writable" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "interfaces, message",
    [
        (["-i", "any,eth0"], "-i any already means every interface: name no others with it"),
        (["-i", "eth0", "-i", "any"], "-i any already means every interface"),
        (["-i", "eth0,,wg0"], "an empty interface name"),
    ],
)
def test_interface_mistakes_are_usage_errors(
    interfaces: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-c", "x.conf", *interfaces]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tportknockd: ") and message in err
    assert err.count("\n") == 1


def test_list_says_what_any_listens_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    links = [
        netif.Interface("lo", 1, True, "unknown", ["127.0.0.1"], loopback=True),
        netif.Interface("eth0", 2, True, "up", ["198.51.100.1"]),
        netif.Interface("wg0", 3, True, "unknown", ["203.0.113.1"]),
        netif.Interface("eth1", 4, False, "down"),
    ]
    monkeypatch.setattr("tportknockd.cli.netif.list_interfaces", lambda: links)
    assert main(["-l"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["eth0", "UP", "up", "198.51.100.1"]
    assert lines[-1] == (
        "-i any listens on: eth0 wg0; once up: eth1; and on interfaces added later (never lo)"
    )
