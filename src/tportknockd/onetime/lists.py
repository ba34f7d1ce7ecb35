"""knockd-style lists of one-time sequences: one sequence per line, used from the top.

A line holds a sequence in this config's frame syntax (`tcp:7000:s udp:8000`) or in knockd's
(`7000,8000:udp,9000`: a bare port is TCP with any flags). Blank lines and lines starting with
`#` are skipped. When a line's sequence opens the door, the line is commented out (a `#` put in
front, as knockd does) before start_command runs, so that it can never open it again, even
after a crash: the file is replaced durably (files.replace_durably).
"""

from __future__ import annotations

import errno
import os
import re
import stat

from tportknockd.files import replace_durably
from tportknockd.frame_syntax import parse_frame, parse_port
from tportknockd.model import PROTO_TCP, PROTOCOL_NUMBERS, Frame, ListHead, OneTimeList

MAX_LIST_BYTES = 4 << 20

_SEPARATORS = re.compile(r"[\s,]+")


class ListError(Exception):
    """The list cannot be used: unreadable, too big, or lines that are not sequences.

    `problems` holds (line, message) pairs for bad lines; empty for whole-file problems.
    """

    def __init__(self, message: str, problems: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def parse_list_frame(word: str) -> Frame:
    """One frame of a list line, in either syntax; ValueError says what is wrong."""
    head = word.split(":", 1)[0]
    if head.lower() in PROTOCOL_NUMBERS:
        return parse_frame(word)
    return _parse_knockd_frame(word)


def _parse_knockd_frame(word: str) -> Frame:
    port_text, _, protocol_text = word.partition(":")
    try:
        port = parse_port(port_text)
    except ValueError as exc:
        raise ValueError(f"bad frame {word!r}: {exc}") from None
    if not protocol_text:
        return Frame(PROTO_TCP, port, None)
    protocol = PROTOCOL_NUMBERS.get(protocol_text.lower())
    if protocol is None:
        raise ValueError(f"bad frame {word!r}: unknown protocol {protocol_text!r}")
    return Frame(protocol, port, None)


def parse_line(text: str) -> tuple[Frame, ...] | None:
    """The sequence on a line; None for a blank or comment line; ValueError for a bad one."""
    content = text.strip()
    if not content or content.startswith("#"):
        return None
    return tuple(parse_list_frame(word) for word in _SEPARATORS.split(content) if word)


def read_list(path: str) -> OneTimeList:
    """Read the list; ListError when the file cannot be read or has bad lines."""
    lines = _read_lines(path)
    head: ListHead | None = None
    remaining = 0
    problems: list[tuple[int, str]] = []
    for number, text in enumerate(lines, start=1):
        try:
            frames = parse_line(text)
        except ValueError as exc:
            problems.append((number, str(exc)))
            continue
        if frames is None:
            continue
        remaining += 1
        if head is None:
            head = ListHead(number, frames)
    if problems:
        raise ListError(f"{path}: lines that are not sequences", problems)
    return OneTimeList(path, head, remaining)


#: Not blocking on a FIFO, not inherited; on Windows (the knock client runs there too), which
#: has neither flag, bytes as they are rather than text mode.
_OPEN_FLAGS = (
    getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)


def read_regular_file(path: str, limit: int) -> tuple[os.stat_result, bytes]:
    """At most `limit` bytes of a regular file, and its status.

    Opened without blocking and refused unless regular: a FIFO or a device named by mistake
    must not hang `-C` or the daemon's start-up.
    """
    fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return info, stream.read(limit)


def _read_lines(path: str) -> list[str]:
    try:
        _, data = read_regular_file(path, MAX_LIST_BYTES + 1)
    except OSError as exc:
        raise ListError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_LIST_BYTES:
        raise ListError(f"{path} is larger than {MAX_LIST_BYTES} bytes")
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise ListError(f"{path} is not valid UTF-8 (byte offset {exc.start})") from None


def mark_used(path: str, line: int) -> None:
    """Comment out `line` (1-based) durably; OSError or ListError when that fails.

    The line must still hold a sequence: if someone edited the file meanwhile, nothing is
    written and ListError says so (the caller then re-reads the file).
    """
    lines = _read_lines(path)
    if not 1 <= line <= len(lines) or parse_line(lines[line - 1]) is None:
        raise ListError(f"{path}:{line} no longer holds a sequence")
    lines[line - 1] = "#" + lines[line - 1]
    info = os.stat(path)
    # The list is the admin's file: keep its owner and mode across the rewrite.
    replace_durably(
        path,
        "\n".join(lines).encode("utf-8"),
        mode=info.st_mode & 0o7777,
        owner=(info.st_uid, info.st_gid),
    )
