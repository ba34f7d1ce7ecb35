"""Tests that need root: skipped on a developer's machine without it, failed in CI, which
runs as root (a skipped test there would be one that silently did not run)."""

from __future__ import annotations

import os

import pytest

#: What the tests need root for, as require_root says it.
BPF = "the bpf system call"
NAMESPACES = "network namespaces and raw sockets"


def require_root(why: str) -> None:
    if os.geteuid() == 0:
        return
    message = f"needs root: {why}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
