"""The classic BPF assembler: forward jumps to labels and returns, trampolines where a
conditional jump is too far for its 8 bits, the kernel's size limit, and the packed layout the
kernel reads."""

from __future__ import annotations

import socket
import struct
import sys

import pytest

import bpfvm
from tportknockd.bpf import classic
from tportknockd.bpf.classic import (
    BPF_ABS,
    BPF_B,
    BPF_JA,
    BPF_JEQ,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_RET,
    Assembler,
    Label,
    Return,
)

LDB = BPF_LD | BPF_B | BPF_ABS
JEQ = BPF_JMP | BPF_JEQ | BPF_K
RET = BPF_RET | BPF_K


def first_byte_is(value: int, far: int = 0) -> list[classic.Insn]:
    """ret 1 if the packet's first byte is `value`, else 0; `far` filler loads before the
    returns put them out of a conditional jump's reach."""
    asm = Assembler()
    yes = Label()
    asm.emit(LDB, 0)
    asm.emit(JEQ, value, jt=yes, jf=Return(0))
    for _ in range(far):
        asm.emit(LDB, 1)
    asm.goto(Return(0))
    asm.place(yes)
    asm.goto(Return(1))
    return asm.assemble()


def test_jumps_count_from_the_next_instruction() -> None:
    program = first_byte_is(7)
    assert program == [(LDB, 0, 0, 0), (JEQ, 1, 0, 7), (RET, 0, 0, 0), (RET, 0, 0, 1)]


@pytest.mark.parametrize("far", [254, 255, 256, 600])
def test_far_jumps_go_through_trampolines(far: int) -> None:
    program = first_byte_is(7, far)
    bpfvm.check(program)
    assert all(jt <= 255 and jf <= 255 for _, jt, jf, _ in program)
    assert (len(program) > far + 4) == (far >= 255)  # trampolines only when needed
    assert bpfvm.run(program, b"\x07\x00") == 1
    assert bpfvm.run(program, b"\x08\x00") == 0


def test_trampolines_are_a_copy_of_the_return_or_a_ja_to_the_label() -> None:
    program = first_byte_is(7, far=300)
    assert program[1:4] == [
        (JEQ, 1, 0, 7),
        (RET, 0, 0, 0),  # the false branch: `ret #0` again, right here
        (BPF_JMP | BPF_JA, 0, 0, 301),  # the true branch: on to the label, 32 bits away
    ]


def test_jumps_only_go_forward() -> None:
    asm = Assembler()
    back = Label()
    asm.place(back)
    asm.emit(LDB, 0)
    asm.emit(JEQ, 1, jt=back, jf=Return(0))
    asm.goto(Return(1))
    with pytest.raises(AssertionError, match="not forward"):
        asm.assemble()


def test_the_kernels_size_limit() -> None:
    classic.check_size([(RET, 0, 0, 0)] * classic.BPF_MAXINSNS)
    with pytest.raises(ValueError, match="4097 instructions"):
        classic.check_size([(RET, 0, 0, 0)] * (classic.BPF_MAXINSNS + 1))


def test_pack_layout() -> None:
    program = [(0x15, 1, 2, 0x86DD), (0x06, 0, 0, 0xFFFFFFFF)]
    packed = classic.pack(program)
    assert len(packed) == 16
    assert list(struct.iter_unpack("=HBBI", packed)) == program
    native = sys.byteorder
    assert packed[:2] == (0x15).to_bytes(2, native)
    assert packed[2:4] == bytes([1, 2])
    assert packed[4:8] == (0x86DD).to_bytes(4, native)


@pytest.mark.parametrize("insn", [(0x15, 256, 0, 0), (0x15, 0, -1, 0), (0x06, 0, 0, 1 << 32)])
def test_pack_refuses_what_does_not_fit(insn: classic.Insn) -> None:
    with pytest.raises(ValueError, match="instruction 1"):
        classic.pack([(0x06, 0, 0, 0), insn])


def test_attach_checks_the_length_and_the_kernel_checks_the_rest() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        classic.attach_program(sock, [(RET, 0, 0, 0)])
        with pytest.raises(ValueError, match="1 to 4096"):
            classic.attach(sock, [])
        with pytest.raises(OSError):
            classic.attach(sock, [(LDB, 0, 0, 0)])  # no return: the kernel refuses it


def test_an_attachable_program_attaches_itself() -> None:
    attached: list[socket.socket] = []

    class Program:
        def attach(self, sock: socket.socket) -> None:
            attached.append(sock)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        classic.attach_program(sock, Program())
        assert attached == [sock]
