"""Atomic file writes: a file is either the old one or the new one, never a damaged mix.

Used by :func:`fasttape.save`; it imports nothing from fasttape, so any module (the kernel
generator, the benchmark reports) can use it without an import cycle.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Create or replace the file ``path`` with what ``write(f)`` writes to a binary file.

    ``write`` writes to a temporary file in the same folder (``.<name>.<random>.tmp``), which
    is then flushed, fsynced and renamed over ``path`` with :func:`os.replace`, an atomic step:
    readers see the old file or the new one, never a part.  If ``write`` (or anything after it)
    raises, the temporary file is removed and ``path`` is untouched; a process killed mid-write
    can leave the temporary file behind, never a damaged ``path``.  A new file gets the
    permissions a plain ``open(path, "wb")`` would give it; a replaced file keeps its own.  A
    symbolic link is followed: the file it points to is replaced.
    """
    target = os.path.realpath(path) if os.path.islink(path) else os.fspath(path)
    folder, name = os.path.split(os.path.abspath(target))
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    fd, tmp = _new_temp_file(folder, name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:  # including KeyboardInterrupt: never leave the temporary file
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _new_temp_file(folder: str, name: str) -> tuple[int, str]:
    # os.open with O_EXCL and mode 0o666: the umask applies, as for a plain open(), where
    # tempfile.mkstemp would make the file private (0o600).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _fsync_folder(folder: str) -> None:
    # Makes the rename itself durable on POSIX; folders cannot be opened on Windows.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Create or replace the text file ``path`` atomically (see :func:`atomic_write`)."""
    data = text.encode(encoding)
    atomic_write(path, lambda f: f.write(data))
