"""`make fuzz`: throw many generated inputs at the parsers that strangers can reach.

The packet parser sees whatever arrives on the wire; the config parser whatever a person (or an
editor accident) writes. Neither may raise anything but its documented error. Inputs are built
from valid packets and configs, then cut, spliced and bit-flipped, plus raw random bytes.
Prints how many cases ran and how many failed; exits non-zero on any failure.

    python scripts/fuzz.py [--examples N]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import struct
import sys
import tempfile
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tportknockd.config import ConfigError, parse_config
from tportknockd.packet import parse_ethernet

counts = {"packet": 0, "config": 0}


def _ipv4(proto: int, ihl: int, frag: int, l4: bytes) -> bytes:
    total = 4 * max(ihl, 5) + len(l4)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        total & 0xFFFF,
        1,
        frag,
        64,
        proto,
        0,
        bytes([198, 18, 0, 1]),
        bytes([198, 51, 100, 1]),
    )
    return header + bytes(4 * max(ihl - 5, 0)) + l4


def _ipv6(next_header: int, ext: bytes, l4: bytes) -> bytes:
    src = bytes.fromhex("20010db8000000000000000000000002")
    dst = bytes.fromhex("20010db8000000000000000000000001")
    return (
        struct.pack("!IHBB16s16s", 0x60000000, len(ext) + len(l4), next_header, 64, src, dst)
        + ext
        + l4
    )


l4_headers = st.one_of(
    st.builds(
        lambda p, f: struct.pack("!HHIIBBHHH", 40000, p, 1, 0, 0x50, f, 1024, 0, 0),
        st.integers(0, 65535),
        st.integers(0, 255),
    ),
    st.builds(lambda p: struct.pack("!HHHH", 40000, p, 8, 0), st.integers(0, 65535)),
    st.binary(max_size=24),
)
ext_chain = st.lists(
    st.tuples(st.sampled_from([0, 43, 44, 50, 51, 59, 60, 6, 17, 255]), st.integers(0, 3)),
    max_size=14,
).map(lambda hs: b"".join(bytes([nh, ln]) + bytes(6 + 8 * ln) for nh, ln in hs))
network = st.one_of(
    st.builds(
        _ipv4,
        st.sampled_from([6, 17, 1, 0]),
        st.integers(0, 15),
        st.sampled_from([0, 0x2000, 0x0001, 0x3FFF]),
        l4_headers,
    ),
    st.builds(_ipv6, st.sampled_from([0, 6, 17, 43, 44, 50, 51, 59, 60]), ext_chain, l4_headers),
)
ethertypes = st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x88\xa8", b"\x08\x06"])
frames = st.builds(
    lambda tags, ethertype, body: bytes(12) + b"".join(tags) + ethertype + body,
    st.lists(st.sampled_from([b"\x81\x00\x00\x01", b"\x88\xa8\x00\x02"]), max_size=3),
    ethertypes,
    network,
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[: cut if draw(st.booleans()) else len(data)])


packets = st.one_of(
    mutated(frames), st.binary(max_size=200), st.binary(min_size=9000, max_size=9100)
)

# Files the one-time keys point at: a good secret, one others can read, a short one, a list.
_FILES = tempfile.mkdtemp(prefix="tportknockd-fuzz-")
atexit.register(shutil.rmtree, _FILES, ignore_errors=True)
for _name, _content, _mode in (
    ("good.key", "a secret of thirty-two bytes, ok\n", 0o600),
    ("open.key", "a secret of thirty-two bytes, ok\n", 0o644),
    ("short.key", "short\n", 0o600),
    ("once.list", "# used\n7000,8000:udp\ntcp:1:s udp:2\n9000:icmp\n", 0o600),
    ("good.list", "7000,8000:udp,9000\n", 0o600),
):
    with open(os.path.join(_FILES, _name), "w") as _file:
        _file.write(_content)
    os.chmod(os.path.join(_FILES, _name), _mode)

config_lines = st.sampled_from(
    [
        f" otp_secret = {_FILES}/good.key",
        f" otp_secret = {_FILES}/open.key",
        f" otp_secret = {_FILES}/short.key",
        f" otp_secret = {_FILES}/missing.key",
        f" otp_secret = {_FILES}",
        " otp_length = 8",
        " otp_length = 0",
        " otp_ports = 1000-1001",
        " otp_ports = 65535-1",
        " otp_frames = tcp:s tcp:fu udp",
        " otp_frames = tcp:i",
        " otp_window = 5",
        " otp_window = 99999999999",
        f" one_time_sequences = {_FILES}/good.list",
        f" one_time_sequences = {_FILES}/once.list",
        " one_time_sequences =",
        "<ssh>",
        "</ssh>",
        "<other>",
        "</other>",
        "<",
        "</>",
        " sequence = udp:1234 tcp:543:frap",
        " sequence = tcp:110:x, tcp:110:up",
        " sequence =",
        " timeout = 10",
        " timeout = -1",
        " timeout = nan",
        " start_command = echo %IP%",
        " stop_command = true",
        " command_delay = 3",
        " command_delay = 1e999",
        "# comment",
        "",
        "sequence = tcp:0",
        " bogus = 1",
        "\x00",
        "\ufeff",
    ]
)
configs = st.one_of(
    st.lists(config_lines, max_size=30).map("\n".join),
    st.text(max_size=400),
)


def fuzz(examples: int) -> int:
    failures: list[str] = []
    fast = settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )

    @fast
    @given(packets, st.integers(-2, 40))
    def packet_case(data: bytes, offset: int) -> None:
        counts["packet"] += 1
        try:
            parse_ethernet(data, offset)
            parse_ethernet(memoryview(data), 0, len(data) // 2)
        except Exception as exc:  # the property: nothing escapes
            failures.append(f"packet {data.hex()} offset {offset}: {exc!r}")
            raise

    @fast
    @given(configs)
    def config_case(text: str) -> None:
        counts["config"] += 1
        try:
            parse_config(text, "fuzz.conf")
        except ConfigError as exc:
            assert all(m.startswith("fuzz.conf:") for m in exc.messages), exc.messages
        except Exception as exc:
            failures.append(f"config {text!r}: {exc!r}")
            raise

    for case in (packet_case, config_case):
        try:
            case()
        except Exception as exc:  # reported below with the minimal example hypothesis found
            failures.append(repr(exc))
    for failure in failures[-5:]:
        print("FAIL", failure[:500])
    return len(failures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=25_000)
    args = parser.parse_args()
    started = time.monotonic()
    failed = fuzz(args.examples)
    print(
        f"fuzz: {counts['packet']} packet cases, {counts['config']} config cases, "
        f"{failed} failures, {time.monotonic() - started:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
