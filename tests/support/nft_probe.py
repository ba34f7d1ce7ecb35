"""Run one DoorTable call inside a network namespace, for the tests: the test process stays
in the host's namespace and never touches its ruleset. Usage, with src on PYTHONPATH:

    ip netns exec NS python nft_probe.py COMMAND [JSON]

Commands: install SPECS, open {"openings": OPENINGS, "readd": BOOL} (readd: delete + add
whether or not the kernel refreshes timeouts), list, remove, present, refreshes,
watch (print "ready", wait up
to 10 s for a notification, then print whether drain() saw a deletion and present()), bench N.
SPECS is a list of {"event", "ports": [[protocol, low, high], ...], "timeout", "prefix_v4",
"prefix_v6"}; OPENINGS a list of {"spec": SPEC, "address": ADDRESS}. Each prints one JSON
line; a FirewallError prints {"error": message} and exits 1.
"""

from __future__ import annotations

import json
import select
import statistics
import sys
import time
from typing import Any

from tportknockd.firewall.libnftables import FirewallError
from tportknockd.firewall.ruleset import DoorPort, DoorSpec, OpenDoor
from tportknockd.firewall.table import DoorTable, RulesetWatcher


def spec_of(data: dict[str, Any]) -> DoorSpec:
    ports = tuple(DoorPort(*port) for port in data["ports"])
    return DoorSpec(data["event"], ports, data["timeout"], data.get("prefix_v4", 32),
                    data.get("prefix_v6", 128))


def door_json(door: OpenDoor) -> dict[str, Any]:
    return {"event": door.event, "source": str(door.source), "protocol": door.protocol,
            "low": door.low, "high": door.high, "seconds_left": door.seconds_left}


def watch(table: DoorTable) -> dict[str, Any]:
    with RulesetWatcher() as watcher:
        print("ready", flush=True)
        readable, _, _ = select.select([watcher], [], [], 10)
        return {"woke": bool(readable), "noticed": watcher.drain(), "present": table.present()}


def bench(table: DoorTable, count: int) -> dict[str, Any]:
    """Median time of opening one knocker's door, and of one batch of `count` knockers."""
    spec = DoorSpec("bench", (DoorPort(6, 22, 22),), 60)
    table.install([spec])
    singles = []
    for i in range(count):
        start = time.perf_counter()
        table.open([(spec, f"2001:db8:1::{i + 1:x}")])
        singles.append(time.perf_counter() - start)
    openings = [(spec, f"2001:db8:2::{i + 1:x}") for i in range(count)]
    start = time.perf_counter()
    table.open(openings)
    batch = time.perf_counter() - start
    start = time.perf_counter()
    table.install([spec])
    install = time.perf_counter() - start
    return {"single_ms_median": statistics.median(singles) * 1000, "batch_ms": batch * 1000,
            "batch_size": count, "install_ms_with_open_doors": install * 1000,
            "open_doors": len(table.open_doors())}


def main(argv: list[str]) -> int:
    command, argument = argv[0], json.loads(argv[1]) if len(argv) > 1 else None
    try:
        table = DoorTable()
        if command == "install":
            table.install([spec_of(spec) for spec in argument])
            result: Any = "ok"
        elif command == "open":
            # In the daemon, install probes the kernel; here it ran in another process.
            table.add_refreshes = not argument["readd"] and table.probe_refresh()
            table.open([(spec_of(item["spec"]), item["address"])
                        for item in argument["openings"]])
            result = "ok"
        elif command == "list":
            result = [door_json(door) for door in table.open_doors()]
        elif command == "remove":
            table.remove()
            result = "ok"
        elif command == "present":
            result = table.present()
        elif command == "refreshes":
            result = table.probe_refresh()
        elif command == "watch":
            result = watch(table)
        elif command == "bench":
            result = bench(table, int(argument))
        else:
            raise SystemExit(f"unknown command {command}")
    except FirewallError as error:
        print(json.dumps({"error": str(error)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
