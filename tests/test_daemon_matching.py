"""Choosing where knocks are matched: auto falls back and says why, kernel refuses to, python
is python; and the Python matching's answers."""

from __future__ import annotations

import errno

import pytest

from tportknockd.capture.ring import RingGeometry
from tportknockd.daemon import matching
from tportknockd.daemon.matching import EngineError, PythonMatching, choose
from tportknockd.kernel import adapter
from tportknockd.kernel.matcher import CapacityError
from tportknockd.model import PROTO_UDP, Frame


def refuse(error: BaseException) -> object:
    def load(*_args: object) -> adapter.KernelMatching:
        raise error

    return load


def test_python_is_never_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "load", refuse(AssertionError("not loaded")))
    chosen = choose("python", [], 100)
    assert isinstance(chosen, PythonMatching)
    assert chosen.description == "engine: python (as asked)"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.EPERM, "Operation not permitted"), "not allowed to use bpf() (needs"),
        (OSError(errno.EINVAL, "Invalid argument"), "lacks a feature the program needs"),
        (CapacityError("17 sequences share a frame"), "17 sequences share a frame"),
    ],
)
def test_auto_falls_back_and_says_why(
    monkeypatch: pytest.MonkeyPatch, error: BaseException, reason: str
) -> None:
    monkeypatch.setattr(adapter, "load", refuse(error))
    chosen = choose("auto", [], 100)
    assert isinstance(chosen, PythonMatching)
    line = chosen.description
    assert line.startswith("engine: python (the kernel engine cannot run: ") and reason in line


def test_kernel_asked_for_and_impossible_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "load", refuse(OSError(errno.EPERM, "no")))
    with pytest.raises(EngineError, match="not allowed to use bpf"):
        choose("kernel", [], 100)


def test_every_engine_the_command_line_offers_is_chosen_here() -> None:
    assert matching.ENGINES == ("auto", "kernel", "python")


def test_python_matching_filters_in_the_kernel_and_matches_in_python() -> None:
    python = PythonMatching("engine: python")
    frames = [Frame(PROTO_UDP, 7000, None)]
    program = python.program_for({"198.51.100.1"}, False, frames)
    assert isinstance(program, list) and len(program) > 1  # a classic filter
    assert python.program_for(set(), False, frames) == [(0x06, 0, 0, 0)]  # nothing counts
    assert python.ring_for(False) == python.ring_for(True) == RingGeometry()
    assert python.fds() == () and python.summary() == ""
    python.set_sequences([])  # the filters carry the frames: nothing else to change
