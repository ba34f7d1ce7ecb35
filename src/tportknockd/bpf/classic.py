"""Classic BPF (the socket filters of SO_ATTACH_FILTER): instructions, an assembler with
labels, and attaching a program to a socket.

Jumps are written against labels; the assembler lays the program out back to front and
inserts a trampoline (a copy of the `ret`, or a `ja` with its 32-bit offset) wherever a
conditional jump would need more than 8 bits.
"""

from __future__ import annotations

import array
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

#: One `struct sock_filter`: (code, jt, jf, k).
Insn = tuple[int, int, int, int]

#: The kernel's limit on the length of a classic BPF program.
BPF_MAXINSNS = 4096

SO_ATTACH_FILTER = 26

# Instruction classes, sizes, modes and operations of classic BPF (linux/bpf_common.h).
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = range(8)
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_LEN, BPF_MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50
BPF_LSH, BPF_RSH, BPF_NEG, BPF_MOD, BPF_XOR = 0x60, 0x70, 0x80, 0x90, 0xA0
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_K, BPF_X, BPF_A = 0x00, 0x08, 0x10
BPF_TAX, BPF_TXA = 0x00, 0x80

_MAX_COND_OFFSET = 0xFF
_MAX_JA_OFFSET = 0xFFFFFFFF


# -- assembler -------------------------------------------------------------------------------


class Label:
    """A position in the program, fixed when `Assembler.place` is called."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index: int | None = None


@dataclass(frozen=True)
class Return:
    """A jump target that is any `ret #value`: the nearest one is as good as any other."""

    value: int


Target = Label | Return
# A conditional jump's branch left as None falls through to the next instruction.
Branch = Target | None


@dataclass
class _Op:
    code: int
    k: int = 0
    jt: Branch = None
    jf: Branch = None
    goto: Label | None = None  # the target of an unconditional `ja`


# What a branch must reach: ("op", index of an original instruction) or ("ret", value).
_Key = tuple[str, int]


class Assembler:
    def __init__(self) -> None:
        self._ops: list[_Op] = []

    def emit(self, code: int, k: int = 0, jt: Branch = None, jf: Branch = None) -> None:
        self._ops.append(_Op(code, k, jt, jf))

    def goto(self, target: Target) -> None:
        if isinstance(target, Return):
            self.emit(BPF_RET | BPF_K, target.value)
        else:
            self._ops.append(_Op(BPF_JMP | BPF_JA, goto=target))

    def place(self, label: Label) -> None:
        label.index = len(self._ops)

    def assemble(self) -> list[Insn]:
        """Lay the program out back to front, adding trampolines for far conditional jumps.

        Placing an instruction only ever adds instructions after it, so when a jump is placed
        the distances to everything behind it are final: one pass suffices.
        """
        layout = _BackwardLayout()
        for index in range(len(self._ops) - 1, -1, -1):
            layout.place(index, *self._resolve(index))
        program = layout.program()
        check_size(program)
        return program

    def _resolve(self, index: int) -> tuple[Insn, _Key | None, _Key | None]:
        """The instruction with its branches turned into keys (None: not a jump)."""
        op = self._ops[index]
        if op.goto is not None:
            return (op.code, 0, 0, 0), self._key(op.goto, index), None
        if op.code & 0x07 != BPF_JMP:
            return (op.code, 0, 0, op.k), None, None
        return (op.code, 0, 0, op.k), self._key(op.jt, index), self._key(op.jf, index)

    def _key(self, branch: Branch, index: int) -> _Key:
        if isinstance(branch, Return):
            return ("ret", branch.value)
        target = index + 1 if branch is None else branch.index
        if target is None or target <= index or target >= len(self._ops):
            raise AssertionError(f"instruction {index} jumps to {target}: not forward in program")
        return ("op", target)


class _BackwardLayout:
    """The program's tail, built from the last instruction towards the first.

    `_tail[0]` is the last instruction. For every key, `_reach` lists the tail positions of the
    instructions that do what jumping there does (the instruction itself, `ja` trampolines to
    it, any `ret` with that value) in increasing order: the first entry is the real target,
    the last the one nearest to the instruction being placed.
    """

    def __init__(self) -> None:
        self._tail: list[Insn] = []
        self._reach: dict[_Key, list[int]] = {}

    def place(self, index: int, insn: Insn, jt: _Key | None, jf: _Key | None) -> None:
        code, _, _, k = insn
        if jt is not None and jf is None:  # `ja`
            offset = self._offset(jt, _MAX_JA_OFFSET)
            assert offset is not None, "a `ja` always reaches its target"
            insn = (code, 0, 0, offset)
        elif jt is not None and jf is not None:
            insn = (code, *self._branch_offsets(jt, jf), k)
        self._append(insn, ("op", index))
        if code & 0x07 == BPF_RET and code & 0x18 == BPF_K:
            self._reach.setdefault(("ret", k), []).append(len(self._tail) - 1)
        elif jt is not None and jf is None:  # a `ja` is as good as its target
            self._reach.setdefault(jt, []).append(len(self._tail) - 1)

    def program(self) -> list[Insn]:
        return self._tail[::-1]

    def _branch_offsets(self, jt: _Key, jf: _Key) -> tuple[int, int]:
        # Each trampoline lengthens the other branch by one, so check both again after it.
        while True:
            true_offset = self._offset(jt, _MAX_COND_OFFSET)
            false_offset = self._offset(jf, _MAX_COND_OFFSET)
            if true_offset is None:
                self._add_trampoline(jt)
            elif false_offset is None:
                self._add_trampoline(jf)
            else:
                return true_offset, false_offset

    def _offset(self, key: _Key, limit: int) -> int | None:
        """Offset from the instruction about to be placed to the real target of `key` if it
        is within `limit`, else to the nearest trampoline to it if that is; else None."""
        positions = self._reach.get(key)
        if not positions:
            return None
        for position in (positions[0], positions[-1]):
            offset = len(self._tail) - 1 - position
            if offset <= limit:
                return offset
        return None

    def _add_trampoline(self, key: _Key) -> None:
        kind, value = key
        if kind == "ret":
            insn = (BPF_RET | BPF_K, 0, 0, value)
        else:
            offset = self._offset(key, _MAX_JA_OFFSET)
            assert offset is not None, "jumps only go forward, so the target is already placed"
            insn = (BPF_JMP | BPF_JA, 0, 0, offset)
        self._append(insn, key)

    def _append(self, insn: Insn, key: _Key) -> None:
        self._tail.append(insn)
        self._reach.setdefault(key, []).append(len(self._tail) - 1)


def check_size(program: Sequence[Insn]) -> None:
    if len(program) > BPF_MAXINSNS:
        raise ValueError(
            f"the kernel filter would need {len(program)} instructions, more than the kernel's "
            f"limit of {BPF_MAXINSNS}: too many knock ports, flag sets or local addresses"
        )


# -- the kernel interface --------------------------------------------------------------------

_SOCK_FILTER = struct.Struct("=HBBI")


def pack(program: Sequence[Insn]) -> bytes:
    """The program as an array of `struct sock_filter` in host byte order."""
    out = bytearray()
    for index, (code, jt, jf, k) in enumerate(program):
        try:
            out += _SOCK_FILTER.pack(code, jt, jf, k)
        except struct.error:
            raise ValueError(
                f"instruction {index} {(code, jt, jf, k)} does not fit struct sock_filter"
            ) from None
    return bytes(out)


# struct sock_fprog { unsigned short len; struct sock_filter *filter; }, native alignment.
_SOCK_FPROG = struct.Struct("@HP")


class Attachable(Protocol):
    """A program that attaches itself to a socket: the kernel engine's eBPF program."""

    def attach(self, sock: socket.socket) -> None: ...


#: What a capture socket is given as its filter: classic instructions, or an eBPF program.
Program = Sequence[Insn] | Attachable


def attach_program(sock: socket.socket, program: Program) -> None:
    """Attach (or atomically replace) the socket's filter, classic or eBPF."""
    if isinstance(program, Sequence):
        attach(sock, program)
    else:
        program.attach(sock)


def attach(sock: socket.socket, program: Sequence[Insn]) -> None:
    """Attach (or atomically replace) the socket's filter. The kernel checks the program and
    raises OSError (EINVAL) for an invalid one."""
    if not 1 <= len(program) <= BPF_MAXINSNS:
        raise ValueError(
            f"a filter program has 1 to {BPF_MAXINSNS} instructions, not {len(program)}"
        )
    # The kernel copies the instructions during setsockopt; the buffer only has to outlive it.
    # An array gives their address without ctypes (which costs the daemon 0.7 MB to import).
    code = array.array("B", pack(program))
    address, _ = code.buffer_info()
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _SOCK_FPROG.pack(len(program), address))
