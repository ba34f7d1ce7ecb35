"""The command runner: %IP% expansion, background execution, logging, limits."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tportknockd.daemon import commands
from tportknockd.daemon.commands import CommandRunner, expand


def test_expand_ipv4_and_ipv6() -> None:
    assert (
        expand("iptables -s %IP% -j ACCEPT", "198.51.100.7") == "iptables -s 198.51.100.7 -j ACCEPT"
    )
    assert expand("a %IP% b %IP%", "2001:db8:0:0::7") == "a 2001:db8::7 b 2001:db8::7"
    assert expand("no placeholder", "198.51.100.7") == "no placeholder"


@pytest.mark.parametrize(
    "hostile",
    [
        "198.51.100.7; rm -rf /",
        "$(reboot)",
        "`id`",
        "198.51.100.7 && true",
        "",
        "fe80::1%eth0;x",
        "::ffff:1.2.3.4'",
        "198.51.100.7\n",
        "../../etc",
    ],
)
def test_expand_rejects_anything_but_an_address(hostile: str) -> None:
    with pytest.raises(ValueError):
        expand("echo %IP%", hostile)


@given(st.text())
def test_expand_only_ever_inserts_address_characters(text: str) -> None:
    try:
        line = expand("<%IP%>", text)
    except ValueError:
        return
    inserted = line[1:-1]
    assert set(inserted) <= set("0123456789abcdef.:")


def test_runner_runs_with_minimal_environment_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    runner = CommandRunner()
    caplog.set_level(logging.INFO, logger="tportknockd")
    runner.run(
        "ev 198.51.100.7 start",
        f"echo %IP% $HOME >{out}; env | sort >>{out}; echo hi",
        "198.51.100.7",
    )
    assert runner.wait(10)
    lines = out.read_text().splitlines()
    assert lines[0].strip() == "198.51.100.7"
    names = {line.split("=", 1)[0] for line in lines[1:]}
    assert names <= {"PATH", "LANG", "PWD", "SHLVL", "_"}
    assert "exit status 0" in caplog.text and "output: hi" in caplog.text


def test_runner_logs_failures(caplog: pytest.LogCaptureFixture) -> None:
    runner = CommandRunner()
    caplog.set_level(logging.INFO, logger="tportknockd")
    runner.run("ev x start", "echo oops >&2; exit 3", "198.51.100.7")
    assert runner.wait(10)
    assert "exit status 3" in caplog.text and "oops" in caplog.text


def test_runner_kills_commands_over_the_time_limit(caplog: pytest.LogCaptureFixture) -> None:
    runner = CommandRunner(time_limit=0.3)
    started = time.monotonic()
    runner.run("ev x start", "sleep 30 & sleep 30", "198.51.100.7")
    assert runner.wait(10)
    assert time.monotonic() - started < 5
    assert "killed after" in caplog.text


def test_runner_does_not_block_the_caller_and_bounds_concurrency(tmp_path: Path) -> None:
    runner = CommandRunner(max_running=2)
    started = time.monotonic()
    for i in range(4):
        runner.run(f"c{i}", f"sleep 1; echo {i} >> {tmp_path / 'log'}", "198.51.100.7")
    assert time.monotonic() - started < 0.9  # run() returned before any command could end
    assert runner.running() == 4
    assert runner.wait(10)
    elapsed = time.monotonic() - started
    assert elapsed >= 1.95  # two at a time: two rounds of 1 s
    assert sorted((tmp_path / "log").read_text().split()) == ["0", "1", "2", "3"]


def test_stop_never_overtakes_its_start(tmp_path: Path) -> None:
    log = tmp_path / "log"
    runner = CommandRunner(max_running=2)  # room for both: only the key keeps them in order
    door = ("ssh", "198.51.100.7")
    runner.run("start", f"sleep 0.2; echo start >> {log}", "198.51.100.7", key=door)
    runner.run("stop", f"echo stop >> {log}", "198.51.100.7", key=door)
    assert runner.wait(10)
    assert log.read_text().split() == ["start", "stop"]


def test_a_program_left_running_in_the_background_does_not_hold_the_runner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = CommandRunner(time_limit=20)
    caplog.set_level(logging.INFO, logger="tportknockd")
    started = time.monotonic()
    runner.run("vpn", "sleep 6 & echo started", "198.51.100.7")
    assert runner.wait(10)
    assert time.monotonic() - started < 4  # not held for the 6 s of the background program
    assert "exit status 0" in caplog.text and "output: started" in caplog.text


def test_output_is_bounded_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    runner = CommandRunner()
    caplog.set_level(logging.INFO, logger="tportknockd")
    runner.run("loud", "yes x | head -c 3000000", "198.51.100.7")
    assert runner.wait(10)
    line = next(r.getMessage() for r in caplog.records if "exit status" in r.getMessage())
    assert "output: x\nx\nx" in line and len(line) < 2200  # 3 MB printed, 2,000 kept


@pytest.mark.parametrize("tmpdir", ["", "/nonexistent/tportknockd-test"])
def test_output_goes_to_an_unnamed_file(
    tmpdir: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # With no usable $TMPDIR, tempfile's own fall-backs find a directory.
    monkeypatch.setenv("TMPDIR", tmpdir)
    with commands._output_file() as output:
        assert os.fstat(output.fileno()).st_nlink == 0  # nothing left behind, even on a crash
        output.write(b"kept")
        output.seek(0)
        assert output.read() == b"kept"
    runner = CommandRunner()
    caplog.set_level(logging.INFO, logger="tportknockd")
    runner.run("ev x start", "echo from-the-command", "198.51.100.7")
    assert runner.wait(10)
    assert "output: from-the-command" in caplog.text
