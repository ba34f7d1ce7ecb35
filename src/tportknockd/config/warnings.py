"""Warnings about a valid config: first frames that ordinary traffic produces, used-up
one-time lists, events that share a sequence. They never make a config invalid."""

from __future__ import annotations

from collections.abc import Sequence

from tportknockd.model import ACK, FIN, PROTO_UDP, PSH, RST, SYN, Event, Frame

#: TCP flag bytes that ordinary connections put on the wire, with where they come from.
_COMMON_TCP_FLAGS: dict[int, str] = {
    SYN: "every new connection starts with it",
    ACK: "most segments of every connection carry it",
    PSH | ACK: "data segments carry it",
    SYN | ACK: "servers answer every connection with it",
    FIN | ACK: "connections close with it",
    RST: "refused connections produce it",
    RST | ACK: "refused and aborted connections produce it",
}
_BUSY_UDP_PORTS: dict[int, str] = {
    53: "DNS",
    67: "DHCP",
    68: "DHCP",
    123: "NTP",
    137: "NetBIOS name service",
    138: "NetBIOS datagrams",
    5353: "multicast DNS",
}
_WELL_KNOWN_LIMIT = 1024


def _common_traffic_reason(frame: Frame) -> str | None:
    """Why ordinary traffic would match this frame, or None when it would not."""
    if frame.protocol == PROTO_UDP:
        service = _BUSY_UDP_PORTS.get(frame.port)
        if service is not None:
            return f"{service} traffic uses udp/{frame.port}"
        if frame.port < _WELL_KNOWN_LIMIT:
            return f"udp/{frame.port} is a well-known service port"
        return None
    if frame.flags is None:
        if frame.port < _WELL_KNOWN_LIMIT:
            return f"any packet to well-known service port {frame.port} matches, whatever its flags"
        return f"any TCP packet to port {frame.port} matches, whatever its flags"
    return _COMMON_TCP_FLAGS.get(frame.flags)


def _first_frame_warning(event: Event) -> str | None:
    # A one-time event's first frame is secret and changes: ordinary traffic cannot aim at it.
    if event.otp is not None:
        return None
    frames = _known_frames(event)
    if not frames:
        return None
    reason = _common_traffic_reason(frames[0])
    if reason is None:
        return None
    return (
        f"event {event.name!r} starts with {frames[0].describe()}, which ordinary "
        f"traffic produces ({reason}); prefer a first frame that does not occur in usual traffic"
    )


def _known_frames(event: Event) -> tuple[Frame, ...]:
    """The frames known at load time: the sequence, or the head of a one-time list."""
    one_time_list = event.one_time_list
    if one_time_list is None:
        return event.frames
    return one_time_list.head.frames if one_time_list.head is not None else ()


def _used_up_warning(event: Event) -> str | None:
    if event.one_time_list is None or event.one_time_list.head is not None:
        return None
    return (
        f"event {event.name!r}: the one-time list {event.one_time_list.path} is used up; "
        "the event matches nothing until the list is refilled (then send SIGHUP)"
    )


def _duplicate_sequence_warnings(events: Sequence[tuple[Event, int]]) -> list[tuple[int, str]]:
    first_with: dict[tuple[Frame, ...], Event] = {}
    warnings = []
    for event, line in events:
        if event.one_time:
            continue
        earlier = first_with.setdefault(event.frames, event)
        if earlier is not event:
            message = (
                f"event {event.name!r} has the same sequence as event {earlier.name!r} "
                f"(line {earlier.line}); one knock triggers both"
            )
            warnings.append((line, message))
    return warnings


def warnings(path: str, events: Sequence[tuple[Event, int]]) -> tuple[str, ...]:
    found: list[tuple[int, str]] = []
    for event, line in events:
        for warning in (_first_frame_warning(event), _used_up_warning(event)):
            if warning is not None:
                found.append((line, warning))
    found.extend(_duplicate_sequence_warnings(events))
    found.sort(key=lambda item: item[0])
    return tuple(f"{path}:{line}: warning: {message}" for line, message in found)
