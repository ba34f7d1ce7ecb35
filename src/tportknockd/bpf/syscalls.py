"""The bpf(2) system call from Python: maps, program loading, test runs, ring buffers, and the
kernel's run statistics of loaded programs.

Python has no binding for bpf(2), so the call goes through ctypes' `syscall()`. ctypes is
imported on the first call, not with this module: it costs the daemon ~0.7 MB of resident
memory, which the Python engine has no reason to pay.

Each command takes a `union bpf_attr`; we fill a zeroed buffer of `_ATTR_SIZE` bytes with the
fields it needs, at the offsets of include/uapi/linux/bpf.h. Pointers inside the attribute are
addresses of ctypes buffers that live until the call returns.

A BPF ring buffer is read without ctypes: it is an mmap of the map's file descriptor (the
consumer position page is writable, the producer page and the data pages are read-only).
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# Commands (enum bpf_cmd).
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_ENABLE_STATS = 32

# enum bpf_stats_type.
BPF_STATS_RUN_TIME = 0

# Map types (enum bpf_map_type).
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_RINGBUF = 27

# Map flags.
BPF_F_NO_PREALLOC = 1
BPF_F_NO_COMMON_LRU = 2  # an LRU list per CPU: no lock shared between CPUs

# Update flags.
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_PROG_TYPE_SOCKET_FILTER = 1

SO_ATTACH_BPF = 50

#: sizeof(union bpf_attr) has grown over the years; the kernel accepts a larger buffer as long
#: as the bytes it does not know are zero.
_ATTR_SIZE = 144

#: bpf(2) by machine; other architectures are reported as unsupported.
_SYSCALL_NUMBERS = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "i686": 357, "i386": 357}

# union bpf_attr layouts for the commands we use.
_MAP_CREATE = struct.Struct("=IIIII")  # map_type, key_size, value_size, max_entries, map_flags
_MAP_NAME_OFFSET = 28  # char map_name[16], after inner_map_fd and numa_node
_MAP_ELEM = struct.Struct("=I4xQQQ")  # map_fd, key, value (or next_key), flags
# in_batch, out_batch, keys, values, count, map_fd, elem_flags, flags
_MAP_BATCH = struct.Struct("=QQQQIIQQ")
_BATCH_SIZE = 4096
# prog_type, insn_cnt, insns, license, log_level, log_size, log_buf
_PROG_LOAD = struct.Struct("=IIQQIIQ")
_PROG_NAME_OFFSET = 48  # char prog_name[16], after kern_version and prog_flags
# prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat, duration
_TEST_RUN = struct.Struct("=IIIIQQII")
# start_id (or prog_id), next_id, open_flags: BPF_PROG_GET_NEXT_ID and BPF_PROG_GET_FD_BY_ID
_GET_ID = struct.Struct("=III")
_GET_INFO = struct.Struct("=IIQ")  # bpf_fd, info_len (in: our size; out: what was written), info
_ENABLE_STATS = struct.Struct("=I")  # type

# struct bpf_prog_info (include/uapi/linux/bpf.h), the fields we read. The kernel writes
# min(our size, its size) bytes and says how many in info_len (a kernel with a shorter struct
# checks that the rest of ours is zero); run_time_ns and run_cnt came in Linux 5.1.
_PROG_INFO_SIZE = 232
_PROG_INFO_HEAD = struct.Struct("=II")  # type, id
_PROG_INFO_NAME = slice(64, 80)  # char name[16]
_PROG_INFO_RUN = struct.Struct("=QQ")  # run_time_ns, run_cnt
_PROG_INFO_RUN_OFFSET = 192

#: Verifier log sizes tried, in order, until the whole log fits.
_LOG_SIZES = (1 << 20, 1 << 24, (1 << 30) - 1)


class BpfError(OSError):
    """A bpf(2) call failed; `errno` says why (EPERM: no CAP_BPF, ENOSYS: no bpf(2), ...)."""


class VerifierError(BpfError):
    """The kernel refused a program; `log` is the verifier's whole log."""

    def __init__(self, error: int, log: str) -> None:
        super().__init__(error, f"the kernel refused the program ({os.strerror(error)})")
        self.log = log

    def __str__(self) -> str:
        return f"{super().__str__()}; verifier log:\n{self.log}"


# -- the system call -----------------------------------------------------------------------

_ctypes: ModuleType | None = None
_libc: Any = None


def _load_ctypes() -> ModuleType:
    global _ctypes, _libc
    if _ctypes is None:
        import ctypes  # here, not at the top: see the module docstring

        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
        _ctypes = ctypes
    return _ctypes


def _syscall_number() -> int:
    machine = os.uname().machine  # what platform.machine() says, without importing platform
    number = _SYSCALL_NUMBERS.get(machine)
    if number is None:
        raise BpfError(errno.ENOSYS, f"bpf(2) is not known on this architecture ({machine})")
    return number


class _Buffers:
    """ctypes buffers that must live as long as the attribute that points at them."""

    def __init__(self) -> None:
        self._ctypes = _load_ctypes()
        self._kept: list[Any] = []

    def of(self, data: bytes | int) -> Any:
        """A writable buffer holding `data` (bytes), or `data` zero bytes (int)."""
        size = data if isinstance(data, int) else len(data)
        buffer = self._ctypes.create_string_buffer(data, size)  # exactly `size`: no NUL added
        self._kept.append(buffer)
        return buffer

    def address(self, buffer: Any) -> int:
        return int(self._ctypes.addressof(buffer))


def bpf(command: int, attr: Any, buffers: _Buffers) -> int:
    """Call bpf(command, attr); the result (an fd or 0), or BpfError."""
    ctypes = buffers._ctypes
    result = _libc.syscall(
        ctypes.c_long(_syscall_number()),
        ctypes.c_long(command),
        ctypes.c_void_p(buffers.address(attr)),
        ctypes.c_uint(len(attr.raw)),
    )
    if result < 0:
        error = ctypes.get_errno()
        raise BpfError(error, os.strerror(error))
    return int(result)


def _attr(buffers: _Buffers, layout: struct.Struct, *fields: int) -> Any:
    raw = bytearray(_ATTR_SIZE)
    layout.pack_into(raw, 0, *fields)
    return buffers.of(bytes(raw))


def _name_into(attr: Any, offset: int, name: str) -> None:
    """Names show in `bpftool`; the kernel takes 15 characters of [A-Za-z0-9_.]."""
    encoded = name.encode("ascii")[:15]
    attr[offset : offset + len(encoded)] = encoded


# -- maps ------------------------------------------------------------------------------------


@dataclass
class Map:
    """A BPF map, owned by this object (closing it drops our reference)."""

    fd: int
    map_type: int
    key_size: int
    value_size: int
    max_entries: int

    @classmethod
    def create(
        cls,
        map_type: int,
        key_size: int,
        value_size: int,
        max_entries: int,
        flags: int = 0,
        name: str = "",
    ) -> Map:
        buffers = _Buffers()
        attr = _attr(buffers, _MAP_CREATE, map_type, key_size, value_size, max_entries, flags)
        _name_into(attr, _MAP_NAME_OFFSET, name)
        fd = bpf(BPF_MAP_CREATE, attr, buffers)
        return cls(fd, map_type, key_size, value_size, max_entries)

    def _elem(self, command: int, key: bytes | None, value: Any, flags: int = 0) -> int:
        buffers = _Buffers()
        key_address = 0 if key is None else buffers.address(buffers.of(self._sized(key)))
        value_address = 0 if value is None else buffers.address(value)
        attr = _attr(buffers, _MAP_ELEM, self.fd, key_address, value_address, flags)
        return bpf(command, attr, buffers)

    def _sized(self, key: bytes) -> bytes:
        if len(key) != self.key_size:
            raise ValueError(f"a key of this map has {self.key_size} bytes, not {len(key)}")
        return key

    def lookup(self, key: bytes, value_size: int | None = None) -> bytes | None:
        """The value stored under `key`, or None. Per-CPU maps need `value_size`: the value
        size rounded up to 8, times the number of possible CPUs."""
        size = self.value_size if value_size is None else value_size
        value = _Buffers().of(size)
        try:
            self._elem(BPF_MAP_LOOKUP_ELEM, key, value)
        except BpfError as error:
            if error.errno == errno.ENOENT:
                return None
            raise
        return bytes(value.raw)

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"a value of this map has {self.value_size} bytes, not {len(value)}")
        self._elem(BPF_MAP_UPDATE_ELEM, key, _Buffers().of(value), flags)

    def delete(self, key: bytes) -> bool:
        """Delete `key`; False when it was not there."""
        try:
            self._elem(BPF_MAP_DELETE_ELEM, key, None)
        except BpfError as error:
            if error.errno == errno.ENOENT:
                return False
            raise
        return True

    def walk_keys(self) -> Iterator[bytes]:
        """Every key, one system call each. Keys deleted meanwhile may restart the walk
        (the kernel's rule for hash maps), so this is for small maps and statistics."""
        key: bytes | None = None
        while True:
            following = _Buffers().of(self.key_size)
            try:
                self._elem(BPF_MAP_GET_NEXT_KEY, key, following)
            except BpfError as error:
                if error.errno == errno.ENOENT:
                    return
                raise
            key = bytes(following.raw)
            yield key

    def count(self) -> int:
        """How many entries the map holds, read in batches (BPF_MAP_LOOKUP_BATCH, Linux 5.6+;
        one call per key before that). For hash maps."""
        buffers = _Buffers()
        keys = buffers.of(self.key_size * _BATCH_SIZE)
        values = buffers.of(self.value_size * _BATCH_SIZE)
        token_in, token_out = buffers.of(8), buffers.of(8)  # a bucket index for hash maps
        total, first = 0, True
        while True:
            attr = _attr(
                buffers, _MAP_BATCH,
                0 if first else buffers.address(token_in), buffers.address(token_out),
                buffers.address(keys), buffers.address(values), _BATCH_SIZE, self.fd, 0, 0,
            )  # fmt: skip
            try:
                bpf(BPF_MAP_LOOKUP_BATCH, attr, buffers)
            except BpfError as error:
                if error.errno == errno.EINVAL and first:
                    return sum(1 for _ in self.walk_keys())
                if error.errno != errno.ENOENT:
                    raise
                return total + _batch_count(attr)
            total += _batch_count(attr)
            token_in.raw = token_out.raw
            first = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _batch_count(attr: Any) -> int:
    """The `count` a batch call wrote back: how many entries it returned."""
    return int(_MAP_BATCH.unpack_from(attr.raw)[4])


def possible_cpus() -> int:
    """How many CPUs a per-CPU map holds values for (the kernel's possible CPUs)."""
    with open("/sys/devices/system/cpu/possible") as file:
        text = file.read().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


# -- programs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestRun:
    retval: int  # what the program returned (for a socket filter: bytes kept, 0 = dropped)
    duration_ns: int  # average run time per repetition, measured by the kernel


@dataclass(frozen=True)
class ProgramInfo:
    """What the kernel says of a loaded program (BPF_OBJ_GET_INFO_BY_FD). `run_time_ns` and
    `run_cnt` grow only while run statistics are on (`RunStatistics`): the time spent in the
    program and how many times it ran, over every CPU, since it was loaded."""

    id: int
    prog_type: int
    name: str
    run_time_ns: int
    run_cnt: int


@dataclass
class Program:
    """A loaded BPF program, owned by this object."""

    fd: int

    @classmethod
    def load(
        cls, prog_type: int, instructions: bytes, license: str = "GPL", name: str = ""
    ) -> Program:
        """Load a program; VerifierError with the verifier's whole log when it is refused.

        The first try runs without a log (verification is faster without one); only a refusal
        is repeated with logging, with a log buffer that grows until the log fits.
        """
        try:
            return cls(_prog_load(prog_type, instructions, license, name, 0))
        except BpfError as error:
            if error.errno not in (errno.EACCES, errno.EINVAL, errno.E2BIG, errno.ENOSPC):
                raise
        for size in _LOG_SIZES:
            log = _Buffers()
            buffer = log.of(size)
            try:
                return cls(_prog_load(prog_type, instructions, license, name, size, log, buffer))
            except BpfError as error:
                text = buffer.value.decode("utf-8", "replace")
                if error.errno == errno.ENOSPC and size != _LOG_SIZES[-1]:
                    continue
                raise VerifierError(error.errno or errno.EINVAL, text) from None
        raise AssertionError("unreachable: the last log size raises")

    def test_run(self, data: bytes, repeat: int = 1) -> TestRun:
        """Run the program over `data` (an Ethernet frame for a socket filter) `repeat`
        times in the kernel (BPF_PROG_TEST_RUN); nothing is sent anywhere."""
        buffers = _Buffers()
        packet = buffers.of(data)
        attr = _attr(
            buffers, _TEST_RUN, self.fd, 0, len(data), 0, buffers.address(packet), 0, repeat, 0
        )
        bpf(BPF_PROG_TEST_RUN, attr, buffers)
        _, retval, _, _, _, _, _, duration = _TEST_RUN.unpack_from(attr.raw)
        return TestRun(retval, duration)

    @classmethod
    def from_id(cls, program_id: int) -> Program:
        """A new descriptor of the loaded program `program_id` (BPF_PROG_GET_FD_BY_ID; needs
        CAP_SYS_ADMIN). It keeps the program alive until closed; ENOENT if there is none."""
        buffers = _Buffers()
        return cls(bpf(BPF_PROG_GET_FD_BY_ID, _attr(buffers, _GET_ID, program_id, 0, 0), buffers))

    def info(self) -> ProgramInfo:
        return program_info(self.fd)

    def attach(self, sock: socket.socket) -> None:
        """Attach to `sock` as its socket filter (SO_ATTACH_BPF), replacing any filter, classic
        or not, atomically. The socket holds its own reference to the program."""
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _prog_load(
    prog_type: int,
    instructions: bytes,
    license: str,
    name: str,
    log_size: int,
    buffers: _Buffers | None = None,
    log: Any = None,
) -> int:
    buffers = buffers or _Buffers()
    insns = buffers.of(instructions)
    license_buffer = buffers.of(license.encode("ascii") + b"\0")
    log_address = 0 if log is None else buffers.address(log)
    attr = _attr(
        buffers,
        _PROG_LOAD,
        prog_type,
        len(instructions) // 8,
        buffers.address(insns),
        buffers.address(license_buffer),
        1 if log_size else 0,
        log_size,
        log_address,
    )
    _name_into(attr, _PROG_NAME_OFFSET, name)
    return bpf(BPF_PROG_LOAD, attr, buffers)


def program_info(fd: int) -> ProgramInfo:
    """The id, type, name and run statistics of the program behind `fd`."""
    buffers = _Buffers()
    info = buffers.of(_PROG_INFO_SIZE)
    attr = _attr(buffers, _GET_INFO, fd, _PROG_INFO_SIZE, buffers.address(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr, buffers)
    _, written, _ = _GET_INFO.unpack_from(attr.raw)
    if written < _PROG_INFO_RUN_OFFSET + _PROG_INFO_RUN.size:
        raise BpfError(errno.EOPNOTSUPP, "this kernel gives no run statistics (Linux 5.1+)")
    raw = info.raw
    prog_type, program_id = _PROG_INFO_HEAD.unpack_from(raw)
    run_time_ns, run_cnt = _PROG_INFO_RUN.unpack_from(raw, _PROG_INFO_RUN_OFFSET)
    name = raw[_PROG_INFO_NAME].split(b"\0", 1)[0].decode("ascii", "replace")
    return ProgramInfo(program_id, prog_type, name, run_time_ns, run_cnt)


def program_ids() -> Iterator[int]:
    """The ids of every program loaded on the machine, in every namespace, in increasing order
    (BPF_PROG_GET_NEXT_ID; needs CAP_SYS_ADMIN)."""
    current = 0
    while True:
        buffers = _Buffers()
        attr = _attr(buffers, _GET_ID, current, 0, 0)
        try:
            bpf(BPF_PROG_GET_NEXT_ID, attr, buffers)
        except BpfError as error:
            if error.errno == errno.ENOENT:
                return
            raise
        _, current, _ = _GET_ID.unpack_from(attr.raw)
        yield current


class RunStatistics:
    """The kernel's run statistics of BPF programs (`ProgramInfo.run_time_ns`, `run_cnt`),
    switched on while this object is open (BPF_ENABLE_STATS, Linux 5.8+; needs CAP_SYS_ADMIN).

    They are machine-wide: every program's runs are timed, at the cost of two clock reads per
    run, until the last holder closes its descriptor. Nothing is left behind when the process
    ends (unlike the sysctl kernel.bpf_stats_enabled, which stays as it was set). EINVAL on a
    kernel without this command."""

    def __init__(self) -> None:
        buffers = _Buffers()
        attr = _attr(buffers, _ENABLE_STATS, BPF_STATS_RUN_TIME)
        self.fd = bpf(BPF_ENABLE_STATS, attr, buffers)

    def __enter__(self) -> RunStatistics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


#: mov r0, 0; exit: a socket filter that drops everything.
_EMPTY_PROGRAM = struct.pack("=BBhi", 0xB7, 0, 0, 0) + struct.pack("=BBhi", 0x95, 0, 0, 0)


def run_statistics_on() -> bool:
    """Whether the kernel times program runs now, whoever switched it on: a RunStatistics of
    any process, or the sysctl kernel.bpf_stats_enabled (whose file shows only its own
    setting, not the descriptors). Found by running an empty program once: counted or not."""
    probe = Program.load(BPF_PROG_TYPE_SOCKET_FILTER, _EMPTY_PROGRAM)
    try:
        probe.test_run(bytes(14))  # a socket filter's test run wants an Ethernet header
        return probe.info().run_cnt > 0
    finally:
        probe.close()


# -- ring buffers ----------------------------------------------------------------------------

_RINGBUF_BUSY = 1 << 31
_RINGBUF_DISCARD = 1 << 30
_RINGBUF_HEADER = 8  # u32 length (with the two flags above), u32 page offset
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")


class RingBuffer:
    """The consumer side of a BPF_MAP_TYPE_RINGBUF map. `fileno()` polls readable when
    records are waiting; `records()` returns them and hands their space back."""

    def __init__(self, ring: Map) -> None:
        self.map = ring
        size = ring.max_entries
        page = mmap.PAGESIZE
        self._mask = size - 1
        self._consumer = mmap.mmap(ring.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            # The producer page, then the data pages. The kernel would map them twice in a row,
            # so that a record that wraps round reads in one piece, but it maps every page at
            # mmap time: the second copy would add the ring's size to the daemon's RSS.
            self._view = mmap.mmap(
                ring.fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except BaseException:
            self._consumer.close()
            raise
        self._data = page
        self._end = page + size

    @classmethod
    def create(cls, size: int, name: str = "") -> RingBuffer:
        """A new ring of `size` bytes (a power of two, a multiple of the page size)."""
        if size < mmap.PAGESIZE or size & (size - 1):
            raise ValueError(f"a ring buffer's size is a power of two pages, not {size}")
        return cls(Map.create(BPF_MAP_TYPE_RINGBUF, 0, 0, size, name=name))

    def fileno(self) -> int:
        return self.map.fd

    def records(self) -> list[bytes]:
        """Every committed record, oldest first; their space is given back to the kernel."""
        (consumer,) = _U64.unpack_from(self._consumer, 0)
        (producer,) = _U64.unpack_from(self._view, 0)
        out: list[bytes] = []
        while consumer < producer:
            start = self._data + (consumer & self._mask)
            (length,) = _U32.unpack_from(self._view, start)
            if length & _RINGBUF_BUSY:
                break  # reserved but not yet committed: read it next time
            size = length & ~(_RINGBUF_BUSY | _RINGBUF_DISCARD)
            if not length & _RINGBUF_DISCARD:
                out.append(self._body(consumer + _RINGBUF_HEADER, size))
            consumer += (size + _RINGBUF_HEADER + 7) & ~7
        _U64.pack_into(self._consumer, 0, consumer)
        return out

    def _body(self, position: int, size: int) -> bytes:
        """`size` bytes from `position` (a producer/consumer count), wrapping round the end.
        (The 8-byte header never wraps: records start on 8 bytes, the ring is whole pages.)"""
        start = self._data + (position & self._mask)
        beyond = start + size - self._end
        if beyond <= 0:
            return self._view[start : start + size]
        return self._view[start : self._end] + self._view[self._data : self._data + beyond]

    def close(self) -> None:
        self._view.close()
        self._consumer.close()
        self.map.close()
