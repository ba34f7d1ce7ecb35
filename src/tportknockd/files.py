"""Files replaced whole, so that a crash leaves the old content or the new, never a mix.

Used for what the daemon must not lose: the state file of open doors (daemon/state.py) and the
one-time lists it comments lines out of (onetime/lists.py).
"""

from __future__ import annotations

import os

#: Appended to a file's name for the copy written before it replaces the file.
TEMPORARY_SUFFIX = ".tportknockd-tmp"


def replace_durably(
    path: str, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> None:
    """Replace `path` with `data`: a temporary file beside it, fsynced, renamed over it, and
    the directory fsynced, so that after a crash `path` holds the old data or the new. The
    file gets `mode` and, if given, `owner` (uid, gid); the temporary file is removed when a
    step fails (the OSError is raised)."""
    temporary = path + TEMPORARY_SUFFIX
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fchmod(stream.fileno(), mode)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                os.fchown(stream.fileno(), *owner)
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def _fsync_directory(directory: str) -> None:
    """Make a rename in `directory` durable: it is recorded in the directory, not the file."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
