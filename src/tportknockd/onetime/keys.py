"""The config keys of one-time events: `otp_*` (time-based) and `one_time_sequences` (a list).

Reading the secret and the list happens here, at load time, so that `-C` and start-up report
every problem at the line of the key that causes it.
"""

from __future__ import annotations

import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tportknockd.frame_syntax import parse_kind, parse_port
from tportknockd.model import PROTO_TCP, FrameKind, OneTimeList, OtpSpec
from tportknockd.onetime import derivation
from tportknockd.onetime.lists import ListError, read_list, read_regular_file

OTP_KEYS = ("otp_secret", "otp_length", "otp_ports", "otp_frames", "otp_window")
LIST_KEY = "one_time_sequences"
DEFAULT_KINDS = "tcp:s udp"
DEFAULT_PORTS = "20000-59999"
DEFAULT_WINDOW = 30
MAX_WINDOW = 86400
MAX_SECRET_BYTES = 4096


@dataclass(frozen=True)
class Setting:
    value: str
    line: int


#: Reports a problem: (line, message).
Report = Callable[[int, str], None]


def parse_otp(settings: Mapping[str, Setting], report: Report) -> OtpSpec | None:
    """The OtpSpec of an event with `otp_secret`, or None after reporting what is wrong."""
    secret_setting = settings["otp_secret"]
    key = read_secret(secret_setting, report)
    length = _length(settings.get("otp_length"), report)
    ports = _ports(settings.get("otp_ports"), report)
    kinds = _kinds(settings.get("otp_frames"), report)
    window = _window(settings.get("otp_window"), report)
    if key is None or length is None or ports is None or kinds is None or window is None:
        return None
    return OtpSpec(secret_setting.value, key, length, ports[0], ports[1], kinds, window)


def read_secret(setting: Setting, report: Report) -> bytes | None:
    """K: the file's content without leading and trailing white space."""
    path = setting.value
    if not path:
        report(setting.line, "otp_secret is empty: expected the path of a secret file")
        return None
    try:
        info, data = read_regular_file(path, MAX_SECRET_BYTES + 1)
    except OSError as exc:
        report(setting.line, f"otp_secret: cannot read {path}: {exc.strerror or exc}")
        return None
    # Windows reports 0666 for every file: its permissions are not in the mode bits.
    if info.st_mode & 0o077 and sys.platform != "win32":
        mode = stat.S_IMODE(info.st_mode)
        report(
            setting.line,
            f"otp_secret: {path} is open to group or others (mode {mode:04o}); it is a "
            f"password: chmod 600 {path}",
        )
        return None
    key = data.strip()
    if len(data) > MAX_SECRET_BYTES:
        report(setting.line, f"otp_secret: {path} is longer than {MAX_SECRET_BYTES} bytes")
        return None
    if len(key) < derivation.MIN_SECRET_BYTES:
        report(
            setting.line,
            f"otp_secret: {path} holds {len(key)} bytes; a secret needs at least "
            f"{derivation.MIN_SECRET_BYTES} (e.g. head -c 32 /dev/urandom | base64 > {path})",
        )
        return None
    return key


def _length(setting: Setting | None, report: Report) -> int | None:
    if setting is None:
        return 4
    text = setting.value
    if (
        not (text.isascii() and text.isdigit())
        or len(text) > 3
        or not derivation.MIN_LENGTH <= int(text) <= derivation.MAX_LENGTH
    ):
        report(
            setting.line,
            f"otp_length: {text!r} is not a number of frames from {derivation.MIN_LENGTH} to "
            f"{derivation.MAX_LENGTH}",
        )
        return None
    return int(text)


def _ports(setting: Setting | None, report: Report) -> tuple[int, int] | None:
    text = setting.value if setting is not None else DEFAULT_PORTS
    low_text, dash, high_text = text.partition("-")
    try:
        if not dash:
            raise ValueError(f"{text!r} is not a range LOW-HIGH, e.g. {DEFAULT_PORTS}")
        low, high = parse_port(low_text.strip()), parse_port(high_text.strip())
        if high - low + 1 < 2:
            raise ValueError(f"{text!r} must hold at least two ports, low first")
    except ValueError as exc:
        assert setting is not None  # the default is a valid range
        report(setting.line, f"otp_ports: {exc}")
        return None
    return low, high


def _kinds(setting: Setting | None, report: Report) -> tuple[FrameKind, ...] | None:
    text = setting.value if setting is not None else DEFAULT_KINDS
    words = text.replace(",", " ").split()
    kinds: list[FrameKind] = []
    for word in words:
        try:
            kind = parse_kind(word)
        except ValueError as exc:
            assert setting is not None  # the default parses
            report(setting.line, f"otp_frames: {exc}")
            return None
        if kind.protocol == PROTO_TCP and kind.flags is None:
            assert setting is not None
            report(
                setting.line,
                "otp_frames: tcp:i is not allowed (a frame that accepts any flags matches "
                "ordinary traffic and weakens the sequence)",
            )
            return None
        if kind in kinds:
            assert setting is not None
            report(setting.line, f"otp_frames: {word!r} is listed twice")
            return None
        kinds.append(kind)
    if not kinds:
        assert setting is not None
        report(setting.line, f"otp_frames is empty: expected frame kinds, e.g. {DEFAULT_KINDS}")
        return None
    return tuple(kinds)


def _window(setting: Setting | None, report: Report) -> int | None:
    if setting is None:
        return DEFAULT_WINDOW
    text = setting.value
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > 5:
        report(setting.line, f"otp_window: {text!r} is not a whole number of seconds")
        return None
    value = int(text)
    if not 1 <= value <= MAX_WINDOW:
        report(setting.line, f"otp_window: {value} is not from 1 to {MAX_WINDOW} seconds")
        return None
    return value


def parse_list(setting: Setting, report: Report) -> OneTimeList | None:
    """The one-time list named by `one_time_sequences`, read now; None after reporting."""
    if not setting.value:
        report(setting.line, f"{LIST_KEY} is empty: expected the path of a list file")
        return None
    try:
        return read_list(setting.value)
    except ListError as exc:
        if not exc.problems:
            report(setting.line, f"{LIST_KEY}: {exc}")
        for number, message in exc.problems:
            report(setting.line, f"{LIST_KEY}: {setting.value}:{number}: {message}")
        return None
