"""The door table's JSON commands, built without the kernel (firewall/ruleset.py)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from tportknockd.firewall.libnftables import error_line
from tportknockd.firewall.ruleset import (
    TCP,
    UDP,
    DoorPort,
    DoorSpec,
    OpenDoor,
    merged_ports,
    open_commands,
    parse_open_doors,
    set_name,
    source_network,
    table_commands,
    whole_seconds,
)

SOURCE = Path(__file__).resolve().parents[1] / "src"
SSH = DoorSpec("ssh", (DoorPort(TCP, 22, 22),), 30, prefix_v4=24, prefix_v6=64)
WEB = DoorSpec("web", (DoorPort(TCP, 22, 22), DoorPort(TCP, 80, 80),
                       DoorPort(UDP, 1000, 1010)), 2.5)  # fmt: skip


def added(commands: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [command["add"][kind] for command in commands
            if "add" in command and kind in command["add"]]  # fmt: skip


def elements(commands: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(set name, element fields) of each element that the commands add."""
    return [(element["name"], item["elem"])
            for element in added(commands, "element") for item in element["elem"]]  # fmt: skip


def test_the_install_replaces_any_table_in_one_transaction() -> None:
    commands = table_commands([SSH, WEB])
    table = {"table": {"family": "inet", "name": "tportknockd"}}
    assert commands[:3] == [{"add": table}, {"delete": table}, {"add": table}]
    json.dumps(commands)  # all of it is JSON


def test_the_guard_chain_hooks_prerouting_before_dnat() -> None:
    (guard,) = [chain for chain in added(table_commands([SSH]), "chain") if "hook" in chain]
    assert (guard["hook"], guard["prio"], guard["policy"]) == ("prerouting", -150, "accept")
    rules = added(table_commands([SSH]), "rule")
    matches = json.dumps(rules[0]["expr"])
    assert '"new"' in matches and '"local"' in matches and "@guarded" in matches
    assert rules[-1]["expr"] == [{"drop": None}]


def test_the_guarded_ports_are_the_union_of_the_events_doors() -> None:
    (guarded,) = [s for s in added(table_commands([SSH, WEB]), "set") if s["name"] == "guarded"]
    assert guarded["elem"] == [{"concat": ["tcp", 22]}, {"concat": ["tcp", 80]},
                               {"concat": ["udp", {"range": [1000, 1010]}]}]  # fmt: skip


def test_each_event_has_its_own_sets_and_rules() -> None:
    commands = table_commands([SSH, WEB])
    names = {s["name"] for s in added(commands, "set")}
    assert names == {"guarded"} | {set_name(e, v) for e in ("ssh", "web") for v in (4, 6)}
    lookups = json.dumps(added(commands, "rule"))
    assert all(f"@{set_name(e, v)}" in lookups for e in ("ssh", "web") for v in (4, 6))


def test_no_specs_is_a_table_that_guards_nothing() -> None:
    (guarded,) = added(table_commands([]), "set")
    assert "elem" not in guarded


def test_set_names_are_safe_whatever_the_event_is_called() -> None:
    name = set_name('a "quoted"; name\n', 6)
    assert name.startswith("doors_") and name.endswith("_v6") and name.replace("_", "").isalnum()
    assert set_name("ssh", 4) != set_name("web", 4)


def test_an_address_is_widened_to_the_events_prefix() -> None:
    assert str(source_network("198.51.100.7", SSH)) == "198.51.100.0/24"
    assert str(source_network("2001:db8::7", SSH)) == "2001:db8::/64"
    assert str(source_network("198.51.100.7", WEB)) == "198.51.100.7/32"
    assert str(source_network("::ffff:198.51.100.7", WEB)) == "198.51.100.7/32"


def test_an_opening_adds_each_door_with_prefix_timeout_and_comment() -> None:
    found = elements(open_commands([(SSH, "198.51.100.7"), (WEB, "2001:db8::7")],
                                   add_refreshes=True))  # fmt: skip
    assert found == [
        (set_name("ssh", 4), {"val": {"concat": [
            {"prefix": {"addr": "198.51.100.0", "len": 24}}, "tcp", 22]},
            "timeout": 30, "comment": "ssh"}),
        (set_name("web", 6), {"val": {"concat": ["2001:db8::7", "tcp", 22]},
                              "timeout": 3, "comment": "web"}),
        (set_name("web", 6), {"val": {"concat": ["2001:db8::7", "tcp", 80]},
                              "timeout": 3, "comment": "web"}),
        (set_name("web", 6), {"val": {"concat": ["2001:db8::7", "udp", {"range": [1000, 1010]}]},
                              "timeout": 3, "comment": "web"}),
    ]  # fmt: skip


def test_without_kernel_refresh_each_element_is_added_deleted_and_added() -> None:
    commands = open_commands([(SSH, "198.51.100.7")], add_refreshes=False)
    assert [next(iter(command)) for command in commands] == ["add", "delete", "add"]
    assert commands[0]["add"] == commands[1]["delete"] == commands[2]["add"]


def test_a_knocker_twice_in_a_batch_counts_once() -> None:
    batch = [(SSH, "198.51.100.7"), (SSH, "198.51.100.9"), (WEB, "198.51.100.9")]
    assert len(elements(open_commands(batch, add_refreshes=True))) == 1 + 3


def test_timeouts_are_whole_seconds_rounded_up() -> None:
    # libnftables 1.0.6 ignores a JSON timeout that is not an integer: a door open for ever.
    assert [whole_seconds(t) for t in (0.001, 1, 1.5, 30)] == [1, 1, 2, 30]
    for _, fields in elements(open_commands([(WEB, "198.51.100.7")], add_refreshes=True)):
        assert isinstance(fields["timeout"], int)
    assert all(isinstance(s.get("timeout", 1), int) for s in added(table_commands([WEB]), "set"))


def test_overlapping_doors_are_merged() -> None:
    ports = [DoorPort(TCP, 1000, 2000), DoorPort(TCP, 1500, 1500), DoorPort(TCP, 2001, 2005),
             DoorPort(UDP, 1500, 1500), DoorPort(TCP, 3000, 3000)]
    assert merged_ports(ports) == (DoorPort(TCP, 1000, 2005), DoorPort(TCP, 3000, 3000),
                                   DoorPort(UDP, 1500, 1500))  # fmt: skip


@pytest.mark.parametrize("make", [
    lambda: DoorSpec("x", (), 1), lambda: DoorSpec("x", SSH.ports, 0),
    lambda: DoorSpec("x", SSH.ports, 1, prefix_v4=33), lambda: DoorSpec("", SSH.ports, 1),
    lambda: DoorSpec("x" * 129, SSH.ports, 1),
])  # fmt: skip
def test_bad_doors_are_refused(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_two_specs_of_one_event_are_refused() -> None:
    with pytest.raises(ValueError):
        table_commands([SSH, SSH])


def door(event: str, source: str, protocol: int, low: int, high: int,
         left: int | None) -> OpenDoor:
    return OpenDoor(event, ipaddress.ip_network(source), protocol, low, high, left)


def test_a_replace_keeps_the_doors_of_events_that_remain() -> None:
    kept = [door("ssh", "198.51.100.0/24", TCP, 22, 22, 17),
            door("gone", "198.51.100.7/32", TCP, 22, 22, 17),      # its event is gone
            door("ssh", "198.51.100.0/24", TCP, 2222, 2222, 17),   # no longer a door of ssh
            door("ssh", "198.51.100.7/32", TCP, 22, 22, 17),       # prefix changed since
            door("ssh", "198.51.100.0/24", TCP, 22, 22, None),     # never expires: not ours
            door("web", "2001:db8::7/128", UDP, 1000, 1010, 0)]    # expiring now: 1 s  # fmt: skip
    assert elements(table_commands([SSH, WEB], kept)) == [
        (set_name("ssh", 4), {"val": {"concat": [
            {"prefix": {"addr": "198.51.100.0", "len": 24}}, "tcp", 22]},
            "timeout": 17, "comment": "ssh"}),
        (set_name("web", 6), {"val": {"concat": ["2001:db8::7", "udp", {"range": [1000, 1010]}]},
                              "timeout": 1, "comment": "web"}),
    ]  # fmt: skip


#: What `nft -j list table` says (nftables 1.0.6), trimmed.
LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "tportknockd", "handle": 1}},
    {"set": {"family": "inet", "name": "guarded", "table": "tportknockd",
             "elem": [{"concat": ["tcp", 22]}]}},
    {"set": {"family": "inet", "name": set_name("ssh", 4), "table": "tportknockd", "elem": [
        {"elem": {"val": {"concat": [{"prefix": {"addr": "198.51.100.0", "len": 24}}, "tcp",
                                     22]}, "timeout": 30, "expires": 29, "comment": "ssh"}},
        {"elem": {"val": {"concat": ["198.51.100.9", "udp", {"range": [1000, 1010]}]},
                  "expires": 1, "comment": "ssh"}},
        {"concat": ["198.51.100.10", "tcp", 22]},
        {"elem": {"val": {"concat": [{"range": ["198.51.100.1", "198.51.100.5"]}, "tcp", 22]},
                  "expires": 3}},
    ]}},
    {"set": {"family": "inet", "name": set_name("web", 6), "table": "tportknockd", "elem": [
        {"elem": {"val": {"concat": [{"prefix": {"addr": "2001:db8::", "len": 64}}, "tcp", 80]},
                  "timeout": 3, "expires": 2, "comment": "web"}}]}},
]}  # fmt: skip


def test_a_listing_reads_back_as_open_doors() -> None:
    assert parse_open_doors(LISTING) == [
        door("ssh", "198.51.100.0/24", TCP, 22, 22, 29),
        door("ssh", "198.51.100.9/32", UDP, 1000, 1010, 1),
        door("", "198.51.100.10/32", TCP, 22, 22, None),
        door("web", "2001:db8::/64", TCP, 80, 80, 2),
    ]  # fmt: skip


def test_the_librarys_errors_become_one_line() -> None:
    text = "internal:0:0-0: Error: Could not process rule: Operation not permitted\n\n"
    assert error_line(text) == "Could not process rule: Operation not permitted"
    assert error_line("") == "unknown error"


def test_a_missing_library_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from tportknockd.firewall import libnftables

    monkeypatch.setattr(libnftables, "LIBRARY", "libnftables-absent.so.9")
    monkeypatch.setattr(libnftables, "_library", None)
    with pytest.raises(libnftables.FirewallError, match=r"^libnftables-absent.so.9 not found "
                                                        r"\(install nftables\)$"):
        libnftables.Nftables()


def test_importing_the_firewall_loads_neither_ctypes_nor_the_library() -> None:
    import subprocess
    import sys

    code = ("import sys, tportknockd.firewall.table; "
            "print('ctypes' in sys.modules, tportknockd.firewall.libnftables._library)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(SOURCE)}).stdout
    assert out.split() == ["False", "None"]


def test_the_watcher_counts_deletions_not_element_changes() -> None:
    import struct
    import sys

    from tportknockd.firewall import table

    def message(kind: int, payload: bytes = b"") -> bytes:
        header = struct.pack("=IHHII", 16 + len(payload), (10 << 8) | kind, 0, 0, 0)
        return header + payload + b"\0" * (-len(payload) % 4)

    assert sys.byteorder in ("little", "big")
    data = message(12, b"abc") + message(14) + message(2)  # NEWSETELEM, DELSETELEM, DELTABLE
    assert table._message_kinds(data) == [12, 14, 2]
    assert not set(table._message_kinds(data[:-16])) & table._REMOVALS
