"""Validation of tape arrays against the format of docs/tape-format.md.

Everything a caller hands to :meth:`fasttape.Tape.from_arrays` (or a file hands to
:func:`fasttape.load`) passes through :func:`validate_arrays` before any kernel sees it: the
kernels run without bounds checks, so this is what keeps bad input from reading out of bounds.
Cheap whole-array checks run in NumPy; the per-instruction checks run in one Numba pass
(:func:`fasttape.kernels.structure.check_tape`) that reports the first offending entry.
:func:`real_array` is the first check of the points, parameters and directions a user passes
to an evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fasttape.kernels import structure
from fasttape.ops import N_OPS, OPS

__all__ = ["validate_arrays", "check_count", "real_array"]

_ARITY = np.array([op.arity for op in OPS], dtype=np.int64)
_NDIFF = np.array([op.ndiff for op in OPS], dtype=np.int64)
_PARAM_CONST = np.array([op.param == "const" for op in OPS], dtype=np.bool_)
_POWI = next(op.code for op in OPS if op.name == "powi")
_INT32_MAX = np.iinfo(np.int32).max

_MESSAGES = {
    structure.ARG_NEGATIVE: "argument {pos} is the negative slot {val}",
    structure.ARG_NOT_EARLIER: (
        "argument {pos} refers to slot {val}, which is not earlier than the instruction's own "
        "slot {slot} (instruction i writes slot n_inputs + n_params + n_consts + i = {n_pre} + i)"
    ),
    structure.PARAM_NOT_CONST: (
        "argument {pos} (the exponent) refers to slot {val}, which is not a constant slot "
        "({n_lead} <= slot < {n_pre})"
    ),
    structure.EXPONENT_NOT_INTEGRAL: (
        "argument {pos} (the exponent) is the constant {cval!r}, which is not an integer with "
        "|n| < 2**31"
    ),
}


def _as_index_array(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers; got dtype {arr.dtype}")
    return arr


def check_count(n: Any, name: str) -> int:
    """``n`` as an int if it is a non-negative integer below 2**62, else a ValueError naming
    ``name`` (``n_inputs``, ``n_params``)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{name} must be a non-negative int; got {n!r}")
    n = int(n)
    if not 0 <= n < 2**62:
        raise ValueError(f"{name} must be a non-negative int below 2**62; got {n}")
    return n


def validate_arrays(
    ops: Any, args: Any, consts: Any, outputs: Any, n_inputs: Any, *, n_params: Any = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Check plain arrays against the tape format and return them in canonical dtypes.

    Returns ``(ops uint8, args int32|int64, consts float64, outputs int64, n_inputs int)``;
    ``n_params`` (the parameter slots that follow the inputs) is checked with them (read it
    back with :func:`check_count`).  Raises ValueError naming the first offending entry.
    """
    n_inputs = check_count(n_inputs, "n_inputs")
    n_params = check_count(n_params, "n_params")
    if n_inputs + n_params >= 2**62:
        raise ValueError(f"n_inputs + n_params must be below 2**62; got {n_inputs + n_params}")
    # The kernels load inputs and params alike into the leading slots; constants follow both.
    n_lead = n_inputs + n_params
    ops = _as_index_array(ops, "ops")
    args = _as_index_array(args, "args")
    outputs = _as_index_array(outputs, "outputs")
    consts = np.asarray(consts)
    if consts.ndim != 1:
        raise ValueError(f"consts must be 1-D; got shape {consts.shape}")
    if consts.size and consts.dtype.kind not in "iuf":
        raise ValueError(f"consts must hold real numbers; got dtype {consts.dtype}")
    consts = np.ascontiguousarray(consts, dtype=np.float64)
    if ops.size:
        lo, hi = int(ops.min()), int(ops.max())
        if lo < 0 or hi >= N_OPS:
            i = int(np.flatnonzero((ops < 0) | (ops >= N_OPS))[0])
            raise ValueError(
                f"ops[{i}] = {int(ops[i])} is not a known op code (valid: 0..{N_OPS - 1})"
            )
    ops = np.ascontiguousarray(ops, dtype=np.uint8)
    n_pre = n_lead + consts.shape[0]
    n_slots = n_pre + ops.shape[0]
    need = int(_ARITY[ops].sum())
    if args.shape[0] != need:
        raise ValueError(
            f"invalid tape: args has {args.shape[0]} entries but the arities of the "
            f"{ops.shape[0]} ops need {need} (args holds every instruction's arguments, "
            "concatenated)"
        )
    idx = np.int32 if n_slots <= _INT32_MAX else np.int64
    if args.size and (int(args.min()) < 0 or int(args.max()) >= n_slots):
        # Out of every slot's range: report the first one (also catches int32 overflow).
        e = int(np.flatnonzero((args < 0) | (args >= n_slots))[0])
        i, pos = _edge_owner(ops, e)
        where = f"instruction {i}" if i is not None else "a position past the last instruction"
        raise ValueError(
            f"args[{e}] = {int(args[e])} ({where}, argument {pos}) is not a slot: expected "
            f"0 <= slot < {n_slots}"
        )
    args = np.ascontiguousarray(args, dtype=idx)
    code, i, pos = structure.check_tape(
        ops, args, consts, n_lead, _ARITY, _NDIFF, _PARAM_CONST, _POWI
    )
    if code != structure.OK:  # an argument of instruction i is wrong (lengths checked above)
        k = int(_ARITY[ops[:i]].sum()) + pos
        val = int(args[k])
        msg = _MESSAGES[code].format(
            pos=pos, val=val, slot=n_pre + i, n_pre=n_pre, n_lead=n_lead,
            cval=float(consts[val - n_lead]) if code == structure.EXPONENT_NOT_INTEGRAL else 0,
        )
        raise ValueError(f"invalid tape: instruction {i} ({OPS[int(ops[i])].name}): {msg}")
    if outputs.size == 0:
        raise ValueError("invalid tape: it has no outputs (outputs is empty)")
    if int(outputs.min()) < 0 or int(outputs.max()) >= n_slots:
        j = int(np.flatnonzero((outputs < 0) | (outputs >= n_slots))[0])
        raise ValueError(
            f"invalid tape: outputs[{j}] = {int(outputs[j])} is not a slot "
            f"(expected 0 <= slot < {n_slots})"
        )
    outputs = np.ascontiguousarray(outputs, dtype=np.int64)
    return ops, args, consts, outputs, n_inputs


def _edge_owner(ops: np.ndarray, e: int) -> tuple[int | None, int]:
    """(instruction, argument position) of edge ``e`` (instruction None if past the end)."""
    ends = np.cumsum(_ARITY[np.minimum(ops, N_OPS - 1)])
    i = int(np.searchsorted(ends, e, side="right"))
    if i >= ops.shape[0]:
        return None, 0
    start = int(ends[i] - _ARITY[ops[i]])
    return i, e - start


def real_array(x: Any, label: str, *, traced_hint: bool = True) -> np.ndarray:
    """``np.asarray(x)`` if it holds real numbers (bool, int or float), else a ``TypeError``.

    The first check of every array a user passes to an evaluation (points, parameters,
    directions); the caller checks the shape and converts to float64.

    Parameters
    ----------
    x : array_like
        What the user passed.
    label : str
        How the messages name it (``"x"``, ``"jvp: v"``): ``"{label} must be a 1-D array of
        real numbers; got ..."``.
    traced_hint : bool
        Whether an object array (typically of traced Vars) gets the hint "traced Vars cannot
        be evaluated; pass numbers".

    Returns
    -------
    ndarray
        ``np.asarray(x)``, of dtype kind bool, int, unsigned or float.
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(
            f"{label} must be a 1-D array of real numbers; got {type(x).__name__}"
        ) from exc
    if arr.dtype.kind not in "biuf":
        hint = traced_hint and arr.dtype.kind == "O"
        raise TypeError(
            f"{label} must be a 1-D array of real numbers; got an array of dtype {arr.dtype}"
            + (" (traced Vars cannot be evaluated; pass numbers)" if hint else "")
        )
    return arr
