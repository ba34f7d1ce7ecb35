"""What the daemon's start-up imports: each module left out is resident memory the idle daemon
does not pay (issue 8's idle RSS figure). A new top-level import brings them back without any
test failing otherwise, so the start-up path is run here, short of opening captures, in a
fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: Never needed by an idle daemon: tempfile (a command's output file is opened without it)
#: with shutil, random and the compression modules (argparse's formatter asked shutil for the
#: terminal width), platform (bpf.syscalls reads os.uname()).
NEVER = ("tempfile", "shutil", "random", "bz2", "lzma", "zlib", "platform")
#: Not needed by a daemon whose events have no door: the nftables table's modules.
DOORS_ONLY = (
    "tportknockd.firewall.libnftables",
    "tportknockd.firewall.ruleset",
    "tportknockd.firewall.table",
    "tportknockd.daemon.firewall_doors",
)
#: Not needed with --engine python: the kernel engine's modules, ctypes, and ipaddress (the
#: addresses are checked with inet_pton).
KERNEL_ONLY = (
    "ctypes",
    "ipaddress",
    "tportknockd.bpf.syscalls",
    "tportknockd.bpf.ebpf_assembler",
    "tportknockd.kernel.matcher",
    "tportknockd.kernel.adapter",
    "tportknockd.kernel.program",
)

START = """
import sys
from tportknockd import cli
from tportknockd.daemon import loop

loop.Daemon.open = lambda self: None  # no capture, no engine choice: the rest is real
loop.Daemon.run = lambda self: 0
{before}
assert cli.main(["-c", sys.argv[1], "-i", "lo", "--state-file", "none", "--engine", "python"]) == 0
print(" ".join(sorted(sys.modules)))
"""

CONFIG = """\
<ssh>
 sequence      = udp:7000 tcp:7001:s udp:7002
 timeout       = 10
 start_command = true %IP%
 stop_command  = true %IP%
 command_delay = 10
</ssh>
"""


def modules_after_start(tmp_path: Path, before: str = "") -> set[str]:
    conf = tmp_path / "t.conf"
    conf.write_text(CONFIG)
    conf.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", START.format(before=before), str(conf)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return set(out.stdout.split())


def test_python_engine_start_up_leaves_out_what_it_does_not_need(tmp_path: Path) -> None:
    loaded = modules_after_start(tmp_path)
    assert "tportknockd.daemon.loop" in loaded and "argparse" in loaded  # the path did run
    assert loaded.isdisjoint(NEVER + KERNEL_ONLY + DOORS_ONLY), sorted(
        loaded & {*NEVER, *KERNEL_ONLY, *DOORS_ONLY}
    )


def test_kernel_engine_modules_bring_none_of_the_rest(tmp_path: Path) -> None:
    # What the kernel engine adds: its modules, ctypes as bpf.syscalls loads it, the syscall number.
    before = (
        "import tportknockd.kernel.adapter\n"
        "from tportknockd.bpf import syscalls\n"
        "syscalls._load_ctypes(), syscalls._syscall_number()"
    )
    loaded = modules_after_start(tmp_path, before)
    assert {"ctypes", "tportknockd.kernel.adapter"} <= loaded
    assert loaded.isdisjoint(NEVER), sorted(loaded & set(NEVER))
