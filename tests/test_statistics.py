"""The counters and the statistics line (SIGUSR1)."""

from __future__ import annotations

import re

import pytest

from tportknockd.capture.ring import Stats
from tportknockd.capture.statistics import Counters


def test_summary_names_every_counter() -> None:
    c = Counters(packets=3, malformed=1, not_local=2, fired=1, replays=2, ring_resyncs=4,
                 door_failures=8)
    c.add_kernel("knk0", Stats(packets=6, drops=0))
    line = c.summary(attempts=7, open_doors=1, open_resyncs=1)
    assert dict(re.findall(r"(\w+)=(\d+)", line)) == {
        "kernel_packets": "6", "kernel_drops": "0", "packets": "3", "malformed": "1",
        "not_local": "2", "attempts": "7", "open_doors": "1", "fired": "1", "ring_resyncs": "5",
        "replays": "2", "door_failures": "8",
    }


def test_kernel_drops_add_up_and_are_logged_with_the_interface(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = Counters()
    c.add_kernel("knk0", Stats(packets=10, drops=4))
    c.add_kernel("knk2", Stats(packets=5, drops=0))
    c.add_kernel("knk2", Stats(packets=1, drops=3))
    assert (c.kernel_packets, c.kernel_drops) == (16, 7)
    assert [r.getMessage() for r in caplog.records] == [
        "kernel ring dropped 4 packets on knk0 (4 in all)",
        "kernel ring dropped 3 packets on knk2 (7 in all)",
    ]
