"""Listings of BPF programs, for -d and for people reading a test failure."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

from tportknockd.bpf.classic import (
    BPF_A,
    BPF_ABS,
    BPF_ADD,
    BPF_ALU,
    BPF_AND,
    BPF_B,
    BPF_DIV,
    BPF_H,
    BPF_IMM,
    BPF_IND,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JGT,
    BPF_JMP,
    BPF_JSET,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_LEN,
    BPF_LSH,
    BPF_MEM,
    BPF_MISC,
    BPF_MOD,
    BPF_MSH,
    BPF_MUL,
    BPF_NEG,
    BPF_OR,
    BPF_RET,
    BPF_RSH,
    BPF_ST,
    BPF_STX,
    BPF_SUB,
    BPF_TAX,
    BPF_TXA,
    BPF_W,
    BPF_X,
    BPF_XOR,
    Insn,
)  # fmt: skip

_SIZE_SUFFIX = {BPF_W: "", BPF_H: "h", BPF_B: "b"}
_ALU_NAMES = {
    BPF_ADD: "add", BPF_SUB: "sub", BPF_MUL: "mul", BPF_DIV: "div", BPF_OR: "or",
    BPF_AND: "and", BPF_LSH: "lsh", BPF_RSH: "rsh", BPF_NEG: "neg", BPF_MOD: "mod",
    BPF_XOR: "xor",
}  # fmt: skip
_JUMP_NAMES = {BPF_JEQ: "jeq", BPF_JGT: "jgt", BPF_JGE: "jge", BPF_JSET: "jset"}


def disassemble(program: Sequence[Insn]) -> str:
    """The program in the style of `tcpdump -d`, one numbered line per instruction."""
    return "\n".join(_disassemble_one(index, insn) for index, insn in enumerate(program))


def _disassemble_one(index: int, insn: Insn) -> str:
    code, jt, jf, k = insn
    name, operand = _mnemonic(index, code, k)
    head = f"({index:03d}) {name:<8} {operand}".rstrip()
    if code & 0x07 == BPF_JMP and code & 0xF0 != BPF_JA:
        return f"({index:03d}) {name:<8} {operand:<16} jt {index + 1 + jt}\tjf {index + 1 + jf}"
    return head


def _mnemonic(index: int, code: int, k: int) -> tuple[str, str]:
    cls = code & 0x07
    if cls in (BPF_LD, BPF_LDX):
        return _load_mnemonic(code, k)
    if cls == BPF_ST:
        return "st", f"M[{k}]"
    if cls == BPF_STX:
        return "stx", f"M[{k}]"
    if cls == BPF_ALU:
        return _alu_mnemonic(code, k)
    if cls == BPF_JMP:
        if code & 0xF0 == BPF_JA:
            return "ja", str(index + 1 + k)
        name = _JUMP_NAMES.get(code & 0xF0)
        if name is not None:
            return name, "x" if code & BPF_X else f"#0x{k:x}"
    if cls == BPF_RET:
        return "ret", {BPF_K: f"#{k}", BPF_X: "x", BPF_A: "a"}.get(code & 0x18, "?")
    if cls == BPF_MISC:
        if code & 0xF8 == BPF_TAX:
            return "tax", ""
        if code & 0xF8 == BPF_TXA:
            return "txa", ""
    return "unimp", f"0x{code:x}"


def _load_mnemonic(code: int, k: int) -> tuple[str, str]:
    register = "ld" if code & 0x07 == BPF_LD else "ldx"
    size = _SIZE_SUFFIX.get(code & 0x18, "?")
    mode = code & 0xE0
    if mode == BPF_ABS:
        return register + size, f"[{k}]"
    if mode == BPF_IND:
        return register + size, f"[x + {k}]"
    if mode == BPF_IMM:
        return register, f"#0x{k:x}"
    if mode == BPF_MEM:
        return register, f"M[{k}]"
    if mode == BPF_LEN:
        return register, "#pktlen"
    if mode == BPF_MSH:
        return "ldxb", f"4*([{k}]&0xf)"
    return "unimp", f"0x{code:x}"


def _alu_mnemonic(code: int, k: int) -> tuple[str, str]:
    name = _ALU_NAMES.get(code & 0xF0, "unimp")
    if code & 0xF0 == BPF_NEG:
        return name, ""
    if code & BPF_X:
        return name, "x"
    return name, f"#0x{k:x}" if code & 0xF0 in (BPF_AND, BPF_OR, BPF_XOR) else f"#{k}"


# -- eBPF ------------------------------------------------------------------------------------
#
# The notation is the kernel verifier's log and `bpftool prog dump xlated`'s, with slot numbers
# of four digits and jump targets spelled out.

_INSN = struct.Struct("=BBhi")
_SLOT = _INSN.size


class _EBPF:
    """The encoding, as bpf/ebpf_assembler.py writes it. Not imported from there: the Python
    engine's start-up imports this module for the classic listing, and the assembler is the
    kernel engine's alone (tests/test_disassembler.py reads back every operation it writes)."""

    LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)
    W, H, B, DW = 0x00, 0x08, 0x10, 0x18
    IMM, ABS, IND, MEM = 0x00, 0x20, 0x40, 0x60
    X = 0x08
    PSEUDO_MAP_FD = 1

_BPF_MEMSX, _BPF_ATOMIC = 0x80, 0xC0
_BPF_FETCH, _BPF_XCHG, _BPF_CMPXCHG = 0x01, 0xE1, 0xF1
_BPF_NEG, _BPF_END, _BPF_MOV, _BPF_DIV, _BPF_MOD = 0x80, 0xD0, 0xB0, 0x30, 0x90
_BPF_JA, _BPF_CALL, _BPF_EXIT = 0x00, 0x80, 0x90
_BPF_PSEUDO_MAP_VALUE, _BPF_PSEUDO_CALL, _BPF_PSEUDO_KFUNC_CALL = 2, 1, 2
_SKF_NET_OFF, _SKF_LL_OFF = -0x100000, -0x200000

_EBPF_ALU = {
    0x00: "+", 0x10: "-", 0x20: "*", 0x30: "/", 0x40: "|", 0x50: "&", 0x60: "<<", 0x70: ">>",
    0x90: "%", 0xA0: "^", 0xB0: "", 0xC0: "s>>",
}  # fmt: skip
_EBPF_JUMPS = {
    0x10: "==", 0x20: ">", 0x30: ">=", 0x40: "&", 0x50: "!=", 0x60: "s>", 0x70: "s>=",
    0xA0: "<", 0xB0: "<=", 0xC0: "s<", 0xD0: "s<=",
}  # fmt: skip
_ATOMIC_OPS = {0x00: "add", 0x40: "or", 0x50: "and", 0xA0: "xor"}
_BITWISE = {"&", "|", "^"}  # their immediates read best in hex
_UNSIGNED = {_EBPF.B: "u8", _EBPF.H: "u16", _EBPF.W: "u32", _EBPF.DW: "u64"}
_SIGNED = {_EBPF.B: "s8", _EBPF.H: "s16", _EBPF.W: "s32"}


def disassemble_ebpf(code: bytes) -> str:
    """An eBPF program, one line per instruction, numbered by slot as jumps count them (a
    64-bit immediate load takes two slots and one line)."""
    if len(code) % _SLOT:
        raise ValueError(f"{len(code)} bytes is not a whole number of instructions")
    return "\n".join(f"({slot:04d}) {text}" for slot, text in _ebpf_lines(code))


def _ebpf_lines(code: bytes) -> Iterator[tuple[int, str]]:
    slots = len(code) // _SLOT
    slot = 0
    while slot < slots:
        opcode, regs, off, imm = _INSN.unpack_from(code, slot * _SLOT)
        dst, src = regs & 0x0F, regs >> 4
        if opcode == _EBPF.LD | _EBPF.DW | _EBPF.IMM:
            if slot + 1 == slots:
                yield slot, "unknown: a 64-bit load without its second slot"
                return
            high = _INSN.unpack_from(code, (slot + 1) * _SLOT)[3]
            yield slot, _ld_imm64(dst, src, imm, high)
            slot += 2
            continue
        yield slot, _ebpf_insn(slot, opcode, dst, src, off, imm)
        slot += 1


def _ebpf_insn(slot: int, opcode: int, dst: int, src: int, off: int, imm: int) -> str:
    cls = opcode & 0x07
    if cls in (_EBPF.ALU, _EBPF.ALU64):
        return _ebpf_alu(opcode, dst, src, off, imm)
    if cls in (_EBPF.JMP, _EBPF.JMP32):
        return _ebpf_jump(slot, opcode, dst, src, off, imm)
    if cls == _EBPF.LDX:
        return _ebpf_load(opcode, dst, src, off)
    if cls in (_EBPF.ST, _EBPF.STX):
        return _ebpf_store(opcode, dst, src, off, imm)
    if cls == _EBPF.LD:
        return _ebpf_packet_load(opcode, src, imm)
    return _unknown(opcode)


def _unknown(opcode: int) -> str:
    return f"unknown opcode {opcode:#04x}"


def _reg(number: int, bits: int = 64) -> str:
    return f"{'r' if bits == 64 else 'w'}{number}"


def _number(value: int, hex_: bool = False) -> str:
    """Small numbers in decimal, large ones and bit masks in hex."""
    if hex_ or not -256 < value < 256:
        return f"-{-value:#x}" if value < 0 else f"{value:#x}"
    return str(value)


def _address(base: int, off: int) -> str:
    return f"(r{base} {'-' if off < 0 else '+'} {abs(off)})"


def _ebpf_alu(opcode: int, dst: int, src: int, off: int, imm: int) -> str:
    bits = 64 if opcode & 0x07 == _EBPF.ALU64 else 32
    op, x = opcode & 0xF0, opcode & _EBPF.X
    target = _reg(dst, bits)
    if op == _BPF_NEG:
        return f"{target} = -{target}"
    if op == _BPF_END:
        return _byte_swap(bits, x, dst, imm)
    symbol = _EBPF_ALU.get(op)
    if symbol is None:
        return _unknown(opcode)
    if op in (_BPF_DIV, _BPF_MOD) and off == 1:
        symbol = "s" + symbol
    operand = _reg(src, bits) if x else _number(imm, symbol in _BITWISE)
    if op == _BPF_MOV and x and off in (8, 16, 32):
        operand = f"(s{off}){operand}"  # sign-extending move
    return f"{target} {symbol}= {operand}"


def _byte_swap(bits: int, to_big: int, dst: int, width: int) -> str:
    # ALU64 | END swaps unconditionally; ALU | END converts host order to or from one order
    kind = "bswap" if bits == 64 else "be" if to_big else "le"
    return f"r{dst} = {kind}{width} r{dst}"


def _ebpf_jump(slot: int, opcode: int, dst: int, src: int, off: int, imm: int) -> str:
    bits = 64 if opcode & 0x07 == _EBPF.JMP else 32
    op = opcode & 0xF0
    if op == _BPF_JA:
        distance = off if bits == 64 else imm  # JMP32 | JA: gotol, its offset in imm
        return f"goto{'' if bits == 64 else 'l'} {_jump_target(slot, distance)}"
    if op == _BPF_CALL and bits == 64:
        return _call(slot, src, imm)
    if op == _BPF_EXIT and bits == 64:
        return "exit"
    symbol = _EBPF_JUMPS.get(op)
    if symbol is None:
        return _unknown(opcode)
    operand = _reg(src, bits) if opcode & _EBPF.X else _number(imm, symbol in _BITWISE)
    return f"if {_reg(dst, bits)} {symbol} {operand} goto {_jump_target(slot, off)}"


def _jump_target(slot: int, distance: int) -> str:
    return f"{distance:+d} (-> {slot + 1 + distance:04d})"


def _call(slot: int, src: int, imm: int) -> str:
    if src == _BPF_PSEUDO_CALL:
        return f"call pc{_jump_target(slot, imm)}"
    if src == _BPF_PSEUDO_KFUNC_CALL:
        return f"call kfunc {imm}"
    from tportknockd.bpf.ebpf_assembler import Helper  # loaded already where eBPF is listed

    try:
        return f"call {imm} ({Helper(imm).name.lower()})"
    except ValueError:
        return f"call {imm}"


def _ebpf_load(opcode: int, dst: int, src: int, off: int) -> str:
    mode, size = opcode & 0xE0, opcode & 0x18
    if mode == _EBPF.MEM:
        return f"r{dst} = *({_UNSIGNED[size]} *){_address(src, off)}"
    if mode == _BPF_MEMSX and size in _SIGNED:
        return f"r{dst} = *({_SIGNED[size]} *){_address(src, off)}"
    return _unknown(opcode)


def _ebpf_store(opcode: int, dst: int, src: int, off: int, imm: int) -> str:
    mode, size = opcode & 0xE0, opcode & 0x18
    where = f"({_UNSIGNED[size]} *){_address(dst, off)}"
    if mode == _EBPF.MEM:
        value = f"r{src}" if opcode & 0x07 == _EBPF.STX else _number(imm)
        return f"*{where} = {value}"
    if mode == _BPF_ATOMIC and opcode & 0x07 == _EBPF.STX and size in (_EBPF.W, _EBPF.DW):
        return _atomic(opcode, size, where, src, imm)
    return _unknown(opcode)


def _atomic(opcode: int, size: int, where: str, src: int, imm: int) -> str:
    """BPF_ATOMIC: the operation is in the immediate, BPF_FETCH returns the old value in src
    (in R0 for a compare-and-exchange)."""
    prefix = "atomic64" if size == _EBPF.DW else "atomic"
    if imm == _BPF_XCHG:
        return f"r{src} = {prefix}_xchg({where}, r{src})"
    if imm == _BPF_CMPXCHG:
        return f"r0 = {prefix}_cmpxchg({where}, r0, r{src})"
    name = _ATOMIC_OPS.get(imm & ~_BPF_FETCH)
    if name is None:
        return _unknown(opcode)
    if imm & _BPF_FETCH:
        return f"r{src} = {prefix}_fetch_{name}({where}, r{src})"
    symbol = {"add": "+", "or": "|", "and": "&", "xor": "^"}[name]
    return f"lock *{where} {symbol}= r{src}"


def _ld_imm64(dst: int, src: int, low: int, high: int) -> str:
    if src == _EBPF.PSEUDO_MAP_FD:
        return f"r{dst} = map[fd {low}]"
    if src == _BPF_PSEUDO_MAP_VALUE:
        return f"r{dst} = map[fd {low}] + {high}"  # a pointer into an array map's value
    if src != 0:
        return f"r{dst} = pseudo {src} imm {low} {high}"
    value = (high & 0xFFFFFFFF) << 32 | low & 0xFFFFFFFF
    return f"r{dst} = {value:#x} ll"


def _ebpf_packet_load(opcode: int, src: int, imm: int) -> str:
    """The legacy packet loads (BPF_ABS, BPF_IND): R0 = packet bytes, in network order,
    at an offset that may be relative to the link-layer or network header."""
    mode, size = opcode & 0xE0, opcode & 0x18
    if size not in (_EBPF.B, _EBPF.H, _EBPF.W) or mode not in (_EBPF.ABS, _EBPF.IND):
        return _unknown(opcode)
    where = _packet_offset(imm)
    if mode == _EBPF.IND:
        where = f"r{src} + {where}"
    return f"r0 = *({_UNSIGNED[size]} *)skb[{where}]"


def _packet_offset(offset: int) -> str:
    for base, name in ((_SKF_LL_OFF, "SKF_LL_OFF"), (_SKF_NET_OFF, "SKF_NET_OFF")):
        if base <= offset < base + 0x100000:
            return f"{name} + {offset - base}"
    return str(offset)
