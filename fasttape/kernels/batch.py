"""Batch sweeps: many points at once, in chunks, on all cores.

Layout.  A *chunk* of ``nb <= C`` points is evaluated at once in buffers laid out
``[slot, point]`` (``vals[s, p]``, C-contiguous, shape ``(n_slots, C)``): each instruction is
decoded once per chunk (op code, argument slots) and then applied to a contiguous row of
points, so the op dispatch and index loads are paid once per chunk and the inner loop over
points is a plain strided-by-one loop that LLVM vectorizes where the formula allows (it always
does for the arithmetic ops; calls to libm functions stay scalar unless SVML is available).

Semantics. The per-point operations are exactly those of the single-point sweeps in
:mod:`fasttape.kernels.sweep`, in the same order and from the same table formulas (the row
forms of :mod:`fasttape.kernels.dispatch`, whose loop over the points sits inside each op's
branch: LLVM does not unswitch a switch inside the loop over points, 2x slower), so a batch is
bitwise the loop of single calls (without SVML; a NaN's sign and payload excepted, which IEEE
leaves open when both operands of an addition are NaN, docs/batch.md). In particular the
reverse sweeps keep the single sweeps' zero rules: an adjoint of exactly 0 or a partial of
exactly 0 contributes nothing (written as a select, ``t + g * d if g != 0 and d != 0 else t``,
which is what the scalar ``continue`` / ``if d != 0`` does and what keeps a signed zero or a
``0 * inf`` out of the sum).

Drivers.  ``*_chunks`` process chunks ``first, first + step, ...`` of a batch serially with one
set of buffers; ``*_parallel`` hand the chunks to Numba's threads under ``numba.prange``
(dynamically, one chunk at a time), each thread owning one set of the 3-D buffers (indexed by
``numba.get_thread_id()``), so there is no race on adjoint accumulation and no allocation
inside the parallel region.
"""

from __future__ import annotations

import numba

from fasttape.kernels.dispatch import (
    ARITY,
    NDIFF,
    adjoint_lean_rows,
    unit_adjoint_rows,
    value_rows,
    value_store_partials_rows,
)
from fasttape.kernels.fpenv import enter, leave
from fasttape.kernels.jit import kernel
from fasttape.kernels.memhint import LINE_DOUBLES, prefetch, prefetch_write

__all__ = [
    "PREFETCH_ROWS",
    "chunk_forward_partials",
    "chunk_forward_values",
    "chunk_reverse_lean",
    "chunk_reverse_stored",
    "value_and_grad_chunks",
    "value_and_grad_lean_chunks",
    "value_and_grad_parallel",
    "value_chunks",
    "value_parallel",
]

#: How far ahead (in rows of ``parts``, about two per instruction) the stored reverse sweep
#: prefetches the partials it will read, and the forward sweep with partials the rows it will
#: write (fasttape/kernels/memhint.py).  Measured on the reverse sweep of autograd-west (25 MB
#: of partials per worker): 16 rows already gains, 48-128 gain most, 400 a little less (the
#: lines start to leave L1/L2 before they are used).
PREFETCH_ROWS = 64

#: The most arguments of any op: the forward prefetch stays this many rows inside ``parts``.
MAX_ARITY = int(ARITY.max())


@kernel(inline=True)
def _load_chunk(consts, X, b0, nb, vals):  # pragma: no cover (jitted)
    """Load points ``b0 .. b0 + nb - 1`` of ``X`` and the constants into the first rows of
    a chunk.

    Parameters
    ----------
    consts : ndarray, shape (n_consts,)
        The tape's constants; row ``n_inputs + i`` gets ``consts[i]`` at every point.
    X : ndarray, shape (B, n_inputs)
        The batch; row ``i`` of the chunk gets column ``i`` of its points ``b0 ..``.
    b0 : int
        The chunk's first point.
    nb : int
        How many points the chunk holds (``nb <= C``).
    vals : ndarray, shape (n_work, C)
        The chunk's value rows; only columns ``0 .. nb - 1`` of the first
        ``n_inputs + n_consts`` rows are written.
    """
    n_in = X.shape[1]
    for i in range(n_in):
        for p in range(nb):
            vals[i, p] = X[b0 + p, i]
    for i in range(consts.shape[0]):
        c = consts[i]
        for p in range(nb):
            vals[n_in + i, p] = c


@kernel
def chunk_forward_values(ops, args, dest, consts, X, b0, nb, vals):  # pragma: no cover
    """Forward sweep over points ``b0 .. b0 + nb - 1`` of ``X``: values.

    ``X`` has shape ``(B, n_inputs)``; ``vals`` has shape ``(n_work, C)`` with ``nb <= C``;
    instruction ``i`` writes row ``dest[i]`` (``n_pre + i`` without a slot-reuse plan; with
    one, ``args`` and ``dest`` are the plan's).  No bounds checks: the caller validated the
    tape and the shapes.
    """
    _load_chunk(consts, X, b0, nb, vals)
    k = 0
    for i in range(ops.shape[0]):
        k = value_rows(ops[i], args[k], vals, args, k, dest[i], nb)


@kernel
def chunk_forward_partials(ops, args, dest, consts, X, b0, nb, vals, parts):  # pragma: no cover
    """As :func:`chunk_forward_values`, also storing the partials (``parts[e, p]``) except
    the unit ones; the rows it will write are prefetched ``PREFETCH_ROWS`` ahead."""
    _load_chunk(consts, X, b0, nb, vals)
    k = 0
    for i in range(ops.shape[0]):
        op = ops[i]
        s = dest[i]
        a0 = args[k]
        # The rows PREFETCH_ROWS rows beyond the current instruction's (staying inside the
        # buffer): over a sweep, every row about once.  One prefetch per cache line of a
        # row, and one for its last element (a row need not start on a line boundary).
        q = k + PREFETCH_ROWS
        if q + MAX_ARITY <= parts.shape[0]:
            for r in range(q, q + ARITY[op]):
                for col in range(0, nb, LINE_DOUBLES):
                    prefetch_write(parts, r, col)
                prefetch_write(parts, r, nb - 1)
        k = value_store_partials_rows(op, a0, vals, args, k, s, nb, parts)


@kernel
def chunk_reverse_stored(ops, args, dest, parts, adj, nb):  # pragma: no cover (jitted)
    """Reverse sweep over the partials of :func:`chunk_forward_partials`.

    ``adj`` (shape ``(n_work, C)``) holds the seed on entry and zeros elsewhere; on exit
    the instruction rows are zero again and rows below ``n_pre`` hold the input and
    constant adjoints of each point.  The partials are prefetched ``PREFETCH_ROWS``
    rows ahead (see fasttape/kernels/memhint.py).
    """
    k = args.shape[0]
    for i in range(ops.shape[0] - 1, -1, -1):
        op = ops[i]
        k -= ARITY[op]
        s = dest[i]
        a0 = args[k]
        q = k - PREFETCH_ROWS
        if q >= 0:
            for r in range(q, q + ARITY[op]):
                for col in range(0, nb, LINE_DOUBLES):
                    prefetch(parts, r, col)
                prefetch(parts, r, nb - 1)
        # Ops with a unit partial first (unit partials are not stored), then the generic
        # loops over stored partials.  Each update is the scalar sweep's `if g == 0:
        # continue` and `if d != 0` as one select, which vectorizes.
        if unit_adjoint_rows(op, a0, args, parts, k, s, adj, nb):
            continue
        nd = NDIFF[op]
        if nd == 0:
            for p in range(nb):
                adj[s, p] = 0.0
        elif nd == 1:
            for p in range(nb):
                g = adj[s, p]
                adj[s, p] = 0.0  # read-then-zero, as the scalar sweep
                d = parts[k, p]
                t = adj[a0, p]
                adj[a0, p] = t + g * d if g != 0.0 and d != 0.0 else t
        else:
            a1 = args[k + 1]
            for p in range(nb):
                g = adj[s, p]
                adj[s, p] = 0.0
                d = parts[k, p]
                t = adj[a0, p]
                adj[a0, p] = t + g * d if g != 0.0 and d != 0.0 else t
                d = parts[k + 1, p]
                t = adj[a1, p]
                adj[a1, p] = t + g * d if g != 0.0 and d != 0.0 else t


@kernel
def chunk_reverse_lean(ops, args, dest, vals, adj, nb):  # pragma: no cover (jitted)
    """Reverse sweep recomputing each partial from ``vals`` (lean mode).

    Same contract as :func:`chunk_reverse_stored`.
    """
    k = args.shape[0]
    for i in range(ops.shape[0] - 1, -1, -1):
        op = ops[i]
        k -= ARITY[op]
        adjoint_lean_rows(op, args[k], vals, args, k, dest[i], adj, nb)


@kernel
def _outputs_of_chunk(outputs, vals, b0, nb, out):
    for j in range(outputs.shape[0]):
        o = outputs[j]
        for p in range(nb):
            out[b0 + p, j] = vals[o, p]


@kernel
def _collect_chunk(adj, n_in, n_pre, b0, nb, grad):
    # Copy the inputs' adjoints out and zero every pre-slot row: adj is clean for next time.
    for i in range(n_in):
        for p in range(nb):
            grad[b0 + p, i] = adj[i, p]
    for i in range(n_pre):
        for p in range(nb):
            adj[i, p] = 0.0


@kernel
def value_chunks(ops, args, dest, consts, outputs, X, first, step, vals, out):
    """Outputs at the points of chunks ``first, first + step, ...`` into ``out[b, j]``.

    ``vals`` has shape ``(n_slots, C)``; chunk ``c`` holds points ``c * C .. c * C + C - 1``.
    """
    B = X.shape[0]
    C = vals.shape[1]
    n_chunks = (B + C - 1) // C
    for c in range(first, n_chunks, step):
        b0 = c * C
        nb = min(C, B - b0)
        chunk_forward_values(ops, args, dest, consts, X, b0, nb, vals)
        _outputs_of_chunk(outputs, vals, b0, nb, out)


@kernel(inline=True)
def _grad_chunks(ops, args, dest, consts, outputs, which, X, first, step, vals, parts, adj,
                 out, grad):  # pragma: no cover (jitted)
    """The gradient drivers' loop over chunks ``first, first + step, ...``, in stored mode
    (``parts`` an array) or lean mode (``parts`` is None).

    Parameters
    ----------
    ops, args, dest, consts, outputs : ndarray
        The tape's arrays (the plan's ``args``, ``dest`` and ``outputs`` with one).
    which : int
        The output whose gradient is taken.
    X : ndarray, shape (B, n_inputs)
        The points.
    first, step : int
        The chunks this call processes.
    vals : ndarray, shape (n_work, C)
        The value rows.
    parts : ndarray, shape (n_edges, C), or None
        The stored partials; ``None`` recomputes them from ``vals`` (Numba types ``parts``
        as ``none`` then and compiles the test away, as for ``dest`` in
        :mod:`fasttape.kernels.sweep`).
    adj : ndarray, shape (n_work, C)
        All zeros on entry, and again on exit.
    out : ndarray, shape (B,)
        Receives the value of output ``which`` at each point.
    grad : ndarray, shape (B, n_inputs)
        Receives its gradient at each point.
    """
    B = X.shape[0]
    C = vals.shape[1]
    n_in = X.shape[1]
    n_pre = n_in + consts.shape[0]
    n_chunks = (B + C - 1) // C
    o = outputs[which]
    for c in range(first, n_chunks, step):
        b0 = c * C
        nb = min(C, B - b0)
        if parts is None:
            chunk_forward_values(ops, args, dest, consts, X, b0, nb, vals)
        else:
            chunk_forward_partials(ops, args, dest, consts, X, b0, nb, vals, parts)
        for p in range(nb):
            out[b0 + p] = vals[o, p]
            adj[o, p] = 1.0
        if parts is None:
            chunk_reverse_lean(ops, args, dest, vals, adj, nb)
        else:
            chunk_reverse_stored(ops, args, dest, parts, adj, nb)
        _collect_chunk(adj, n_in, n_pre, b0, nb, grad)


@kernel
def value_and_grad_chunks(ops, args, dest, consts, outputs, which, X, first, step, vals, parts,
                          adj, out, grad):
    """Value of output ``which`` into ``out[b]`` and its gradient into ``grad[b, :]``.

    Stored mode (``parts`` of shape ``(n_edges, C)``); ``adj`` must be all zeros on entry and
    is again on exit.
    """
    _grad_chunks(ops, args, dest, consts, outputs, which, X, first, step, vals, parts, adj,
                 out, grad)


@kernel
def value_and_grad_lean_chunks(ops, args, dest, consts, outputs, which, X, first, step, vals,
                               adj, out, grad):
    """As :func:`value_and_grad_chunks`, recomputing partials (lean mode, no ``parts``)."""
    _grad_chunks(ops, args, dest, consts, outputs, which, X, first, step, vals, None, adj,
                 out, grad)


# Parallel drivers: prange over the chunks.  The caller sets Numba's parallel chunksize to 1
# (fasttape.batch.launch; from Python, because calling numba.set_parallel_chunksize in a
# kernel makes it uncachable), so chunks are handed out one at a time to whichever thread is
# free: on a machine shared with other work a descheduled thread does not hold up the rest,
# as a static split would.  The thread with id numba.get_thread_id() uses buffer set [id], so
# the buffers need numba.get_num_threads() <= their first axis: the caller sets the count.
# ``flush`` sets FTZ/DAZ on the worker thread around each chunk (fasttape/kernels/fpenv.py):
# worker threads do not inherit the caller's MXCSR register.


@kernel(parallel=True)
def value_parallel(ops, args, dest, consts, outputs, X, vals, out, flush):
    """:func:`value_chunks` on all threads; ``vals`` is ``(threads, n_slots, C)``."""
    C = vals.shape[2]
    n_chunks = (X.shape[0] + C - 1) // C
    for c in numba.prange(n_chunks):
        w = numba.get_thread_id()
        old = enter(flush)
        value_chunks(ops, args, dest, consts, outputs, X, c, n_chunks, vals[w], out)
        leave(old)


@kernel(parallel=True)
def value_and_grad_parallel(ops, args, dest, consts, outputs, which, X, vals, parts, adj, out,
                            grad, flush):
    """:func:`value_and_grad_chunks` on all threads, each with its own 2-D buffers; with
    ``parts`` None, :func:`value_and_grad_lean_chunks` (Numba types ``parts`` as ``none`` then
    and compiles the test away, as in :func:`_grad_chunks`)."""
    C = vals.shape[2]
    n_chunks = (X.shape[0] + C - 1) // C
    for c in numba.prange(n_chunks):
        w = numba.get_thread_id()
        old = enter(flush)
        if parts is None:
            value_and_grad_lean_chunks(ops, args, dest, consts, outputs, which, X, c, n_chunks,
                                       vals[w], adj[w], out, grad)
        else:
            value_and_grad_chunks(ops, args, dest, consts, outputs, which, X, c, n_chunks,
                                  vals[w], parts[w], adj[w], out, grad)
        leave(old)
