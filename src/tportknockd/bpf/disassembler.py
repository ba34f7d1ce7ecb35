"""Listings of BPF programs, for -d and for people reading a test failure."""

from __future__ import annotations

from collections.abc import Sequence

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
