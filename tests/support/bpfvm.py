"""A small classic-BPF interpreter, so filter programs can be tested without a kernel.

It follows the kernel's semantics where they matter to a socket filter: A and X start at 0, a
load beyond the packet ends the program with 0 (drop), division by a zero X returns 0, and
`check` refuses what the kernel's checker refuses for the instructions implemented here.
Ancillary loads (negative offsets) are not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence

Insn = tuple[int, int, int, int]

MAXINSNS = 4096
MEMWORDS = 16
_MASK = 0xFFFFFFFF

# Classes
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
# Load sizes (in bytes) and modes
_SIZES = {0x00: 4, 0x08: 2, 0x10: 1}
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
# Source of the operand
K, X = 0x00, 0x08


class BadProgram(ValueError):
    """A program the kernel would not accept, or one that misbehaves at run time."""


def _alu(op: int, a: int, operand: int) -> int | None:
    """A op operand in 32 bits; None for a division by zero."""
    if op in (0x30, 0x90) and operand == 0:
        return None
    result = {
        0x00: lambda: a + operand,
        0x10: lambda: a - operand,
        0x20: lambda: a * operand,
        0x30: lambda: a // operand,
        0x40: lambda: a | operand,
        0x50: lambda: a & operand,
        0x60: lambda: a << operand if operand < 32 else 0,
        0x70: lambda: a >> operand if operand < 32 else 0,
        0x80: lambda: -a,
        0x90: lambda: a % operand,
        0xA0: lambda: a ^ operand,
    }[op]()
    return result & _MASK


def _load(packet: bytes, offset: int, size: int) -> int | None:
    if offset < 0 or offset > _MASK or offset + size > len(packet):
        return None
    return int.from_bytes(packet[offset : offset + size], "big")


def run(program: Sequence[Insn], packet: bytes, trace: list[int] | None = None) -> int:
    """Run `program` over `packet` (starting at the Ethernet header); the value it returns.

    The index of every instruction executed is appended to `trace` when given.
    """
    a = x = 0
    mem = [0] * MEMWORDS
    pc = 0
    while True:
        if not 0 <= pc < len(program):
            raise BadProgram(f"execution left the program at {pc}")
        if trace is not None:
            trace.append(pc)
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 0x07
        if cls in (LD, LDX):
            mode = code & 0xE0
            size = _SIZES[code & 0x18]
            if mode == IMM:
                value: int | None = k
            elif mode == ABS:
                value = _load(packet, k, size)
            elif mode == IND and cls == LD:
                value = _load(packet, (x + k) & _MASK, size)
            elif mode == MEM:
                value = mem[k]
            elif mode == LEN:
                value = len(packet)
            elif mode == MSH and cls == LDX:
                byte = _load(packet, k, 1)
                value = None if byte is None else (byte & 0x0F) * 4
            else:
                raise BadProgram(f"unknown load 0x{code:x} at {pc - 1}")
            if value is None:
                return 0
            if cls == LD:
                a = value
            else:
                x = value
        elif cls == ST:
            mem[k] = a
        elif cls == STX:
            mem[k] = x
        elif cls == ALU:
            result = _alu(code & 0xF0, a, x if code & X else k)
            if result is None:
                return 0
            a = result
        elif cls == JMP:
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            operand = x if code & X else k
            taken = {
                0x10: a == operand,
                0x20: a > operand,
                0x30: a >= operand,
                0x40: a & operand != 0,
            }[op]
            pc += jt if taken else jf
        elif cls == RET:
            return k if code & 0x18 == K else a
        else:  # MISC
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x


def check(program: Sequence[Insn]) -> None:
    """Raise BadProgram where the kernel's classic-BPF checker would refuse the program."""
    if not 1 <= len(program) <= MAXINSNS:
        raise BadProgram(f"length {len(program)}")
    for pc, (code, jt, jf, k) in enumerate(program):
        if not (0 <= code <= 0xFFFF and 0 <= jt <= 0xFF and 0 <= jf <= 0xFF and 0 <= k <= _MASK):
            raise BadProgram(f"field out of range at {pc}")
        if not _known(code):
            raise BadProgram(f"unknown instruction 0x{code:x} at {pc}")
        cls = code & 0x07
        uses_scratch = cls in (ST, STX) or (cls in (LD, LDX) and code & 0xE0 == MEM)
        if uses_scratch and k >= MEMWORDS:
            raise BadProgram(f"scratch word {k} at {pc}")
        if cls == ALU and code & 0xF0 in (0x30, 0x90) and not code & X and k == 0:
            raise BadProgram(f"division by constant zero at {pc}")
        if cls == JMP:
            targets = [pc + 1 + k] if code & 0xF0 == 0x00 else [pc + 1 + jt, pc + 1 + jf]
            if any(target >= len(program) for target in targets):
                raise BadProgram(f"jump out of the program at {pc}")
    if program[-1][0] & 0x07 != RET:
        raise BadProgram("the last instruction is not a return")
    _check_scratch_initialised(program)


def _known(code: int) -> bool:
    """Is `code` one of the classic instructions (the ones `run` implements)?"""
    cls, size, mode, op = code & 0x07, code & 0x18, code & 0xE0, code & 0xF0
    if code > 0xFF:
        return False
    if cls == LD:
        return (mode in (ABS, IND) and size in _SIZES) or code in (IMM, MEM, LEN)
    if cls == LDX:
        return code in (LDX | IMM, LDX | MEM, LDX | LEN, LDX | 0x10 | MSH)
    if cls in (ST, STX):
        return code == cls
    if cls == ALU:
        return op <= 0xA0 and not (op == 0x80 and code & X)
    if cls == JMP:
        return op <= 0x40 and not (op == 0x00 and code & X)
    if cls == RET:
        return code in (RET | K, RET | 0x10)  # ret #k, ret a
    return code in (MISC, MISC | 0x80)


def _check_scratch_initialised(program: Sequence[Insn]) -> None:
    """Every scratch word read must have been written on every path there (jumps only go
    forward, so one pass in program order sees all predecessors first)."""
    every = (1 << MEMWORDS) - 1
    written = [every] * len(program)
    written[0] = 0
    for pc, (code, jt, jf, k) in enumerate(program):
        state = written[pc]
        cls = code & 0x07
        if cls in (LD, LDX) and code & 0xE0 == MEM and not state >> k & 1:
            raise BadProgram(f"scratch word {k} read before it is written at {pc}")
        if cls in (ST, STX):
            state |= 1 << k
        if cls == RET:
            continue
        if cls != JMP:
            successors = [pc + 1]
        elif code & 0xF0 == 0x00:
            successors = [pc + 1 + k]
        else:
            successors = [pc + 1 + jt, pc + 1 + jf]
        for successor in successors:
            written[successor] &= state
