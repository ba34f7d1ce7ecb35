"""The nftables table of the doors, as libnftables JSON commands: no I/O here.

The table `inet tportknockd` has one base chain, `guard`, in prerouting at priority -150:
after conntrack (-200), so `ct state new` is known, and before DNAT (-100), so a port that a
DNAT rule forwards (Docker) is guarded by the address the client knocked at. A new TCP or UDP
connection addressed to this host (`fib daddr type local`) whose protocol and port are in the
set `guarded` (the union of all events' doors) jumps to the chain `door`; there each event's
sets are looked up by (source, protocol, port), an open door accepts and anything else drops.
Established traffic, other ports and forwarded traffic of other hosts never reach `door`.

Each event has its own pair of sets (IPv4, IPv6), named after a digest of the event's name.
Why not one set for all: the sets have interval flags (prefixes and port ranges), and the
kernel refuses an element that overlaps a different one ("File exists"), which would fail the
whole batch. Within one event every element has the same prefix length and the event's doors
are merged into disjoint ranges, so two elements are either identical or disjoint; across
events, where prefixes and ranges differ, they live in different sets.

Timeouts are whole seconds: the JSON parser of libnftables 1.0.6 reads an element's timeout
as an integer number of seconds and silently ignores any other value (1.5, "1500ms"), which
would leave an element with no timeout, a door open for ever. So timeouts are rounded up, and
each set also has a default timeout as a second guard.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tportknockd.model import DoorPort

FAMILY = "inet"
TABLE = "tportknockd"
GUARD_CHAIN = "guard"
DOOR_CHAIN = "door"
GUARDED_SET = "guarded"
#: Prefix of the per-event set names; the listing reads every set whose name starts so.
DOOR_SET_PREFIX = "doors_"
GUARD_PRIORITY = -150

TCP, UDP = 6, 17
PROTOCOL_NAMES = {TCP: "tcp", UDP: "udp"}
PROTOCOL_NUMBERS = {name: number for number, name in PROTOCOL_NAMES.items()}
#: nftables keeps at most 128 bytes of a comment.
MAX_COMMENT = 128

Command = dict[str, Any]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class DoorSpec:
    """What a completed knock of `event` opens, for how long, and to how wide a source."""

    event: str
    ports: tuple[DoorPort, ...]
    timeout: float
    prefix_v4: int = 32
    prefix_v6: int = 128

    def __post_init__(self) -> None:
        if not self.event or len(self.event.encode()) > MAX_COMMENT:
            raise ValueError(f"an event name for a door is 1 to {MAX_COMMENT} bytes")
        if not self.ports:
            raise ValueError(f"event {self.event!r} has no door")
        if not self.timeout > 0:
            raise ValueError(f"event {self.event!r}: the door timeout must be positive")
        if not 0 <= self.prefix_v4 <= 32 or not 0 <= self.prefix_v6 <= 128:
            raise ValueError(f"event {self.event!r}: bad door prefix length")

    def prefix_for(self, version: int) -> int:
        return self.prefix_v4 if version == 4 else self.prefix_v6


@dataclass(frozen=True)
class OpenDoor:
    """An open door as listed: which event opened it, for which source, what is left."""

    event: str
    source: Network
    protocol: int
    low: int
    high: int
    #: Whole seconds (the kernel reports no finer); None for an element without a timeout.
    seconds_left: int | None


#: A completed knock: the event's spec and the knocker's address.
Opening = tuple[DoorSpec, str]


# -- names and values ----------------------------------------------------------------------


def set_name(event: str, version: int) -> str:
    """The set of `event`'s doors for IP `version`: a digest, since an event's name may hold
    any character and a set's name may not."""
    digest = hashlib.sha256(event.encode()).hexdigest()[:16]
    return f"{DOOR_SET_PREFIX}{digest}_v{version}"


def whole_seconds(timeout: float) -> int:
    """A timeout as JSON can carry it: whole seconds, rounded up, at least 1 (see the module
    docstring: anything but a positive integer would leave the door open for ever)."""
    return max(1, math.ceil(timeout))


def merged_ports(ports: Iterable[DoorPort]) -> tuple[DoorPort, ...]:
    """The same ports as disjoint ranges: overlapping or adjacent ranges of one protocol are
    joined, since an interval set refuses overlapping elements."""
    merged: list[DoorPort] = []
    for port in sorted(ports):
        last = merged[-1] if merged else None
        if last and last.protocol == port.protocol and port.low <= last.high + 1:
            merged[-1] = DoorPort(last.protocol, last.low, max(last.high, port.high))
        else:
            merged.append(port)
    return tuple(merged)


def source_network(address: str, spec: DoorSpec) -> Network:
    """The knocker's address widened to the event's prefix (198.51.100.7, /24 →
    198.51.100.0/24). An IPv4-mapped IPv6 address counts as its IPv4 address."""
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return ipaddress.ip_network(f"{parsed}/{spec.prefix_for(parsed.version)}", strict=False)


def _address_value(network: Network) -> str | dict[str, Any]:
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def _port_value(port: DoorPort) -> int | dict[str, Any]:
    return port.low if port.low == port.high else {"range": [port.low, port.high]}


def _key(port: DoorPort) -> dict[str, Any]:
    return {"concat": [PROTOCOL_NAMES[port.protocol], _port_value(port)]}


def _element(network: Network, port: DoorPort, seconds: int, event: str) -> dict[str, Any]:
    value = {"concat": [_address_value(network), PROTOCOL_NAMES[port.protocol], _port_value(port)]}
    return {"elem": {"val": value, "timeout": seconds, "comment": event}}


def _object(kind: str, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


# -- the table -----------------------------------------------------------------------------

_SOURCE = {4: {"protocol": "ip", "field": "saddr"}, 6: {"protocol": "ip6", "field": "saddr"}}
_PROTOCOL_AND_PORT = [{"meta": {"key": "l4proto"}},
                      {"payload": {"protocol": "th", "field": "dport"}}]  # fmt: skip


def _lookup(left: list[dict[str, Any]], set_name: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"concat": left}, "right": f"@{set_name}"}}


def _guard_rule() -> Command:
    expressions = [
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
        {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}},
                   "right": "local"}},
        _lookup(_PROTOCOL_AND_PORT, GUARDED_SET),
        {"jump": {"target": DOOR_CHAIN}},
    ]  # fmt: skip
    return {"add": _object("rule", chain=GUARD_CHAIN, expr=expressions)}


def _door_rules(spec: DoorSpec) -> list[Command]:
    return [
        {"add": _object("rule", chain=DOOR_CHAIN, comment=spec.event, expr=[
            _lookup([{"payload": _SOURCE[version]}, *_PROTOCOL_AND_PORT],
                     set_name(spec.event, version)),
            {"accept": None},
        ])}
        for version in (4, 6)
    ]  # fmt: skip


def _door_sets(spec: DoorSpec) -> list[Command]:
    types = {4: "ipv4_addr", 6: "ipv6_addr"}
    return [
        {"add": _object("set", name=set_name(spec.event, version),
                        type=[types[version], "inet_proto", "inet_service"],
                        flags=["interval", "timeout"], timeout=whole_seconds(spec.timeout))}
        for version in (4, 6)
    ]  # fmt: skip


def _guarded_set(specs: Sequence[DoorSpec]) -> Command:
    ports = merged_ports(port for spec in specs for port in spec.ports)
    fields: dict[str, Any] = {"name": GUARDED_SET, "type": ["inet_proto", "inet_service"],
                              "flags": ["interval"]}
    if ports:  # an empty element list is a syntax error
        fields["elem"] = [_key(port) for port in ports]
    return {"add": _object("set", **fields)}


def _kept_elements(specs: Sequence[DoorSpec], kept: Iterable[OpenDoor]) -> list[Command]:
    """Doors still open that the new table keeps, with the time they have left: those whose
    event still exists with the same prefix length and the same door. Anything else could
    overlap the event's new elements, or open what the configuration no longer names."""
    by_event = {spec.event: spec for spec in specs}
    commands = []
    for door in kept:
        spec = by_event.get(door.event)
        port = DoorPort(door.protocol, door.low, door.high)
        if (spec is None or door.seconds_left is None
                or door.source.prefixlen != spec.prefix_for(door.source.version)
                or port not in merged_ports(spec.ports)):
            continue
        element = _element(door.source, port, whole_seconds(door.seconds_left), spec.event)
        commands.append({"add": _object("element", name=set_name(spec.event,
                                                                 door.source.version),
                                        elem=[element])})
    return commands


def table_commands(specs: Sequence[DoorSpec], kept: Iterable[OpenDoor] = ()) -> list[Command]:
    """One transaction that creates the table, or replaces the one a previous run left:
    `add table` makes sure there is one to delete, so it works either way, and the kernel
    never sees the table half built. `kept`: the doors open before (see _kept_elements)."""
    if len({spec.event for spec in specs}) != len(specs):
        raise ValueError("two door specs of one event")
    table = {"table": {"family": FAMILY, "name": TABLE}}
    commands: list[Command] = [{"add": table}, {"delete": table}, {"add": table}]
    commands.append(_guarded_set(specs))
    for spec in specs:
        commands += _door_sets(spec)
    commands.append({"add": _object("chain", name=GUARD_CHAIN, type="filter",
                                    hook="prerouting", prio=GUARD_PRIORITY, policy="accept")})
    commands.append({"add": _object("chain", name=DOOR_CHAIN)})
    commands.append(_guard_rule())
    for spec in specs:
        commands += _door_rules(spec)
    commands.append({"add": _object("rule", chain=DOOR_CHAIN, expr=[{"drop": None}])})
    return commands + _kept_elements(specs, kept)


def remove_commands() -> list[Command]:
    """Delete the table, present or not (the `add` makes it present)."""
    table = {"table": {"family": FAMILY, "name": TABLE}}
    return [{"add": table}, {"delete": table}]


def list_command() -> Command:
    return {"list": {"table": {"family": FAMILY, "name": TABLE}}}


def list_tables_command() -> Command:
    return {"list": {"tables": None}}


# -- opening doors -------------------------------------------------------------------------


def open_commands(openings: Iterable[Opening], add_refreshes: bool = False) -> list[Command]:
    """The elements that open each spec's doors to each knocker, as one batch. A knocker
    named twice in a batch counts once.

    A knocker whose door is open already must get the whole timeout again. Re-adding an
    existing element does that only on kernels that update element timeouts (6.10 and later;
    older ones silently keep the old expiry): `add_refreshes` says so (see
    refresh_probe_commands). Otherwise each element is added, deleted and added again: the
    first add makes sure there is something to delete (deleting an absent element would fail
    the whole transaction) and the last one starts a fresh timeout on any kernel. That costs:
    on 6.18 one knock takes ~5 ms instead of ~0.2 ms, and a batch of 200 ~0.6 s instead of
    ~16 ms, hence the probe.
    """
    elements: dict[tuple[str, str], dict[str, Any]] = {}
    for spec, address in openings:
        network = source_network(address, spec)
        seconds = whole_seconds(spec.timeout)
        for port in merged_ports(spec.ports):
            name = set_name(spec.event, network.version)
            elements[(name, f"{network} {port}")] = _object(
                "element", name=name, elem=[_element(network, port, seconds, spec.event)])
    commands: list[Command] = []
    for element in elements.values():
        if add_refreshes:
            commands.append({"add": element})
        else:
            commands += [{"add": element}, {"delete": element}, {"add": element}]
    return commands


#: A set of the door sets' type that no rule uses, made and deleted by the refresh probe.
REFRESH_PROBE_SET = "refresh_probe"


def refresh_probe_commands(seconds: int) -> list[Command]:
    """Add (or re-add) one element with a timeout of `seconds` to the probe set. Run with one
    timeout, then another, then list the set: if the element has the second timeout, the
    kernel refreshes elements on re-add."""
    probe = DoorPort(TCP, 1, 1)
    element = _element(ipaddress.ip_network("0.0.0.0/0"), probe, seconds, "probe")
    return [
        {"add": _object("set", name=REFRESH_PROBE_SET,
                        type=["ipv4_addr", "inet_proto", "inet_service"],
                        flags=["interval", "timeout"])},
        {"add": _object("element", name=REFRESH_PROBE_SET, elem=[element])},
    ]  # fmt: skip


def list_set_command(name: str) -> Command:
    return {"list": {"set": {"family": FAMILY, "table": TABLE, "name": name}}}


def delete_set_command(name: str) -> Command:
    return {"delete": {"set": {"family": FAMILY, "table": TABLE, "name": name}}}


def element_timeouts(listing: dict[str, Any]) -> list[int]:
    """The timeouts (seconds) of the elements in a JSON listing of one set."""
    timeouts = []
    for entry in listing.get("nftables", []):
        for element in entry.get("set", {}).get("elem", []):
            fields = element.get("elem") if isinstance(element, dict) else None
            if isinstance(fields, dict) and isinstance(fields.get("timeout"), int):
                timeouts.append(fields["timeout"])
    return timeouts


# -- reading the table back ----------------------------------------------------------------


def table_names(listing: dict[str, Any]) -> set[tuple[str, str]]:
    """(family, name) of each table in a `list tables` answer."""
    return {(entry["table"]["family"], entry["table"]["name"])
            for entry in listing.get("nftables", []) if "table" in entry}  # fmt: skip


def parse_open_doors(listing: dict[str, Any]) -> list[OpenDoor]:
    """The open doors in a JSON listing of the table. Elements of a shape this module never
    writes are left out."""
    doors = []
    for entry in listing.get("nftables", []):
        found = entry.get("set")
        if (not found or found.get("table") != TABLE or found.get("family") != FAMILY
                or not found.get("name", "").startswith(DOOR_SET_PREFIX)):
            continue
        for element in found.get("elem", []):
            door = _parse_element(element)
            if door is not None:
                doors.append(door)
    return doors


def _parse_element(element: Any) -> OpenDoor | None:
    if not isinstance(element, dict):
        return None
    # An element with no timeout, expiry or comment is listed bare, without "elem".
    bare = not isinstance(element.get("elem"), dict)
    fields: dict[str, Any] = {"val": element} if bare else element["elem"]
    parts = fields.get("val", {}).get("concat") if isinstance(fields.get("val"), dict) else None
    if not isinstance(parts, list) or len(parts) != 3:
        return None
    source, protocol, port = parts
    try:
        network = _parse_network(source)
        low, high = (port, port) if isinstance(port, int) else port["range"]
        number = PROTOCOL_NUMBERS[protocol] if isinstance(protocol, str) else protocol
        if not isinstance(number, int):
            return None
        expires = fields.get("expires")
        return OpenDoor(str(fields.get("comment", "")), network, number, int(low), int(high),
                        None if expires is None else int(expires))
    except (KeyError, TypeError, ValueError):
        return None


def _parse_network(value: Any) -> Network:
    if isinstance(value, str):
        return ipaddress.ip_network(value)
    prefix = value["prefix"]
    return ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}")
