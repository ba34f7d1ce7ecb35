"""Stop the daemon's command line on any system but Linux, in one line, before it loads a part
that only Linux has (raw packet capture, eBPF, nftables, fcntl, ctypes into libc).

`pip install` gives every system both commands; the knock client, `tportknock`, runs anywhere.
tportknockd.cli imports this module first, for this side effect alone: whichever way the daemon
is started (the `tportknockd` script or `python -m tportknockd`), it goes through that import.
"""

from __future__ import annotations

import sys

MESSAGE = (
    "tportknockd: the daemon needs Linux (this is {platform}); the knock client, tportknock, "
    "runs here"
)

if sys.platform != "linux":
    print(MESSAGE.format(platform=sys.platform), file=sys.stderr)
    raise SystemExit(1)
