"""Replacing a file durably: the old content or the new, with the mode and owner asked for,
and no temporary file left behind either way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from privileges import require_root
from tportknockd.files import TEMPORARY_SUFFIX, replace_durably


def test_a_new_file_is_private_to_us(tmp_path: Path) -> None:
    path = tmp_path / "doors.json"
    replace_durably(str(path), b"{}")
    assert path.read_bytes() == b"{}"
    assert path.stat().st_mode & 0o7777 == 0o600
    assert os.listdir(tmp_path) == ["doors.json"]


def test_an_old_file_is_replaced_with_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "list"
    path.write_bytes(b"tcp:1 udp:2\n")
    replace_durably(str(path), b"#tcp:1 udp:2\n", mode=0o640)
    assert path.read_bytes() == b"#tcp:1 udp:2\n"
    assert path.stat().st_mode & 0o7777 == 0o640
    assert os.listdir(tmp_path) == ["list"]


def test_the_owner_asked_for(tmp_path: Path) -> None:
    require_root("changing a file's owner")
    path = tmp_path / "list"
    replace_durably(str(path), b"data", owner=(65534, 65534))
    assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534)


def test_a_failed_replace_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir()  # a file cannot be renamed over a directory
    (path / "inside").write_text("kept")
    with pytest.raises(OSError):
        replace_durably(str(path), b"new")
    assert (path / "inside").read_text() == "kept"
    assert not (tmp_path / ("state" + TEMPORARY_SUFFIX)).exists()
