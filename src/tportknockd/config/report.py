"""What `tportknockd -C FILE` prints: every event spelled out."""

from __future__ import annotations

import time
from collections.abc import Sequence

from tportknockd.config.values import format_seconds
from tportknockd.frame_syntax import format_door_port, format_frame, format_kind
from tportknockd.model import Config, Event, Frame, OneTimeList, OtpSpec
from tportknockd.onetime import derivation


def check_report(config: Config, show_sequences_at: float | None = None) -> str:
    """What `tportknockd -C FILE` prints: every event spelled out, then `N events OK`.

    One-time events are shown by their parameters; their current sequences only when
    `show_sequences_at` gives the Unix time to show them for (`--show-sequences`).
    """
    sections = [_describe_event(event, show_sequences_at) for event in config.events]
    count = len(config.events)
    sections.append(f"{count} event{'' if count == 1 else 's'} OK")
    return "\n\n".join(sections)


def _describe_event(event: Event, show_sequences_at: float | None) -> str:
    lines = [f"event {event.name} (line {event.line})"]
    if event.otp is not None:
        lines += _describe_otp(event, event.otp, show_sequences_at)
    elif event.one_time_list is not None:
        lines += _describe_list(event.one_time_list, show_sequences_at is not None)
    else:
        lines += ["  sequence:", *_numbered(event.frames)]
    lines += [
        f"  timeout:       {format_seconds(event.timeout)}",
        f"  door:          {_describe_door(event)}",
        f"  start_command: {event.start_command if event.start_command is not None else 'none'}",
        f"  stop_command:  {event.stop_command if event.stop_command is not None else 'none'}",
        f"  command_delay: {format_seconds(event.command_delay)}",
    ]
    return "\n".join(lines)


def _describe_door(event: Event) -> str:
    if not event.door:
        return "none"
    ports = " ".join(format_door_port(port) for port in event.door)
    v4, v6 = event.door_prefix
    whom = "the knocking address" if (v4, v6) == (32, 128) else f"the knocker's /{v4} or /{v6}"
    return f"{ports}, open {format_seconds(event.door_timeout)} for {whom}"


def _numbered(frames: Sequence[Frame]) -> list[str]:
    return [f"    {index}. {frame.describe()}" for index, frame in enumerate(frames, 1)]


def _describe_otp(event: Event, spec: OtpSpec, show_at: float | None) -> list[str]:
    kinds = " ".join(format_kind(kind) for kind in spec.kinds)
    lines = [
        "  one-time sequences derived from a secret and the clock (otp v1):",
        f"    secret file:   {spec.secret_path}",
        f"    frames:        {spec.length}, kinds {kinds}, ports {spec.low}-{spec.high}",
        f"    window:        {spec.window} s (windows w-1, w and w+1 accepted)",
    ]
    if show_at is None:
        return [*lines, "    sequences:     not shown (--show-sequences shows them)"]
    for number in derivation.accepted_windows(show_at, spec.window):
        start = derivation.window_start(number, spec.window)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start))
        derived = derivation.derive(spec, event.name, number)
        frames = " ".join(format_frame(frame) for frame in derived)
        lines.append(f"    window {number} (from {stamp}): {frames}")
    return lines


def _describe_list(one_time_list: OneTimeList, show: bool) -> list[str]:
    lines = [
        "  one-time sequences from a list, each used once:",
        f"    list file:     {one_time_list.path}",
        f"    unused:        {one_time_list.remaining}",
    ]
    head = one_time_list.head
    if head is None:
        return [*lines, "    current:       none (the list is used up)"]
    if not show:
        return [*lines, "    current:       not shown (--show-sequences shows it)"]
    frames = " ".join(format_frame(frame) for frame in head.frames)
    return [*lines, f"    current:       line {head.line}: {frames}"]
