"""Listings of BPF programs: the classic filter (as tcpdump -d has it) and the kernel engine's
eBPF program (as the kernel verifier's log has it), read by people, so every line must say
what its instruction does."""

from __future__ import annotations

import re
import struct
from typing import get_args

import pytest

from privileges import BPF, require_root
from tportknockd.bpf.disassembler import disassemble, disassemble_ebpf
from tportknockd.bpf.ebpf_assembler import (
    FP,
    R0,
    R1,
    R2,
    R6,
    R7,
    AluOp,
    Assembler,
    JumpOp,
)
from tportknockd.capture import knock_filter
from tportknockd.kernel import program as kp
from tportknockd.kernel.matcher import Capacity, KernelMatcher
from tportknockd.model import SYN, Frame

TCP_ = 6
SERVER_V4 = "198.51.100.1"
MAPS = kp.MapFds(frames=3, local=4, fresh=5, advanced=6, clock=7, ring=8, counters=9)
LINE = re.compile(r"\((\d{4})\) (.+)")
LD_IMM64 = 0x18


def listing(asm: Assembler) -> list[str]:
    return disassemble_ebpf(asm.assemble()).splitlines()


def raw(*insns: tuple[int, int, int, int]) -> bytes:
    """Instructions the assembler has no method for: (opcode, dst | src << 4, off, imm)."""
    return b"".join(struct.pack("=BBhi", *insn) for insn in insns)


def opcodes(code: bytes) -> list[int]:
    """The opcode of each slot (a 64-bit load's second slot is 0)."""
    return [code[at] for at in range(0, len(code), 8)]


# -- classic ---------------------------------------------------------------------------------


def test_classic_filter_listing() -> None:
    program = knock_filter.compile_filter([Frame(TCP_, 7000, SYN)], [SERVER_V4])
    text = disassemble(program)
    lines = text.splitlines()
    assert len(lines) == len(program)
    assert lines[0] == "(000) ldh      [12]"
    assert lines[1] == "(001) jeq      #0x8100          jt 2\tjf 4"
    assert "ldxb     4*([14]&0xf)" in text
    assert "ldh      [x + 16]" in text
    assert "ldb      [x + 27]" in text
    assert f"ret      #{knock_filter.SNAPLEN}" in text
    for index, line in enumerate(lines):
        assert line.startswith(f"({index:03d}) ")


def test_classic_instructions_the_filter_does_not_use() -> None:
    program = [
        (0x07, 0, 0, 0),  # tax
        (0x87, 0, 0, 0),  # txa
        (0x04, 0, 0, 4),  # add #4
        (0x54, 0, 0, 0xF),  # and #0xf
        (0x02, 0, 0, 3),  # st M[3]
        (0x60, 0, 0, 3),  # ld M[3]
        (0x05, 0, 0, 1),  # ja
        (0x80, 0, 0, 0),  # ld #pktlen
        (0x16, 0, 0, 0),  # ret a
    ]
    assert disassemble(program).splitlines() == [
        "(000) tax",
        "(001) txa",
        "(002) add      #4",
        "(003) and      #0xf",
        "(004) st       M[3]",
        "(005) ld       M[3]",
        "(006) ja       8",
        "(007) ld       #pktlen",
        "(008) ret      a",
    ]


# -- eBPF: exact lines -----------------------------------------------------------------------


def test_loads_stores_and_packet_loads() -> None:
    asm = Assembler()
    asm.mov(R6, R1)
    asm.load("h", R2, R6, 12)
    asm.store("w", FP, -76, 0)
    asm.store("dw", FP, -96, R0)
    asm.ld_abs("h", kp.SKF_LL_OFF + 12)
    asm.ld_ind("b", R7, kp.SKF_LL_OFF + 9)
    asm.ld_abs("w", 4)
    assert listing(asm) == [
        "(0000) r6 = r1",
        "(0001) r2 = *(u16 *)(r6 + 12)",
        "(0002) *(u32 *)(r10 - 76) = 0",
        "(0003) *(u64 *)(r10 - 96) = r0",
        "(0004) r0 = *(u16 *)skb[SKF_LL_OFF + 12]",
        "(0005) r0 = *(u8 *)skb[r7 + SKF_LL_OFF + 9]",
        "(0006) r0 = *(u32 *)skb[4]",
    ]


def test_wide_loads_take_two_slots_and_one_line() -> None:
    asm = Assembler()
    asm.ld_map_fd(R1, 7)
    asm.ld_imm64(R2, 0x9E3779B97F4A7C15)
    asm.call(1)
    asm.exit()
    assert listing(asm) == [
        "(0000) r1 = map[fd 7]",
        "(0002) r2 = 0x9e3779b97f4a7c15 ll",
        "(0004) call 1 (map_lookup_elem)",
        "(0005) exit",
    ]


def test_jumps_name_their_target() -> None:
    asm = Assembler()
    top, out = asm.label(), asm.label()
    asm.place(top)
    asm.jmp(R0, "!=", 0x8100, out)
    asm.jmp(R1, "s>", R2, top)
    asm.goto(top)
    asm.jmp(R1, "&", 4, out)
    asm.place(out)
    asm.ret(0)
    assert listing(asm) == [
        "(0000) if r0 != 0x8100 goto +3 (-> 0004)",
        "(0001) if r1 s> r2 goto -2 (-> 0000)",
        "(0002) goto -3 (-> 0000)",
        "(0003) if r1 & 0x4 goto +0 (-> 0004)",
        "(0004) r0 = 0",
        "(0005) exit",
    ]


def test_arithmetic() -> None:
    asm = Assembler()
    asm.alu(R2, "+", -76)
    asm.alu(R1, "&", 0xFFF8)
    asm.alu(R1, "s>>", 63)
    asm.alu(R1, ">>", 4, bits=32)
    asm.alu(R1, "*", R2)
    asm.mov(R0, 0xFFFF)
    assert listing(asm) == [
        "(0000) r2 += -76",
        "(0001) r1 &= 0xfff8",
        "(0002) r1 s>>= 63",
        "(0003) w1 >>= 4",
        "(0004) r1 *= r2",
        "(0005) r0 = 0xffff",
    ]


def test_instructions_the_assembler_does_not_write() -> None:
    code = raw(
        (0xDB, 0x21, 8, 0x00),  # BPF_STX | BPF_ATOMIC | BPF_DW, add
        (0xC3, 0x21, 0, 0x01),  # BPF_STX | BPF_ATOMIC | BPF_W, add with fetch
        (0xDB, 0x21, 0, 0xE1),  # xchg
        (0xDB, 0x21, 0, 0xF1),  # cmpxchg
        (0x87, 0x03, 0, 0),  # neg
        (0xDC, 0x01, 0, 16),  # to big-endian
        (0x1E, 0x21, 2, 0),  # JMP32 ==, registers
        (0x91, 0x21, -4, 0),  # sign-extending load
        (0x85, 0x10, 0, 3),  # a call to a BPF function
        (0x85, 0x00, 0, 999),  # a helper we have no name for
        (0xFF, 0x00, 0, 0),  # no such instruction
    )
    assert disassemble_ebpf(code).splitlines() == [
        "(0000) lock *(u64 *)(r1 + 8) += r2",
        "(0001) r2 = atomic_fetch_add((u32 *)(r1 + 0), r2)",
        "(0002) r2 = atomic64_xchg((u64 *)(r1 + 0), r2)",
        "(0003) r0 = atomic64_cmpxchg((u64 *)(r1 + 0), r0, r2)",
        "(0004) r3 = -r3",
        "(0005) r1 = be16 r1",
        "(0006) if w1 == w2 goto +2 (-> 0009)",
        "(0007) r1 = *(s8 *)(r2 - 4)",
        "(0008) call pc+3 (-> 0012)",
        "(0009) call 999",
        "(0010) unknown opcode 0xff",
    ]


def test_broken_code_is_said_to_be_broken() -> None:
    with pytest.raises(ValueError, match="whole number"):
        disassemble_ebpf(bytes(12))
    assert disassemble_ebpf(raw((LD_IMM64, 0x01, 0, 5))) == (
        "(0000) unknown: a 64-bit load without its second slot"
    )


@pytest.mark.parametrize("op", get_args(AluOp))
def test_every_assembler_alu_op_reads_back(op: str) -> None:
    asm = Assembler()
    asm.alu(R1, op, R2)  # type: ignore[arg-type]
    symbol = "" if op == "=" else op
    assert listing(asm) == [f"(0000) r1 {symbol}= r2"]


@pytest.mark.parametrize("op", get_args(JumpOp))
def test_every_assembler_jump_op_reads_back(op: str) -> None:
    asm = Assembler()
    here = asm.label()
    asm.place(here)
    asm.jmp(R1, op, R2, here)  # type: ignore[arg-type]
    assert listing(asm) == [f"(0000) if r1 {op} r2 goto -1 (-> 0000)"]


# -- eBPF: the kernel engine's program -------------------------------------------------------


@pytest.mark.parametrize("max_hits", [1, 4])
def test_every_instruction_of_the_generated_program_has_a_name(max_hits: int) -> None:
    code = kp.generate(MAPS, max_hits, fresh_buckets=1024, seed=1)
    lines = disassemble_ebpf(code).splitlines()
    by_slot = {int(m[1]): m[2] for m in map(LINE.fullmatch, lines) if m}
    assert len(by_slot) == len(lines)
    for slot, opcode in enumerate(opcodes(code)):
        if slot in by_slot:
            assert not by_slot[slot].startswith("unknown"), (slot, hex(opcode))
    used = {opcode for slot, opcode in enumerate(opcodes(code)) if slot in by_slot}
    assert {0x18, 0x28, 0x50, 0x61, 0x7B, 0x62, 0x85, 0x95, 0x05} <= used


def test_the_generated_program_has_one_line_per_instruction() -> None:
    code = kp.generate(MAPS, 2, fresh_buckets=2, seed=0)
    slots = opcodes(code)
    wide = [slot for slot, opcode in enumerate(slots) if opcode == LD_IMM64]
    lines = disassemble_ebpf(code).splitlines()
    assert len(lines) == len(slots) - len(wide)
    numbers = [int(line[1:5]) for line in lines]
    expected = [slot for slot in range(len(slots)) if slot - 1 not in wide]
    assert numbers == expected
    assert lines[-1].endswith(" exit")
    assert "r1 = map[fd 9]" in lines[2]  # the counters, looked up first


def test_the_loaded_program_is_kept_for_a_listing() -> None:
    require_root(BPF)
    capacity = Capacity(fresh_attempts=4096, advanced_attempts=1024, frame_keys=2048)
    with KernelMatcher(capacity, seed=7) as matcher:
        assert len(matcher.code) == 8 * matcher.instructions
        listed = disassemble_ebpf(matcher.code)
        counters = matcher.counters.fd
    assert f"r1 = map[fd {counters}]" in listed
    assert "call 130 (ringbuf_output)" in listed
