"""The daemon's door kind for its nftables table, with the table and the watcher stood in
for (the real table is tested in test_firewall_netns.py and the e2e tests)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tportknockd.capture.statistics import Counters
from tportknockd.config import parse_config
from tportknockd.daemon.firewall_doors import FirewallDoors, door_specs
from tportknockd.firewall.libnftables import FirewallError
from tportknockd.firewall.ruleset import DoorSpec, Opening
from tportknockd.matching.outcomes import DoorExtended, RunStart
from tportknockd.model import PROTO_TCP, DoorPort

CONFIG = parse_config(
    "<ssh>\n sequence = udp:1 udp:2\n timeout = 5\n door = tcp:22\n door_prefix = 24 64\n"
    "</ssh>\n<cmd>\n sequence = udp:3 udp:4\n timeout = 5\n start_command = true\n</cmd>\n"
)
A, B = "198.51.100.7", "2001:db8::7"


class FakeTable:
    def __init__(self) -> None:
        self.installed: list[list[DoorSpec]] = []
        self.opened: list[list[Opening]] = []
        self.here = True
        self.refuse = False

    def install(self, specs: Sequence[DoorSpec]) -> None:
        self.installed.append(list(specs))
        self.here = True

    def open(self, openings: Sequence[Opening]) -> None:
        if self.refuse:
            raise FirewallError("cannot open the doors: Cannot allocate memory")
        self.opened.append(list(openings))

    def present(self) -> bool:
        return self.here

    def open_doors(self) -> list[object]:
        return [object() for batch in self.opened for _ in batch]

    def close(self) -> None:
        pass


class FakeWatcher:
    def __init__(self) -> None:
        self.news = False

    def drain(self) -> bool:
        news, self.news = self.news, False
        return news

    def fileno(self) -> int:
        return 99

    def close(self) -> None:
        pass


def doors() -> tuple[FirewallDoors, FakeTable, FakeWatcher, Counters]:
    table, watcher, counters = FakeTable(), FakeWatcher(), Counters()
    kind = FirewallDoors(CONFIG, counters, table, watcher)  # type: ignore[arg-type]
    return kind, table, watcher, counters


SSH = DoorSpec("ssh", (DoorPort(PROTO_TCP, 22, 22),), 30.0, 24, 64)


def test_only_events_with_a_door_go_in_the_table() -> None:
    assert door_specs(CONFIG) == [SSH]
    _, table, _, _ = doors()
    assert table.installed == [[SSH]]


def test_a_batch_of_knocks_is_one_transaction(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    kind, table, _, _ = doors()
    kind.opened([RunStart("ssh", A, None), RunStart("cmd", A, "true"),
                 DoorExtended("ssh", B, 12.0)], "knk0")  # fmt: skip
    assert table.opened == [[(SSH, A), (SSH, B)]]
    assert f"door ssh opened for {A} (tcp:22) for 30 s via knk0" in caplog.text


def test_a_refused_add_is_logged_counted_and_the_next_knock_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kind, table, _, counters = doors()
    table.refuse = True
    kind.opened([RunStart("ssh", A, None), RunStart("ssh", B, None)], None)
    assert counters.door_failures == 2
    assert f"doors not opened for {A}, {B}: cannot open the doors: Cannot allocate" in caplog.text
    table.refuse = False
    kind.opened([RunStart("ssh", A, None)], None)
    assert table.opened == [[(SSH, A)]]


def test_a_removed_table_is_put_back(caplog: pytest.LogCaptureFixture) -> None:
    kind, table, watcher, _ = doors()
    kind.on_ruleset_change()  # nothing happened
    assert len(table.installed) == 1
    watcher.news, table.here = True, True  # someone else's change; ours is still there
    kind.on_ruleset_change()
    assert len(table.installed) == 1
    watcher.news, table.here = True, False
    kind.on_ruleset_change()
    assert table.installed == [[SSH], [SSH]]
    assert "the nftables table tportknockd was removed: putting it back" in caplog.text


def test_a_reload_replaces_the_specs() -> None:
    kind, table, _, _ = doors()
    kind.follow(parse_config("<ssh>\n sequence = udp:1\n timeout = 5\n door = udp:5-9\n</ssh>\n"))
    [new] = table.installed[-1]
    assert new.ports == (DoorPort(17, 5, 9),) and new.prefix_v4 == 32


def test_the_statistics_count_the_doors_the_kernel_has() -> None:
    kind, _, _, _ = doors()
    kind.opened([RunStart("ssh", A, None), RunStart("ssh", B, None)], None)
    assert kind.summary() == "table_doors_open=2"
