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

The program is written with the classic assembler of bpf/classic.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from tportknockd.bpf.classic import (
    BPF_ABS,
    BPF_ADD,
    BPF_ALU,
    BPF_AND,
    BPF_B,
    BPF_H,
    BPF_IMM,
    BPF_IND,
    BPF_JEQ,
    BPF_JMP,
    BPF_JSET,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_MISC,
    BPF_MSH,
    BPF_RET,
    BPF_SUB,
    BPF_TAX,
    BPF_TXA,
    BPF_W,
    Assembler,
    Insn,
    Label,
    Return,
    Target,
)  # fmt: skip
from tportknockd.capture.packet import ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6
from tportknockd.model import PROTO_TCP, Frame, address_bytes

log = logging.getLogger("tportknockd")

#: What an accepting program returns: enough for every header the parser reads, no payload.
SNAPLEN = 512

#: IPv6 next-header values the filter passes to user space, where the chain is walked:
#: fragment, hop-by-hop, destination options, routing, authentication header.
IPV6_PASSED_EXTENSION_HEADERS = (44, 0, 60, 43, 51)

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


ACCEPT = Return(SNAPLEN)
DROP = Return(0)


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
    asm = Assembler()
    transport = {proto: Label() for proto in ports}
    # One network-layer block per family and link-layer header length, so that the untagged
    # path uses plain absolute loads; all of them share the transport blocks. A block's shift
    # is where its IP header starts relative to where it starts behind a plain Ethernet header.
    shifts = (_RAW_IP_SHIFT,) if raw_ip else (0, _VLAN_TAG_LEN)
    blocks = [
        (shift, ethertype, Label())
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


def _emit_link_layer(asm: Assembler, blocks: dict[tuple[int, int], Label]) -> None:
    """Branch on the ethertype, looking behind one 802.1Q tag."""
    untagged = Label()
    asm.emit(BPF_LD | BPF_H | BPF_ABS, _ETHERTYPE)
    asm.emit(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_8021Q, jf=untagged)
    asm.emit(BPF_LD | BPF_H | BPF_ABS, _ETHERTYPE + _VLAN_TAG_LEN)
    _emit_dispatch(asm, [(kind, label) for (vlan, kind), label in blocks.items() if vlan], DROP)
    asm.place(untagged)
    _emit_dispatch(asm, [(kind, label) for (vlan, kind), label in blocks.items() if not vlan], DROP)


def _emit_ip_version(asm: Assembler, blocks: dict[tuple[int, int], Label]) -> None:
    """Branch on the IP version nibble, for links without a link-layer header."""
    asm.emit(BPF_LD | BPF_B | BPF_ABS, 0)
    asm.emit(BPF_ALU | BPF_AND | BPF_K, 0xF0)
    versions = {ETH_P_IP: 0x40, ETH_P_IPV6: 0x60}
    _emit_dispatch(asm, [(versions[kind], label) for (_, kind), label in blocks.items()], DROP)


def _emit_ipv4(
    asm: Assembler, shift: int, addresses: Sequence[int], transport: dict[int, Label]
) -> None:
    """Destination, fragment offset, then X = header length (+ shift) and A = protocol."""
    for_us = Label()
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
    asm: Assembler, shift: int, addresses: Sequence[bytes], transport: dict[int, Label]
) -> None:
    """Destination, then X = 40 (+ shift) and A = next header."""
    for_us = Label()
    asm.emit(BPF_LD | BPF_W | BPF_ABS, shift + _IPV6_DST)
    _emit_address_trie(asm, shift, addresses, 0, for_us)
    asm.place(for_us)
    asm.emit(BPF_LDX | BPF_W | BPF_IMM, shift + _IPV6_HEADER_LEN)
    asm.emit(BPF_LD | BPF_B | BPF_ABS, shift + _IPV6_NEXT_HEADER)
    cases: list[tuple[int, Target]] = list(transport.items())
    cases += [(header, ACCEPT) for header in IPV6_PASSED_EXTENSION_HEADERS]
    _emit_dispatch(asm, cases, DROP)


def _emit_address_trie(
    asm: Assembler, shift: int, addresses: Sequence[bytes], word: int, for_us: Label
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
        next_group: Target = DROP if last else Label()
        asm.emit(BPF_JMP | BPF_JEQ | BPF_K, value, jf=next_group)
        asm.emit(BPF_LD | BPF_W | BPF_ABS, shift + _IPV6_DST + 4 * (word + 1))
        _emit_address_trie(asm, shift, members, word + 1, for_us)
        if isinstance(next_group, Label):
            asm.place(next_group)


def _emit_port_chain(asm: Assembler, ports: dict[int, frozenset[int] | None]) -> None:
    """One comparison per port; a port with exact flags is followed by its flag comparisons,
    which a different port jumps over (so A still holds the port)."""
    asm.emit(BPF_LD | BPF_H | BPF_IND, _TRANSPORT_DST_PORT)
    for port, flags in ports.items():
        if flags is None:
            asm.emit(BPF_JMP | BPF_JEQ | BPF_K, port, jt=ACCEPT)
            continue
        other_port = Label()
        asm.emit(BPF_JMP | BPF_JEQ | BPF_K, port, jf=other_port)
        asm.emit(BPF_LD | BPF_B | BPF_IND, _TCP_FLAGS)
        _emit_dispatch(asm, [(value, ACCEPT) for value in sorted(flags)], DROP)
        asm.place(other_port)
    asm.goto(DROP)


def _emit_dispatch(asm: Assembler, cases: Sequence[tuple[int, Target]], otherwise: Target) -> None:
    """Jump to the target of the first case equal to A, else to `otherwise`."""
    if not cases:
        asm.goto(otherwise)
        return
    for value, target in cases[:-1]:
        asm.emit(BPF_JMP | BPF_JEQ | BPF_K, value, jt=target)
    value, target = cases[-1]
    asm.emit(BPF_JMP | BPF_JEQ | BPF_K, value, jt=target, jf=otherwise)


def classic_filter(
    frames: Iterable[Frame], local_addrs: Iterable[str], raw_ip: bool, debug: bool = False
) -> list[Insn]:
    """`compile_filter`, and with -d its listing in the log."""
    program = compile_filter(frames, local_addrs, raw_ip)
    if debug:
        # Only -d needs the disassembler: it stays out of the daemon's memory otherwise.
        from tportknockd.bpf.disassembler import disassemble

        log.debug("kernel filter (%d instructions):\n%s", len(program), disassemble(program))
    return program
