"""Time-based one-time sequences, derivation version 1 (normative; see docs/otp-v1.md).

Knocker and daemon share a secret K. Time is cut into windows of `otp_window` seconds,
numbered w = floor(unix_time / otp_window). The sequence of window w is

    D = HMAC-SHA256(K, b"tportknock-otp-v1" || 0x00 || event name (UTF-8) || 0x00 || w as u64 BE)

and for frame i = 0 .. length-1, with v = D[4i .. 4i+3] as a big-endian u32 and
n = high - low + 1: port = low + (v mod n), kind = kinds[(v div n) mod len(kinds)]. When frame
i then equals frame i-1 (same kind and port), port = low + ((port - low + 1) mod n).

Pure functions only: no clock is read here; callers pass the time.
"""

from __future__ import annotations

import math
import struct

from tportknockd.model import Frame, OtpSpec

DERIVATION_LABEL = b"tportknock-otp-v1"
MIN_LENGTH = 2
MAX_LENGTH = 8  # 8 frames x 4 bytes use the whole 32-byte HMAC-SHA256 output
MIN_SECRET_BYTES = 16
#: Windows accepted around the current one: clock skew of one window either way.
SKEW = 1


def window_number(unix_time: float, window: int) -> int:
    """w = floor(unix_time / window)."""
    return math.floor(unix_time / window)


def window_start(number: int, window: int) -> int:
    """The Unix time at which window `number` begins."""
    return number * window


def derive(spec: OtpSpec, event_name: str, number: int) -> tuple[Frame, ...]:
    """The frames of window `number` for the event `event_name`."""
    # Imported here, not at the top: hashlib loads OpenSSL (~4 MB of resident memory), which
    # a daemon without one-time events never needs.
    import hashlib
    import hmac

    message = b"%s\0%s\0%s" % (
        DERIVATION_LABEL,
        event_name.encode("utf-8"),
        struct.pack(">Q", number),
    )
    digest = hmac.new(spec.key, message, hashlib.sha256).digest()
    span = spec.high - spec.low + 1
    frames: list[Frame] = []
    for index in range(spec.length):
        (value,) = struct.unpack_from(">I", digest, 4 * index)
        port = spec.low + value % span
        kind = spec.kinds[(value // span) % len(spec.kinds)]
        frame = kind.at(port)
        if frames and frames[-1] == frame:
            frame = kind.at(spec.low + (port - spec.low + 1) % span)
        frames.append(frame)
    return tuple(frames)


def accepted_windows(unix_time: float, window: int) -> range:
    """The window numbers accepted at `unix_time`: w-1, w and w+1."""
    current = window_number(unix_time, window)
    return range(current - SKEW, current + SKEW + 1)


def next_change(unix_time: float, window: int) -> float:
    """When the accepted windows move next (the start of the next window)."""
    return float(window_start(window_number(unix_time, window) + 1, window))
