"""Call a compiled tape from your own ``@numba.njit`` code.

:func:`numba_kernel` returns a jitted function and the tuple of arrays to pass it: the tape's
own (read-only) arrays, a read-only record of the tape's counts (``meta``) and freshly allocated
work buffers.  Inside a jitted loop the call is ``fn(*arrays, x, grad)``: no Python object
crosses into the loop and nothing is allocated per call.

The functions returned here are thin checked wrappers around the generated drivers of
:mod:`fasttape.kernels.sweep` (``value_kernel``, ``value_and_grad_kernel``,
``value_and_grad_lean_kernel``), which are themselves part of the stable embedding API; see
docs/embedding.md for their buffer contract.  The kernels do no bounds checks, so the wrappers
check every array against the tape's own counts before the sweep: the tape's arrays by length
and address, each work buffer (``vals``, ``parts``, ``adj``) and each argument (``x``,
``grad``, ``out``, ``cot``) by length, element type and dimension.  A wrong array raises
``ValueError`` (or, for a wrong type, Numba's ``TypingError``) naming it, inside your jitted
code, instead of reading or writing out of bounds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import types
from numba.core.errors import TypingError
from numba.extending import overload

from fasttape.kernels import sweep
from fasttape.kernels.jit import kernel as _kernel

# Any tape will do: this module uses only the record's interface.
from fasttape.tape import TapeRecord as Tape
from fasttape.tape import check_out

__all__ = ["KINDS", "NumbaKernel", "check_buffer", "check_vector", "numba_kernel", "vjp",
           "vjp_kernel"]


#: The kinds of function :func:`numba_kernel` can return.
KINDS = ("value_and_grad", "value", "values", "vjp")


class NumbaKernel(NamedTuple):
    """A jitted function and the arrays to call it with: ``fn(*arrays, ...)``.

    Unpacks as a pair: ``fn, arrays = tape.numba_kernel()``.  ``arrays`` is
    ``(ops, args, consts, outputs, meta, *work)``: the tape's read-only arrays, a read-only
    int64 record of its counts and the chosen output, and the work buffers owned by this
    object (``vals``, then ``parts, adj`` for the gradient kinds); the buffers make a call
    non-reentrant, so give each thread its own ``numba_kernel()``.
    """

    fn: Any
    arrays: tuple[Any, ...]


# ---------------------------------------------------------------------------- checks
# The sweeps index every buffer without bounds checks, so each wrapper checks, before any
# sweep, every array it is given against the tape's own counts.  The counts travel in ``meta``,
# a read-only int64 record built by numba_kernel() (layout ``_META``): never derived from a
# buffer's length, which a caller may have replaced.  The tape's four arrays are also checked
# by address, so a foreign ``ops``/``args`` of the right length cannot slip past either.
# Element types and dimensions are checked when Numba compiles the call (a TypingError naming
# the argument); lengths on every call (a ValueError naming the buffer).  All of it is a
# handful of integer comparisons: nothing next to a sweep over the tape.

_META = (
    "n_inputs", "n_consts", "n_instructions", "n_edges", "n_outputs", "n_parts", "which",
    "ops_address", "args_address", "consts_address", "outputs_address", "n_params",
)
(_NIN, _NCONSTS, _NNODES, _NEDGES, _NOUTS, _NPARTS, _WHICH, _AOPS, _AARGS, _ACONSTS,
 _AOUTS, _NPARAMS) = range(len(_META))
_NMETA = len(_META)


@_kernel
def _bad_length(name, got, expected, what):
    raise ValueError(
        "fasttape numba_kernel: " + name + " has " + str(got) + " entries, expected "
        + str(expected) + " (" + what + "); pass the arrays of tape.numba_kernel() unchanged, "
        "or buffers of the sizes given in docs/embedding.md"
    )


def check_vector(arr, name, n, what):  # pragma: no cover - typed and compiled by Numba
    """Refuse ``arr`` unless it is a 1-D float64 array of ``n`` entries (inside jitted code)."""


def check_buffer(arr, name, n, what):  # pragma: no cover - typed and compiled by Numba
    """As :func:`check_vector`, for an array the sweep writes: it must also be writeable."""


def _array_type_problem(arr: Any, writeable: bool) -> str | None:
    if not isinstance(arr, types.Array):
        return f"got {arr}"
    if arr.ndim != 1 or arr.dtype != types.float64:
        return f"got {arr.ndim}-D {arr.dtype}"
    if writeable and not arr.mutable:
        return "got a read-only array"
    return None


def _length_check_overload(writeable: bool) -> Any:
    def typer(arr, name, n, what):  # type: ignore[no-untyped-def]
        label = getattr(name, "literal_value", "an argument")
        problem = _array_type_problem(arr, writeable)
        if problem is not None:
            need = "a writeable" if writeable else "a"
            raise TypingError(
                f"fasttape numba_kernel: {label} must be {need} 1-D float64 array; {problem}"
            )

        def impl(arr, name, n, what):  # type: ignore[no-untyped-def]
            if arr.shape[0] != n:
                _bad_length(name, arr.shape[0], n, what)

        return impl

    return typer


overload(check_vector, prefer_literal=True)(_length_check_overload(False))
overload(check_buffer, prefer_literal=True)(_length_check_overload(True))


@_kernel
def _check_tape(ops, args, consts, outputs, meta, takes_p):
    """The tape's arrays are the ones ``meta`` was made for; returns ``n_slots``.

    ``takes_p``: whether the calling wrapper takes parameters; it must match the tape (a
    wrapper without ``p`` on a tape with parameters would load the slots wrongly).
    """
    if meta.shape[0] != _NMETA:
        raise ValueError(
            "fasttape numba_kernel: meta (arrays[4]) is not the record of tape.numba_kernel(); "
            "pass its arrays unchanged"
        )
    if (meta[_NPARAMS] != 0) != takes_p:
        raise ValueError(
            "fasttape numba_kernel: this function and meta (arrays[4]) disagree on whether "
            "the tape has parameters; pass the fn and arrays of one tape.numba_kernel() call"
        )
    for name, arr_len, n, address, expected in (
        ("ops", ops.shape[0], meta[_NNODES], ops.ctypes.data, meta[_AOPS]),
        ("args", args.shape[0], meta[_NEDGES], args.ctypes.data, meta[_AARGS]),
        ("consts", consts.shape[0], meta[_NCONSTS], consts.ctypes.data, meta[_ACONSTS]),
        ("outputs", outputs.shape[0], meta[_NOUTS], outputs.ctypes.data, meta[_AOUTS]),
    ):
        # An empty array is harmless whatever its address (and empty bytes share one).
        if arr_len != n or (n != 0 and address != expected):
            raise ValueError(
                "fasttape numba_kernel: " + name + " is not the array of the tape this kernel "
                "was made for (ops, args, consts and outputs, arrays[0:4], must be the tape's "
                "own); pass the arrays of tape.numba_kernel() unchanged"
            )
    return meta[_NIN] + meta[_NPARAMS] + meta[_NCONSTS] + meta[_NNODES]


@_kernel
def _check_work(meta, n_slots, vals, parts, adj):
    check_buffer(vals, "vals", n_slots, "the tape's n_slots")
    check_buffer(parts, "parts", meta[_NPARTS],
                  "the tape's n_edges for a stored tape, 0 for a lean one")
    check_buffer(adj, "adj", n_slots, "the tape's n_slots, all zeros")


@_kernel
def _check_which(meta):
    which = meta[_WHICH]
    if which < 0 or which >= meta[_NOUTS]:
        raise ValueError("fasttape numba_kernel: output index out of range")
    return which


# ---------------------------------------------------------------------------- jitted wrappers
@_kernel
def _check_grad_call(ops, args, consts, outputs, meta, vals, parts, adj, x, grad):
    """Every check of a ``value_and_grad`` call (either grad mode); returns the output index."""
    n_slots = _check_tape(ops, args, consts, outputs, meta, False)
    _check_work(meta, n_slots, vals, parts, adj)
    check_vector(x, "x", meta[_NIN], "the tape's n_inputs")
    check_buffer(grad, "grad", meta[_NIN], "the tape's n_inputs")
    return _check_which(meta)


@_kernel
def _value_and_grad_stored(ops, args, consts, outputs, meta, vals, parts, adj, x, grad):
    which = _check_grad_call(ops, args, consts, outputs, meta, vals, parts, adj, x, grad)
    return sweep.value_and_grad_kernel(ops, args, consts, outputs, which, x, vals, parts, adj, grad)


@_kernel
def _value_and_grad_lean(ops, args, consts, outputs, meta, vals, parts, adj, x, grad):
    # Same signature as the stored variant (``parts`` is empty and unused) so user code does
    # not depend on the tape's grad_mode.
    which = _check_grad_call(ops, args, consts, outputs, meta, vals, parts, adj, x, grad)
    return sweep.value_and_grad_lean_kernel(ops, args, consts, outputs, which, x, vals, adj, grad)


@_kernel
def _value(ops, args, consts, outputs, meta, vals, x):
    n_slots = _check_tape(ops, args, consts, outputs, meta, False)
    check_buffer(vals, "vals", n_slots, "the tape's n_slots")
    check_vector(x, "x", meta[_NIN], "the tape's n_inputs")
    which = _check_which(meta)
    sweep.forward_values(ops, args, consts, x, vals)
    return vals[outputs[which]]


@_kernel
def _values(ops, args, consts, outputs, meta, vals, x, out):
    n_slots = _check_tape(ops, args, consts, outputs, meta, False)
    check_buffer(vals, "vals", n_slots, "the tape's n_slots")
    check_vector(x, "x", meta[_NIN], "the tape's n_inputs")
    check_buffer(out, "out", meta[_NOUTS], "the tape's n_outputs")
    sweep.value_kernel(ops, args, consts, outputs, x, vals, out)


@_kernel
def vjp_kernel(ops, args, consts, outputs, vals, parts, adj, x, cot, grad):
    """Vector-Jacobian product in one forward and one reverse sweep.

    ``grad = sum_j cot[j] * d outputs[j] / d x``.  ``parts`` has ``len(args)`` entries for a
    ``"stored"`` tape and 0 for a ``"lean"`` one (which then recomputes the partials); ``adj``
    must be all zeros on entry and is again on exit.  No bounds checks: see :func:`vjp`.
    """
    n_in = x.shape[0]
    n_pre = n_in + consts.shape[0]
    lean = parts.shape[0] != args.shape[0]
    if lean:
        sweep.forward_values(ops, args, consts, x, vals)
    else:
        sweep.forward_partials(ops, args, consts, x, vals, parts)
    # Seed every output at once; ``+=`` because an output slot may be listed twice.
    for j in range(outputs.shape[0]):
        adj[outputs[j]] += cot[j]
    if lean:
        sweep.reverse_lean(ops, args, vals, adj, n_pre)
    else:
        sweep.reverse_stored(ops, args, parts, adj, n_pre)
    for i in range(n_in):
        grad[i] = adj[i]
    # The reverse sweep zeroes instruction slots as it reads them; inputs and constants are
    # never read by it, so zero them here (read-then-zero contract of the drivers).
    for i in range(n_pre):
        adj[i] = 0.0


@_kernel
def _vjp(ops, args, consts, outputs, meta, vals, parts, adj, x, cot, grad):
    n_slots = _check_tape(ops, args, consts, outputs, meta, False)
    _check_work(meta, n_slots, vals, parts, adj)
    check_vector(x, "x", meta[_NIN], "the tape's n_inputs")
    check_vector(cot, "cot", meta[_NOUTS], "the tape's n_outputs")
    check_buffer(grad, "grad", meta[_NIN], "the tape's n_inputs")
    vjp_kernel(ops, args, consts, outputs, vals, parts, adj, x, cot, grad)


# With parameters (tape.n_params > 0) the wrappers take ``p`` after ``x``: both are checked,
# then copied into the work buffer ``xp`` (the kernels load inputs and parameters alike from
# one vector), and the gradient is collected into ``gp`` (n_inputs + n_params entries), whose
# first n_inputs entries are copied to ``grad``.
@_kernel
def _join(meta, x, p, xp):
    n_lead = meta[_NIN] + meta[_NPARAMS]
    check_vector(x, "x", meta[_NIN], "the tape's n_inputs")
    check_vector(p, "p", meta[_NPARAMS], "the tape's n_params")
    check_buffer(xp, "xp", n_lead, "the tape's n_inputs + n_params")
    n = x.shape[0]
    for i in range(n):
        xp[i] = x[i]
    for i in range(p.shape[0]):
        xp[n + i] = p[i]


@_kernel
def _check_gradients(meta, gp, grad):
    """Check ``gp`` (the joined gradient buffer) and ``grad`` (the inputs' part of it)."""
    check_buffer(gp, "gp", meta[_NIN] + meta[_NPARAMS], "the tape's n_inputs + n_params")
    check_buffer(grad, "grad", meta[_NIN], "the tape's n_inputs")


@_kernel
def _keep_input_grads(gp, grad):
    """Copy the inputs' entries of the joined gradient ``gp`` into ``grad`` (checked)."""
    for i in range(grad.shape[0]):
        grad[i] = gp[i]


@_kernel
def _join_grad_call(ops, args, consts, outputs, meta, vals, parts, adj, xp, gp, x, p, grad):
    """Every check of a ``value_and_grad`` call with parameters (either grad mode), and ``x``
    and ``p`` joined into ``xp``; returns the output index."""
    n_slots = _check_tape(ops, args, consts, outputs, meta, True)
    _check_work(meta, n_slots, vals, parts, adj)
    _join(meta, x, p, xp)
    _check_gradients(meta, gp, grad)
    return _check_which(meta)


@_kernel
def _value_and_grad_stored_p(ops, args, consts, outputs, meta, vals, parts, adj, xp, gp, x, p,
                             grad):
    which = _join_grad_call(ops, args, consts, outputs, meta, vals, parts, adj, xp, gp, x, p,
                            grad)
    v = sweep.value_and_grad_kernel(ops, args, consts, outputs, which, xp, vals, parts, adj, gp)
    _keep_input_grads(gp, grad)
    return v


@_kernel
def _value_and_grad_lean_p(ops, args, consts, outputs, meta, vals, parts, adj, xp, gp, x, p,
                           grad):
    which = _join_grad_call(ops, args, consts, outputs, meta, vals, parts, adj, xp, gp, x, p,
                            grad)
    v = sweep.value_and_grad_lean_kernel(ops, args, consts, outputs, which, xp, vals, adj, gp)
    _keep_input_grads(gp, grad)
    return v


@_kernel
def _value_p(ops, args, consts, outputs, meta, vals, xp, x, p):
    n_slots = _check_tape(ops, args, consts, outputs, meta, True)
    check_buffer(vals, "vals", n_slots, "the tape's n_slots")
    _join(meta, x, p, xp)
    which = _check_which(meta)
    sweep.forward_values(ops, args, consts, xp, vals)
    return vals[outputs[which]]


@_kernel
def _values_p(ops, args, consts, outputs, meta, vals, xp, x, p, out):
    n_slots = _check_tape(ops, args, consts, outputs, meta, True)
    check_buffer(vals, "vals", n_slots, "the tape's n_slots")
    _join(meta, x, p, xp)
    check_buffer(out, "out", meta[_NOUTS], "the tape's n_outputs")
    sweep.value_kernel(ops, args, consts, outputs, xp, vals, out)


@_kernel
def _vjp_p(ops, args, consts, outputs, meta, vals, parts, adj, xp, gp, x, p, cot, grad):
    n_slots = _check_tape(ops, args, consts, outputs, meta, True)
    _check_work(meta, n_slots, vals, parts, adj)
    _join(meta, x, p, xp)
    check_vector(cot, "cot", meta[_NOUTS], "the tape's n_outputs")
    _check_gradients(meta, gp, grad)
    vjp_kernel(ops, args, consts, outputs, vals, parts, adj, xp, cot, gp)
    _keep_input_grads(gp, grad)


# ---------------------------------------------------------------------------- Python side
def _meta(tape: Tape, which: int, n_parts: int) -> np.ndarray:
    """The read-only record of the tape's counts that every wrapper checks against."""
    fields = {
        "n_inputs": tape.n_inputs, "n_consts": tape.n_consts, "n_instructions": tape.n_instructions,
        "n_edges": tape.n_edges, "n_outputs": tape.n_outputs, "n_parts": n_parts,
        "which": which, "ops_address": tape.ops.ctypes.data,
        "args_address": tape.args.ctypes.data, "consts_address": tape.consts.ctypes.data,
        "outputs_address": tape.outputs.ctypes.data, "n_params": tape.n_params,
    }
    record = np.array([fields[name] for name in _META], dtype=np.int64)
    # Over an immutable bytes object: its writeable flag cannot be turned back on.
    return np.frombuffer(record.tobytes(), dtype=np.int64)


def numba_kernel(tape: Tape, kind: str = "value_and_grad", *, output: int | None = None) -> (
    NumbaKernel
):
    """A jitted function and its arrays, for calling the tape inside ``@numba.njit`` code.

    Parameters
    ----------
    tape : Tape
    kind : {"value_and_grad", "value", "values", "vjp"}
        Which function to return; the call signatures (inside or outside jitted code) are:

        ``"value_and_grad"``
            ``v = fn(*arrays, x, grad)``: value of the chosen output, its gradient written
            into ``grad`` (float64, shape ``(n_inputs,)``).
        ``"value"``
            ``v = fn(*arrays, x)``: value of the chosen output (forward sweep only).
        ``"values"``
            ``fn(*arrays, x, out)``: every output written into ``out`` (shape ``(n_outputs,)``).
        ``"vjp"``
            ``fn(*arrays, x, cot, grad)``: ``grad = sum_j cot[j] * d out_j / dx`` in one
            reverse sweep (``cot`` has shape ``(n_outputs,)``).
    output : int, optional
        For ``"value_and_grad"`` and ``"value"``: which output; required when the tape has
        several (as in :meth:`Tape.value_and_grad`).

        A tape with parameters (``n_params > 0``) gives functions that take ``p`` (float64,
        shape ``(n_params,)``) right after ``x``: ``fn(*arrays, x, p, grad)``,
        ``fn(*arrays, x, p)``, ``fn(*arrays, x, p, out)``, ``fn(*arrays, x, p, cot, grad)``;
        ``grad`` still has ``n_inputs`` entries.  ``arrays`` then ends with two more work
        buffers, ``xp`` and ``gp`` (``n_inputs + n_params`` entries each), where ``x`` and
        ``p`` are joined and the full adjoint vector is collected.

    Returns
    -------
    NumbaKernel
        ``(fn, arrays)``.  ``x``, ``grad``, ``out`` and ``cot`` must be 1-D float64 arrays
        (contiguous for speed; ``grad`` and ``out`` writeable), else Numba raises a
        ``TypingError`` naming the argument.  Every length, of these and of the arrays in
        ``arrays``, is checked against the tape's counts on every call, before the sweep; a
        mismatch raises ``ValueError`` naming the array, from within the jitted code.  The
        work buffers in ``arrays`` are shared by every call made with this tuple: one tuple
        per thread.

    Examples
    --------
    >>> import numba, numpy as np, fasttape as ft
    >>> tape = ft.compile(ft.trace(lambda x: x[0] ** 2 + 3 * x[1], n_inputs=2))
    >>> fn, arrays = tape.numba_kernel()
    >>> @numba.njit
    ... def descend(fn, arrays, x, steps, lr):
    ...     g = np.empty_like(x)
    ...     for _ in range(steps):
    ...         fn(*arrays, x, g)
    ...         x -= lr * g
    ...     return x
    """
    if not isinstance(tape, Tape):
        raise TypeError(f"numba_kernel() expects a fasttape.Tape, got {type(tape).__name__}")
    base = (tape.ops, tape.args, tape.consts, tape.outputs)
    vals = np.empty(tape.n_slots)
    n_parts = tape.n_edges if tape.grad_mode == "stored" else 0
    if tape.n_params:
        return _with_params(tape, kind, output, base, vals, n_parts)
    if kind == "value_and_grad":
        # Zeros once: the reverse sweep leaves adj zeroed again (read-then-zero).
        meta = _meta(tape, tape.output_index(output), n_parts)
        arrays = (*base, meta, vals, np.empty(n_parts), np.zeros(tape.n_slots))
        fn = _value_and_grad_stored if tape.grad_mode == "stored" else _value_and_grad_lean
    elif kind == "value":
        arrays = (*base, _meta(tape, tape.output_index(output), n_parts), vals)
        fn = _value
    elif kind == "values":
        _no_output(kind, output)
        arrays = (*base, _meta(tape, 0, n_parts), vals)
        fn = _values
    elif kind == "vjp":
        _no_output(kind, output)
        arrays = (*base, _meta(tape, 0, n_parts), vals, np.empty(n_parts),
                  np.zeros(tape.n_slots))
        fn = _vjp
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return NumbaKernel(fn, arrays)


def _with_params(
    tape: Tape, kind: str, output: int | None, base: tuple[Any, ...], vals: np.ndarray,
    n_parts: int,
) -> NumbaKernel:
    """:func:`numba_kernel` for a tape with parameters: the wrappers that take ``p``."""
    n_lead = tape.n_inputs + tape.n_params
    xp = np.empty(n_lead)
    if kind == "value_and_grad":
        meta = _meta(tape, tape.output_index(output), n_parts)
        arrays = (*base, meta, vals, np.empty(n_parts), np.zeros(tape.n_slots), xp,
                  np.empty(n_lead))
        stored = tape.grad_mode == "stored"
        fn = _value_and_grad_stored_p if stored else _value_and_grad_lean_p
    elif kind == "value":
        arrays = (*base, _meta(tape, tape.output_index(output), n_parts), vals, xp)
        fn = _value_p
    elif kind == "values":
        _no_output(kind, output)
        arrays = (*base, _meta(tape, 0, n_parts), vals, xp)
        fn = _values_p
    elif kind == "vjp":
        _no_output(kind, output)
        arrays = (*base, _meta(tape, 0, n_parts), vals, np.empty(n_parts),
                  np.zeros(tape.n_slots), xp, np.empty(n_lead))
        fn = _vjp_p
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return NumbaKernel(fn, arrays)


def _no_output(kind: str, output: int | None) -> None:
    if output is not None:
        raise ValueError(f"kind={kind!r} covers every output: do not pass output=")


def vjp(tape: Tape, x: Any, cot: Any, *, out: np.ndarray | None = None) -> np.ndarray:
    """Vector-Jacobian product ``sum_j cot[j] * grad(out_j)`` at ``x``, one reverse sweep.

    Parameters
    ----------
    tape : Tape
    x : array_like of float, shape (n_inputs,)
    cot : array_like of float, shape (n_outputs,)
        The cotangent (output weights); a scalar is accepted for a single-output tape.
    out : ndarray of float64, shape (n_inputs,), optional
        Receives the result.

    Returns
    -------
    ndarray, shape (n_inputs,)

    Notes
    -----
    Uses the tape's per-thread work buffers, so it is thread-safe like :meth:`Tape.value`.
    """
    xin = tape.as_input(x)
    c = np.ascontiguousarray(np.asarray(cot, dtype=np.float64).reshape(-1))
    if c.shape[0] != tape.n_outputs:
        raise ValueError(
            f"cot has {c.shape[0]} entries but this tape has {tape.n_outputs} outputs"
        )
    grad = np.empty(tape.n_inputs) if out is None else _checked_out(out, tape.n_inputs)
    buf = tape.point_buffers(grad=True)
    vjp_kernel(
        tape.ops, tape.args, tape.consts, tape.outputs, buf.vals, buf.parts, buf.adj, xin, c, grad
    )
    return grad


def _checked_out(out: Any, n: int) -> np.ndarray:
    return check_out(out, n, "out")
