"""The daemon's command line, where it needs no root: help, usage errors, -C."""

from __future__ import annotations

from pathlib import Path

import pytest

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
