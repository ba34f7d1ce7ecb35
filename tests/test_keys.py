"""The config keys of one-time events: every mistake is a FILE:LINE error at its key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tportknockd.config import ConfigError, check_report, load_config, parse_config
from tportknockd.model import PROTO_TCP, PROTO_UDP, SYN, Frame, FrameKind

SECRET = "correct horse battery staple 42"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "ssh.key"
    path.write_text(f"  {SECRET}\n")
    path.chmod(0o600)
    return path


def otp_event(secret: Path | str, *extra: str, name: str = "ssh", timeout: str = "10") -> str:
    lines = [
        f"<{name}>",
        f" otp_secret    = {secret}",
        *extra,
        f" timeout       = {timeout}",
        " start_command = open %IP%",
        f"</{name}>",
    ]
    return "\n".join(lines) + "\n"


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "k.conf")
    return caught.value.messages


def test_defaults(secret: Path) -> None:
    config = parse_config(otp_event(secret), "k.conf")
    event = config.events[0]
    assert event.frames == ()
    assert event.otp is not None
    assert event.otp.key == SECRET.encode()  # white space around it removed
    assert (event.otp.length, event.otp.low, event.otp.high, event.otp.window) == (
        4,
        20000,
        59999,
        30,
    )
    assert event.otp.kinds == (FrameKind(PROTO_TCP, SYN), FrameKind(PROTO_UDP, None))
    assert SECRET not in repr(event)  # the secret never shows in a repr (logs, tracebacks)
    assert config.warnings == ()  # a secret first frame is no ordinary traffic


def test_all_keys(secret: Path) -> None:
    text = otp_event(
        secret,
        " otp_length = 6",
        " otp_ports = 1000-1999",
        " otp_frames = tcp:fu, tcp:n udp",
        " otp_window = 60",
    )
    spec = parse_config(text).events[0].otp
    assert spec is not None
    assert (spec.length, spec.low, spec.high, spec.window) == (6, 1000, 1999, 60)
    assert [k.flags for k in spec.kinds] == [0x21, 0, None]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (" otp_length = 1", "otp_length: '1' is not a number of frames from 2 to 8"),
        (" otp_length = 9", "otp_length: '9' is not a number of frames from 2 to 8"),
        (" otp_length = four", "otp_length: 'four' is not a number of frames from 2 to 8"),
        (" otp_ports = 5000", "otp_ports: '5000' is not a range LOW-HIGH, e.g. 20000-59999"),
        (" otp_ports = 6000-5000", "otp_ports: '6000-5000' must hold at least two ports"),
        (" otp_ports = 0-100", "otp_ports: port 0 is out of range 1..65535"),
        (" otp_frames = tcp:i udp", "otp_frames: tcp:i is not allowed"),
        (" otp_frames = icmp", "otp_frames: bad frame kind 'icmp': unknown protocol"),
        (" otp_frames = udp:s", "otp_frames: bad frame kind 'udp:s': only TCP frames take"),
        (" otp_frames = tcp:s tcp:s", "otp_frames: 'tcp:s' is listed twice"),
        (" otp_frames = tcp:123:s", "otp_frames: bad frame kind 'tcp:123:s'"),
        (" otp_window = 0", "otp_window: 0 is not from 1 to 86400 seconds"),
        (" otp_window = 2.5", "otp_window: '2.5' is not a whole number of seconds"),
    ],
)
def test_bad_values_are_reported_at_their_line(secret: Path, line: str, message: str) -> None:
    (found,) = errors(otp_event(secret, line))
    assert found.startswith(f"k.conf:3: {message}"), found


def test_timeout_longer_than_the_window(secret: Path) -> None:
    (found,) = errors(otp_event(secret, " otp_window = 5", timeout="6"))
    assert found == (
        "k.conf:4: timeout 6 s is longer than otp_window 5 s: an attempt must finish while "
        "its window is accepted"
    )


def test_missing_secret_file(tmp_path: Path) -> None:
    (found,) = errors(otp_event(tmp_path / "nope.key"))
    assert (
        found == f"k.conf:2: otp_secret: cannot read {tmp_path}/nope.key: No such file or directory"
    )


def test_unreadable_secret_file(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any file whatever its mode, so the kernel's refusal is stood in for.
    real_open = os.open

    def refusing_open(path: object, *args: object, **kw: object) -> int:
        if str(path) == str(secret):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refusing_open)
    (found,) = errors(otp_event(secret))
    assert found == f"k.conf:2: otp_secret: cannot read {secret}: Permission denied"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_secret_open_to_group_or_others(secret: Path, mode: int) -> None:
    secret.chmod(mode)
    (found,) = errors(otp_event(secret))
    assert found == (
        f"k.conf:2: otp_secret: {secret} is open to group or others (mode {mode:04o}); it is a "
        f"password: chmod 600 {secret}"
    )


def test_short_secret(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("  fifteen bytes!!  \n")
    short.chmod(0o600)
    (found,) = errors(otp_event(short))
    assert found.startswith(
        f"k.conf:2: otp_secret: {short} holds 15 bytes; a secret needs at least 16"
    )


def test_sequence_and_otp_together(secret: Path) -> None:
    text = otp_event(secret, " sequence = udp:1000 udp:2000")
    (found,) = errors(text)
    assert found == (
        "k.conf:3: sequence cannot be combined with otp_secret (line 2): an event has one "
        "source of sequences"
    )


def test_otp_keys_without_a_secret() -> None:
    text = (
        "<e>\n sequence = udp:1000 udp:2000\n otp_window = 30\n timeout = 5\n"
        " start_command = x\n</e>\n"
    )
    assert errors(text) == ["k.conf:3: otp_window belongs to one-time events with otp_secret"]


def test_check_report_shows_parameters_never_the_secret_nor_sequences(secret: Path) -> None:
    report = check_report(parse_config(otp_event(secret)))
    assert SECRET not in report
    assert "tcp:s udp" in report and "20000-59999" in report and "30 s" in report
    assert "not shown (--show-sequences shows them)" in report
    assert "42623" not in report


def test_check_report_with_show_sequences(secret: Path) -> None:
    report = check_report(parse_config(otp_event(secret)), show_sequences_at=1800000000)
    assert (
        "window 60000000 (from 2027-01-15 08:00:00 UTC): tcp:42623:s tcp:56501:s "
        "tcp:39078:s udp:26834" in report
    )
    assert "window 59999999" in report and "window 60000001" in report
    assert SECRET not in report


# --- one-time lists ----------------------------------------------------------------------


def list_event(path: Path | str) -> str:
    return (
        f"<knockd>\n one_time_sequences = {path}\n timeout = 5\n start_command = open %IP%\n"
        "</knockd>\n"
    )


def test_list_head_is_the_first_usable_line(tmp_path: Path) -> None:
    listing = tmp_path / "list"
    listing.write_text("# used\n#tcp:1:s udp:2\n\n7000,8000:udp,9000\ntcp:1:s udp:3\n")
    event = load_config_text(tmp_path, list_event(listing)).events[0]
    assert event.one_time_list is not None
    head = event.one_time_list.head
    assert head is not None and head.line == 4
    assert head.frames == (
        Frame(PROTO_TCP, 7000, None),
        Frame(PROTO_UDP, 8000, None),
        Frame(PROTO_TCP, 9000, None),
    )
    assert event.one_time_list.remaining == 2


def test_bad_list_lines_are_each_reported(tmp_path: Path) -> None:
    listing = tmp_path / "list"
    listing.write_text("7000,8000:icmp\ntcp:1:s udp:3\nudp:99999\n")
    found = errors(list_event(listing))
    assert found == [
        f"k.conf:2: one_time_sequences: {listing}:1: bad frame '8000:icmp': unknown protocol "
        "'icmp'",
        f"k.conf:2: one_time_sequences: {listing}:3: bad frame 'udp:99999': port 99999 is out of "
        "range 1..65535",
    ]


def test_missing_list(tmp_path: Path) -> None:
    (found,) = errors(list_event(tmp_path / "none"))
    assert found.startswith(f"k.conf:2: one_time_sequences: cannot read {tmp_path}/none")


def test_used_up_list_is_a_warning_and_shows_in_the_report(tmp_path: Path) -> None:
    listing = tmp_path / "list"
    listing.write_text("#tcp:1:s udp:2\n")
    config = load_config_text(tmp_path, list_event(listing))
    assert any("is used up" in w for w in config.warnings)
    assert "none (the list is used up)" in check_report(config)


def test_list_report_hides_the_current_line_unless_asked(tmp_path: Path) -> None:
    listing = tmp_path / "list"
    listing.write_text("tcp:1:s udp:2\n")
    config = load_config_text(tmp_path, list_event(listing))
    assert "tcp:1:s" not in check_report(config)
    assert "line 1: tcp:1:s udp:2" in check_report(config, show_sequences_at=0)


def load_config_text(tmp_path: Path, text: str) -> object:
    path = tmp_path / "k.conf"
    path.write_text(text)
    return load_config(str(path))


def test_a_secret_that_is_no_regular_file_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    (found,) = errors(otp_event(fifo))
    assert found == f"k.conf:2: otp_secret: cannot read {fifo}: not a regular file"
