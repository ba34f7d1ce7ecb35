"""Following the listened interfaces: captures opened, closed and re-filtered as the kernel's
interfaces and addresses change (fake captures and a fake interface list: no root needed)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

import bpfvm
from tportknockd.bpf.classic import Insn
from tportknockd.capture import netif
from tportknockd.capture.interfaces import Interfaces, StartupError, own_addresses
from tportknockd.capture.ring import RingGeometry, Stats
from tportknockd.capture.selection import Selection
from tportknockd.capture.statistics import Counters
from tportknockd.daemon.matching import Matching, PythonMatching
from tportknockd.kernel.adapter import KernelMatching
from tportknockd.kernel.matcher import Capacity
from tportknockd.model import PROTO_UDP, Frame, Packet, is_link_local

KNOCK_PORT = 7000


class FakeCapture:
    """Stands in for capture.Capture: remembers its filter, reads nothing."""

    next_fd = 100
    opened: list[FakeCapture] = []

    def __init__(
        self, ifname: str, program: Sequence[Insn], geometry: RingGeometry, raw_ip: bool = False
    ) -> None:
        self.ifname = ifname
        self.raw_ip = raw_ip
        self.geometry = geometry
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

    def add(
        self, name: str, index: int, *addresses: str, up: bool = True, link_type: int = 1
    ) -> netif.Interface:
        link = netif.Interface(
            name, index, up, "up" if up else "down", list(addresses), link_type=link_type
        )
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
    k.add("lo", 1, "127.0.0.1", "::1").loopback = True
    monkeypatch.setattr(
        "tportknockd.capture.interfaces.netif.list_interfaces", lambda: list(k.links)
    )
    monkeypatch.setattr("tportknockd.capture.interfaces.netif.ChangeWatcher", _no_watcher)
    monkeypatch.setattr("tportknockd.capture.listener.Capture", FakeCapture)
    FakeCapture.opened = []
    return k


def _no_watcher() -> netif.ChangeWatcher:
    raise OSError("no rtnetlink in this test")


FRAMES = [Frame(PROTO_UDP, KNOCK_PORT, None)]


def interfaces_on(
    names: Sequence[str], frames: list[Frame] | None = None, matching: Matching | None = None
) -> Interfaces:
    wanted = FRAMES if frames is None else frames
    selection = Selection.parse(names)
    return Interfaces(
        selection,
        matching or PythonMatching("engine: python"),
        lambda: wanted,
        FakePoller(),  # type: ignore[arg-type]
        Counters(),
    )


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



# --- several interfaces ---------------------------------------------------------------------


def test_a_packet_to_any_listened_interface_counts_on_each(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1", "2001:db8::1")
    kernel.add("knk2", 6, "203.0.113.1", "2001:db8:1::1")
    kernel.add("other", 7, "198.51.100.77")
    interfaces = interfaces_on(["knk0,knk2"])
    interfaces.start()
    for name in ("knk0", "knk2"):
        for address in ("198.51.100.1", "2001:db8::1", "203.0.113.1", "2001:db8:1::1"):
            assert passes(interfaces, name, address), (name, address)
        assert not passes(interfaces, name, "198.51.100.77")  # not listened on


def test_ipv6_link_local_counts_only_on_its_own_interface(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1", "fe80::1%knk0")
    kernel.add("knk2", 6, "203.0.113.1", "fe80::2%knk2")
    interfaces = interfaces_on(["knk0", "knk2"])
    interfaces.start()
    assert passes(interfaces, "knk0", "fe80::1") and not passes(interfaces, "knk0", "fe80::2")
    assert passes(interfaces, "knk2", "fe80::2") and not passes(interfaces, "knk2", "fe80::1")
    assert interfaces.listeners["knk0"].accepted == {"198.51.100.1", "203.0.113.1", "fe80::1"}


class FakeMatcher:
    """Stands in for kernel/matcher.KernelMatcher: its program, the addresses it was given."""

    program = [(0x06, 0, 0, 0)]
    instructions = 1
    capacity = Capacity()

    def __init__(self) -> None:
        self.addresses: set[str] = set()

    def set_local_addresses(self, addresses: Iterable[str]) -> None:
        self.addresses = set(addresses)


def in_kernel() -> tuple[KernelMatching, FakeMatcher]:
    matcher = FakeMatcher()
    return KernelMatching(matcher), matcher  # type: ignore[arg-type]


def test_the_kernel_engine_gets_link_local_addresses_with_their_interface(
    kernel: Kernel,
) -> None:
    """One program serves every interface: a link-local address goes to its map with the
    index of its own interface (kernel/program.py local_key), the others without; the
    addresses of a link without an Ethernet header stay with its classic filter."""
    kernel.add("knk0", 5, "198.51.100.1", "fe80::1%knk0")
    kernel.add("knk2", 6, "203.0.113.1", "fe80::2%knk2")
    kernel.add("wg0", 7, link_type=ARPHRD_NONE)
    matching, matcher = in_kernel()
    interfaces = interfaces_on(["knk0", "knk2", "wg0"], matching=matching)
    interfaces.start()
    assert matcher.addresses == {"198.51.100.1", "203.0.113.1", "fe80::1%5", "fe80::2%6"}
    kernel.get("wg0").addresses.append("203.0.113.7")
    kernel.get("knk0").addresses.append("198.51.100.9")
    interfaces.follow()
    assert "198.51.100.9" in matcher.addresses
    assert matcher.addresses == {
        "198.51.100.1", "198.51.100.9", "203.0.113.1", "203.0.113.7", "fe80::1%5", "fe80::2%6"
    }  # fmt: skip
    kernel.remove("knk2")  # re-created: a new index, which the link-local address follows
    kernel.add("knk2", 9, "203.0.113.1", "fe80::2%knk2")
    interfaces.follow()
    assert "fe80::2%9" in matcher.addresses and "fe80::2%6" not in matcher.addresses


def test_loopback_addresses_never_count_even_on_lo(kernel: Kernel) -> None:
    interfaces = interfaces_on(["lo"])
    interfaces.start()
    assert capture_of(interfaces, "lo").program == [(0x06, 0, 0, 0)]
    # An ordinary address put on lo (a service address) does count there.
    kernel.get("lo").addresses.append("203.0.113.9")
    interfaces.follow()
    assert passes(interfaces, "lo", "203.0.113.9")
    assert not passes(interfaces, "lo", "127.0.0.1") and not passes(interfaces, "lo", "::1")


def test_every_missing_interface_is_named_and_none_is_opened(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    with pytest.raises(StartupError, match=r"^no interface 'knk2', 'wg9' \(see tportknockd -l\)$"):
        interfaces_on(["knk2,knk0,wg9"]).start()
    assert FakeCapture.opened == []


def test_one_interface_going_away_leaves_the_other_listening(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    kernel.add("knk2", 6, "203.0.113.1")
    interfaces = interfaces_on(["knk0", "knk2"])
    interfaces.start()
    kernel.remove("knk2")
    interfaces.follow()
    assert "interface knk2 is gone; waiting for it to come back" in caplog.text
    assert not capture_of(interfaces, "knk0").closed
    # Its addresses went with it: they count nowhere any more.
    assert passes(interfaces, "knk0", "198.51.100.1")
    assert not passes(interfaces, "knk0", "203.0.113.1")
    kernel.add("knk2", 8, "203.0.113.1")
    interfaces.follow()
    assert passes(interfaces, "knk0", "203.0.113.1") and passes(interfaces, "knk2", "198.51.100.1")


def test_an_address_added_to_one_interface_is_put_in_every_filter(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    kernel.add("knk2", 6, "203.0.113.1")
    interfaces = interfaces_on(["knk0", "knk2"])
    interfaces.start()
    kernel.get("knk2").addresses.append("203.0.113.5")
    interfaces.follow()
    assert passes(interfaces, "knk0", "203.0.113.5") and passes(interfaces, "knk2", "203.0.113.5")


def test_refilter_compiles_each_distinct_address_set_once(
    kernel: Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    kernel.add("knk2", 6, "203.0.113.1")
    interfaces = interfaces_on(["knk0", "knk2"])
    interfaces.start()
    compiled: list[object] = []
    original = interfaces._program
    monkeypatch.setattr(interfaces, "_program", lambda *a: compiled.append(a) or original(*a))
    interfaces.refilter()
    assert len(compiled) == 1
    assert capture_of(interfaces, "knk0").program == capture_of(interfaces, "knk2").program


# --- -i any ---------------------------------------------------------------------------------


def test_any_listens_on_every_interface_up_but_lo(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    kernel.add("knk2", 6, "203.0.113.1", up=False)
    interfaces = interfaces_on(["any"])
    interfaces.start()
    assert [c.ifname for c in FakeCapture.opened] == ["knk0"]
    # Any address of the host counts, also one of an interface not (yet) listened on...
    assert passes(interfaces, "knk0", "203.0.113.1")
    # ...and one on lo, but never a loopback address.
    kernel.get("lo").addresses.append("198.51.100.200")
    interfaces.follow()
    assert passes(interfaces, "knk0", "198.51.100.200")
    assert not passes(interfaces, "knk0", "127.0.0.1")


def test_any_picks_up_an_interface_once_it_is_up(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    kernel.add("knk2", 6, "203.0.113.1", up=False)
    interfaces = interfaces_on(["any"])
    interfaces.start()
    kernel.get("knk2").up = True
    kernel.add("knk4", 7, "203.0.113.33")
    interfaces.follow()
    assert [c.ifname for c in FakeCapture.opened] == ["knk0", "knk2", "knk4"]
    assert passes(interfaces, "knk4", "198.51.100.1") and passes(interfaces, "knk0", "203.0.113.33")


def test_any_forgets_a_deleted_interface_and_keeps_the_others(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    kernel.add("knk2", 6, "203.0.113.1")
    interfaces = interfaces_on(["any"])
    interfaces.start()
    kernel.remove("knk2")
    interfaces.follow()
    assert "interface knk2 is gone" in caplog.text
    assert sorted(interfaces.listeners) == ["knk0"]
    assert not capture_of(interfaces, "knk0").closed
    assert not passes(interfaces, "knk0", "203.0.113.1")


def test_any_looks_for_new_interfaces_itself_without_rtnetlink(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    interfaces = interfaces_on(["any"])
    interfaces.start()
    assert interfaces.watcher is None and interfaces.next_wakeup() is not None
    named = interfaces_on(["knk0"])
    named.start()
    assert named.next_wakeup() is None


def test_any_with_nothing_to_listen_on_yet_starts(
    kernel: Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tportknockd.capture.interfaces._check_can_capture", lambda: None)
    interfaces = interfaces_on(["any"])
    interfaces.start()
    assert interfaces.listeners == {}
    kernel.add("knk0", 5, "198.51.100.1")
    interfaces.follow()
    assert passes(interfaces, "knk0", "198.51.100.1")


# --- links without an Ethernet header --------------------------------------------------------

ARPHRD_NONE, ARPHRD_CAN = 0xFFFE, 280


def test_a_raw_ip_link_gets_a_raw_ip_capture_and_filter(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    kernel.add("wg0", 6, "203.0.113.1", link_type=ARPHRD_NONE)
    interfaces = interfaces_on(["knk0,wg0"])
    interfaces.start()
    wg0, knk0 = capture_of(interfaces, "wg0"), capture_of(interfaces, "knk0")
    assert wg0.raw_ip and not knk0.raw_ip
    for address in ("203.0.113.1", "198.51.100.1"):
        assert bpfvm.run(wg0.program, udp_to(address)[14:]) > 0
        assert bpfvm.run(wg0.program, udp_to(address)) == 0
        assert passes(interfaces, "knk0", address)
    # Re-addressed: each keeps its kind of filter.
    kernel.get("knk0").addresses.append("198.51.100.5")
    interfaces.follow()
    assert bpfvm.run(capture_of(interfaces, "wg0").program, udp_to("198.51.100.5")[14:]) > 0
    interfaces.refilter()
    assert bpfvm.run(capture_of(interfaces, "wg0").program, udp_to("198.51.100.5")[14:]) > 0
    assert passes(interfaces, "knk0", "198.51.100.5")


def test_a_named_link_that_carries_no_ip_stops_the_start(kernel: Kernel) -> None:
    kernel.add("can0", 5, link_type=ARPHRD_CAN)
    with pytest.raises(StartupError, match=r"^cannot capture on can0: its packets are neither"):
        interfaces_on(["can0"]).start()


def test_any_leaves_out_links_that_carry_no_ip(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    kernel.add("can0", 6, link_type=ARPHRD_CAN)
    kernel.add("wg0", 7, "203.0.113.1", link_type=ARPHRD_NONE)
    interfaces = interfaces_on(["any"])
    interfaces.start()
    assert sorted(interfaces.listeners) == ["knk0", "wg0"]


# --- capture rings ---------------------------------------------------------------------------


def test_a_capture_that_carries_the_kernel_program_gets_the_small_ring(kernel: Kernel) -> None:
    kernel.add("knk0", 5, "198.51.100.1")
    kernel.add("wg0", 6, "203.0.113.1", link_type=ARPHRD_NONE)
    python = interfaces_on(["knk0,wg0"])
    python.start()
    assert capture_of(python, "knk0").geometry == RingGeometry()
    kernel_engine = interfaces_on(["knk0,wg0"], matching=in_kernel()[0])
    kernel_engine.start()
    small = RingGeometry.for_kernel_engine()
    assert capture_of(kernel_engine, "knk0").geometry == small
    assert capture_of(kernel_engine, "knk0").program == FakeMatcher.program
    assert small.block_size * small.block_count == 256 << 10
    # A link without an Ethernet header keeps the classic filter, Python matching, the
    # Python engine's ring; and so does every link once --ring-size is given.
    assert capture_of(kernel_engine, "wg0").geometry == RingGeometry()
    assert capture_of(kernel_engine, "wg0").program != FakeMatcher.program
    asked = interfaces_on(["knk0,wg0"], matching=in_kernel()[0])
    asked.geometry = RingGeometry.of_size(3)
    asked.start()
    for name in ("knk0", "wg0"):
        assert capture_of(asked, name).geometry == RingGeometry.of_size(3)


@pytest.mark.parametrize(
    ("address", "loopback", "link_local"),
    [
        ("127.0.0.1", True, False),
        ("127.255.255.254", True, False),
        ("128.0.0.1", False, False),
        ("198.51.100.1", False, False),
        ("169.254.1.1", False, False),  # accepted on any interface, like every IPv4 address
        ("::1", True, False),
        ("::2", False, False),
        ("fe80::1", False, True),
        ("febf:ffff::1", False, True),
        ("fec0::1", False, False),
        ("2001:db8::1", False, False),
    ],
)
def test_loopback_and_link_local_are_what_ipaddress_says(
    address: str, loopback: bool, link_local: bool
) -> None:
    link = netif.Interface("knk0", 5, True, "up", [address])
    assert (own_addresses(link) == frozenset()) is loopback
    assert is_link_local(address) is link_local
    parsed = ipaddress.ip_address(address)
    assert parsed.is_loopback is loopback
    assert (parsed.version == 6 and parsed.is_link_local) is link_local
