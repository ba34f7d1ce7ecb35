"""Network interfaces and their addresses, read from the kernel over rtnetlink.

`socket.if_nameindex` knows names only and `SIOCGIFADDR` knows one IPv4 address; a knock may
go to any IPv4 or IPv6 address of the interface, so we ask rtnetlink for the full lists.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_IFNAME = 3
IFLA_OPERSTATE = 16
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBi")
_RTATTR = struct.Struct("=HH")

_OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")

# Link types (ARPHRD_*) by what a packet socket sees in front of the IP header.
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
ETHERNET_FRAMED = frozenset({ARPHRD_ETHER, ARPHRD_LOOPBACK})
#: No link-layer header at all: none (tun, WireGuard), PPP, raw IP, IP-in-IP, IPv6-in-IP, SIT.
RAW_IP = frozenset({0xFFFE, 512, 519, 768, 769, 776})


@dataclass
class Interface:
    name: str
    index: int
    up: bool  # administratively up (IFF_UP)
    operstate: str
    addresses: list[str] = field(default_factory=list)
    loopback: bool = False  # IFF_LOOPBACK: never part of `-i any`
    link_type: int = ARPHRD_ETHER  # ARPHRD_*

    @property
    def framing(self) -> str | None:
        """ "ethernet" or "raw-ip" (what its packets start with), None for other link types."""
        if self.link_type in ETHERNET_FRAMED:
            return "ethernet"
        if self.link_type in RAW_IP:
            return "raw-ip"
        return None


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attributes(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            return
        yield kind, data[offset + _RTATTR.size : offset + length]
        offset += _align(length)


def _dump(request_type: int, family: int) -> Iterator[tuple[int, bytes]]:
    """Send one rtnetlink dump request; yield (message type, payload) of each answer."""
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
    ) as s:
        body = struct.pack("=Bxxx", family) + bytes(12 if request_type == RTM_GETLINK else 4)
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(body), request_type, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        )
        s.sendall(header + body)
        while True:
            data = s.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                    raise OSError(-errno, "rtnetlink dump failed")
                yield kind, data[offset + _NLMSGHDR.size : offset + length]
                if length < _NLMSGHDR.size:
                    return
                offset += _align(length)


def _links() -> list[Interface]:
    links = []
    for kind, payload in _dump(RTM_GETLINK, socket.AF_UNSPEC):
        if kind != RTM_NEWLINK:
            continue
        _family, link_type, index, flags, _change = _IFINFOMSG.unpack_from(payload)
        name, operstate = "", "unknown"
        for attr, value in _attributes(payload, _IFINFOMSG.size):
            if attr == IFLA_IFNAME:
                name = value.rstrip(b"\0").decode(errors="replace")
            elif attr == IFLA_OPERSTATE and value:
                operstate = _OPERSTATES[value[0]] if value[0] < len(_OPERSTATES) else "unknown"
        links.append(
            Interface(
                name,
                index,
                bool(flags & IFF_UP),
                operstate,
                loopback=bool(flags & IFF_LOOPBACK),
                link_type=link_type,
            )
        )
    return links


def _addresses() -> Iterator[tuple[int, str]]:
    """(interface index, address text) for every address of every interface."""
    for kind, payload in _dump(RTM_GETADDR, socket.AF_UNSPEC):
        if kind != RTM_NEWADDR:
            continue
        family, _prefix, _flags, _scope, index = _IFADDRMSG.unpack_from(payload)
        found: dict[int, bytes] = dict(_attributes(payload, _IFADDRMSG.size))
        # On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is always ours.
        raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
        if raw is not None and family in (socket.AF_INET, socket.AF_INET6):
            yield index, socket.inet_ntop(family, raw)


def list_interfaces() -> list[Interface]:
    """Every interface with its state and addresses, in kernel index order."""
    links = {link.index: link for link in _links()}
    for index, address in _addresses():
        if index in links:
            links[index].addresses.append(address)
    return [links[i] for i in sorted(links)]


RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100


class ChangeWatcher:
    """Tells when any link or address changes, as the kernel announces it (no polling).

    Poll `fileno()`; when readable, `drain()` empties the socket. What changed is not parsed:
    the caller reads the interface again, which is one small dump and never out of date.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
            NETLINK_ROUTE,
        )
        self._sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> bool:
        """Read every pending announcement; True when there was any (or some were lost)."""
        changed = False
        while True:
            try:
                if not self._sock.recv(65536):
                    return changed
                changed = True
            except BlockingIOError:
                return changed
            except OSError:  # ENOBUFS: announcements were lost, so assume a change
                return True

    def close(self) -> None:
        self._sock.close()
