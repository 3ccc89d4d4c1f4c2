"""Call a compiled tape from your own ``@numba.njit`` code.

:func:`numba_kernel` returns a jitted function and the tuple of arrays to pass it: the tape's
own (read-only) arrays, the output index and freshly allocated work buffers.  Inside a jitted
loop the call is ``fn(*arrays, x, grad)``: no Python object crosses into the loop and nothing is
allocated per call.

The functions returned here are thin checked wrappers around the generated drivers of
:mod:`fasttape.kernels` (``value_kernel``, ``value_and_grad_kernel``,
``value_and_grad_lean_kernel``), which are themselves part of the stable embedding API; see
docs/embedding.md for their buffer contract.  The wrappers check every length in O(1) before
the sweep (the kernels do no bounds checks), so a wrong ``x`` raises ``ValueError`` inside your
jitted code instead of reading out of bounds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from fasttape.kernels import (
    forward_partials,
    forward_values,
    reverse_lean,
    reverse_stored,
    value_and_grad_kernel,
    value_and_grad_lean_kernel,
    value_kernel,
)
from fasttape.kernels.jit import kernel as _kernel
from fasttape.tape import Tape

__all__ = ["KINDS", "NumbaKernel", "numba_kernel", "vjp", "vjp_kernel"]


#: The kinds of function :func:`numba_kernel` can return.
KINDS = ("value_and_grad", "value", "values", "vjp")


class NumbaKernel(NamedTuple):
    """A jitted function and the arrays to call it with: ``fn(*arrays, ...)``.

    Unpacks as a pair: ``fn, arrays = tape.numba_kernel()``.  ``arrays`` holds the tape's
    read-only arrays and work buffers owned by this object; the buffers make a call
    non-reentrant, so give each thread its own ``numba_kernel()``.
    """

    fn: Any
    arrays: tuple[Any, ...]


# ---------------------------------------------------------------------------- jitted wrappers
# Each wrapper checks the lengths the sweeps rely on, then calls a generated driver.  The checks
# are a handful of integer comparisons: nothing next to a sweep over the tape.


@_kernel
def _check(ops, args, consts, outputs, vals, x):
    n_in = vals.shape[0] - consts.shape[0] - ops.shape[0]
    if x.shape[0] != n_in:
        raise ValueError("fasttape: x has the wrong length (expected the tape's n_inputs)")
    return n_in


@_kernel
def _value_and_grad_stored(ops, args, consts, outputs, which, vals, parts, adj, x, grad):
    n_in = _check(ops, args, consts, outputs, vals, x)
    if grad.shape[0] != n_in:
        raise ValueError("fasttape: grad has the wrong length (expected the tape's n_inputs)")
    if parts.shape[0] != args.shape[0] or adj.shape[0] != vals.shape[0]:
        raise ValueError("fasttape: work buffers do not belong to this tape")
    if which < 0 or which >= outputs.shape[0]:
        raise ValueError("fasttape: output index out of range")
    return value_and_grad_kernel(ops, args, consts, outputs, which, x, vals, parts, adj, grad)


@_kernel
def _value_and_grad_lean(ops, args, consts, outputs, which, vals, parts, adj, x, grad):
    # Same signature as the stored variant (``parts`` is empty and unused) so user code does
    # not depend on the tape's grad_mode.
    n_in = _check(ops, args, consts, outputs, vals, x)
    if grad.shape[0] != n_in:
        raise ValueError("fasttape: grad has the wrong length (expected the tape's n_inputs)")
    if adj.shape[0] != vals.shape[0]:
        raise ValueError("fasttape: work buffers do not belong to this tape")
    if which < 0 or which >= outputs.shape[0]:
        raise ValueError("fasttape: output index out of range")
    return value_and_grad_lean_kernel(ops, args, consts, outputs, which, x, vals, adj, grad)


@_kernel
def _value(ops, args, consts, outputs, which, vals, x):
    _check(ops, args, consts, outputs, vals, x)
    if which < 0 or which >= outputs.shape[0]:
        raise ValueError("fasttape: output index out of range")
    forward_values(ops, args, consts, x, vals)
    return vals[outputs[which]]


@_kernel
def _values(ops, args, consts, outputs, vals, x, out):
    _check(ops, args, consts, outputs, vals, x)
    if out.shape[0] != outputs.shape[0]:
        raise ValueError("fasttape: out has the wrong length (expected the tape's n_outputs)")
    value_kernel(ops, args, consts, outputs, x, vals, out)


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
        forward_values(ops, args, consts, x, vals)
    else:
        forward_partials(ops, args, consts, x, vals, parts)
    # Seed every output at once; ``+=`` because an output slot may be listed twice.
    for j in range(outputs.shape[0]):
        adj[outputs[j]] += cot[j]
    if lean:
        reverse_lean(ops, args, vals, adj, n_pre)
    else:
        reverse_stored(ops, args, parts, adj, n_pre)
    for i in range(n_in):
        grad[i] = adj[i]
    # The reverse sweep zeroes instruction slots as it reads them; inputs and constants are
    # never read by it, so zero them here (read-then-zero contract of the drivers).
    for i in range(n_pre):
        adj[i] = 0.0


@_kernel
def _vjp(ops, args, consts, outputs, vals, parts, adj, x, cot, grad):
    n_in = _check(ops, args, consts, outputs, vals, x)
    if grad.shape[0] != n_in or cot.shape[0] != outputs.shape[0]:
        raise ValueError("fasttape: grad must have n_inputs entries and cot n_outputs entries")
    if adj.shape[0] != vals.shape[0] or (parts.shape[0] != 0 and parts.shape[0] != args.shape[0]):
        raise ValueError("fasttape: work buffers do not belong to this tape")
    vjp_kernel(ops, args, consts, outputs, vals, parts, adj, x, cot, grad)


# ---------------------------------------------------------------------------- Python side
def _which(tape: Tape, output: int | None) -> np.int64:
    return np.int64(tape._which(output))


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

    Returns
    -------
    NumbaKernel
        ``(fn, arrays)``.  ``x``, ``grad``, ``out`` and ``cot`` must be 1-D float64 arrays
        (contiguous for speed); lengths are checked on every call and a mismatch raises
        ``ValueError`` from within the jitted code.  The work buffers in ``arrays`` are shared
        by every call made with this tuple: one tuple per thread.

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
    if kind == "value_and_grad":
        # Zeros once: the reverse sweep leaves adj zeroed again (read-then-zero).
        arrays = (*base, _which(tape, output), vals, np.empty(n_parts), np.zeros(tape.n_slots))
        fn = _value_and_grad_stored if tape.grad_mode == "stored" else _value_and_grad_lean
    elif kind == "value":
        arrays = (*base, _which(tape, output), vals)
        fn = _value
    elif kind == "values":
        _no_output(kind, output)
        arrays = (*base, vals)
        fn = _values
    elif kind == "vjp":
        _no_output(kind, output)
        arrays = (*base, vals, np.empty(n_parts), np.zeros(tape.n_slots))
        fn = _vjp
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
    xin = tape._x(x)
    c = np.ascontiguousarray(np.asarray(cot, dtype=np.float64).reshape(-1))
    if c.shape[0] != tape.n_outputs:
        raise ValueError(
            f"cot has {c.shape[0]} entries but this tape has {tape.n_outputs} outputs"
        )
    grad = np.empty(tape.n_inputs) if out is None else _checked_out(out, tape.n_inputs)
    buf = tape._grad_buffers()
    vjp_kernel(
        tape.ops, tape.args, tape.consts, tape.outputs, buf.vals, buf.parts, buf.adj, xin, c, grad
    )
    return grad


def _checked_out(out: Any, n: int) -> np.ndarray:
    from fasttape.tape import _check_out

    return _check_out(out, n, "out")
