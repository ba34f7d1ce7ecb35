"""`tportknock`: send a knock sequence, frame by frame, with the exact TCP flags each one needs.

UDP frames are ordinary datagrams. TCP frames are hand-built segments sent through a raw
socket (the kernel adds the IP header), because no ordinary socket call can put an arbitrary
flag byte on the wire; that needs root or CAP_NET_RAW. A SYN is the exception: a non-blocking
connect() sends one, and the socket is closed at once, so `tcp:s` and `udp` frames need no
privilege at all.

The client runs on Linux, macOS and Windows: it imports nothing Linux-only (tests/test_layering.py
and tests/test_client_portable.py keep it so).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tportknockd.config import ConfigError, format_frame, load_config, parse_frame
from tportknockd.model import PROTO_TCP, PROTOCOL_NAMES, SYN, Event, Frame, describe_flags
from tportknockd.onetime import derivation

PROG = "tportknock"

#: A short pause keeps the frames in order on the wire and in the daemon's capture ring.
DEFAULT_DELAY_MS = 10

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

UDP_PAYLOAD = b"knock"
TCP_WINDOW = 1024

#: What a frame with flags None (`i`, any flags) sends: the least surprising segment.
ANY_FLAGS_SENDS = SYN

# sport, dport, seq, ack, data offset, flags, window, checksum, urgent pointer
_TCP_HEADER = struct.Struct("!HHIIBBHHH")
_TCP_CHECKSUM_AT = 16
_TCP_DATA_OFFSET = (_TCP_HEADER.size // 4) << 4

#: How a frame went out, as `-v` says it.
VIA_RAW, VIA_CONNECT, VIA_UDP = "raw", "connect", "udp"

#: What connect_ex on a non-blocking socket returns once the SYN is on its way: in progress
#: (EWOULDBLOCK on Windows), already connected (loopback), or already refused (loopback).
_CONNECT_UNDER_WAY = {
    0,
    errno.EINPROGRESS,
    errno.EWOULDBLOCK,
    errno.EAGAIN,
    errno.ECONNREFUSED,
    getattr(errno, "WSAEWOULDBLOCK", errno.EWOULDBLOCK),
}

# A port for the routing probe; the probe socket is connected but never sends anything.
_PROBE_PORT = 9

SockAddr = tuple[Any, ...]


class KnockError(Exception):
    """A problem reported as one `tportknock: ...` line, exiting with `status`."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Target:
    """Where the knock goes and from which local address."""

    family: int
    address: str  # the destination, for messages
    sockaddr: SockAddr
    source: SockAddr
    explicit_source: bool


# --- the TCP segment ------------------------------------------------------------------------


def build_tcp_segment(src: str, dst: str, sport: int, dport: int, flags: int, seq: int) -> bytes:
    """A 20-byte TCP header carrying exactly `flags`, checksummed for src → dst (IPv4 or IPv6)."""
    header = _TCP_HEADER.pack(sport, dport, seq, 0, _TCP_DATA_OFFSET, flags, TCP_WINDOW, 0, 0)
    checksum = internet_checksum(pseudo_header(src, dst, PROTO_TCP, len(header)) + header)
    return header[:_TCP_CHECKSUM_AT] + checksum.to_bytes(2, "big") + header[_TCP_CHECKSUM_AT + 2 :]


def pseudo_header(src: str, dst: str, protocol: int, length: int) -> bytes:
    """The address pseudo header that the TCP/UDP checksum covers (RFC 793, RFC 8200 8.1)."""
    source, destination = _packed(src), _packed(dst)
    if len(source) != len(destination):
        raise ValueError(f"source {src} and destination {dst} are of different IP versions")
    if len(source) == 4:
        return source + destination + struct.pack("!xBH", protocol, length)
    return source + destination + struct.pack("!I3xB", length, protocol)


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _packed(address: str) -> bytes:
    # getsockname() may append a %scope to link-local IPv6 addresses.
    return ipaddress.ip_address(address.split("%", 1)[0]).packed


# --- command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Send a port-knock sequence to HOST, one frame after the other.",
        epilog=(
            "FRAME is protocol:port[:flags] as in the tportknockd config, e.g. udp:1234 "
            "tcp:123:frap tcp:434:x tcp:2345:n. Flag letters: f s r p a u, x (all six), "
            "n (none; also the default), i (any: a SYN is sent). TCP frames go out through a "
            "raw socket, which needs root or CAP_NET_RAW; without one, SYN frames (tcp:P:s, "
            "tcp:P:i) are sent by connect() and UDP frames need no privilege anyway."
        ),
    )
    parser.add_argument(
        "-d",
        dest="delay",
        metavar="MS",
        type=_milliseconds,
        default=DEFAULT_DELAY_MS,
        help=f"pause between frames in milliseconds (default {DEFAULT_DELAY_MS})",
    )
    family = parser.add_mutually_exclusive_group()
    family.add_argument(
        "-4",
        dest="family",
        action="store_const",
        const=socket.AF_INET,
        default=socket.AF_UNSPEC,
        help="use IPv4 only",
    )
    family.add_argument(
        "-6", dest="family", action="store_const", const=socket.AF_INET6, help="use IPv6 only"
    )
    parser.add_argument(
        "-s",
        dest="source",
        metavar="ADDR",
        help="send from this local address (default: the one the route picks)",
    )
    parser.add_argument(
        "-c",
        dest="config",
        metavar="FILE",
        help="take the frames from an event in this tportknockd config",
    )
    parser.add_argument("-e", dest="event", metavar="EVENT", help="the event to use with -c")
    parser.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="print the frames (tcp:P:s, udp:P) instead of sending them; no HOST needed",
    )
    parser.add_argument(
        "--window-offset",
        type=int,
        default=0,
        metavar="N",
        help="for a one-time event with otp_secret: use window w+N (a clock known to be off; "
        "a negative N as --window-offset=-1)",
    )
    way = parser.add_mutually_exclusive_group()
    way.add_argument(
        "--connect",
        dest="way",
        action="store_const",
        const=VIA_CONNECT,
        default=None,
        help="send SYN frames with connect(), never through a raw socket (no root needed; "
        "other TCP frames are refused)",
    )
    way.add_argument(
        "--raw",
        dest="way",
        action="store_const",
        const=VIA_RAW,
        help="send every TCP frame through a raw socket, failing without root or CAP_NET_RAW "
        "(default: a raw socket if one can be opened, else connect() for SYN frames)",
    )
    parser.add_argument(
        "-v", dest="verbose", action="store_true", help="print each frame sent, and how"
    )
    parser.add_argument("host", metavar="HOST", nargs="?", help="host name or address to knock at")
    parser.add_argument("frames", metavar="FRAME", nargs="*", help="the frames to send, in order")
    return parser


def _milliseconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of ms") from None
    if value < 0:
        raise argparse.ArgumentTypeError("the delay cannot be negative")
    return value


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.host is None and not args.print_only:
        parser.error("no HOST given (only --print needs none)")
    if args.window_offset and args.config is None:
        parser.error("--window-offset needs -c FILE -e EVENT")
    if args.config is not None:
        if args.event is None:
            parser.error("-c needs -e EVENT")
        if args.frames:
            parser.error("give either FRAMEs or -c FILE -e EVENT, not both")
    elif args.event is not None:
        parser.error("-e needs -c FILE")
    elif not args.frames:
        parser.error("no FRAME given (or use -c FILE -e EVENT)")


def frames_from_args(args: argparse.Namespace, unix_time: float | None = None) -> tuple[Frame, ...]:
    """The FRAME arguments, or the frames of `-e EVENT` in the `-c FILE` config.

    For a one-time event: the sequence of the current window (`unix_time`, default now, moved
    by --window-offset), or the first unused line of its list.
    """
    if args.config is None:
        return tuple(_parse_frame_arg(text) for text in args.frames)
    event = _config_event(args)
    if event.otp is not None:
        now = time.time() if unix_time is None else unix_time
        number = derivation.window_number(now, event.otp.window) + args.window_offset
        return derivation.derive(event.otp, event.name, number)
    if args.window_offset:
        raise KnockError(
            f"--window-offset applies to events with otp_secret; {event.name!r} has none",
            EXIT_USAGE,
        )
    if event.one_time_list is not None:
        head = event.one_time_list.head
        if head is None:
            raise KnockError(f"the one-time list {event.one_time_list.path} is used up")
        if args.verbose:
            print(
                f"line {head.line} of {event.one_time_list.path}: comment it out once the door "
                "has opened (the daemon does the same with its copy)",
                file=sys.stderr,
            )
        return head.frames
    return event.frames


def _config_event(args: argparse.Namespace) -> Event:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        # Each message already names the file (and line); a lone one reads fine as it is.
        heading = "" if len(exc.messages) == 1 else f"invalid config {args.config}:\n"
        raise KnockError(heading + "\n".join(exc.messages), EXIT_USAGE) from None
    for event in config.events:
        if event.name == args.event:
            return event
    known = ", ".join(event.name for event in config.events) or "none"
    raise KnockError(f"no event {args.event!r} in {args.config} (events: {known})", EXIT_USAGE)


def _parse_frame_arg(text: str) -> Frame:
    try:
        return parse_frame(text)
    except ValueError as exc:
        reason = str(exc)
        # parse_frame already says which frame; do not say it twice.
        message = reason if reason.startswith("bad frame") else f"bad frame {text!r}: {reason}"
        raise KnockError(message, EXIT_USAGE) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_intermixed_args(argv)
        _check_usage(parser, args)
    except SystemExit as exc:  # argparse has printed usage or help already
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        frames = frames_from_args(args)
        if args.print_only:
            print(" ".join(format_frame(frame) for frame in frames))
            return 0
        target = resolve_target(args.host, args.family, args.source)
        knock(target, frames, args.delay / 1000, args.verbose, args.way)
    except KnockError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


# --- addresses ------------------------------------------------------------------------------


def resolve_target(host: str, family: int, source: str | None) -> Target:
    """Look HOST up and settle the source address: `-s`, or the one the kernel would route from."""
    if source is not None:
        family = _source_family(source, family)
    sockaddr = _resolve(host, family, numeric=False)
    family = socket.AF_INET6 if len(sockaddr) == 4 else socket.AF_INET
    if source is not None:
        return Target(family, sockaddr[0], sockaddr, _resolve(source, family, True), True)
    return Target(family, sockaddr[0], sockaddr, _routed_source(family, sockaddr), False)


def _source_family(source: str, family: int) -> int:
    try:
        version = ipaddress.ip_address(source.split("%", 1)[0]).version
    except ValueError:
        raise KnockError(f"-s {source!r} is not an IP address", EXIT_USAGE) from None
    source_family = socket.AF_INET if version == 4 else socket.AF_INET6
    if family not in (socket.AF_UNSPEC, source_family):
        raise KnockError(f"-s {source} does not match -{'4' if version == 6 else '6'}", EXIT_USAGE)
    return source_family


def _resolve(host: str, family: int, numeric: bool) -> SockAddr:
    flags = socket.AI_NUMERICHOST if numeric else 0
    try:
        infos = socket.getaddrinfo(host, 0, family, socket.SOCK_DGRAM, 0, flags)
    except (socket.gaierror, UnicodeError) as exc:
        raise KnockError(f"cannot resolve {host!r}: {_reason(exc)}") from None
    usable = [info[4] for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    if not usable:
        raise KnockError(f"cannot resolve {host!r}: no IPv4 or IPv6 address")
    return tuple(usable[0])


def _routed_source(family: int, destination: SockAddr) -> SockAddr:
    # Connecting a UDP socket sends nothing; it only asks the routing table for a source.
    probe = (destination[0], _PROBE_PORT, *destination[2:])
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(probe)
            local: SockAddr = sock.getsockname()
    except OSError as exc:
        raise KnockError(f"no route to {destination[0]}: {_reason(exc)}") from None
    return (local[0], 0, *local[2:])


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


# --- sending --------------------------------------------------------------------------------


def knock(
    target: Target,
    frames: Sequence[Frame],
    delay: float,
    verbose: bool,
    way: str | None = None,
) -> None:
    """Send `frames` in order, `delay` seconds apart. Sockets open first: all or nothing fails.

    `way` is how TCP frames go: VIA_RAW (a raw socket, or fail), VIA_CONNECT (connect() for
    SYN frames, refusing any other) or None (a raw socket if one opens, else as VIA_CONNECT).
    A frame that cannot be sent is refused before anything is sent: never half a knock.
    """
    tcp = [frame for frame in frames if frame.protocol == PROTO_TCP]
    connectable = all(_connect_can_send(frame) for frame in tcp)
    if way is None and sys.platform == "win32" and connectable:
        way = VIA_CONNECT  # Windows never sends TCP through a raw socket
    with contextlib.ExitStack() as stack:
        udp = raw = None
        if tcp and way == VIA_CONNECT and not connectable:
            raise KnockError(_needs_raw(tcp, connect_asked=True))
        if tcp and way != VIA_CONNECT:
            try:
                raw = stack.enter_context(_open_raw(target))
            except _NoRawSocket as exc:
                if way == VIA_RAW:
                    raise KnockError(str(exc)) from None
                if not connectable:
                    raise KnockError(_needs_raw(tcp)) from None
        if any(frame.protocol != PROTO_TCP for frame in frames):
            udp = stack.enter_context(_open_udp(target))
        for index, frame in enumerate(frames):
            if index and delay:
                time.sleep(delay)
            if frame.protocol != PROTO_TCP:
                assert udp is not None
                sent, via = _send_udp(udp, target, frame), VIA_UDP
            elif raw is not None:
                sent, via = _send_tcp(raw, target, frame), VIA_RAW
            else:
                sent, via = _connect_syn(target, frame), VIA_CONNECT
            if verbose:
                print(f"sent {sent} to {target.address} ({via})", flush=True)


def _connect_can_send(frame: Frame) -> bool:
    """connect() sends a segment whose flag byte is exactly SYN: `tcp:P:s`, or `tcp:P:i`."""
    return frame.flags is None or frame.flags == SYN


def _needs_raw(tcp: Sequence[Frame], connect_asked: bool = False) -> str:
    first = next(frame for frame in tcp if not _connect_can_send(frame))
    reason = "--connect sends only SYN frames" if connect_asked else "root or CAP_NET_RAW"
    return (
        f"{format_frame(first)} needs a raw socket ({reason}); only tcp:s and udp frames "
        "can be sent without"
    )


class _NoRawSocket(Exception):
    """No raw socket can be opened here (no privilege, or not supported)."""


def _open_udp(target: Target) -> socket.socket:
    sock = socket.socket(target.family, socket.SOCK_DGRAM)
    if target.explicit_source:
        _bind_source(sock, target)
    return sock


def _open_raw(target: Target) -> socket.socket:
    try:
        sock = socket.socket(target.family, socket.SOCK_RAW, socket.IPPROTO_TCP)
    except PermissionError:
        raise _NoRawSocket("sending TCP frames needs root or CAP_NET_RAW") from None
    except OSError as exc:
        raise _NoRawSocket(f"cannot open a raw socket: {_reason(exc)}") from None
    # Bound, so the kernel writes the very source address the checksum was computed over.
    _bind_source(sock, target)
    return sock


def _bind_source(sock: socket.socket, target: Target) -> None:
    try:
        sock.bind(target.source)
    except OSError as exc:
        sock.close()
        raise KnockError(f"cannot send from {target.source[0]}: {_reason(exc)}") from None


def _send_tcp(sock: socket.socket, target: Target, frame: Frame) -> str:
    flags = ANY_FLAGS_SENDS if frame.flags is None else frame.flags
    segment = build_tcp_segment(
        target.source[0],
        target.address,
        random.randint(1024, 65535),
        frame.port,
        flags,
        random.getrandbits(32),
    )
    # Raw IPv6 sockets reject a port other than 0 or their protocol; 0 is right for both.
    _send(sock, segment, (target.address, 0, *target.sockaddr[2:]), frame)
    return f"{PROTOCOL_NAMES[frame.protocol]}/{frame.port} {describe_flags(flags)}"


def _connect_syn(target: Target, frame: Frame) -> str:
    """One SYN by connect(): non-blocking, so connect_ex returns once the SYN has been handed
    to the network layer (the kernel transmits it within the call); the socket is closed right
    away, so nothing more is sent (no retransmission, no handshake to finish)."""
    sockaddr = (target.address, frame.port, *target.sockaddr[2:])
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    try:
        if target.explicit_source:
            sock.bind(target.source)
        sock.setblocking(False)
        status = sock.connect_ex(sockaddr)
    except OSError as exc:
        sock.close()
        raise KnockError(
            f"cannot send {frame.describe()} to {sockaddr[0]}: {_reason(exc)}"
        ) from None
    sock.close()
    if status not in _CONNECT_UNDER_WAY:
        raise KnockError(f"cannot send {frame.describe()} to {sockaddr[0]}: {os.strerror(status)}")
    return f"{PROTOCOL_NAMES[frame.protocol]}/{frame.port} {describe_flags(SYN)}"


def _send_udp(sock: socket.socket, target: Target, frame: Frame) -> str:
    _send(sock, UDP_PAYLOAD, (target.address, frame.port, *target.sockaddr[2:]), frame)
    return f"{PROTOCOL_NAMES[frame.protocol]}/{frame.port}"


def _send(sock: socket.socket, data: bytes, sockaddr: SockAddr, frame: Frame) -> None:
    # sendto on an unconnected socket: an ICMP error for one frame cannot fail the next.
    try:
        sock.sendto(data, sockaddr)
    except OSError as exc:
        raise KnockError(
            f"cannot send {frame.describe()} to {sockaddr[0]}: {_reason(exc)}"
        ) from None


if __name__ == "__main__":
    raise SystemExit(main())
