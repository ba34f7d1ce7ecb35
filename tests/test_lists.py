"""knockd-style one-time lists: both syntaxes, and lines used durably."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tportknockd.model import PROTO_TCP, PROTO_UDP, SYN, Frame, ListHead
from tportknockd.onetime.lists import ListError, mark_used, parse_line, read_list


def test_both_syntaxes() -> None:
    assert parse_line("7000,8000:udp,9000:tcp") == (
        Frame(PROTO_TCP, 7000, None),
        Frame(PROTO_UDP, 8000, None),
        Frame(PROTO_TCP, 9000, None),
    )
    assert parse_line("  tcp:7000:s, udp:8000  ") == (
        Frame(PROTO_TCP, 7000, SYN),
        Frame(PROTO_UDP, 8000, None),
    )
    assert parse_line("# 7000,8000") is None
    assert parse_line("   ") is None


@pytest.mark.parametrize("line", ["7000:icmp", "70000", "tcp:1:q", "abc", "7000:udp:s"])
def test_bad_lines(line: str) -> None:
    with pytest.raises(ValueError):
        parse_line(line)


def test_mark_used_comments_the_line_out_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "list"
    path.write_text("# header\n7000,8000:udp\n\ntcp:1:s udp:2\n")
    path.chmod(0o640)
    listing = read_list(str(path))
    assert listing.head == ListHead(2, parse_line("7000,8000:udp") or ())
    mark_used(str(path), 2)
    assert path.read_text() == "# header\n#7000,8000:udp\n\ntcp:1:s udp:2\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)  # the admin's mode is kept
    again = read_list(str(path))
    assert again.head is not None and again.head.line == 4 and again.remaining == 1
    mark_used(str(path), 4)
    assert read_list(str(path)).head is None
    assert sorted(os.listdir(tmp_path)) == ["list"]  # no temporary file left


def test_mark_used_refuses_a_line_that_changed(tmp_path: Path) -> None:
    path = tmp_path / "list"
    path.write_text("#7000,8000\n")
    with pytest.raises(ListError, match="no longer holds a sequence"):
        mark_used(str(path), 1)
    assert path.read_text() == "#7000,8000\n"


def test_unreadable_list(tmp_path: Path) -> None:
    with pytest.raises(ListError, match="cannot read"):
        read_list(str(tmp_path / "missing"))
