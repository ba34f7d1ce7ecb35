"""The one-time door of scenario f, and the frame an eavesdropper would flood it with.

One event per knocking user, each with a secret of its own: a window's sequence opens once,
for one address, so users sharing an event could not all open within a window (the advice of
docs/one-time-knocks.md for several users). Secrets go to the bench's working directory,
mode 600 (the daemon refuses a secret that others may read).

The flood's frame is the first frame of the previous window's sequence, derived with the
project's own `tportknockd.onetime.derivation` from the config the daemon runs: what someone
who saw a knock in that window would send.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from bench.daemons import start_command
from bench.settings import OTP_WINDOW, SEQ_TIMEOUT
from tportknockd.config import load_config
from tportknockd.model import Frame
from tportknockd.onetime import derivation


def event_name(user: int) -> str:
    return f"user{user}"


def secret_path(workdir: Path, user: int) -> Path:
    return workdir / f"{event_name(user)}.key"


def write_secret(path: Path) -> None:
    """32 random bytes in base64 (docs/one-time-knocks.md's recipe), readable by the owner."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(base64.b64encode(os.urandom(32)).decode() + "\n")


def tportknockd_otp_config(workdir: Path, users: int, out: Path) -> str:
    """Events user0 … user{users-1}, each with a fresh secret; otp_* defaults otherwise
    (4 frames of `tcp:s udp` from 20000-59999)."""
    blocks = []
    for user in range(users):
        path = secret_path(workdir, user)
        write_secret(path)
        name = event_name(user)
        blocks.append(
            f"<{name}>\n"
            f" otp_secret    = {path}\n"
            f" otp_window    = {OTP_WINDOW}\n"
            f" timeout       = {SEQ_TIMEOUT}\n"
            f" start_command = {start_command(out)}\n"
            f"</{name}>\n")
    return "".join(blocks)


def flood_target(conf: Path, flood_start: float) -> tuple[str, int, Frame]:
    """(event, window, frame): the first frame of the sequence of the window before the one
    `flood_start` falls in, for the first event whose frame no sequence live after the next
    window change shares (a chance port collision would let the flood through the kernel
    filter for a reason that is not the one measured)."""
    events = [e for e in load_config(str(conf)).events if e.otp is not None]
    current = derivation.window_number(flood_start, OTP_WINDOW)
    # After the change the windows current, current+1 and current+2 are live.
    live_after = {(frame.protocol, frame.port)
                  for event in events if event.otp is not None
                  for number in range(current, current + 2 * derivation.SKEW + 1)
                  for frame in derivation.derive(event.otp, event.name, number)}
    for event in events:
        assert event.otp is not None
        frame = derivation.derive(event.otp, event.name, current - 1)[0]
        if (frame.protocol, frame.port) not in live_after:
            return event.name, current - 1, frame
    raise RuntimeError(f"every event's previous first frame is live again in {conf}")


def next_change_after(now: float, lead: float) -> float:
    """The first window change more than `lead` seconds after `now`."""
    return derivation.next_change(now + lead, OTP_WINDOW)
