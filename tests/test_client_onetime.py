"""`tportknock -c FILE -e EVENT` for one-time events, and `--print`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tportknockd import client
from tportknockd.config import format_frame, load_config
from tportknockd.onetime import derivation

SECRET = "correct horse battery staple 42"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    secret = tmp_path / "ssh.key"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    listing = tmp_path / "list"
    listing.write_text("#7000,8000\n7100,8100:udp\n")
    static = "udp:1000 tcp:2000:s"
    path = tmp_path / "knock.conf"
    path.write_text(
        f"<ssh>\n otp_secret = {secret}\n timeout = 10\n start_command = x\n</ssh>\n"
        f"<lst>\n one_time_sequences = {listing}\n timeout = 10\n start_command = x\n</lst>\n"
        f"<plain>\n sequence = {static}\n timeout = 10\n start_command = x\n</plain>\n"
    )
    return path


def args(*argv: str) -> object:
    parser = client.build_parser()
    parsed = parser.parse_intermixed_args(argv)
    client._check_usage(parser, parsed)
    return parsed


def test_the_window_of_the_given_time_and_offsets(config_file: Path) -> None:
    parsed = args("-c", str(config_file), "-e", "ssh", "--print")
    frames = client.frames_from_args(parsed, unix_time=1800000000)  # type: ignore[arg-type]
    assert " ".join(map(format_frame, frames)) == "tcp:42623:s tcp:56501:s tcp:39078:s udp:26834"
    ahead = args("-c", str(config_file), "-e", "ssh", "--print", "--window-offset", "1")
    frames = client.frames_from_args(ahead, unix_time=1800000000)  # type: ignore[arg-type]
    assert " ".join(map(format_frame, frames)) == "tcp:23869:s tcp:20919:s udp:56065 udp:37222"


def test_print_needs_no_host_and_prints_the_current_window(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = load_config(str(config_file)).events[0].otp
    assert spec is not None
    before = derivation.derive(spec, "ssh", derivation.window_number(time.time(), 30))
    assert client.main(["-c", str(config_file), "-e", "ssh", "--print"]) == 0
    after = derivation.derive(spec, "ssh", derivation.window_number(time.time(), 30))
    printed = capsys.readouterr().out.strip()
    assert printed in {" ".join(map(format_frame, f)) for f in (before, after)}


def test_a_list_event_sends_its_first_unused_line(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client.main(["-c", str(config_file), "-e", "lst", "--print"]) == 0
    assert capsys.readouterr().out.strip() == "tcp:7100:i udp:8100"


def test_a_static_event_prints_its_sequence(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client.main(["-c", str(config_file), "-e", "plain", "--print"]) == 0
    assert capsys.readouterr().out.strip() == "udp:1000 tcp:2000:s"


def test_window_offset_on_a_static_event_is_a_usage_error(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["-c", str(config_file), "-e", "plain", "--print", "--window-offset", "1"]
    assert client.main(argv) == client.EXIT_USAGE
    assert "--window-offset applies to events with otp_secret" in capsys.readouterr().err


def test_without_print_a_host_is_needed(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["-c", "x.conf", "-e", "ssh"]) == client.EXIT_USAGE
    assert "no HOST given" in capsys.readouterr().err


def test_a_used_up_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listing = tmp_path / "list"
    listing.write_text("#7000\n")
    conf = tmp_path / "k.conf"
    conf.write_text(
        f"<lst>\n one_time_sequences = {listing}\n timeout = 10\n start_command = x\n</lst>\n"
    )
    assert client.main(["-c", str(conf), "-e", "lst", "--print"]) == 1
    assert f"the one-time list {listing} is used up" in capsys.readouterr().err
