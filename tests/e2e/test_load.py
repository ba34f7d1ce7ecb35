"""Load: a thousand hosts knock within ten seconds; every door opens once and closes once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import StartDaemon, block, child_env, wait_until

from netns import SERVER_V4, Pair, link_mac

pytestmark = pytest.mark.e2e

KNOCKERS = Path(__file__).resolve().parents[1] / "support" / "knockers.py"
SOURCES = 1000
PORTS = (7201, 7202, 7203)


def spoofed(index: int) -> str:
    return f"198.18.{index >> 8}.{index & 0xFF}"


def test_a_thousand_knockers_each_open_and_close_exactly_once(
    start_daemon: StartDaemon, pair: Pair, tmp_path: Path
) -> None:
    sequence = " ".join(f"udp:{port}" for port in PORTS)
    daemon = start_daemon(block("load", sequence, timeout=10, stop=True, delay=2))
    result = pair.run(
        pair.client,
        [sys.executable, str(KNOCKERS), pair.client_if, link_mac(pair.server, pair.server_if),
         SERVER_V4, str(SOURCES), ",".join(map(str, PORTS)), "6"],
        env=child_env(), capture_output=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    print(result.stdout.strip())
    expected = {spoofed(index) for index in range(SOURCES)}

    def lines(kind: str) -> list[str]:
        return [line.split()[2] for line in daemon.action_lines()
                if line.startswith(f"load {kind} ")]

    if not wait_until(lambda: len(lines("close")) >= SOURCES, 90):
        daemon.fail(f"{len(lines('open'))} opened, {len(lines('close'))} closed of {SOURCES}")
    opened, closed = lines("open"), lines("close")
    assert sorted(opened) == sorted(expected)  # each exactly once: nothing lost, nothing doubled
    assert sorted(closed) == sorted(expected)
    state_file = tmp_path / "doors.json"
    assert wait_until(lambda: json.loads(state_file.read_text())["doors"] == [], 10)
    stats = daemon.statistics()
    print({key: value for key, value in stats.items() if value})
    assert stats["fired"] == SOURCES, stats
