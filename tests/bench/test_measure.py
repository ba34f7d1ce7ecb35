"""bench.measure, where it needs no root: the pcap reader (against pcaps that scapy writes),
the detections file, /proc/PID/status."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.utils import PcapWriter

from bench.measure import (
    cpu_seconds,
    detections,
    first_sent,
    last_sent,
    memory_kb,
    parse_memory,
    read_pcap_sources,
    sent_since,
)


def ether() -> Ether:
    """Explicit MACs, always (these frames are only written to a file)."""
    return Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")


def write_pcap(path: Path, nano: bool) -> None:
    """Three knock packets and an ARP frame, written by scapy (never sent)."""
    frames = [
        (ether() / IP(src="198.51.100.10", dst="198.51.100.1") / UDP(dport=7000),
         1_800_000_000.000000123),
        (ether() / IPv6(src="2001:db8::10", dst="2001:db8::1") / TCP(dport=7001),
         1_800_000_000.5),
        (ether() / ARP(psrc="198.51.100.2", pdst="198.51.100.1"), 1_800_000_000.6),
        (ether() / IP(src="198.51.100.10", dst="198.51.100.1") / UDP(dport=7002),
         1_800_000_001.25),
    ]
    with PcapWriter(str(path), nano=nano, linktype=1) as writer:
        for frame, stamp in frames:
            frame.time = stamp
            writer.write(frame)


@pytest.mark.parametrize("nano", [True, False], ids=["ns", "us"])
def test_pcap_sources_and_times(tmp_path: Path, nano: bool) -> None:
    path = tmp_path / "knocks.pcap"
    write_pcap(path, nano)
    found = list(read_pcap_sources(path))
    assert [source for _, source in found] == ["198.51.100.10", "2001:db8::10", "198.51.100.10"]
    assert found[0][0] == pytest.approx(1_800_000_000.0, abs=1e-6)
    assert found[1][0] == pytest.approx(1_800_000_000.5, abs=1e-6)
    assert last_sent(path) == pytest.approx({"198.51.100.10": 1_800_000_001.25,
                                             "2001:db8::10": 1_800_000_000.5})
    assert first_sent(path) == pytest.approx({"198.51.100.10": 1_800_000_000.0,
                                              "2001:db8::10": 1_800_000_000.5})
    # Knock packets from a moment on (the ARP frame is not one).
    assert sent_since(path, 1_800_000_000.5) == 2
    assert sent_since(path, 1_800_000_001.3) == 0
    assert sent_since(path, 0) == 3


def test_pcap_big_endian_and_truncated(tmp_path: Path) -> None:
    frame = bytes(ether() / IP(src="198.51.100.11", dst="198.51.100.1") / UDP())
    header = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    record = struct.pack(">IIII", 100, 250_000, len(frame), len(frame)) + frame
    path = tmp_path / "be.pcap"
    path.write_bytes(header + record + record[:20])  # the last record cut short
    assert list(read_pcap_sources(path)) == [(100.25, "198.51.100.11")]
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    assert list(read_pcap_sources(empty)) == []


def test_detections_first_time_per_source(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    assert detections(path) == {}
    path.write_text("198.51.100.10 100.5\n"
                    "garbage line with words\n"
                    "198.51.100.10 101.0\n"
                    "2001:db8::10 102.25\n")
    assert detections(path) == {"198.51.100.10": 100.5, "2001:db8::10": 102.25}


def test_memory_figures() -> None:
    status = "Name:\tpython3\nVmHWM:\t   20480 kB\nVmRSS:\t   19000 kB\nThreads:\t3\n"
    assert parse_memory(status) == {"VmHWM": 20480, "VmRSS": 19000}
    mine = memory_kb(os.getpid())
    assert 0 < mine["VmRSS"] <= mine["VmHWM"]


def test_cpu_clock_of_a_process_grows() -> None:
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(200_000))
    assert cpu_seconds(os.getpid()) > before
