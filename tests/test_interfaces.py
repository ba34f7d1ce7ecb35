"""Following the listened interfaces: captures opened, closed and re-filtered as the kernel's
interfaces and addresses change (fake captures and a fake interface list: no root needed)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

import bpfvm
from tportknockd import netif
from tportknockd.capture import RingGeometry, Stats
from tportknockd.filter import Insn
from tportknockd.interfaces import Interfaces, StartupError
from tportknockd.model import PROTO_UDP, Frame, Packet
from tportknockd.statistics import Counters

KNOCK_PORT = 7000


class FakeCapture:
    """Stands in for capture.Capture: remembers its filter, reads nothing."""

    next_fd = 100
    opened: list[FakeCapture] = []

    def __init__(self, ifname: str, program: Sequence[Insn], geometry: RingGeometry) -> None:
        self.ifname = ifname
        self.program = list(program)
        self.resyncs = 0
        self.closed = False
        self.fd = FakeCapture.next_fd
        FakeCapture.next_fd += 1
        FakeCapture.opened.append(self)

    def fileno(self) -> int:
        return self.fd

    def set_filter(self, program: Sequence[Insn]) -> None:
        self.program = list(program)

    def statistics(self) -> Stats:
        return Stats()

    def packets(self) -> Iterator[Packet | None]:
        return iter(())

    def close(self) -> None:
        self.closed = True


class FakePoller:
    def __init__(self) -> None:
        self.fds: set[int] = set()

    def register(self, fd: int, events: int) -> None:
        self.fds.add(fd)

    def unregister(self, fd: int) -> None:
        self.fds.remove(fd)


@dataclass
class Kernel:
    """The interfaces netif reports, changed by the tests."""

    links: list[netif.Interface] = field(default_factory=list)

    def add(self, name: str, index: int, *addresses: str, up: bool = True) -> netif.Interface:
        link = netif.Interface(name, index, up, "up" if up else "down", list(addresses))
        self.links.append(link)
        return link

    def remove(self, name: str) -> None:
        self.links[:] = [link for link in self.links if link.name != name]

    def get(self, name: str) -> netif.Interface:
        return next(link for link in self.links if link.name == name)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Kernel:
    caplog.set_level("INFO")
    k = Kernel()
    k.add("lo", 1, "127.0.0.1", "::1")
    monkeypatch.setattr("tportknockd.interfaces.netif.list_interfaces", lambda: list(k.links))
    monkeypatch.setattr("tportknockd.interfaces.netif.ChangeWatcher", _no_watcher)
    monkeypatch.setattr("tportknockd.listener.Capture", FakeCapture)
    FakeCapture.opened = []
    return k


def _no_watcher() -> netif.ChangeWatcher:
    raise OSError("no rtnetlink in this test")


FRAMES = [Frame(PROTO_UDP, KNOCK_PORT, None)]


def interfaces_on(names: Sequence[str], frames: list[Frame] | None = None) -> Interfaces:
    wanted = FRAMES if frames is None else frames
    return Interfaces(names, lambda: wanted, FakePoller(), Counters())  # type: ignore[arg-type]


def udp_to(dst: str, port: int = KNOCK_PORT) -> bytes:
    """An Ethernet frame carrying a UDP datagram to `dst`:`port` from a benchmarking address."""
    udp = struct.pack("!HHHH", 40000, port, 8, 0)
    if ":" in dst:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(udp), PROTO_UDP, 64,
                         socket.inet_pton(socket.AF_INET6, "2001:db8:ffff::7"),
                         socket.inet_pton(socket.AF_INET6, dst))
        ethertype = 0x86DD
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, PROTO_UDP, 0,
                         socket.inet_aton("198.18.0.7"), socket.inet_aton(dst))
        ethertype = 0x0800
    return bytes(12) + struct.pack("!H", ethertype) + ip + udp


def passes(interfaces: Interfaces, name: str, dst: str, port: int = KNOCK_PORT) -> bool:
    capture = interfaces.listeners[name].capture
    assert isinstance(capture, FakeCapture)
    return bpfvm.run(capture.program, udp_to(dst, port)) > 0


def capture_of(interfaces: Interfaces, name: str) -> FakeCapture:
    capture = interfaces.listeners[name].capture
    assert isinstance(capture, FakeCapture)
    return capture


# --- start-up -------------------------------------------------------------------------------


def test_start_opens_a_capture_filtered_for_the_frames_and_addresses(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1", "2001:db8::1")
    interfaces = interfaces_on(["knk0"])
    interfaces.start()
    assert [c.ifname for c in FakeCapture.opened] == ["knk0"]
    assert passes(interfaces, "knk0", "198.51.100.1")
    assert passes(interfaces, "knk0", "2001:db8::1")
    assert not passes(interfaces, "knk0", "198.51.100.1", port=KNOCK_PORT + 1)
    assert not passes(interfaces, "knk0", "198.51.100.2")


def test_a_missing_interface_stops_the_start_with_its_name(kernel: Kernel) -> None:
    with pytest.raises(StartupError, match=r"no interface 'nosuchdev' \(see tportknockd -l\)"):
        interfaces_on(["nosuchdev"]).start()


def test_an_interface_without_addresses_passes_nothing_yet(kernel: Kernel) -> None:
    kernel.add("knk0", 5)
    interfaces = interfaces_on(["knk0"])
    interfaces.start()
    assert capture_of(interfaces, "knk0").program == [(0x06, 0, 0, 0)]


# --- following the kernel -------------------------------------------------------------------


def test_deleted_and_recreated_interface_gets_a_new_capture(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    interfaces = interfaces_on(["knk0"])
    interfaces.start()
    first = capture_of(interfaces, "knk0")
    kernel.remove("knk0")
    interfaces.follow()
    assert first.closed and interfaces.listeners["knk0"].capture is None
    assert "interface knk0 is gone; waiting for it to come back" in caplog.text
    assert interfaces.next_wakeup() is not None  # it looks again every second
    kernel.add("knk0", 9, "198.51.100.1")
    interfaces.follow()
    second = capture_of(interfaces, "knk0")
    assert second is not first and interfaces.listeners["knk0"].index == 9
    assert passes(interfaces, "knk0", "198.51.100.1")
    assert interfaces.next_wakeup() is None


def test_recreated_under_the_same_name_between_two_looks_is_noticed(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    interfaces = interfaces_on(["knk0"])
    interfaces.start()
    first = capture_of(interfaces, "knk0")
    kernel.remove("knk0")
    kernel.add("knk0", 6, "198.51.100.1")
    interfaces.follow()
    assert first.closed and capture_of(interfaces, "knk0").ifname == "knk0"
    assert interfaces.listeners["knk0"].index == 6


def test_new_addresses_recompile_the_filter(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    interfaces = interfaces_on(["knk0"])
    interfaces.start()
    kernel.get("knk0").addresses[:] = ["198.51.100.3"]
    interfaces.follow()
    assert "addresses of knk0 changed: 198.51.100.1 -> 198.51.100.3" in caplog.text
    assert passes(interfaces, "knk0", "198.51.100.3")
    assert not passes(interfaces, "knk0", "198.51.100.1")


def test_down_interface_keeps_its_capture_and_is_watched(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    interfaces = interfaces_on(["knk0"])
    interfaces.start()
    kernel.get("knk0").up = False
    interfaces.follow()
    assert "interface knk0 is down" in caplog.text
    assert not capture_of(interfaces, "knk0").closed
    assert interfaces.next_wakeup() is not None


def test_refilter_puts_new_frames_in_place(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    frames = list(FRAMES)
    interfaces = interfaces_on(["knk0"], frames)
    interfaces.start()
    frames[:] = [Frame(PROTO_UDP, 7100, None)]  # the engine's frames moved on
    interfaces.refilter()
    assert passes(interfaces, "knk0", "198.51.100.1", port=7100)
    assert not passes(interfaces, "knk0", "198.51.100.1", port=KNOCK_PORT)


def test_refilter_that_cannot_compile_changes_nothing(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    interfaces = interfaces_on(["knk0"])
    interfaces.start()
    before = capture_of(interfaces, "knk0").program
    too_many = [Frame(PROTO_UDP, port, None) for port in range(1, 5000)]
    with pytest.raises(ValueError, match="more than the kernel's limit"):
        interfaces.refilter(too_many)
    assert capture_of(interfaces, "knk0").program == before


def test_close_closes_every_capture(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    interfaces = interfaces_on(["knk0"])
    interfaces.start()
    interfaces.close()
    assert all(c.closed for c in FakeCapture.opened)

