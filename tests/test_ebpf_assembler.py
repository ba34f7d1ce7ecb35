"""The eBPF assembler's encoding, against instruction bytes from the kernel's documentation and
`bpftool prog dump xlated` conventions."""

from __future__ import annotations

import struct

import pytest

from tportknockd.bpf.ebpf_assembler import FP, R0, R1, R2, R6, R7, Assembler, Helper


def insns(code: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack_from("=BBhi", code, at) for at in range(0, len(code), 8)]


def test_encodings() -> None:
    asm = Assembler()
    asm.mov(R0, 0)  # b7 0 0 0
    asm.mov(R6, R1)  # bf: dst 6, src 1
    asm.alu(R2, "+", -8)  # 07
    asm.alu(R1, ">>", 4, bits=32)  # 74
    asm.load("w", R0, R6, 4)  # 61
    asm.store("dw", FP, -16, R7)  # 7b
    asm.store("w", FP, -4, 7)  # 62
    asm.ld_abs("h", -0x200000 + 12)  # 28
    asm.ld_ind("b", R7, 9)  # 50
    asm.call(1)  # 85
    asm.exit()  # 95
    assert insns(asm.assemble()) == [
        (0xB7, 0x00, 0, 0),
        (0xBF, 0x16, 0, 0),
        (0x07, 0x02, 0, -8),
        (0x74, 0x01, 0, 4),
        (0x61, 0x60, 4, 0),
        (0x7B, 0x7A, -16, 0),
        (0x62, 0x0A, -4, 7),
        (0x28, 0x00, 0, -0x200000 + 12),
        (0x50, 0x70, 0, 9),
        (0x85, 0x00, 0, 1),
        (0x95, 0x00, 0, 0),
    ]


def test_wide_loads_take_two_slots() -> None:
    asm = Assembler()
    asm.ld_imm64(R1, 0x1122334455667788)
    asm.ld_map_fd(R2, 7)
    assert len(asm) == 4
    assert insns(asm.assemble()) == [
        (0x18, 0x01, 0, 0x55667788),
        (0x00, 0x00, 0, 0x11223344),
        (0x18, 0x12, 0, 7),  # src = BPF_PSEUDO_MAP_FD
        (0x00, 0x00, 0, 0),
    ]


def test_jumps_forward_and_backward_count_slots() -> None:
    asm = Assembler()
    top, end = asm.label("top"), asm.label("end")
    asm.place(top)
    asm.jmp(R1, "==", 0, end)  # slot 0
    asm.ld_imm64(R2, 1)  # slots 1, 2
    asm.jmp(R1, "s>", R2, top)  # slot 3
    asm.goto(top)  # slot 4
    asm.place(end)
    asm.exit()  # slot 5
    code = insns(asm.assemble())
    assert code[0] == (0x15, 0x01, 4, 0)
    assert code[3] == (0x6D, 0x21, -4, 0)
    assert code[4] == (0x05, 0x00, -5, 0)


def test_mistakes_are_caught() -> None:
    asm = Assembler()
    nowhere = asm.label("nowhere")
    asm.goto(nowhere)
    with pytest.raises(ValueError, match="never placed"):
        asm.assemble()
    asm.place(nowhere)
    with pytest.raises(ValueError, match="placed twice"):
        asm.place(nowhere)
    with pytest.raises(ValueError, match="does not fit"):
        asm.mov(R0, 1 << 31)
    far = Assembler()
    target = far.label()
    far.goto(target)
    for _ in range(1 << 15):
        far.mov(R0, 0)
    far.place(target)
    far.exit()
    with pytest.raises(ValueError, match="too far"):
        far.assemble()


def test_enum_operands_encode_as_their_numbers() -> None:
    asm = Assembler()
    asm.call(Helper.RINGBUF_OUTPUT)
    asm.mov(R1, Helper.MAP_LOOKUP_ELEM)
    assert insns(asm.assemble()) == [(0x85, 0x00, 0, 130), (0xB7, 0x01, 0, 1)]
