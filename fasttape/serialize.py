"""Save and load tapes as .npz files: no pickle, a format version, validated on load.

Saving to a path is atomic (a temporary file in the same folder, fsynced, then renamed over
the target), so an interrupted save never destroys the previous file.  Loading parses the zip
archive and each ``.npy`` header itself, before any array data is decompressed: a member whose
declared size does not match its data, exceeds what the tape's own counts allow, or pushes the
total past ``max_bytes`` is refused without allocating it, and object (pickled) arrays are
refused without unpickling.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from typing import IO, Any

import numpy as np

from fasttape.atomic import atomic_write
from fasttape.ops import OPS, table_hash

# Any tape will do: this module uses only the record's interface.
from fasttape.tape import GRAD_MODES
from fasttape.tape import TapeRecord as Tape
from fasttape.tensor.tape import TensorTape
from fasttape.tensor.tree import TreeDef

__all__ = ["save", "load", "TapeFormatError", "FORMAT_VERSION", "DEFAULT_MAX_BYTES"]

#: Bumped whenever the meaning of the saved arrays changes.
#: The version this fasttape writes.  Version 2 added ``n_params`` (parameter slots between the
#: inputs and the constants); version 1 files (no parameters) still load.
FORMAT_VERSION = 2
#: Versions that ``load`` reads.
_READABLE = (1, 2)
_KEYS = ("format_version", "op_table", "ops", "args", "consts", "outputs", "n_inputs")
_SCALARS = ("format_version", "op_table", "n_inputs", "n_params", "grad_mode")
# A tensor tape (fasttape/tensor/tape.py): its four arrays, the initial value vector, and the
# layout (leaves, output, argument structure) as one JSON string.
_TENSOR_KEYS = ("format_version", "op_table", "kinds", "ops", "at", "fields", "init", "layout")

#: Default ``max_bytes`` of :func:`load`: the most bytes the arrays of a file may declare in
#: total.  Generous (a tape of about 500 million instructions), and still far below what a
#: hostile file could otherwise make the loader allocate.
DEFAULT_MAX_BYTES = 8 * 2**30

# A scalar member (format_version, op_table, n_inputs, grad_mode) larger than this is not a
# scalar of ours; a few entries are still read, so that the checks below name the key.
_SCALAR_MAX_BYTES = 4096
_MAX_ARITY = max(op.arity for op in OPS)
_MAX_HEADER_BYTES = 10_000  # NumPy's own limit for headers it parses safely


class TapeFormatError(ValueError):
    """A file is not a valid fasttape tape (corrupt, hostile, or from another format/table)."""


# ---------------------------------------------------------------------------- save
def save(tape: Tape, path: str | os.PathLike | IO[bytes]) -> None:
    """Write ``tape`` to ``path`` as an uncompressed .npz file (no pickle).

    Parameters
    ----------
    tape : Tape
    path : str, os.PathLike or binary file object
        ``.npz`` is appended to a path that does not end with it (as :func:`numpy.savez`
        does).  A file object is written to directly.

    Notes
    -----
    A path is written atomically (:func:`fasttape.atomic.atomic_write`): a failed or
    interrupted save leaves the previous file at ``path``, if any, intact.
    """
    if isinstance(tape, TensorTape):
        arrays = _tensor_arrays(tape)
    elif not isinstance(tape, Tape):
        raise TypeError(f"save() expects a Tape or a TensorTape, got {type(tape).__name__}")
    else:
        arrays = _scalar_arrays(tape)
    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return
    target = os.fsdecode(os.fspath(path))  # type: ignore[arg-type]
    if not target.endswith(".npz"):
        target += ".npz"
    atomic_write(target, lambda f: np.savez(f, **arrays))


def _tensor_arrays(tape: TensorTape) -> dict[str, Any]:
    layout = tape.layout()
    meta = {
        "inputs": [[off, list(shape)] for off, shape in layout["inputs"]],
        "params": [[off, list(shape)] for off, shape in layout["params"]],
        "output": [layout["output"][0], list(layout["output"][1])],
        "in_tree": layout["in_tree"].to_json(),
        "param_tree": layout["param_tree"].to_json(),
        "index_checks": [list(c) for c in layout["index_checks"]],
    }
    return {"format_version": np.int64(FORMAT_VERSION), "op_table": np.array(table_hash()),
            **tape.to_arrays(), "layout": np.array(json.dumps(meta))}


def _tensor_tape(arrays: dict[str, Any], cls: type[TensorTape]) -> TensorTape:
    """The tensor tape of a file's arrays; ValueError for a bad layout or bad arrays."""
    try:
        meta = json.loads(str(arrays.pop("layout")))
        shape = lambda s: tuple(int(d) for d in s)  # noqa: E731
        layout = {
            "inputs": [(int(off), shape(s)) for off, s in meta["inputs"]],
            "params": [(int(off), shape(s)) for off, s in meta["params"]],
            "output": (int(meta["output"][0]), shape(meta["output"][1])),
            "in_tree": TreeDef.from_json(meta["in_tree"]),
            "param_tree": TreeDef.from_json(meta["param_tree"]),
            "index_checks": [(int(a), int(b)) for a, b in meta["index_checks"]],
        }
    except (TypeError, KeyError, IndexError, json.JSONDecodeError) as exc:
        raise ValueError(f"bad layout: {type(exc).__name__}: {exc}") from None
    return cls.from_arrays(arrays, layout)


def _scalar_arrays(tape: Tape) -> dict[str, Any]:
    return {
        "format_version": np.int64(FORMAT_VERSION),
        "op_table": np.array(table_hash()),
        "ops": tape.ops,
        "args": tape.args,
        "consts": tape.consts,
        "outputs": tape.outputs,
        "n_inputs": np.int64(tape.n_inputs),
        "n_params": np.int64(tape.n_params),
        "grad_mode": np.array(tape.grad_mode),
    }


# ---------------------------------------------------------------------------- load
def _existing(path: str | os.PathLike) -> str | os.PathLike:
    """``path``, or ``path + ".npz"`` when only that exists (``save`` appends the suffix)."""
    if not os.path.exists(path) and not str(path).endswith(".npz"):
        alt = f"{os.fspath(path)}.npz"
        if os.path.exists(alt):
            return alt
    return path


def load(
    path: str | os.PathLike | IO[bytes],
    *,
    grad_mode: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    tape_class: type[Tape] = Tape,
    tensor_class: type[TensorTape] = TensorTape,
) -> Any:
    """Read a tape written by :func:`save`, validating every array.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        A path without the ``.npz`` suffix also finds ``path + ".npz"``.
    grad_mode : {None, "stored", "lean"}
        None (the default) keeps the mode saved in the file; a mode overrides it.
    max_bytes : int or None
        The most bytes the file's arrays may declare in total, checked from the ``.npy``
        headers before any data is decompressed (default :data:`DEFAULT_MAX_BYTES`, 8 GiB).
        None: no limit, for files you trust.
    tape_class, tensor_class : type
        The classes of the tape returned for a scalar and for a tensor tape (``ft.load``,
        :func:`fasttape.api.load`, passes ``fasttape.Tape`` and ``fasttape.TensorTape``).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (other ``OSError`` of opening it pass through too).
    ValueError
        For a ``grad_mode`` or ``max_bytes`` that is not one of the accepted values.
    TapeFormatError
        If the file is not a fasttape tape (not a zip archive, members missing, object
        arrays), is damaged, declares more data than its counts allow or than ``max_bytes``,
        is of another format version or op table, or its arrays break the tape format (the
        message names the first offending entry).  Never crashes the process: the arrays are
        fully validated before any kernel sees them.
    """
    if grad_mode is not None and (not isinstance(grad_mode, str) or grad_mode not in GRAD_MODES):
        raise ValueError(
            f"grad_mode must be None (keep the saved mode) or one of {GRAD_MODES}; "
            f"got {grad_mode!r}"
        )
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer))
        or max_bytes < 0
    ):
        raise ValueError(f"max_bytes must be None or an int >= 0; got {max_bytes!r}")
    if hasattr(path, "read"):
        arrays = _read_archive(path, "<file object>", max_bytes)  # type: ignore[arg-type]
    else:
        path = _existing(path)  # type: ignore[arg-type]
        with open(path, "rb") as fh:  # FileNotFoundError and other OSErrors pass through
            arrays = _read_archive(fh, os.fspath(path), max_bytes)
    where = arrays.pop("_where")
    if "kinds" in arrays:
        _check_version_and_table(arrays, where)
        if grad_mode is not None:
            raise ValueError("grad_mode applies to scalar tapes; this file holds a tensor tape")
        try:
            return _tensor_tape(arrays, tensor_class)
        except ValueError as exc:
            raise TapeFormatError(f"{where}: {exc}") from exc
    saved = arrays.pop("grad_mode", None)
    saved_mode = "stored" if saved is None else str(saved)
    version = arrays.pop("format_version")
    if version.shape != () or version.dtype.kind not in "iu" or int(version) not in _READABLE:
        raise TapeFormatError(
            f"{where}: tape format version {version!r}; this fasttape reads versions "
            f"{', '.join(map(str, _READABLE))} (a newer fasttape wrote it? upgrade fasttape)"
        )
    n_params = arrays.pop("n_params", None)
    if n_params is None:
        if int(version) >= 2:
            raise TapeFormatError(f"{where}: a version {int(version)} tape must hold n_params")
        n_params = np.int64(0)  # version 1 had no parameters
    elif n_params.shape != () or n_params.dtype.kind not in "iu":
        raise TapeFormatError(f"{where}: n_params must be an integer scalar")
    elif int(version) == 1 and int(n_params) != 0:
        raise TapeFormatError(f"{where}: a version 1 tape cannot have parameters (n_params)")
    table = arrays.pop("op_table")
    if table.shape != () or str(table) != table_hash():
        raise TapeFormatError(
            f"{where}: written with a different op table (hash {table!s}, this fasttape has "
            f"{table_hash()}); rebuild the tape from its graph"
        )
    n_inputs = arrays.pop("n_inputs")
    if n_inputs.shape != () or n_inputs.dtype.kind not in "iu":
        raise TapeFormatError(f"{where}: n_inputs must be an integer scalar")
    try:
        return tape_class.from_arrays(
            **arrays, n_inputs=int(n_inputs), n_params=int(n_params),
            grad_mode=grad_mode or saved_mode
        )
    except ValueError as exc:
        raise TapeFormatError(f"{where}: {exc}") from exc


def _check_version_and_table(arrays: dict[str, Any], where: str) -> None:
    version = arrays.pop("format_version")
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
        raise TapeFormatError(f"{where}: tensor tape format version {version!r}; this "
                              f"fasttape reads {FORMAT_VERSION}")
    table = arrays.pop("op_table")
    if table.shape != () or str(table) != table_hash():
        raise TapeFormatError(f"{where}: written with a different op table (hash {table!s}, "
                              f"this fasttape has {table_hash()}); trace the function again")


def _not_a_tape(head: bytes) -> str:
    if not head:
        return "the file is empty"
    if head.startswith(b"\x93NUM"):
        return "a single .npy array, not an .npz archive"
    if head.startswith(b"\x80"):
        return "a pickle, which fasttape never writes or loads"
    return f"not a zip archive (.npz); it starts with {head!r}"


def _read_archive(fh: IO[bytes], where: str, max_bytes: int | None) -> dict[str, Any]:
    """The arrays of a tape archive, each refused on its header before its data is read."""
    head = fh.read(4)
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip's first record, or an empty zip
        raise TapeFormatError(f"{where}: not a fasttape tape: {_not_a_tape(head)}")
    fh.seek(0)
    try:
        with zipfile.ZipFile(fh) as zf:
            members = {}
            for info in zf.infolist():  # np.savez names members "<key>.npy"
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                members[key] = info
            if "kinds" in members:  # a tensor tape
                missing = [k for k in _TENSOR_KEYS if k not in members]
                if missing:
                    raise TapeFormatError(f"{where}: a tensor tape missing {missing}")
                reader = _MemberReader(zf, where, max_bytes)
                arrays = {"_where": where}
                for key in _TENSOR_KEYS:
                    arrays[key] = reader.read(members[key], key, None, "")
                return arrays
            missing = [k for k in _KEYS if k not in members]
            if missing:
                found = [info.filename for info in zf.infolist()]
                shown = ", ".join(found[:10]) + (" ..." if len(found) > 10 else "")
                raise TapeFormatError(
                    f"{where}: not a fasttape tape (missing {missing}); the archive holds "
                    f"{shown or 'nothing'}"
                )
            reader = _MemberReader(zf, where, max_bytes)
            arrays: dict[str, Any] = {"_where": where}
            for key in _SCALARS:
                if key in members:
                    arrays[key] = reader.read(members[key], key, None, "")
            arrays["ops"] = reader.read(members["ops"], "ops", None, "")
            n_ops = int(arrays["ops"].size)
            arrays["args"] = reader.read(
                members["args"], "args", _MAX_ARITY * n_ops,
                f"what {n_ops:,} instructions of at most {_MAX_ARITY} arguments can have",
            )
            arrays["consts"] = reader.read(members["consts"], "consts", None, "")
            arrays["outputs"] = reader.read(members["outputs"], "outputs", None, "")
            return arrays
    except TapeFormatError:
        raise
    except Exception as exc:  # any parse failure of a damaged or hostile archive
        raise TapeFormatError(
            f"{where}: not a fasttape tape, or a damaged one: {type(exc).__name__}: {exc}"
        ) from exc


class _MemberReader:
    """Reads ``.npy`` members of one archive, charging their declared sizes to ``max_bytes``."""

    def __init__(self, zf: zipfile.ZipFile, where: str, max_bytes: int | None):
        self.zf = zf
        self.where = where
        self.max_bytes = max_bytes
        self.total = 0

    def read(self, info: zipfile.ZipInfo, key: str, max_entries: int | None,
             why: str) -> np.ndarray:
        where = self.where
        with self.zf.open(info) as f:
            magic = f.read(8)
            if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
                raise TapeFormatError(f"{where}: member {key!r} is not an .npy array")
            header_reader = {
                1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0,
            }.get(magic[6])
            if header_reader is None or magic[7] != 0:
                raise TapeFormatError(
                    f"{where}: member {key!r} has .npy format version {magic[6]}.{magic[7]}; "
                    "fasttape writes 1.0"
                )
            # The header is read here, by size, and parsed from memory by NumPy's own parser:
            # its length is known without tell() on the zip stream, and a huge length field is
            # refused before anything is read.
            len_field = f.read(2 if magic[6] == 1 else 4)
            text_len = int.from_bytes(len_field, "little")
            if text_len > _MAX_HEADER_BYTES:
                raise TapeFormatError(f"{where}: member {key!r} has a {text_len:,}-byte header")
            text = f.read(text_len)
            shape, fortran_order, dtype = header_reader(io.BytesIO(len_field + text))
            if dtype.hasobject:
                raise TapeFormatError(
                    f"{where}: not a fasttape tape: member {key!r} holds Python objects "
                    f"(dtype {dtype}), which fasttape never writes and never unpickles"
                )
            header_len = 8 + len(len_field) + text_len
            entries = math.prod(shape)
            nbytes = entries * dtype.itemsize
            data_len = info.file_size - header_len
            if data_len != nbytes:
                raise TapeFormatError(
                    f"{where}: member {key!r} declares shape {shape} of {dtype} "
                    f"({nbytes:,} bytes) but holds {data_len:,} bytes of data"
                )
            if key in _SCALARS and nbytes > _SCALAR_MAX_BYTES:
                raise TapeFormatError(
                    f"{where}: member {key!r} declares {nbytes:,} bytes; it holds one scalar"
                )
            if max_entries is not None and entries > max_entries:
                raise TapeFormatError(
                    f"{where}: member {key!r} declares {entries:,} entries, more than {why} "
                    f"({max_entries:,})"
                )
            self.total += nbytes
            if self.max_bytes is not None and self.total > self.max_bytes:
                raise TapeFormatError(
                    f"{where}: the arrays declare more than max_bytes={self.max_bytes:,} bytes "
                    f"(member {key!r}: {nbytes:,} bytes); if the file is trusted, load it with "
                    "a larger max_bytes, or max_bytes=None"
                )
            data = f.read(nbytes)  # bounded: the size was checked against the header above
            if len(data) != nbytes:
                raise TapeFormatError(f"{where}: member {key!r} is truncated")
        return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order
                                                        else "C")

