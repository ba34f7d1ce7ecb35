"""`python -m tportknockd`, as the e2e tests and a source checkout run the daemon: the command
line's exit status comes through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize(("args", "status"), [(["-h"], 0), (["--no-such-option"], 2)])
def test_the_command_lines_exit_status_is_the_programs(args: list[str], status: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-m", "tportknockd", *args], capture_output=True,
                            text=True, env=env, timeout=60)  # fmt: skip
    assert result.returncode == status, result.stderr
    assert "tportknockd" in result.stdout + result.stderr
