"""Doors in the daemon's own nftables table (firewall/): a `DoorKind` of the doorkeeper.

The table keeps every door port closed to new connections; a knock adds the knocker's
address (or its network) as an element with a kernel timeout, all knocks of one batch in one
transaction. The kernel closes each door at its timeout, whether or not the daemon still
runs, so closing needs nothing from here; and the table stays when the daemon exits, so the
ports stay closed. Someone flushing the ruleset is noticed (nf_tables' netlink notifications)
and the table is put back at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tportknockd.capture.statistics import Counters
from tportknockd.daemon.doorkeeper import Knock
from tportknockd.firewall.libnftables import FirewallError
from tportknockd.firewall.ruleset import DoorSpec
from tportknockd.firewall.table import DoorTable, RulesetWatcher
from tportknockd.frame_syntax import format_door_port
from tportknockd.matching.outcomes import RunStop
from tportknockd.model import Config, Event

__all__ = ["FirewallDoors", "FirewallError", "door_specs"]

log = logging.getLogger("tportknockd")


def door_specs(config: Config) -> list[DoorSpec]:
    """What each event with a door opens, for the table."""
    return [_spec(event) for event in config.events if event.door]


def _spec(event: Event) -> DoorSpec:
    v4, v6 = event.door_prefix
    return DoorSpec(event.name, event.door, event.door_timeout, v4, v6)


class FirewallDoors:
    """The table, installed; each knock of a door event opens its door."""

    def __init__(
        self,
        config: Config,
        counters: Counters,
        table: DoorTable | None = None,
        watcher: RulesetWatcher | None = None,
    ) -> None:
        """Install the table for `config` (FirewallError: one line saying why, nothing left
        half-installed: the install is one transaction)."""
        self.counters = counters
        self.table = table or DoorTable()
        self._specs: dict[str, DoorSpec] = {}
        try:
            self.follow(config)
            self.watcher = watcher or RulesetWatcher()
        except BaseException:
            self.table.close()
            raise

    def follow(self, config: Config) -> None:
        """Replace the table by one for `config`, atomically: doors of events that remain
        keep their time left; ports no longer named are no longer guarded."""
        specs = door_specs(config)
        self.table.install(specs)
        self._specs = {spec.event: spec for spec in specs}

    # -- the doorkeeper's kind ------------------------------------------------------------

    def opened(self, knocks: Sequence[Knock], via: str | None) -> None:
        batch = [(self._specs[k.event], k.address) for k in knocks if k.event in self._specs]
        if not batch:
            return
        try:
            self.table.open(batch)
        except FirewallError as exc:
            self.counters.door_failures += len(batch)
            addresses = ", ".join(address for _, address in batch)
            log.error("doors not opened for %s: %s", addresses, exc)
            return
        for spec, address in batch:
            log.info(
                "door %s opened for %s (%s) for %s s%s",
                spec.event,
                address,
                " ".join(format_door_port(port) for port in spec.ports),
                f"{spec.timeout:g}",
                f" via {via}" if via else "",
            )

    def closed(self, stops: Sequence[RunStop]) -> None:
        pass  # each door closes at its kernel timeout

    def summary(self) -> str:
        """For the statistics line: the doors open now, as the kernel has them."""
        try:
            return f"table_doors_open={len(self.table.open_doors())}"
        except FirewallError as exc:
            log.warning("%s", exc)
            return "table_doors_open=?"

    # -- someone else's changes to the ruleset ----------------------------------------------

    def fileno(self) -> int:
        return self.watcher.fileno()

    def on_ruleset_change(self) -> None:
        """Put the table back when it is gone (a flush, a firewall reload)."""
        if not self.watcher.drain():
            return
        try:
            if self.table.present():
                return
            log.warning("the nftables table tportknockd was removed: putting it back")
            self.table.install(list(self._specs.values()))
        except FirewallError as exc:
            log.error("%s", exc)

    def close(self) -> None:
        """Let go of the table; it stays in the kernel, and the doors close at their time."""
        self.watcher.close()
        self.table.close()
