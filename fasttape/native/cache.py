"""The native tier's disk cache: a tape's object code, keyed by content and machine.

One file per compiled tape, ``<cache_dir>/native/<key>.fto``, where ``key`` digests the
tape's arrays, the build options, the sources that decide the generated code (the op table,
the scalar helpers, this package) and the machine (CPU name and features, LLVM and llvmlite
versions, :func:`fasttape.native.machine.machine_key`).  A second process with the same tape
on the same kind of machine loads the object code instead of compiling it.

Entries are written with :func:`fasttape.atomic.atomic_write` (readers see a whole file or
none, so processes can share the folder) and carry a SHA-256 of their contents: an entry that
is truncated, damaged or not a cache entry at all is reported as missing, so the caller
rebuilds and overwrites it, and never hands a byte of it to the loader.

File layout: the magic ``b"FTNATIVE1\\n"``, the SHA-256 (32 bytes) of the rest, then a
little-endian ``uint32`` object count, one ``uint64`` size per object, and the objects.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from fasttape.atomic import atomic_write
from fasttape.kernels.jit import cache_dir

__all__ = ["MAGIC", "entry_path", "load", "save"]

MAGIC = b"FTNATIVE1\n"


def entry_path(key: str) -> Path:
    """Where the entry of ``key`` lives (it may not exist)."""
    return cache_dir() / "native" / f"{key}.fto"


def _pack(objects: list[bytes]) -> bytes:
    head = struct.pack(f"<I{len(objects)}Q", len(objects), *(len(o) for o in objects))
    return head + b"".join(objects)


def save(key: str, objects: list[bytes]) -> Path:
    """Write the entry of ``key`` atomically; returns its path."""
    payload = _pack(objects)
    path = entry_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = MAGIC + hashlib.sha256(payload).digest() + payload
    atomic_write(path, lambda f: f.write(data))
    return path


def load(key: str) -> list[bytes] | None:
    """The object files of ``key``'s entry, or ``None`` if it is missing or not intact."""
    try:
        data = entry_path(key).read_bytes()
    except OSError:
        return None
    n_magic = len(MAGIC)
    if len(data) < n_magic + 36 or data[:n_magic] != MAGIC:
        return None
    digest, payload = data[n_magic: n_magic + 32], data[n_magic + 32:]
    if hashlib.sha256(payload).digest() != digest:
        return None
    (count,) = struct.unpack_from("<I", payload)
    head = 4 + 8 * count
    if len(payload) < head:
        return None
    sizes = struct.unpack_from(f"<{count}Q", payload, 4)
    if head + sum(sizes) != len(payload):
        return None
    objects, at = [], head
    for size in sizes:
        objects.append(payload[at: at + size])
        at += size
    return objects
