"""tportknock: the TCP segment builder against scapy, the command line, and real knocks in netns."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

from addresses import v4_addresses, v6_addresses
from privileges import NAMESPACES, require_root
from tportknockd import client
from tportknockd.client import (
    KnockError,
    Target,
    build_tcp_segment,
    internet_checksum,
    knock,
    main,
    pseudo_header,
    resolve_target,
)
from tportknockd.model import ACK, ALL_SIX, FIN, PSH, RST, SYN, URG, Frame

SRC_ROOT = Path(__file__).resolve().parent.parent / "src"




address_pairs = st.one_of(st.tuples(v4_addresses(), v4_addresses()),
                          st.tuples(v6_addresses(), v6_addresses()))
ports = st.integers(0, 65535)


def with_ip(src: str, dst: str, segment: bytes) -> ScapyPacket:
    """scapy's dissection of `segment` behind an IP header for src → dst."""
    if ":" in src:
        return IPv6(bytes(IPv6(src=src, dst=dst, nh=6) / Raw(segment)))
    return IP(bytes(IP(src=src, dst=dst, proto=6) / Raw(segment)))


def scapy_checksum(packet: ScapyPacket) -> int:
    """The checksum scapy computes for the dissected TCP layer when asked to fill it in."""
    rebuilt = packet.copy()
    del rebuilt[TCP].chksum
    return int(type(packet)(bytes(rebuilt))[TCP].chksum)


# --- the segment builder --------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(address_pairs, ports, ports, st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_segment_agrees_with_scapy(addresses: tuple[str, str], sport: int, dport: int,
                                   flags: int, seq: int) -> None:
    src, dst = addresses
    segment = build_tcp_segment(src, dst, sport, dport, flags, seq)
    assert len(segment) == 20
    packet = with_ip(src, dst, segment)
    tcp = packet[TCP]
    assert (tcp.sport, tcp.dport, int(tcp.flags), tcp.seq) == (sport, dport, flags, seq)
    assert (tcp.dataofs, tcp.window, tcp.urgptr, len(tcp.payload)) == (5, 1024, 0, 0)
    assert tcp.chksum == scapy_checksum(packet)


@pytest.mark.parametrize("flags", range(256))
def test_every_flag_byte_is_sent_verbatim(flags: int) -> None:
    segment = build_tcp_segment("2001:db8::2", "2001:db8::1", 40000, 110, flags, 1)
    assert segment[13] == flags
    packet = with_ip("2001:db8::2", "2001:db8::1", segment)
    assert int(packet[TCP].flags) == flags and packet[TCP].chksum == scapy_checksum(packet)


def test_internet_checksum_rfc1071_example() -> None:
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert internet_checksum(b"\x01") == 0xFEFF


def test_pseudo_header_rejects_mixed_versions() -> None:
    with pytest.raises(ValueError):
        pseudo_header("198.51.100.2", "2001:db8::1", 6, 20)


def test_pseudo_header_ignores_scope() -> None:
    assert pseudo_header("fe80::1%lo", "fe80::2", 6, 20) == pseudo_header("fe80::1", "fe80::2",
                                                                          6, 20)


# --- command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["198.51.100.1"],
    ["-c", "knock.conf", "198.51.100.1"],
    ["-e", "OPEN", "198.51.100.1"],
    ["-c", "knock.conf", "-e", "OPEN", "198.51.100.1", "udp:1"],
    ["-d", "-5", "198.51.100.1", "udp:1"],
    ["-d", "soon", "198.51.100.1", "udp:1"],
    ["-4", "-6", "198.51.100.1", "udp:1"],
    [],
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tportknock") and "Traceback" not in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    assert "default 10" in out and "CAP_NET_RAW" in out


def test_bad_frame(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["198.51.100.1", "udp:1", "tcp:12:xyz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tportknock: bad frame 'tcp:12:xyz': ")
    assert err.count("\n") == 1 and err.count("bad frame") == 1


def test_unreadable_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.conf"
    assert main(["-c", str(missing), "-e", "OPEN", "198.51.100.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tportknock: {missing}: ") and err.count("\n") == 1


def test_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "knock.conf"
    path.write_text("<OPEN>\n sequence = tcp:99999\n</OPEN>\n")
    assert main(["-c", str(path), "-e", "OPEN", "198.51.100.1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"tportknock: invalid config {path}:"
    assert len(lines) > 2 and all(line.startswith(f"{path}:") for line in lines[1:])


CONFIG = """\
<OPEN>
  sequence      = udp:1234 tcp:123:frap tcp:434:x tcp:2345:n tcp:110:up tcp:543:i
  timeout       = 10
  start_command = /bin/true %IP%
</OPEN>
<CLOSE>
  sequence      = udp:4321
  timeout       = 10
  start_command = /bin/true %IP%
</CLOSE>
"""
CONFIG_FRAMES = (Frame(17, 1234, None), Frame(6, 123, FIN | RST | PSH | ACK),
                 Frame(6, 434, ALL_SIX), Frame(6, 2345, 0), Frame(6, 110, URG | PSH),
                 Frame(6, 543, None))


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "knock.conf"
    path.write_text(CONFIG)
    return path


def test_unknown_event(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(config_file), "-e", "NOPE", "198.51.100.1"]) == 2
    assert capsys.readouterr().err == (
        f"tportknock: no event 'NOPE' in {config_file} (events: OPEN, CLOSE)\n")


def test_frames_from_config_event(config_file: Path) -> None:
    args = client.build_parser().parse_args(["-c", str(config_file), "-e", "OPEN", "h"])
    assert client.frames_from_args(args) == CONFIG_FRAMES


# --- addresses (no lookups leave the machine: numeric only, or a stubbed resolver) ----------


def test_explicit_source_v4() -> None:
    target = resolve_target("198.51.100.1", socket.AF_UNSPEC, "198.51.100.2")
    assert target == Target(socket.AF_INET, "198.51.100.1", ("198.51.100.1", 0),
                            ("198.51.100.2", 0), True)


def test_explicit_source_picks_the_family() -> None:
    target = resolve_target("2001:db8::1", socket.AF_UNSPEC, "2001:db8::2")
    assert target.family == socket.AF_INET6
    assert target.source[:2] == ("2001:db8::2", 0) and len(target.source) == 4


@pytest.mark.parametrize(("family", "source"), [(socket.AF_INET, "2001:db8::2"),
                                                (socket.AF_INET6, "198.51.100.2")])
def test_source_family_conflict(family: int, source: str) -> None:
    with pytest.raises(KnockError) as info:
        resolve_target("198.51.100.1", family, source)
    assert info.value.status == 2


def test_source_must_be_an_address() -> None:
    with pytest.raises(KnockError, match="not an IP address"):
        resolve_target("198.51.100.1", socket.AF_UNSPEC, "gateway.example")


def test_unresolvable_host(monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    def no_such_host(*args: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    assert main(["knock.example", "udp:1"]) == 1
    assert capsys.readouterr().err == (
        "tportknock: cannot resolve 'knock.example': Name or service not known\n")


# --- sending, with sockets replaced by recorders --------------------------------------------


class RecordingSocket:
    def __init__(self, log: list[tuple[int, bytes, tuple[Any, ...]]], kind: int) -> None:
        self.log, self.kind = log, kind
        self.bound: tuple[Any, ...] | None = None

    def __enter__(self) -> RecordingSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bind(self, address: tuple[Any, ...]) -> None:
        self.bound = address

    def sendto(self, data: bytes, address: tuple[Any, ...]) -> int:
        self.log.append((self.kind, data, address))
        return len(data)

    def setblocking(self, flag: bool) -> None:
        assert not flag

    def connect_ex(self, address: tuple[Any, ...]) -> int:
        self.log.append((self.kind, b"", address))
        return errno.EINPROGRESS

    def close(self) -> None:
        pass


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes, tuple[Any, ...]]]:
    log: list[tuple[int, bytes, tuple[Any, ...]]] = []

    def fake_socket(family: int, kind: int, proto: int = 0) -> RecordingSocket:
        return RecordingSocket(log, kind)

    monkeypatch.setattr(client.socket, "socket", fake_socket)
    return log


V4_TARGET = Target(socket.AF_INET, "198.51.100.1", ("198.51.100.1", 0), ("198.51.100.2", 0),
                   False)


def test_frames_are_sent_in_order_with_their_flags(
        sent: list[tuple[int, bytes, tuple[Any, ...]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    knock(V4_TARGET, CONFIG_FRAMES, 0, verbose=True)
    seen = []
    for kind, data, address in sent:
        if kind == socket.SOCK_RAW:
            assert address == ("198.51.100.1", 0)
            packet = with_ip("198.51.100.2", "198.51.100.1", data)
            assert packet[TCP].chksum == scapy_checksum(packet)
            seen.append(("tcp", packet[TCP].dport, int(packet[TCP].flags)))
        else:
            assert data == client.UDP_PAYLOAD
            seen.append(("udp", address[1], None))
    assert seen == [("udp", 1234, None), ("tcp", 123, 0x1D), ("tcp", 434, 0x3F),
                    ("tcp", 2345, 0), ("tcp", 110, 0x28), ("tcp", 543, SYN)]
    assert capsys.readouterr().out.splitlines() == [
        "sent udp/1234 to 198.51.100.1 (udp)",
        "sent tcp/123 FIN+RST+PSH+ACK to 198.51.100.1 (raw)",
        "sent tcp/434 FIN+SYN+RST+PSH+ACK+URG to 198.51.100.1 (raw)",
        "sent tcp/2345 none to 198.51.100.1 (raw)",
        "sent tcp/110 PSH+URG to 198.51.100.1 (raw)",
        "sent tcp/543 SYN to 198.51.100.1 (raw)",
    ]


def test_delay_between_frames(sent: list[tuple[int, bytes, tuple[Any, ...]]]) -> None:
    started = time.monotonic()
    knock(V4_TARGET, [Frame(17, 1, None)] * 4, 0.05, verbose=False)
    assert 0.15 <= time.monotonic() - started < 1.0
    assert len(sent) == 4


@pytest.fixture
def no_raw(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes, tuple[Any, ...]]]:
    """Sockets as for a user without CAP_NET_RAW: a raw one is refused, the rest recorded."""
    log: list[tuple[int, bytes, tuple[Any, ...]]] = []

    def refusing_socket(family: int, kind: int, proto: int = 0) -> RecordingSocket:
        if kind == socket.SOCK_RAW:
            raise PermissionError(1, "Operation not permitted")
        return RecordingSocket(log, kind)

    monkeypatch.setattr(client.socket, "socket", refusing_socket)
    monkeypatch.setattr(client, "resolve_target", lambda *args: V4_TARGET)
    return log


def test_without_cap_net_raw_a_syn_goes_by_connect(
        no_raw: list[tuple[int, bytes, tuple[Any, ...]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-v", "198.51.100.1", "udp:1", "tcp:2:s", "tcp:3:i", "udp:4"]) == 0
    assert no_raw == [
        (socket.SOCK_DGRAM, client.UDP_PAYLOAD, ("198.51.100.1", 1)),
        (socket.SOCK_STREAM, b"", ("198.51.100.1", 2)),
        (socket.SOCK_STREAM, b"", ("198.51.100.1", 3)),
        (socket.SOCK_DGRAM, client.UDP_PAYLOAD, ("198.51.100.1", 4)),
    ]
    assert capsys.readouterr().out.splitlines() == [
        "sent udp/1 to 198.51.100.1 (udp)",
        "sent tcp/2 SYN to 198.51.100.1 (connect)",
        "sent tcp/3 SYN to 198.51.100.1 (connect)",
        "sent udp/4 to 198.51.100.1 (udp)",
    ]


NEEDS_RAW = ("tportknock: tcp:7001:fu needs a raw socket (root or CAP_NET_RAW); only tcp:s "
             "and udp frames can be sent without\n")


def test_without_cap_net_raw_other_flags_are_refused_before_sending(
        no_raw: list[tuple[int, bytes, tuple[Any, ...]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["198.51.100.1", "udp:7000", "tcp:7001:s", "tcp:7001:fu", "tcp:2:a"]) == 1
    assert capsys.readouterr().err == NEEDS_RAW
    assert no_raw == []  # the frames before it are not sent either: all or nothing


def test_raw_forces_a_raw_socket(no_raw: list[tuple[int, bytes, tuple[Any, ...]]],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--raw", "198.51.100.1", "udp:1", "tcp:2:s"]) == 1
    assert capsys.readouterr().err == "tportknock: sending TCP frames needs root or CAP_NET_RAW\n"
    assert no_raw == []


def test_connect_never_opens_a_raw_socket(sent: list[tuple[int, bytes, tuple[Any, ...]]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    knock(V4_TARGET, [Frame(6, 2, SYN), Frame(17, 3, None)], 0, verbose=True, way="connect")
    assert [kind for kind, _, _ in sent] == [socket.SOCK_STREAM, socket.SOCK_DGRAM]
    with pytest.raises(KnockError, match=r"^tcp:4:a needs a raw socket \(--connect sends only"):
        knock(V4_TARGET, [Frame(6, 2, SYN), Frame(6, 4, ACK)], 0, verbose=False, way="connect")
    assert len(sent) == 2


def test_connect_and_raw_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--connect", "--raw", "198.51.100.1", "tcp:1:s"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


# --- end to end: real knocks between two namespaces -----------------------------------------


# Prints every frame that reaches the interface (not our own outgoing ones) as hex, until
# stdin closes; then drains what is still queued.
SNIFFER = r"""
import select, socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sock.bind((sys.argv[1], 3))
print("ready", flush=True)

def show(data, address):
    if address[2] != socket.PACKET_OUTGOING:
        print(data.hex(), flush=True)

while True:
    ready = select.select([sock, sys.stdin], [], [])[0]
    if sock in ready:
        show(*sock.recvfrom(65535))
    elif not sys.stdin.readline():
        break
sock.setblocking(False)
while True:
    try:
        show(*sock.recvfrom(65535))
    except BlockingIOError:
        break
"""

E2E_FRAMES = ["udp:1234", "tcp:123:frap", "tcp:434:x", "tcp:2345:n", "tcp:110:up", "tcp:543:i"]
E2E_EXPECTED = [("udp", 1234, 0), ("tcp", 123, FIN | RST | PSH | ACK), ("tcp", 434, ALL_SIX),
                ("tcp", 2345, 0), ("tcp", 110, URG | PSH), ("tcp", 543, SYN)]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC_ROOT)}


@pytest.fixture
def pair() -> Iterator[Any]:
    require_root(NAMESPACES)
    from netns import veth_pair

    with veth_pair() as p:
        yield p


def knocks_seen(pair: Any, client_argv: list[str], source: str,
                prefix: list[str] | None = None) -> tuple[subprocess.CompletedProcess[str],
                                                          list[tuple[str, int, int]]]:
    """Run the client in the client namespace; return its result and the knocks that arrived."""
    sniffer = pair.popen(pair.server, [sys.executable, "-c", SNIFFER, pair.server_if],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert sniffer.stdout.readline().strip() == "ready"
        result = pair.run(pair.client, [*(prefix or []), sys.executable, "-m",
                                        "tportknockd.client", *client_argv],
                          capture_output=True, env=child_env(), timeout=30)
        time.sleep(0.3)
        out, _ = sniffer.communicate(timeout=10)
    finally:
        if sniffer.poll() is None:
            sniffer.kill()
            sniffer.wait()
    return result, knocks_in(out, source)


def knocks_in(sniffer_output: str, source: str) -> list[tuple[str, int, int]]:
    knocks = []
    for line in sniffer_output.split():
        frame = Ether(bytes.fromhex(line))
        ip_layer = frame.getlayer(IP) if IP in frame else frame.getlayer(IPv6)
        if ip_layer is None or ip_layer.src != source:
            continue
        if TCP in frame:
            # The client's own segments carry no options; a kernel's SYN (connect()) has them,
            # and its checksum is left to the (virtual) NIC.
            if frame[TCP].dataofs == 5:
                assert frame[TCP].chksum == scapy_checksum(ip_layer), "bad TCP checksum"
            knocks.append(("tcp", frame[TCP].dport, int(frame[TCP].flags)))
        elif UDP in frame:
            knocks.append(("udp", frame[UDP].dport, 0))
    return knocks


@pytest.mark.e2e
@pytest.mark.parametrize("explicit_source", [False, True], ids=["routed-source", "-s"])
@pytest.mark.parametrize(("server", "source"), [("198.51.100.1", "198.51.100.2"),
                                                ("2001:db8::1", "2001:db8::2")],
                         ids=["ipv4", "ipv6"])
def test_knock_arrives_with_exact_flags(pair: Any, server: str, source: str,
                                        explicit_source: bool) -> None:
    options = ["-s", source] if explicit_source else []
    result, knocks = knocks_seen(pair, ["-v", "-d", "5", *options, server, *E2E_FRAMES], source)
    assert (result.returncode, result.stderr) == (0, "")
    assert len(result.stdout.splitlines()) == len(E2E_FRAMES)
    assert knocks == E2E_EXPECTED


@pytest.mark.e2e
def test_knock_from_config_event(pair: Any, config_file: Path) -> None:
    result, knocks = knocks_seen(pair, ["-6", "-c", str(config_file), "-e", "OPEN",
                                        "2001:db8::1"], "2001:db8::2")
    assert (result.returncode, result.stderr) == (0, "")
    assert knocks == [("udp", 1234, 0), *E2E_EXPECTED[1:]]


DROP_NET_RAW = ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw"]


@pytest.mark.e2e
def test_without_cap_net_raw_nothing_is_sent(pair: Any) -> None:
    result, knocks = knocks_seen(pair, ["198.51.100.1", "udp:1", "tcp:2:s", "tcp:7001:fu"],
                                 "198.51.100.2", prefix=DROP_NET_RAW)
    assert result.returncode == 1
    assert result.stderr == NEEDS_RAW
    assert knocks == []


@pytest.mark.e2e
@pytest.mark.parametrize(("server", "source"), [("198.51.100.1", "198.51.100.2"),
                                                ("2001:db8::1", "2001:db8::2")],
                         ids=["ipv4", "ipv6"])
def test_without_cap_net_raw_a_syn_arrives(pair: Any, server: str, source: str) -> None:
    result, knocks = knocks_seen(pair, ["-v", server, "udp:1", "tcp:2:s", "tcp:3:i"], source,
                                 prefix=DROP_NET_RAW)
    assert (result.returncode, result.stderr) == (0, ""), result
    assert result.stdout.split("\n")[1].endswith("(connect)")
    # A closed port answers the SYN with a RST; the client's socket is gone by then.
    assert knocks[:3] == [("udp", 1, 0), ("tcp", 2, SYN), ("tcp", 3, SYN)]
    assert [k for k in knocks if k[0] == "tcp" and k[2] != SYN] == []


@pytest.mark.e2e
def test_no_route(pair: Any) -> None:
    result = pair.run(pair.client, [sys.executable, "-m", "tportknockd.client", "203.0.113.9",
                                    "udp:1"], capture_output=True, env=child_env(), timeout=30)
    assert result.returncode == 1
    assert result.stderr == "tportknock: no route to 203.0.113.9: Network is unreachable\n"
