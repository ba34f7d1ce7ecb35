"""A small eBPF assembler: instructions written as method calls, jumps to labels.

    asm = Assembler()
    done = asm.label()
    asm.mov(R0, 0)
    asm.jmp(R1, "==", 0, done)      # forward or backward, any distance that fits 16 bits
    asm.mov(R0, 1)
    asm.place(done)
    asm.exit()
    code = asm.assemble()           # bytes for BPF_PROG_LOAD

Encoding (Documentation/bpf/standardization/instruction-set.rst): 8 bytes per instruction,
`code` (operation | source | class), `dst | src << 4`, a signed 16-bit offset, a signed 32-bit
immediate, in host byte order. A 64-bit immediate load takes two slots; with src =
BPF_PSEUDO_MAP_FD its immediate is a map's file descriptor, which the kernel swaps for the map.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Literal


class Reg(IntEnum):
    R0 = 0  # return value of helpers and of the program
    R1 = 1  # R1-R5: helper arguments, clobbered by calls
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6  # R6-R9: kept across calls
    R7 = 7
    R8 = 8
    R9 = 9
    R10 = 10  # frame pointer, read-only; the stack is the 512 bytes below it


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = Reg
FP = R10


class Helper(IntEnum):
    """Helper functions by number (include/uapi/linux/bpf.h): the ones our programs call, and a
    few more that a listing may meet."""

    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    KTIME_GET_NS = 5
    TRACE_PRINTK = 6
    GET_PRANDOM_U32 = 7
    GET_SMP_PROCESSOR_ID = 8
    SKB_LOAD_BYTES = 26
    SKB_LOAD_BYTES_RELATIVE = 68
    KTIME_GET_BOOT_NS = 125
    RINGBUF_OUTPUT = 130
    RINGBUF_RESERVE = 131
    RINGBUF_SUBMIT = 132
    RINGBUF_DISCARD = 133
    KTIME_GET_COARSE_NS = 160


# Classes.
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_JMP32, BPF_ALU64 = range(8)
# Sizes.
BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
# Modes.
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM = 0x00, 0x20, 0x40, 0x60
# Operand source.
BPF_K, BPF_X = 0x00, 0x08
BPF_PSEUDO_MAP_FD = 1

Size = Literal["b", "h", "w", "dw"]
_SIZES: dict[str, int] = {"b": BPF_B, "h": BPF_H, "w": BPF_W, "dw": BPF_DW}

AluOp = Literal["+", "-", "*", "/", "|", "&", "<<", ">>", "%", "^", "=", "s>>"]
_ALU_OPS: dict[str, int] = {
    "+": 0x00, "-": 0x10, "*": 0x20, "/": 0x30, "|": 0x40, "&": 0x50, "<<": 0x60,
    ">>": 0x70, "%": 0x90, "^": 0xA0, "=": 0xB0, "s>>": 0xC0,
}  # fmt: skip

JumpOp = Literal["==", "!=", ">", ">=", "<", "<=", "s>", "s>=", "s<", "s<=", "&"]
_JUMP_OPS: dict[str, int] = {
    "==": 0x10, ">": 0x20, ">=": 0x30, "&": 0x40, "!=": 0x50, "s>": 0x60, "s>=": 0x70,
    "<": 0xA0, "<=": 0xB0, "s<": 0xC0, "s<=": 0xD0,
}  # fmt: skip
_JA, _CALL, _EXIT = 0x00, 0x80, 0x90

_INSN = struct.Struct("=BBhi")
_OFF, _OFF_AT = struct.Struct("=h"), 2  # an instruction's offset field, and where it is
# `in range(...)` is a comparison for an int but a walk of the whole range for an int subclass
# (an IntEnum such as Helper), so the operands are converted first.
_S32 = range(-(1 << 31), 1 << 31)
_S16 = range(-(1 << 15), 1 << 15)

Operand = Reg | int


class Label:
    """A place in the program; jumps may name it before or after it is placed."""

    __slots__ = ("index", "name")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.index: int | None = None  # in slots, set by Assembler.place

    def __repr__(self) -> str:
        return f"Label({self.name!r}, {self.index})"


class Assembler:
    def __init__(self) -> None:
        # Each instruction is encoded as it comes: a program of thousands held as objects
        # until assemble() took half a megabyte at the kernel engine's start, which the
        # daemon's memory never gave back.
        self._code = bytearray()
        self._jumps: list[tuple[int, Label]] = []  # (slot, target): assemble() sets the offset

    def __len__(self) -> int:
        return len(self._code) // _INSN.size  # in slots (a 64-bit load takes two)

    def _add(
        self,
        code: int,
        dst: int = 0,
        src: int = 0,
        off: int = 0,
        imm: int = 0,
        target: Label | None = None,
    ) -> None:
        imm, off = int(imm), int(off)
        if imm not in _S32 or off not in _S16:
            raise ValueError(f"operand does not fit: code {code:#04x}, off {off}, imm {imm}")
        if target is not None:
            self._jumps.append((len(self), target))
        self._code += _INSN.pack(code, dst | src << 4, off, imm)

    # -- labels ----------------------------------------------------------------------------

    def label(self, name: str = "") -> Label:
        return Label(name)

    def place(self, label: Label) -> None:
        if label.index is not None:
            raise ValueError(f"{label} placed twice")
        label.index = len(self)

    # -- arithmetic ------------------------------------------------------------------------

    def alu(self, dst: Reg, op: AluOp, operand: Operand, *, bits: int = 64) -> None:
        """dst op= operand, in 64 bits (or 32, which zero-extends the result)."""
        cls = BPF_ALU64 if bits == 64 else BPF_ALU
        if isinstance(operand, Reg):
            self._add(cls | _ALU_OPS[op] | BPF_X, dst, operand)
        else:
            self._add(cls | _ALU_OPS[op] | BPF_K, dst, imm=operand)

    def mov(self, dst: Reg, operand: Operand) -> None:
        self.alu(dst, "=", operand)

    def ld_imm64(self, dst: Reg, value: int) -> None:
        """dst = a 64-bit constant (two slots)."""
        value &= (1 << 64) - 1
        low, high = value & 0xFFFFFFFF, value >> 32
        self._add(BPF_LD | BPF_DW | BPF_IMM, dst, imm=_signed32(low))
        self._add(0, imm=_signed32(high))

    def ld_map_fd(self, dst: Reg, fd: int) -> None:
        """dst = the map behind file descriptor `fd` (two slots)."""
        self._add(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, imm=fd)
        self._add(0)

    # -- memory ----------------------------------------------------------------------------

    def load(self, size: Size, dst: Reg, src: Reg, off: int) -> None:
        """dst = *(size *)(src + off)"""
        self._add(BPF_LDX | BPF_MEM | _SIZES[size], dst, src, off)

    def store(self, size: Size, dst: Reg, off: int, operand: Operand) -> None:
        """*(size *)(dst + off) = operand"""
        if isinstance(operand, Reg):
            self._add(BPF_STX | BPF_MEM | _SIZES[size], dst, operand, off)
        else:
            self._add(BPF_ST | BPF_MEM | _SIZES[size], dst, off=off, imm=operand)

    def ld_abs(self, size: Size, offset: int) -> None:
        """R0 = the packet's bytes at `offset`, big-endian (context in R6; R1-R5 clobbered).
        A load beyond the packet ends the program, returning 0."""
        self._add(BPF_LD | BPF_ABS | _SIZES[size], imm=offset)

    def ld_ind(self, size: Size, src: Reg, offset: int) -> None:
        """R0 = the packet's bytes at src + `offset`, like ld_abs."""
        self._add(BPF_LD | BPF_IND | _SIZES[size], src=src, imm=offset)

    # -- control ---------------------------------------------------------------------------

    def jmp(self, dst: Reg, op: JumpOp, operand: Operand, target: Label) -> None:
        """if dst op operand (64-bit compare): goto target"""
        if isinstance(operand, Reg):
            self._add(BPF_JMP | _JUMP_OPS[op] | BPF_X, dst, operand, target=target)
        else:
            self._add(BPF_JMP | _JUMP_OPS[op] | BPF_K, dst, imm=operand, target=target)

    def goto(self, target: Label) -> None:
        self._add(BPF_JMP | _JA, target=target)

    def call(self, helper: int) -> None:
        self._add(BPF_JMP | _CALL, imm=helper)

    def exit(self) -> None:
        self._add(BPF_JMP | _EXIT)

    def ret(self, value: int) -> None:
        self.mov(R0, value)
        self.exit()

    # -- output ----------------------------------------------------------------------------

    def assemble(self) -> bytes:
        code = bytearray(self._code)
        for slot, target in self._jumps:
            if target.index is None:
                raise ValueError(f"jump at {slot} to {target}, which was never placed")
            off = target.index - (slot + 1)
            if off not in _S16:
                raise ValueError(f"jump at {slot} to {target} is too far")
            _OFF.pack_into(code, slot * _INSN.size + _OFF_AT, off)
        return bytes(code)


def _signed32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value
