"""Compile the configured knock frames into a classic BPF socket filter (SO_ATTACH_FILTER).

Every packet that reaches Python costs a ring slot, a wake-up and a parse, so the kernel drops
everything that cannot be part of a knock: the filter passes a frame only when it is IPv4 or
IPv6 (optionally behind one 802.1Q tag), is addressed to one of the local addresses it is given
and carries a (protocol, destination port, TCP flag byte) that some configured frame wants.
Non-first IPv4 fragments are dropped (they carry no ports). IPv6 packets whose next header is an
extension header that the packet parser can walk are passed on (cBPF has no loops to walk the
chain itself); the parser then decides.

The kernel usually strips a VLAN tag into packet metadata before packet sockets see the frame;
the in-filter tag handling covers what is left in the data, such as the inner tag of a QinQ
frame.

Program shape::

    ethertype → IPv4: dst chain → fragment offset → X = IHL → protocol
              → IPv6: dst trie  → X = 40 → next header (TCP, UDP; extension header → accept)
              → 802.1Q → the same two blocks with every offset 4 further (X too)
    TCP: one dst-port chain; a port with exact flags loads the flag byte and compares it whole
    UDP: one dst-port chain
    (the port chains read [x+16] and [x+27], so all four network blocks share them)

On a raw IP link (no link-layer header: tun, WireGuard) the version nibble takes the
ethertype's place and the network blocks are shifted 14 bytes nearer.

Jumps are written against labels; the assembler lays the program out back to front and
inserts a trampoline (a copy of the `ret`, or a `ja` with its 32-bit offset) wherever a
conditional jump would need more than 8 bits.
"""

from __future__ import annotations

import array
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tportknockd.model import PROTO_TCP, Frame, address_bytes

#: One `struct sock_filter`: (code, jt, jf, k).
Insn = tuple[int, int, int, int]

#: What an accepting program returns: enough for every header the parser reads, no payload.
SNAPLEN = 512

#: The kernel's limit on the length of a classic BPF program.
BPF_MAXINSNS = 4096

SO_ATTACH_FILTER = 26

#: IPv6 next-header values the filter passes to user space, where the chain is walked:
#: fragment, hop-by-hop, destination options, routing, authentication header.
IPV6_PASSED_EXTENSION_HEADERS = (44, 0, 60, 43, 51)

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

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100

# Offsets in an untagged Ethernet frame.
_ETHERTYPE = 12
_VLAN_TAG_LEN = 4
_RAW_IP_SHIFT = -14  # no Ethernet header: the IP header starts at 0, not 14
_IPV4_VERSION_IHL = 14
_IPV4_FRAGMENT = 20
_IPV4_PROTOCOL = 23
_IPV4_DST = 30
_IPV4_MORE_OFFSET_MASK = 0x1FFF
_IPV6_NEXT_HEADER = 20
_IPV6_DST = 38
_IPV6_HEADER_LEN = 40
# Relative to X = (transport header offset - 14), as `ldxb 4*([14]&0xf)` leaves it for IPv4.
_TRANSPORT_DST_PORT = 16
_TCP_FLAGS = 27


# -- assembler -------------------------------------------------------------------------------


class _Label:
    """A position in the program, fixed when `_Assembler.place` is called."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index: int | None = None


@dataclass(frozen=True)
class _Return:
    """A jump target that is any `ret #value`: the nearest one is as good as any other."""

    value: int


ACCEPT = _Return(SNAPLEN)
DROP = _Return(0)

_Target = _Label | _Return
# A conditional jump's branch left as None falls through to the next instruction.
_Branch = _Target | None


@dataclass
class _Op:
    code: int
    k: int = 0
    jt: _Branch = None
    jf: _Branch = None
    goto: _Label | None = None  # the target of an unconditional `ja`


# What a branch must reach: ("op", index of an original instruction) or ("ret", value).
_Key = tuple[str, int]


class _Assembler:
    def __init__(self) -> None:
        self._ops: list[_Op] = []

    def emit(self, code: int, k: int = 0, jt: _Branch = None, jf: _Branch = None) -> None:
        self._ops.append(_Op(code, k, jt, jf))

    def goto(self, target: _Target) -> None:
        if isinstance(target, _Return):
            self.emit(BPF_RET | BPF_K, target.value)
        else:
            self._ops.append(_Op(BPF_JMP | BPF_JA, goto=target))

    def place(self, label: _Label) -> None:
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
        _check_size(program)
        return program

    def _resolve(self, index: int) -> tuple[Insn, _Key | None, _Key | None]:
        """The instruction with its branches turned into keys (None: not a jump)."""
        op = self._ops[index]
        if op.goto is not None:
            return (op.code, 0, 0, 0), self._key(op.goto, index), None
        if op.code & 0x07 != BPF_JMP:
            return (op.code, 0, 0, op.k), None, None
        return (op.code, 0, 0, op.k), self._key(op.jt, index), self._key(op.jf, index)

    def _key(self, branch: _Branch, index: int) -> _Key:
        if isinstance(branch, _Return):
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


def _check_size(program: Sequence[Insn]) -> None:
    if len(program) > BPF_MAXINSNS:
        raise ValueError(
            f"the kernel filter would need {len(program)} instructions, more than the kernel's "
            f"limit of {BPF_MAXINSNS}: too many knock ports, flag sets or local addresses"
        )


# -- the knock filter ------------------------------------------------------------------------

#: For each protocol, port → the exact flag bytes wanted, or None when any flags will do.
_PortTable = dict[int, dict[int, frozenset[int] | None]]


def compile_filter(
    frames: Iterable[Frame], local_addrs: Iterable[str], raw_ip: bool = False
) -> list[Insn]:
    """The socket filter that passes exactly the packets that may be one of `frames` sent to
    one of `local_addrs` (plus IPv6 packets to those addresses with an extension header).

    `raw_ip` is for links whose packets start at the IP header, with no Ethernet header in
    front (tun, WireGuard, PPP, IP-in-IP tunnels).
    Raises ValueError for an address that is not an IP address, or when the program would be
    longer than the kernel allows.
    """
    ports = _port_table(frames)
    ipv4, ipv6 = _split_addresses(local_addrs)
    if not ports or not (ipv4 or ipv6):
        return drop_all()
    asm = _Assembler()
    transport = {proto: _Label() for proto in ports}
    # One network-layer block per family and link-layer header length, so that the untagged
    # path uses plain absolute loads; all of them share the transport blocks. A block's shift
    # is where its IP header starts relative to where it starts behind a plain Ethernet header.
    shifts = (_RAW_IP_SHIFT,) if raw_ip else (0, _VLAN_TAG_LEN)
    blocks = [
        (shift, ethertype, _Label())
        for shift in shifts
        for ethertype, present in ((ETH_P_IP, ipv4), (ETH_P_IPV6, ipv6))
        if present
    ]
    labels = {(shift, ethertype): label for shift, ethertype, label in blocks}
    if raw_ip:
        _emit_ip_version(asm, labels)
    else:
        _emit_link_layer(asm, labels)
    for shift, ethertype, label in blocks:
        asm.place(label)
        if ethertype == ETH_P_IP:
            _emit_ipv4(asm, shift, ipv4, transport)
        else:
            _emit_ipv6(asm, shift, ipv6, transport)
    for proto, label in transport.items():
        asm.place(label)
        _emit_port_chain(asm, ports[proto])
    return asm.assemble()


def drop_all() -> list[Insn]:
    """A program that passes nothing."""
    return [(BPF_RET | BPF_K, 0, 0, 0)]


def _port_table(frames: Iterable[Frame]) -> _PortTable:
    table: _PortTable = {}
    for frame in frames:
        ports = table.setdefault(frame.protocol, {})
        if frame.protocol != PROTO_TCP or frame.flags is None:
            ports[frame.port] = None
            continue
        wanted = ports.get(frame.port, frozenset())
        if wanted is not None:
            ports[frame.port] = wanted | {frame.flags}
    return {proto: dict(sorted(table[proto].items())) for proto in sorted(table)}


def _split_addresses(local_addrs: Iterable[str]) -> tuple[list[int], list[bytes]]:
    """IPv4 addresses as 32-bit numbers and IPv6 addresses as 16 bytes, sorted, no repeats."""
    ipv4: set[int] = set()
    ipv6: set[bytes] = set()
    for text in local_addrs:
        # A link-local address may come with its zone ("fe80::1%eth0"); the packet has none.
        packed = address_bytes(text.split("%", 1)[0])
        if len(packed) == 4:
            ipv4.add(int.from_bytes(packed, "big"))
        else:
            ipv6.add(packed)
    return sorted(ipv4), sorted(ipv6)


def _emit_link_layer(asm: _Assembler, blocks: dict[tuple[int, int], _Label]) -> None:
    """Branch on the ethertype, looking behind one 802.1Q tag."""
    untagged = _Label()
    asm.emit(BPF_LD | BPF_H | BPF_ABS, _ETHERTYPE)
    asm.emit(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_8021Q, jf=untagged)
    asm.emit(BPF_LD | BPF_H | BPF_ABS, _ETHERTYPE + _VLAN_TAG_LEN)
    _emit_dispatch(asm, [(kind, label) for (vlan, kind), label in blocks.items() if vlan], DROP)
    asm.place(untagged)
    _emit_dispatch(asm, [(kind, label) for (vlan, kind), label in blocks.items() if not vlan], DROP)


def _emit_ip_version(asm: _Assembler, blocks: dict[tuple[int, int], _Label]) -> None:
    """Branch on the IP version nibble, for links without a link-layer header."""
    asm.emit(BPF_LD | BPF_B | BPF_ABS, 0)
    asm.emit(BPF_ALU | BPF_AND | BPF_K, 0xF0)
    versions = {ETH_P_IP: 0x40, ETH_P_IPV6: 0x60}
    _emit_dispatch(asm, [(versions[kind], label) for (_, kind), label in blocks.items()], DROP)


def _emit_ipv4(
    asm: _Assembler, shift: int, addresses: Sequence[int], transport: dict[int, _Label]
) -> None:
    """Destination, fragment offset, then X = header length (+ shift) and A = protocol."""
    for_us = _Label()
    asm.emit(BPF_LD | BPF_W | BPF_ABS, shift + _IPV4_DST)
    _emit_dispatch(asm, [(address, for_us) for address in addresses], DROP)
    asm.place(for_us)
    asm.emit(BPF_LD | BPF_H | BPF_ABS, shift + _IPV4_FRAGMENT)
    asm.emit(BPF_JMP | BPF_JSET | BPF_K, _IPV4_MORE_OFFSET_MASK, jt=DROP)
    asm.emit(BPF_LDX | BPF_B | BPF_MSH, shift + _IPV4_VERSION_IHL)
    if shift:
        asm.emit(BPF_MISC | BPF_TXA)
        if shift > 0:
            asm.emit(BPF_ALU | BPF_ADD | BPF_K, shift)
        else:
            asm.emit(BPF_ALU | BPF_SUB | BPF_K, -shift)
        asm.emit(BPF_MISC | BPF_TAX)
    asm.emit(BPF_LD | BPF_B | BPF_ABS, shift + _IPV4_PROTOCOL)
    _emit_dispatch(asm, list(transport.items()), DROP)


def _emit_ipv6(
    asm: _Assembler, shift: int, addresses: Sequence[bytes], transport: dict[int, _Label]
) -> None:
    """Destination, then X = 40 (+ shift) and A = next header."""
    for_us = _Label()
    asm.emit(BPF_LD | BPF_W | BPF_ABS, shift + _IPV6_DST)
    _emit_address_trie(asm, shift, addresses, 0, for_us)
    asm.place(for_us)
    asm.emit(BPF_LDX | BPF_W | BPF_IMM, shift + _IPV6_HEADER_LEN)
    asm.emit(BPF_LD | BPF_B | BPF_ABS, shift + _IPV6_NEXT_HEADER)
    cases: list[tuple[int, _Target]] = list(transport.items())
    cases += [(header, ACCEPT) for header in IPV6_PASSED_EXTENSION_HEADERS]
    _emit_dispatch(asm, cases, DROP)


def _emit_address_trie(
    asm: _Assembler, shift: int, addresses: Sequence[bytes], word: int, for_us: _Label
) -> None:
    """Compare the destination one 32-bit word at a time (A holds word `word`).

    Local addresses usually share their first words, so each distinct prefix is compared once.
    """
    groups: dict[int, list[bytes]] = {}
    for address in addresses:
        groups.setdefault(int.from_bytes(address[4 * word : 4 * word + 4], "big"), []).append(
            address
        )
    if word == 3:
        _emit_dispatch(asm, [(value, for_us) for value in groups], DROP)
        return
    for position, (value, members) in enumerate(groups.items()):
        last = position == len(groups) - 1
        next_group: _Target = DROP if last else _Label()
        asm.emit(BPF_JMP | BPF_JEQ | BPF_K, value, jf=next_group)
        asm.emit(BPF_LD | BPF_W | BPF_ABS, shift + _IPV6_DST + 4 * (word + 1))
        _emit_address_trie(asm, shift, members, word + 1, for_us)
        if isinstance(next_group, _Label):
            asm.place(next_group)


def _emit_port_chain(asm: _Assembler, ports: dict[int, frozenset[int] | None]) -> None:
    """One comparison per port; a port with exact flags is followed by its flag comparisons,
    which a different port jumps over (so A still holds the port)."""
    asm.emit(BPF_LD | BPF_H | BPF_IND, _TRANSPORT_DST_PORT)
    for port, flags in ports.items():
        if flags is None:
            asm.emit(BPF_JMP | BPF_JEQ | BPF_K, port, jt=ACCEPT)
            continue
        other_port = _Label()
        asm.emit(BPF_JMP | BPF_JEQ | BPF_K, port, jf=other_port)
        asm.emit(BPF_LD | BPF_B | BPF_IND, _TCP_FLAGS)
        _emit_dispatch(asm, [(value, ACCEPT) for value in sorted(flags)], DROP)
        asm.place(other_port)
    asm.goto(DROP)


def _emit_dispatch(
    asm: _Assembler, cases: Sequence[tuple[int, _Target]], otherwise: _Target
) -> None:
    """Jump to the target of the first case equal to A, else to `otherwise`."""
    if not cases:
        asm.goto(otherwise)
        return
    for value, target in cases[:-1]:
        asm.emit(BPF_JMP | BPF_JEQ | BPF_K, value, jt=target)
    value, target = cases[-1]
    asm.emit(BPF_JMP | BPF_JEQ | BPF_K, value, jt=target, jf=otherwise)


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


# -- disassembly -----------------------------------------------------------------------------

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
