"""Carrying out the engine's commands: `/bin/sh -c` with `%IP%` filled in, off the capture loop.

Each command runs in its own worker thread, so a slow command never delays the capture loop.
The number running at once is bounded (the rest wait their turn, in order), a command that
runs longer than `time_limit` is killed, and its exit status and output are logged.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Hashable
from typing import IO

log = logging.getLogger("tportknockd")

DEFAULT_MAX_RUNNING = 16
DEFAULT_TIME_LIMIT = 60.0
_OUTPUT_LOG_LIMIT = 2000  # characters of a command's output that go to the log

#: The environment commands run with: enough to find the usual tools, nothing inherited.
COMMAND_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C",
}


def expand(command: str, address: str) -> str:
    """Replace every `%IP%` by `address`, which must be a plain IPv4/IPv6 address.

    The address comes from a packet header via inet_ntop, so it is always well formed; it is
    checked again here because it ends up in a shell command line. IPv6 is written in its
    compressed form. `ipaddress` is not enough: it accepts an IPv6 zone (`fe80::1%any;text`),
    so the text goes through inet_pton and back, which takes bare addresses only.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        canonical = socket.inet_ntop(family, socket.inet_pton(family, address))
    except OSError:
        raise ValueError(f"not an IP address: {address!r}") from None
    return command.replace("%IP%", canonical)


class CommandRunner:
    def __init__(
        self,
        max_running: int = DEFAULT_MAX_RUNNING,
        time_limit: float = DEFAULT_TIME_LIMIT,
        shell: str = "/bin/sh",
    ) -> None:
        self.time_limit = time_limit
        self.shell = shell
        self._slots = threading.BoundedSemaphore(max_running)
        self._threads: set[threading.Thread] = set()
        self._last_of: dict[Hashable, threading.Thread] = {}
        self._lock = threading.Lock()

    def run(self, label: str, command: str, address: str, key: Hashable | None = None) -> None:
        """Start `command` for `address` in the background; `label` names it in the log.

        Commands with the same `key` (a door: event and address) run one after the other, in
        the order given: a stop_command never overtakes its start_command, even when the start
        still waits for a free slot or runs long.
        """
        line = expand(command, address)
        with self._lock:
            previous = self._last_of.get(key) if key is not None else None
            worker = threading.Thread(
                target=self._run,
                args=(label, line, previous, key),
                name=f"cmd {label}",
                daemon=True,
            )
            if key is not None:
                self._last_of[key] = worker
            self._threads.add(worker)
        worker.start()

    def _run(
        self, label: str, line: str, previous: threading.Thread | None, key: Hashable | None
    ) -> None:
        try:
            if previous is not None:
                previous.join()
            with self._slots:
                self._execute(label, line)
        except Exception:  # a failing command must never take the daemon down
            log.exception("%s: could not run %r", label, line)
        finally:
            with self._lock:
                me = threading.current_thread()
                self._threads.discard(me)
                if key is not None and self._last_of.get(key) is me:
                    del self._last_of[key]

    def _execute(self, label: str, line: str) -> None:
        started = time.monotonic()
        # Output goes to an unlinked file, not a pipe: memory stays bounded whatever the command
        # prints, and a program the command leaves running in the background (`openvpn ... &`)
        # does not hold us until it ends, as it would by keeping a pipe open.
        with _output_file() as output:
            proc = subprocess.Popen(
                [self.shell, "-c", line],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=COMMAND_ENV,
                cwd="/",
                close_fds=True,
                start_new_session=True,  # a command's children are killed with it on timeout
            )
            log.info("%s: running: %s", label, line)  # once started: logging is not free
            try:
                proc.wait(timeout=self.time_limit)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
                log.error("%s: killed after %.0f s: %s", label, self.time_limit, line)
            output.seek(0)
            head = output.read(4 * _OUTPUT_LOG_LIMIT)
        elapsed = time.monotonic() - started
        text = head.decode(errors="replace").strip()[:_OUTPUT_LOG_LIMIT]
        level = logging.INFO if proc.returncode == 0 else logging.WARNING
        log.log(
            level,
            "%s: exit status %s after %.3f s%s",
            label,
            proc.returncode,
            elapsed,
            f"; output: {text}" if text else "",
        )

    def running(self) -> int:
        with self._lock:
            return len(self._threads)

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every started command; True when all ended."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = list(self._threads)
            if not pending:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pending[0].join(remaining)


def _output_file() -> IO[bytes]:
    """An unnamed file for a command's output: what tempfile.TemporaryFile makes on Linux (an
    O_TMPFILE file in $TMPDIR or /tmp), without importing tempfile, which brings shutil,
    random and the compression modules along: 0.9 MB resident in a daemon that may never run
    a command. Where that does not work, tempfile is imported after all: it knows the
    other directories and the fall-backs."""
    directory = os.environ.get("TMPDIR") or "/tmp"
    try:
        fd = os.open(directory, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
    except OSError:
        import tempfile

        return tempfile.TemporaryFile()
    return os.fdopen(fd, "w+b")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
