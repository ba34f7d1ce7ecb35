"""The open-doors state file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tportknockd.daemon import state
from tportknockd.daemon.state import SavedDoor
from tportknockd.files import TEMPORARY_SUFFIX


def test_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "doors.json")
    doors = [
        SavedDoor("ssh", "198.51.100.7", 1_800_000_000.5, "close %IP%", 30.0),
        SavedDoor("ssh", "2001:db8::7", 1_800_000_001.0, "close %IP%", 30.0),
    ]
    state.save(path, doors)
    assert state.load_all(path)[0] == doors
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert not os.path.exists(path + TEMPORARY_SUFFIX)
    state.save(path, [])
    assert state.load_all(path)[0] == []


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert state.load_all(str(tmp_path / "none.json"))[0] == []


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"\xff\xfe",
        b"[]",
        b'{"version": 2, "doors": []}',
        b'{"version": 1}',
        b'{"version": 1, "doors": [{"event": 1}]}',
        b'{"version": 1, "doors": [{"event": "e", "address": "a", "due": "x", '
        b'"stop_command": "c", "delay": 1}]}',
    ],
)
def test_bad_file_is_reported_and_set_aside(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "doors.json"
    path.write_bytes(content)
    with pytest.raises(state.StateError):
        state.load_all(str(path))
    aside = state.set_aside(str(path))
    assert not path.exists()
    assert Path(aside).read_bytes() == content


@settings(max_examples=200)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_content_loads_or_raises_state_error(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    path = tmp_path_factory.mktemp("s") / "doors.json"
    path.write_bytes(content)
    try:
        state.load_all(str(path))
    except state.StateError:
        pass


def test_a_state_file_others_could_write_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "doors.json"
    state.save(str(path), [SavedDoor("ssh", "198.51.100.7", 1.0, "close %IP%", 30.0)])
    path.chmod(0o666)  # its stop commands would run as root: nobody else may write them
    with pytest.raises(state.StateError, match="writable by group or others"):
        state.load_all(str(path))


def test_a_state_file_owned_by_someone_else_is_not_trusted(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    path = tmp_path / "doors.json"
    state.save(str(path), [])
    os.chown(path, 65534, 65534)
    with pytest.raises(state.StateError, match="owned by uid 65534"):
        state.load_all(str(path))


def test_burns_round_trip_and_old_files_have_none(tmp_path: Path) -> None:
    path = str(tmp_path / "doors.json")
    door = SavedDoor("ssh", "198.51.100.7", 1_800_000_000.5, "close %IP%", 30.0)
    burns = [state.SavedBurn("ssh", "198.51.100.7", 60000000, "tcp:42623:s udp:26834")]
    state.save(path, [door], burns)
    assert state.load_all(path) == ([door], burns)
    Path(path).write_text('{"version": 1, "doors": []}')
    assert state.load_all(path) == ([], [])


@pytest.mark.parametrize(
    "burns",
    ['"x"', '[{"event": "e"}]', '[{"event": "e", "address": "a", "window": 1.5, "frames": "f"}]'],
)
def test_bad_burns_are_a_bad_file(tmp_path: Path, burns: str) -> None:
    path = tmp_path / "doors.json"
    path.write_text(f'{{"version": 1, "doors": [], "burns": {burns}}}')
    path.chmod(0o600)
    with pytest.raises(state.StateError):
        state.load_all(str(path))
