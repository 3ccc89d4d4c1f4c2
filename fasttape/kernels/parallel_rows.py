"""Batched JVPs, VJPs and HVPs on all threads: the row loops of :mod:`.tangent` under prange.

A batch of ``B`` points is cut into blocks of ``block`` consecutive rows, handed to Numba's
threads one block at a time (the caller sets the parallel chunk size to 1:
:func:`fasttape.batch.launch`).  Thread ``w`` owns the ``w``-th set of work arrays (first
axis: ``numba.get_thread_id()``), so no two threads share an adjoint, and each block runs the
serial row kernel (:func:`.tangent.jvp_rows` and its siblings), so every row is bitwise the
single-point call, whatever the thread count and the block size.
"""

from __future__ import annotations

import numba

from fasttape.kernels.jit import kernel
from fasttape.kernels.tangent import hvp_rows, jvp_rows, vjp_rows

__all__ = ["hvp_rows_parallel", "jvp_rows_parallel", "vjp_rows_parallel"]


@kernel(parallel=True)
def jvp_rows_parallel(ops, args, consts, outputs, X, V, vals, tan, out, outdot, block):
    # pragma: no cover (jitted)
    """:func:`.tangent.jvp_rows` in blocks of ``block`` rows on all threads; ``vals`` and
    ``tan`` have one set per thread (shapes ``(T, n_slots)`` and ``(T, n_slots, 1)``)."""
    n_rows = X.shape[0]
    for c in numba.prange((n_rows + block - 1) // block):
        w = numba.get_thread_id()
        b0 = c * block
        b1 = min(n_rows, b0 + block)
        jvp_rows(ops, args, consts, outputs, X[b0:b1], V[b0:b1], vals[w], tan[w],
                 out[b0:b1], outdot[b0:b1])


@kernel(parallel=True)
def vjp_rows_parallel(ops, args, consts, outputs, X, W, vals, parts, adj, out, res, block):
    # pragma: no cover (jitted)
    """:func:`.tangent.vjp_rows` in blocks on all threads; ``vals``, ``parts`` (None for a
    lean tape) and ``adj`` (zero, left zero) have one set per thread."""
    n_rows = X.shape[0]
    for c in numba.prange((n_rows + block - 1) // block):
        w = numba.get_thread_id()
        b0 = c * block
        b1 = min(n_rows, b0 + block)
        if parts is None:
            vjp_rows(ops, args, consts, outputs, X[b0:b1], W[b0:b1], vals[w], None, adj[w],
                     out[b0:b1], res[b0:b1])
        else:
            vjp_rows(ops, args, consts, outputs, X[b0:b1], W[b0:b1], vals[w], parts[w],
                     adj[w], out[b0:b1], res[b0:b1])


@kernel(parallel=True)
def hvp_rows_parallel(ops, args, consts, outputs, which, X, V, vals, tan, adj, adjdot, grad,
                      out, block):  # pragma: no cover (jitted)
    """:func:`.tangent.hvp_rows` in blocks on all threads; every work array (``vals``,
    ``tan``, ``adj`` and ``adjdot`` zero and left zero, ``grad``) has one set per thread."""
    n_rows = X.shape[0]
    for c in numba.prange((n_rows + block - 1) // block):
        w = numba.get_thread_id()
        b0 = c * block
        b1 = min(n_rows, b0 + block)
        hvp_rows(ops, args, consts, outputs, which, X[b0:b1], V[b0:b1], vals[w], tan[w],
                 adj[w], adjdot[w], grad[w], out[b0:b1])
