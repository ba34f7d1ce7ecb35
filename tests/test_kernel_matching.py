"""Choosing the engine: auto falls back and says why, kernel refuses to, python is python."""

from __future__ import annotations

import errno

import pytest

from tportknockd.kernel import adapter
from tportknockd.kernel.matcher import CapacityError


def refuse(error: BaseException) -> object:
    def load(*_args: object) -> adapter.KernelMatching:
        raise error

    return load


def test_python_is_never_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "_load", refuse(AssertionError("not loaded")))
    assert adapter.choose("python", [], 100) == (None, "engine: python (as asked)")


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
    monkeypatch.setattr(adapter, "_load", refuse(error))
    matching, line = adapter.choose("auto", [], 100)
    assert matching is None
    assert line.startswith("engine: python (the kernel engine cannot run: ") and reason in line


def test_kernel_asked_for_and_impossible_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "_load", refuse(OSError(errno.EPERM, "no")))
    with pytest.raises(adapter.KernelEngineError, match="not allowed to use bpf"):
        adapter.choose("kernel", [], 100)
