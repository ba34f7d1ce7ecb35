"""The values every module speaks in: flag names, a frame's flag bytes, addresses."""

from __future__ import annotations

import pytest

from tportknockd.model import (
    ACK,
    CWR,
    FIN,
    PROTO_TCP,
    PROTO_UDP,
    PSH,
    RST,
    SYN,
    Event,
    Frame,
    FrameKind,
    ListHead,
    OneTimeList,
    OtpSpec,
    address_bytes,
    address_text,
    describe_flags,
    is_link_local_v6,
    is_loopback,
)


def test_flags_are_named_in_header_bit_order() -> None:
    assert describe_flags(FIN | RST | PSH | ACK) == "FIN+RST+PSH+ACK"
    assert describe_flags(CWR | SYN) == "SYN+CWR"
    assert describe_flags(0) == "none"


def test_frames_describe_themselves() -> None:
    assert Frame(PROTO_TCP, 123, 0x1D).describe() == "tcp/123 FIN+RST+PSH+ACK"
    assert Frame(PROTO_TCP, 22, None).describe() == "tcp/22 any flags"
    assert Frame(PROTO_TCP, 22, 0).describe() == "tcp/22 none"
    assert Frame(PROTO_UDP, 53, None).describe() == "udp/53"


def test_flag_bytes_are_what_a_packet_of_the_frame_may_carry() -> None:
    assert list(Frame(PROTO_TCP, 1, SYN).flag_bytes()) == [SYN]
    assert list(Frame(PROTO_TCP, 1, None).flag_bytes()) == list(range(256))
    assert list(Frame(PROTO_UDP, 1, None).flag_bytes()) == [0]  # UDP packets carry 0


def test_a_kind_at_a_port_is_a_frame() -> None:
    assert FrameKind(PROTO_TCP, SYN).at(7000) == Frame(PROTO_TCP, 7000, SYN)


def test_one_time_events_are_those_with_otp_or_a_list() -> None:
    static = Event("ssh", (Frame(PROTO_UDP, 1, None),), 10, "open")
    otp = Event("otp", (), 10, "open", otp=OtpSpec("/k", b"key"))
    listed = OneTimeList("/l", ListHead(1, (Frame(PROTO_UDP, 1, None),)), 1)
    from_list = Event("list", (), 10, "open", one_time_list=listed)
    assert (static.one_time, otp.one_time, from_list.one_time) == (False, True, True)


def test_otp_keys_are_never_printed() -> None:
    assert "hunter2" not in repr(OtpSpec("/etc/k", b"hunter2"))


@pytest.mark.parametrize("text", ["198.51.100.7", "2001:db8::7", "::1", "fe80::1"])
def test_addresses_round_trip(text: str) -> None:
    assert address_text(address_bytes(text)) == text


@pytest.mark.parametrize("text", ["", "host.example", "198.51.100.300", "2001:db8::g"])
def test_what_is_not_an_address(text: str) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        address_bytes(text)


def test_link_local_is_fe80_slash_10_of_ipv6_only() -> None:
    assert is_link_local_v6(address_bytes("fe80::1"))
    assert is_link_local_v6(address_bytes("febf::1"))
    assert not is_link_local_v6(address_bytes("fec0::1"))
    assert not is_link_local_v6(address_bytes("169.254.1.1"))


def test_loopback() -> None:
    assert is_loopback(address_bytes("127.0.0.1")) and is_loopback(address_bytes("127.9.9.9"))
    assert is_loopback(address_bytes("::1"))
    assert not is_loopback(address_bytes("::2")) and not is_loopback(address_bytes("10.0.0.1"))
