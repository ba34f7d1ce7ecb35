"""The daemon's door table in the kernel: install or replace it, open doors for a batch of
knockers, list and remove them; and a watcher that notices when someone else changes the
ruleset (`nft flush ruleset`, a firewall reload), so the daemon can put its table back.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tportknockd.firewall.libnftables import FirewallError, Nftables
from tportknockd.firewall.ruleset import (
    FAMILY,
    REFRESH_PROBE_SET,
    TABLE,
    DoorSpec,
    OpenDoor,
    Opening,
    delete_set_command,
    element_timeouts,
    list_command,
    list_set_command,
    list_tables_command,
    open_commands,
    parse_open_doors,
    refresh_probe_commands,
    remove_commands,
    table_commands,
    table_names,
)

#: Hints for the library's reasons that have a usual cause.
_HINTS = {
    "Operation not permitted": "needs CAP_NET_ADMIN",
    "Protocol not supported": "is nf_tables in the kernel?",
}


def _explained(action: str, error: FirewallError) -> FirewallError:
    reason = str(error)
    hints = [hint for cause, hint in _HINTS.items() if cause in reason]
    suffix = f" ({hints[0]})" if hints else ""
    return FirewallError(f"{action}: {reason}{suffix}")


@contextmanager
def _explaining(action: str) -> Iterator[None]:
    try:
        yield
    except FirewallError as error:
        raise _explained(action, error) from None


#: CAP_NET_ADMIN's bit in the capability sets (linux/capability.h).
CAP_NET_ADMIN = 12


def may_administer_network() -> bool:
    """Whether this process has CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return True  # no /proc to ask: let the library try, and say what it says


class DoorTable:
    """The table `inet tportknockd`, through one libnftables context."""

    def __init__(self, nft: Nftables | None = None) -> None:
        self._nft = nft if nft is not None else Nftables()
        #: Whether re-adding an element refreshes its timeout (probed at the first install).
        self.add_refreshes: bool | None = None

    def install(self, specs: Sequence[DoorSpec]) -> None:
        """Create the table for `specs`, or replace the one there, in one transaction; doors
        still open for events (and doors) that remain keep the time they have left."""
        if not may_administer_network():
            # Asked anyway, libnftables would print a line of its own on stderr.
            raise FirewallError(
                "cannot install the nftables table: Operation not permitted (needs CAP_NET_ADMIN)"
            )
        try:
            kept = self._open_doors() if self._present() else []
            self._nft.run_json(table_commands(specs, kept))
            if self.add_refreshes is None:
                self.probe_refresh()
        except FirewallError as error:
            raise _explained("cannot install the nftables table", error) from None

    def probe_refresh(self) -> bool:
        """Whether this kernel gives an element a new timeout when it is added again (the
        table must be there); `open` then needs no delete + add (see open_commands)."""
        try:
            self._nft.run_json(refresh_probe_commands(1000))
            self._nft.run_json(refresh_probe_commands(2000))
            listing = self._nft.run_json([list_set_command(REFRESH_PROBE_SET)])
        finally:
            self._nft.run_json([delete_set_command(REFRESH_PROBE_SET)])
        self.add_refreshes = element_timeouts(listing) == [2000]
        return self.add_refreshes

    def open(self, openings: Sequence[Opening]) -> None:
        """Open each spec's doors to each knocker, all in one transaction; a knocker whose
        doors are open already gets the whole timeout again."""
        if openings:
            commands = open_commands(openings, bool(self.add_refreshes))
            with _explaining("cannot open the doors"):
                self._nft.run_json(commands)

    def open_doors(self) -> list[OpenDoor]:
        """The doors open now (none if the table is absent)."""
        with _explaining("cannot list the doors"):
            return self._open_doors()

    def remove(self) -> None:
        """Delete the table, and with it every open door; no error if it is absent."""
        with _explaining("cannot remove the nftables table"):
            self._nft.run_json(remove_commands())

    def present(self) -> bool:
        """Whether the table is in the kernel (listing the tables only: no elements)."""
        with _explaining("cannot list the nftables tables"):
            return self._present()

    def _open_doors(self) -> list[OpenDoor]:
        try:
            return parse_open_doors(self._nft.run_json([list_command()]))
        except FirewallError as error:
            if "No such file or directory" in str(error):
                return []  # no table, no doors
            raise

    def _present(self) -> bool:
        return (FAMILY, TABLE) in table_names(self._nft.run_json([list_tables_command()]))

    def close(self) -> None:
        self._nft.close()

    def __enter__(self) -> DoorTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- noticing changes to the ruleset -------------------------------------------------------

NETLINK_NETFILTER = 12
#: The multicast group of nf_tables' change notifications (enum nfnetlink_groups).
NFNLGRP_NFTABLES = 7
#: nlmsg_type of nf_tables messages: subsystem NFNL_SUBSYS_NFTABLES in the high byte.
NFNL_SUBSYS_NFTABLES = 10
#: enum nf_tables_msg_types: deletions of a table, chain, rule or set. Element additions and
#: deletions (ours, each time a door opens) are not among them, so they do not wake the daemon.
_REMOVALS = {2, 5, 8, 11}  # NFT_MSG_DELTABLE, DELCHAIN, DELRULE, DELSET
_NLMSG_HEADER = 16


class RulesetWatcher:
    """A netlink socket subscribed to nf_tables' notifications. Poll `fileno()`; then
    `drain()` says whether a table, chain, rule or set was deleted since the last drain, and
    the daemon checks whether its table is still there (`DoorTable.present`)."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_NETLINK,
                                     socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_NETFILTER)
        try:
            self._socket.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
        except OSError as error:
            self._socket.close()
            raise FirewallError(f"cannot watch the nftables ruleset: {error.strerror}") from None

    def fileno(self) -> int:
        return self._socket.fileno()

    def drain(self) -> bool:
        """Read every pending notification; True if any was a deletion, or if some were lost
        (the socket's buffer overran: a deletion may have been among them)."""
        removed = False
        while True:
            try:
                data = self._socket.recv(65536)
            except BlockingIOError:
                return removed
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise
                removed = True
                continue
            removed = removed or any(kind in _REMOVALS for kind in _message_kinds(data))

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> RulesetWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _message_kinds(data: bytes) -> list[int]:
    """The nf_tables message types (low byte of nlmsg_type) of the messages in one datagram.
    Netlink headers are in host byte order."""
    kinds = []
    offset = 0
    while offset + _NLMSG_HEADER <= len(data):
        length = int.from_bytes(data[offset:offset + 4], sys.byteorder)
        kind = int.from_bytes(data[offset + 4:offset + 6], sys.byteorder)
        if kind >> 8 == NFNL_SUBSYS_NFTABLES:
            kinds.append(kind & 0xFF)
        if length < _NLMSG_HEADER:
            break
        offset += (length + 3) & ~3
    return kinds
