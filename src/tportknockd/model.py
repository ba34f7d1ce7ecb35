"""The values every other module speaks in: frames, events, configs and parsed packets.

Nothing here does I/O. Config parsing builds these, the filter compiler and the engine read
them, capture produces `Packet`s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import NamedTuple

# TCP flag bits as they sit in byte 13 of the TCP header.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

#: The six classic flags; the `x` frame letter means exactly these.
ALL_SIX = FIN | SYN | RST | PSH | ACK | URG

#: Config letters for single flags, in the order they are spelled out.
FLAG_LETTERS: dict[str, int] = {"f": FIN, "s": SYN, "r": RST, "p": PSH, "a": ACK, "u": URG}
FLAG_NAMES: tuple[tuple[int, str], ...] = (
    (FIN, "FIN"),
    (SYN, "SYN"),
    (RST, "RST"),
    (PSH, "PSH"),
    (ACK, "ACK"),
    (URG, "URG"),
    (ECE, "ECE"),
    (CWR, "CWR"),
)

PROTO_TCP = 6
PROTO_UDP = 17
PROTOCOL_NUMBERS: dict[str, int] = {"tcp": PROTO_TCP, "udp": PROTO_UDP}
PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in PROTOCOL_NUMBERS.items()}


def describe_flags(flags: int) -> str:
    """`FIN+RST+PSH+ACK` for 0x1d, `none` for 0."""
    names = [name for bit, name in FLAG_NAMES if flags & bit]
    return "+".join(names) if names else "none"


@dataclass(frozen=True, slots=True)
class Frame:
    """One knock: a packet to `port` over `protocol` (6 or 17).

    `flags` is the exact TCP flag byte the packet must carry, or None when any flags are
    accepted (`i`). UDP frames always have flags None.
    """

    protocol: int
    port: int
    flags: int | None

    def describe(self) -> str:
        """Human spelling used by `-C` and logs: `tcp/123 FIN+RST+PSH+ACK`."""
        head = f"{PROTOCOL_NAMES[self.protocol]}/{self.port}"
        if self.protocol != PROTO_TCP:
            return head
        if self.flags is None:
            return f"{head} any flags"
        return f"{head} {describe_flags(self.flags)}"

    def flag_bytes(self) -> Iterable[int]:
        """The TCP flag bytes a packet matching this frame may carry: its own, all 256 for
        `i`; 0 for UDP (packets carry flags 0 there). Both engines expand frames so, to
        match a packet with one table lookup."""
        if self.protocol != PROTO_TCP:
            return (0,)
        if self.flags is None:
            return range(256)
        return (self.flags,)


class FrameKind(NamedTuple):
    """A frame without its port: what a one-time sequence may draw (`tcp:s`, `udp`)."""

    protocol: int
    flags: int | None  # the exact flag byte for TCP; None for UDP

    def at(self, port: int) -> Frame:
        return Frame(self.protocol, port, self.flags)


@dataclass(frozen=True, slots=True)
class OtpSpec:
    """How a time-based one-time event derives its sequences (see otp.py)."""

    secret_path: str
    key: bytes = field(repr=False)  # the shared secret: never printed
    length: int = 4
    low: int = 20000
    high: int = 59999
    kinds: tuple[FrameKind, ...] = ()
    window: int = 30  # seconds each sequence lives


@dataclass(frozen=True, slots=True)
class ListHead:
    """The sequence in use from a one-time list: its frames and the file line they are on."""

    line: int
    frames: tuple[Frame, ...]


@dataclass(frozen=True, slots=True)
class OneTimeList:
    """A knockd-style list of one-time sequences, one per line, used from the top."""

    path: str
    head: ListHead | None  # None: the list is used up
    remaining: int  # usable lines, the head included


@dataclass(frozen=True, slots=True, order=True)
class DoorPort:
    """What a knock opens, for the knocker alone: a protocol and a port range (`tcp:22` is
    22-22, `udp:60000-61000`)."""

    protocol: int
    low: int
    high: int


#: How long a door stays open for new connections, unless `door_timeout` says otherwise.
DEFAULT_DOOR_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Event:
    """A configured knock event (one `<NAME> ... </NAME>` block).

    A static event has its `frames`; a one-time event has `otp` or `one_time_list` instead
    and empty `frames`: its sequences change over time (see sequences.py).
    """

    name: str
    frames: tuple[Frame, ...]
    timeout: float
    start_command: str | None  # None: the event opens its door alone
    stop_command: str | None = None
    command_delay: float | None = None
    line: int = 0  # line of the opening tag, for messages
    otp: OtpSpec | None = None
    one_time_list: OneTimeList | None = None
    door: tuple[DoorPort, ...] = ()  # opened in the daemon's own nftables table
    door_timeout: float = DEFAULT_DOOR_TIMEOUT
    door_prefix: tuple[int, int] = (32, 128)  # the knocker's network that the door opens for

    @property
    def one_time(self) -> bool:
        return self.otp is not None or self.one_time_list is not None


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    events: tuple[Event, ...]
    #: `FILE:LINE: warning: ...` lines that do not make the config invalid.
    warnings: tuple[str, ...] = ()


class Packet(NamedTuple):
    """The parts of a received packet that knocking cares about.

    `src` and `dst` are the addresses as they sit in the header (4 bytes for IPv4, 16 for
    IPv6): formatting them costs more than the rest of the parsing, and only the address of a
    host whose knock fires ever needs its text (`address_text`). `port` is the destination
    port, `flags` the TCP flag byte, 0 for UDP.
    """

    src: bytes
    dst: bytes
    protocol: int
    port: int
    flags: int


def address_text(packed: bytes) -> str:
    """Canonical text of a packed IPv4/IPv6 address (IPv6 compressed, as inet_ntop writes)."""
    return inet_ntop(AF_INET6 if len(packed) == 16 else AF_INET, packed)


def address_bytes(text: str) -> bytes:
    """The packed form of an address in text; ValueError when it is none."""
    family = AF_INET6 if ":" in text else AF_INET
    try:
        return inet_pton(family, text)
    except OSError:
        raise ValueError(f"not an IP address: {text!r}") from None


def is_link_local_v6(packed: bytes) -> bool:
    """An IPv6 link-local address (fe80::/10): it belongs to one link, and Linux takes it only
    on its own interface. (IPv4's 169.254/16 is accepted on any, like every IPv4 address.)
    By hand rather than with ipaddress, which the daemon does not otherwise need."""
    return len(packed) == 16 and packed[0] == 0xFE and packed[1] & 0xC0 == 0x80


def is_link_local(address: str) -> bool:
    """`is_link_local_v6` of an address in text, without zone."""
    return ":" in address and is_link_local_v6(address_bytes(address))


def is_loopback(packed: bytes) -> bool:
    """127.0.0.0/8 or ::1."""
    return packed[0] == 127 if len(packed) == 4 else packed == _IPV6_LOOPBACK


_IPV6_LOOPBACK = bytes(15) + b"\1"
