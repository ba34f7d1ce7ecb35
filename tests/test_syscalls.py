"""The bpf(2) wrapper against the kernel: maps, program loads and their verifier logs, test
runs, program info and run statistics."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from privileges import BPF, require_root
from tportknockd.bpf import syscalls
from tportknockd.bpf.ebpf_assembler import FP, R0, R1, R2, Assembler


@pytest.fixture
def root() -> None:
    require_root(BPF)


def test_map_operations(root: None) -> None:
    m = syscalls.Map.create(syscalls.BPF_MAP_TYPE_HASH, 4, 8, 16, name="t")
    try:
        assert m.lookup(b"abcd") is None
        m.update(b"abcd", b"12345678")
        m.update(b"efgh", b"87654321", syscalls.BPF_NOEXIST)
        with pytest.raises(syscalls.BpfError):
            m.update(b"efgh", b"00000000", syscalls.BPF_NOEXIST)
        assert m.lookup(b"abcd") == b"12345678"
        assert sorted(m.walk_keys()) == [b"abcd", b"efgh"]
        assert m.delete(b"abcd") and not m.delete(b"abcd")
        with pytest.raises(ValueError):
            m.update(b"abc", b"12345678")
        assert m.count() == 1
    finally:
        m.close()


def test_counting_entries_in_batches(root: None) -> None:
    m = syscalls.Map.create(syscalls.BPF_MAP_TYPE_LRU_HASH, 4, 16, 20000)
    try:
        assert m.count() == 0
        for index in range(9000):  # a little over two batches
            m.update(struct.pack("=I", index), bytes(16))
        assert m.count() == 9000 == sum(1 for _ in m.walk_keys())
    finally:
        m.close()


def test_a_refused_program_comes_with_the_whole_log(root: None) -> None:
    asm = Assembler()
    for _ in range(50):
        asm.mov(R1, 1)
    asm.load("dw", R0, R1, 0)  # R1 is a number, not a pointer
    asm.exit()
    with pytest.raises(syscalls.VerifierError) as refused:
        syscalls.Program.load(syscalls.BPF_PROG_TYPE_SOCKET_FILTER, asm.assemble())
    log = refused.value.log
    assert log.startswith("0: R1=ctx() R10=fp0")
    assert "50: (79) r0 = *(u64 *)(r1 +0)" in log and "R1 invalid mem access" in log
    assert log in str(refused.value)


def test_test_run_and_per_cpu_arrays(root: None) -> None:
    counters = syscalls.Map.create(syscalls.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1)
    asm = Assembler()
    asm.store("w", FP, -4, 0)
    asm.ld_map_fd(R1, counters.fd)
    asm.mov(R2, FP)
    asm.alu(R2, "+", -4)
    asm.call(1)
    done = asm.label()
    asm.jmp(R0, "==", 0, done)
    asm.load("dw", R1, R0, 0)
    asm.alu(R1, "+", 1)
    asm.store("dw", R0, 0, R1)
    asm.place(done)
    asm.ret(64)
    program = syscalls.Program.load(syscalls.BPF_PROG_TYPE_SOCKET_FILTER, asm.assemble())
    try:
        frame = bytes(12) + b"\x08\x00" + bytes(40)
        assert program.test_run(frame, repeat=1000).retval == 64
        cpus = syscalls.possible_cpus()
        raw = counters.lookup(struct.pack("=I", 0), 8 * cpus)
        assert raw is not None
        assert sum(struct.unpack(f"={cpus}Q", raw)) == 1000
    finally:
        program.close()
        counters.close()


def test_program_info_and_run_statistics(root: None) -> None:
    """A named program's info, found by id among all programs; its runs are counted while the
    statistics are held on, by exactly the test run's repeat count."""
    asm = Assembler()
    asm.ret(0)
    program = syscalls.Program.load(syscalls.BPF_PROG_TYPE_SOCKET_FILTER, asm.assemble(),
                                  name="tpk_stats_test")
    frame = bytes(12) + b"\x08\x00" + bytes(40)
    try:
        info = program.info()
        assert (info.name, info.prog_type) == ("tpk_stats_test", 1)
        assert info.id in syscalls.program_ids()
        again = syscalls.Program.from_id(info.id)
        try:
            assert again.fd != program.fd and again.info().id == info.id
        finally:
            again.close()
        with syscalls.RunStatistics():
            assert syscalls.run_statistics_on()
            before = program.info()
            program.test_run(frame, repeat=1000)
            after = program.info()
        assert after.run_cnt - before.run_cnt == 1000
        assert after.run_time_ns > before.run_time_ns
        if not syscalls.run_statistics_on():  # no other holder on this machine: runs not counted
            program.test_run(frame, repeat=1000)
            assert program.info().run_cnt == after.run_cnt
    finally:
        program.close()


def test_a_program_id_that_is_not_there(root: None) -> None:
    with pytest.raises(syscalls.BpfError) as missing:
        syscalls.Program.from_id(2**31 - 1)
    assert missing.value.errno == errno.ENOENT


def test_socket_filter_attach_needs_a_loaded_program() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(OSError):
        syscalls.Program(fd=sock.fileno()).attach(sock)  # not a BPF program's descriptor
