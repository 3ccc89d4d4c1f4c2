"""Save and load tapes as .npz files: no pickle, a format version, validated on load."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fasttape.ops import table_hash

# Any tape will do: this module uses only the record's interface.
from fasttape.tape import TapeRecord as Tape

__all__ = ["save", "load", "TapeFormatError", "FORMAT_VERSION"]

#: Bumped whenever the meaning of the saved arrays changes.
FORMAT_VERSION = 1
_KEYS = ("format_version", "op_table", "ops", "args", "consts", "outputs", "n_inputs")


class TapeFormatError(ValueError):
    """A file is not a valid fasttape tape (corrupt, hostile, or from another format/table)."""


def save(tape: Tape, path: str | os.PathLike) -> None:
    """Write ``tape`` to ``path`` (.npz; NumPy appends the suffix if missing)."""
    if not isinstance(tape, Tape):
        raise TypeError(f"save() expects a Tape, got {type(tape).__name__}")
    np.savez(
        path,
        format_version=np.int64(FORMAT_VERSION),
        op_table=np.array(table_hash()),
        ops=tape.ops,
        args=tape.args,
        consts=tape.consts,
        outputs=tape.outputs,
        n_inputs=np.int64(tape.n_inputs),
        grad_mode=np.array(tape.grad_mode),
    )


def _existing(path: str | os.PathLike) -> str | os.PathLike:
    """``path``, or ``path + ".npz"`` when only that exists (``save`` appends the suffix)."""
    if not os.path.exists(path) and not str(path).endswith(".npz"):
        alt = f"{os.fspath(path)}.npz"
        if os.path.exists(alt):
            return alt
    return path


def load(
    path: str | os.PathLike, *, grad_mode: str | None = None, tape_class: type[Tape] = Tape
) -> Any:
    """Read a tape written by :func:`save`, validating every array.

    ``ft.load`` (:func:`fasttape.api.load`) calls this with ``tape_class=fasttape.Tape``; a
    ``tape_class`` is :class:`~fasttape.tape.TapeRecord` or a subclass.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    TapeFormatError
        If the file is not a tape of this format and op table, or its arrays break the tape
        format (the message names the first offending entry).  Never crashes the process: the
        arrays are fully validated before any kernel sees them.
    """
    path = _existing(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # any parse failure of a corrupt or hostile file
        raise TapeFormatError(f"{path}: cannot read as a fasttape tape: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise TapeFormatError(f"{path}: not a fasttape tape (a single .npy array, not .npz)")
    try:
        with data:
            missing = [k for k in _KEYS if k not in data.files]
            if missing:
                raise TapeFormatError(f"{path}: not a fasttape tape (missing {missing})")
            arrays: dict[str, Any] = {k: data[k] for k in _KEYS}
            saved_mode = str(data["grad_mode"]) if "grad_mode" in data.files else "stored"
    except TapeFormatError:
        raise
    except Exception as exc:
        raise TapeFormatError(f"{path}: cannot read as a fasttape tape: {exc}") from exc
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):  # a member without the .npy magic reads as bytes
            raise TapeFormatError(f"{path}: member {key!r} is not an .npy array")
    version = arrays.pop("format_version")
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
        raise TapeFormatError(
            f"{path}: tape format version {version!r}; this fasttape reads version "
            f"{FORMAT_VERSION}"
        )
    table = arrays.pop("op_table")
    if table.shape != () or str(table) != table_hash():
        raise TapeFormatError(
            f"{path}: written with a different op table (hash {table!s}, this fasttape has "
            f"{table_hash()}); rebuild the tape from its graph"
        )
    n_inputs = arrays.pop("n_inputs")
    if n_inputs.shape != () or n_inputs.dtype.kind not in "iu":
        raise TapeFormatError(f"{path}: n_inputs must be an integer scalar")
    try:
        return tape_class.from_arrays(
            **arrays, n_inputs=int(n_inputs), grad_mode=grad_mode or saved_mode
        )
    except ValueError as exc:
        raise TapeFormatError(f"{path}: {exc}") from exc
