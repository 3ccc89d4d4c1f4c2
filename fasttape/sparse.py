"""Sparse Jacobians and Hessians: sparsity patterns, coloring and compressed evaluation.

The pipeline (docs/sparse.md):

1. **Pattern.**  One forward pass over the tape (:mod:`fasttape.kernels.sparsity`) gives every
   slot the sorted list of inputs it depends on through differentiable edges.  The Jacobian
   pattern is the lists of the output slots.  The Hessian pattern adds, for every instruction
   that reaches the selected outputs, the pairs of its arguments' lists whose second partial
   is structurally nonzero in the op table (:attr:`fasttape.ops.OpSpec.second` not ``"0.0"``):
   ``x * y`` gives ``X(x) x X(y)``, ``x + y`` nothing, ``sin(u)`` all pairs of ``X(u)``.
2. **Coloring.**  Jacobians: greedy distance-2 column coloring, largest column first: columns
   that share no row get one color and are evaluated together.  Hessians: greedy star
   coloring by default (Gebremedhin, Manne and Pothen's Algorithm 4.1; each entry is read
   from whichever of its two rows determines it), or the distance-2 coloring of the
   symmetric pattern (``coloring="distance2"``: more colors, every entry read from both rows).
3. **Compressed evaluation.**  One tangent sweep per block of up to 32 colors (Jacobian), one
   tangent + forward-over-reverse sweep pair per block (Hessian), with seed matrix
   ``S[j, color[j]] = 1``; entry ``(i, j)`` is then read from compressed column ``color[j]``.

A plan (:class:`SparseJacobian`, :class:`SparseHessian`) does steps 1-2 once and evaluates
many times; the tape record stays immutable, so the plan is an object of its own.

Conventions: parameters (``n_params``) get no pattern columns; non-differentiable arguments
(``where``'s condition, comparison operands, ``sign``/``floor``/``ceil``, exponents) contribute
nothing (their derivative is 0 by the op table's convention); ``where(c, a, b)`` is
conservative: its pattern is the union of both branches whatever ``c`` selects.
"""

from __future__ import annotations

import ast
import functools
from typing import Any

import numpy as np

from fasttape.kernels import activity as _ka
from fasttape.kernels import entries as _ke
from fasttape.kernels import sparsity as _ks
from fasttape.kernels.tangent import cotangent_driver, tangent_driver
from fasttape.linear_region import core_tape, region_reads, region_tape
from fasttape.ops import OPS
from fasttape.tape import TapeRecord, check_out

__all__ = [
    "SparseHessian",
    "SparseJacobian",
    "hessian_sparsity",
    "jacobian_sparsity",
    "color_columns",
    "star_color",
    "HESSIAN_COLORINGS",
    "MAX_COLORS_PER_SWEEP",
]

#: Colors (compressed directions) carried per sweep, as the dense Jacobian's chunk.
MAX_COLORS_PER_SWEEP = 32


def _scipy_sparse() -> Any:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover (scipy is installed in the test environment)
        raise ImportError(
            "sparse Jacobians and Hessians return scipy.sparse matrices: install SciPy "
            "(pip install 'fasttape[scipy]' or pip install scipy)"
        ) from None
    return sp


def _reads_values(op: Any) -> bool:
    """Whether ``op``'s partials or second partials read a value: its result ``f``, a
    differentiable argument, or a non-differentiable one that is not a constant slot
    (``where``'s condition).  ``mulc``'s ``y`` (a constant) and ``add``'s ``1.0`` read none."""
    names = ("x", "y", "z")[: op.arity]
    fixed = set(names[op.ndiff :]) if op.param == "const" else set()
    read = {"f", *names} - fixed
    for expr in (*op.partials, *op.second):
        if any(isinstance(node, ast.Name) and node.id in read
               for node in ast.walk(ast.parse(expr, mode="eval"))):
            return True
    return False


def _frozen(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.flags.writeable = False
    return arrays


@functools.cache
def _valdep() -> np.ndarray:
    """:func:`_reads_values` of every op, indexed by op code (read-only; the table is fixed
    once imported, so it is parsed once, not at every plan)."""
    return _frozen(np.array([_reads_values(op) for op in OPS], np.bool_))[0]


@functools.cache
def _op_tables() -> tuple[np.ndarray, ...]:
    """``arity``, ``ndiff`` and ``nonlin[op, e]`` (second partial ``e`` structurally nonzero),
    all read from the op table's rows (read-only, built once)."""
    n = len(OPS)
    # The kernels handle up to two differentiable arguments (three second partials); an op
    # with more must extend them, so say so instead of computing a wrong pattern.
    wide = [op.name for op in OPS if op.ndiff > 2]
    if wide:  # pragma: no cover (no such op today; tests/test_sparse.py pins that)
        raise NotImplementedError(f"sparsity kernels support ndiff <= 2; extend them for {wide}")
    arity = np.array([op.arity for op in OPS], np.int64)
    ndiff = np.array([op.ndiff for op in OPS], np.int64)
    nonlin = np.zeros((n, 3), np.bool_)
    for op in OPS:
        for e, expr in enumerate(op.second):
            nonlin[op.code, e] = expr.strip() != "0.0"
    return _frozen(arity, ndiff, nonlin)


def _sets(tape: TapeRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arity, ndiff, _ = _op_tables()
    n_pre = tape.n_inputs + tape.n_params + tape.n_consts
    return _ks.index_sets(tape.ops, tape.args, arity, ndiff, tape.n_inputs, n_pre)


def jacobian_sparsity(tape: TapeRecord) -> Any:
    """The structural sparsity pattern of the Jacobian, ``(n_outputs, n_inputs)``.

    Entry ``(i, j)`` is stored when output ``i`` depends on input ``j`` through
    differentiable edges.  Returns a ``scipy.sparse.csr_matrix`` of int8 ones with sorted
    indices.  Parameters get no columns.
    """
    sp = _scipy_sparse()
    start, length, idx = _sets(tape)
    indptr, indices = _ks.gather_rows(start, length, idx, tape.outputs)
    data = np.ones(len(indices), np.int8)
    return sp.csr_matrix((data, indices, indptr), shape=(tape.n_outputs, tape.n_inputs))


def _weights(tape: TapeRecord, output: int | None, w: Any) -> np.ndarray:
    """The output weights: ``w`` checked, or the unit vector of ``output``."""
    m = tape.n_outputs
    if w is None:
        wv = np.zeros(m)
        wv[tape.output_index(output)] = 1.0
        return wv
    if output is not None:
        raise ValueError("pass output= or w=, not both (w weights all the outputs)")
    wv = np.asarray(w, dtype=np.float64)
    if wv.shape != (m,):
        raise ValueError(
            f"w must have one weight per output, shape ({m},); got shape {wv.shape}"
        )
    return np.ascontiguousarray(wv)


def _live(tape: TapeRecord, wv: np.ndarray) -> np.ndarray:
    """The slots that reach an output of nonzero weight through differentiable edges."""
    arity, ndiff, _ = _op_tables()
    live = np.zeros(tape.n_slots, np.bool_)
    live[tape.outputs[wv != 0.0]] = True
    n_pre = tape.n_inputs + tape.n_params + tape.n_consts
    _ks.reaching(tape.ops, tape.args, arity, ndiff, n_pre, live)
    return live


def hessian_activity(tape: TapeRecord, w: np.ndarray) -> np.ndarray:
    """The flags of the pruned Hessian sweeps (:mod:`fasttape.kernels.activity`) for the
    weights ``w`` (checked, one per output): uint8 per slot."""
    arity, ndiff, nonlin = _op_tables()
    n_pre = tape.n_inputs + tape.n_params + tape.n_consts
    return _ka.hessian_activity(tape.ops, tape.args, arity, ndiff, nonlin, _valdep(), n_pre,
                                _live(tape, w))


def jacobian_activity(tape: TapeRecord) -> np.ndarray:
    """The flags of the pruned Jacobian sweep (:func:`fasttape.kernels.activity.
    jacobian_activity`): uint8 per slot."""
    arity, ndiff, _ = _op_tables()
    n_pre = tape.n_inputs + tape.n_params + tape.n_consts
    return _ka.jacobian_activity(tape.ops, tape.args, arity, ndiff, _valdep(), n_pre,
                                 _live(tape, np.ones(tape.n_outputs)))


_NO_SEEDS = (np.empty(0, np.int64), np.zeros(1, np.int64), np.empty(0, np.int64),
             np.empty(0))


def _sweep_steps(tape: TapeRecord, flags: np.ndarray, forward: int, reverse: int,
                 seeds: tuple[np.ndarray, ...] = _NO_SEEDS) -> tuple[np.ndarray, ...]:
    """What the pruned sweeps take (``active``, :mod:`fasttape.kernels.activity`): the
    ``flags``, the instructions whose flags meet ``forward`` (the forward sweep's steps) and
    ``reverse`` (the reverse sweep's), each with its argument position, and the ``seeds``
    matrix (rows of slots, pointers, output indices, coefficients)."""
    arity = _op_tables()[0][tape.ops]
    start = np.zeros(len(arity), np.int64)
    np.cumsum(arity[:-1], out=start[1:])
    own = flags[tape.n_inputs + tape.n_params + tape.n_consts :]
    fwd = np.flatnonzero(own & forward).astype(np.int64)
    rev = np.flatnonzero(own & reverse).astype(np.int64)
    return (flags, fwd, start[fwd], rev, start[rev] + arity[rev], *seeds)


def _output_seeds(tape: TapeRecord, flags: np.ndarray) -> tuple[np.ndarray, ...]:
    """The plain seeds of a weighted reverse sweep as a seed matrix: each ``ADJ`` output slot
    gets its outputs' weights with coefficient 1, in output order (an output listed twice
    adds up, as ``_ks._seed_weights`` adds them)."""
    outs = tape.outputs.astype(np.int64)
    js = np.flatnonzero(flags[outs] & _ka.ADJ)
    order = js[np.argsort(outs[js], kind="stable")]
    rows, first = np.unique(outs[order], return_index=True)
    ptr = np.append(first, len(order)).astype(np.int64)
    return rows.astype(np.int64), ptr, order.astype(np.int64), np.ones(len(order))


#: A linear region is preaccumulated only when its Jacobian takes at most this many colors
#: (``ceil(colors / 32)`` sweeps of the region, once per plan) and has at most
#: :data:`PREACCUMULATE_MAX_FILL` times as many entries as the region has instructions
#: (beyond that, seeding from the matrix would cost more than sweeping the region).
PREACCUMULATE_MAX_COLORS = 128
PREACCUMULATE_MAX_FILL = 2.0


def _linear_jacobian(sub: TapeRecord) -> Any:
    """The Jacobian of a tape of constant-partial ops (the same at every point), as a CSR
    matrix with sorted indices and no stored zeros; None when it is too costly to keep
    (:data:`PREACCUMULATE_MAX_COLORS`, :data:`PREACCUMULATE_MAX_FILL`).

    Forward sweeps over its column colors or reverse sweeps over its row colors, whichever
    are fewer (a sum of many terms is one row: one reverse sweep).
    """
    sp = _scipy_sparse()
    pattern = jacobian_sparsity(sub)
    if pattern.nnz > PREACCUMULATE_MAX_FILL * max(len(sub.ops), 1):
        return None
    col_colors, n_col = color_columns(pattern)
    row_colors, n_row = color_columns(pattern.T)
    if min(n_col, n_row) > PREACCUMULATE_MAX_COLORS:
        return None
    m, n = pattern.shape
    coo = pattern.tocoo()
    rows, cols = coo.row.astype(np.int64), coo.col.astype(np.int64)
    x0 = np.zeros(n)
    vals, out = np.empty(sub.n_slots), np.empty(m)
    if n_col <= n_row:  # forward: seeds over the columns, entry (r, c) at res[r, color[c]]
        colors, n_colors, seeded, other, n_res = col_colors, n_col, cols, rows, m

        def sweep(seed: np.ndarray, res: np.ndarray) -> None:
            tangent_driver(sub.ops, sub.args, sub.consts, sub.outputs, x0, seed, False, vals,
                           np.empty((sub.n_slots, seed.shape[1])), out, res)
    else:  # reverse: seeds over the rows, entry (r, c) at res[c, color[r]]
        colors, n_colors, seeded, other, n_res = row_colors, n_row, rows, cols, n

        def sweep(seed: np.ndarray, res: np.ndarray) -> None:
            cotangent_driver(sub.ops, sub.args, sub.consts, sub.outputs, x0, seed, False, vals,
                             np.zeros((sub.n_slots, seed.shape[1])), out, res)
    data = np.empty(len(rows))
    for c0, seed in _seed_blocks(colors, n_colors, len(colors)):
        res = np.empty((n_res, seed.shape[1]))
        sweep(seed, res)
        sel = (colors[seeded] >= c0) & (colors[seeded] < c0 + seed.shape[1])
        data[sel] = res[other[sel], colors[seeded[sel]] - c0]
    jac = sp.csr_matrix((data, (rows, cols)), shape=(m, n))
    jac.eliminate_zeros()
    jac.sort_indices()
    return jac


def _preaccumulated_seeds(tape: TapeRecord, flags: np.ndarray
                          ) -> tuple[np.ndarray, tuple[np.ndarray, ...]] | None:
    """The linear region of a weighted Hessian's reverse sweep, preaccumulated.

    The region is the ``ADJ`` instructions outside ``TAN | NONLIN`` (those whose adjoint
    only flows on, with constant partials: the sweep's ``ADJOINT`` mode).  Their consumers
    are all in the region, so the adjoints they pass to the slots they read are a fixed
    linear function of the weights: ``adj[b] = sum_j C[b, j] * w[j]``, ``C`` the transposed
    Jacobian of :func:`fasttape.linear_region.region_tape`.  Returns the flags with the
    region cleared from ``ADJ`` (the reverse sweep then skips it) and ``C`` as seeds, or
    None when the region is empty, holds an op whose partials read values, or its matrix is
    too costly (:func:`_linear_jacobian`).
    """
    n_pre = tape.n_inputs + tape.n_params + tape.n_consts
    own = flags[n_pre:]
    region = ((own & _ka.ADJ) != 0) & ((own & (_ka.TAN | _ka.NONLIN)) == 0)
    if not region.any() or _valdep()[tape.ops[region]].any():
        return None
    core = (flags & _ka.ADJ) != 0
    core[n_pre:] &= ~region
    boundary = np.zeros(tape.n_slots, np.bool_)
    boundary[tape.outputs] = True
    boundary |= region_reads(tape, region)
    boundary &= core
    sub, slots, _ = region_tape(tape, region, boundary)
    jac = _linear_jacobian(sub)
    if jac is None:
        return None
    ct = jac.T.tocsr()  # row b: the outputs whose weights reach boundary slot b
    ct.sort_indices()
    # Rows without entries dropped: the entries of the others stay contiguous, in order.
    keep = np.flatnonzero(np.diff(ct.indptr))
    ptr = np.append(ct.indptr[keep], ct.nnz).astype(np.int64)
    seeds = (slots[keep], ptr, ct.indices.astype(np.int64), ct.data.astype(np.float64))
    cleared = flags.copy()
    cleared[n_pre:][region] &= np.uint8(0xFF ^ _ka.ADJ)
    return cleared, seeds


def _entry_program(tape: TapeRecord, pattern: Any, sweep_steps: int, n_colors: int
                   ) -> tuple[Any, ...] | None:
    """What a preaccumulated Jacobian runs (:mod:`fasttape.kernels.entries`): the core as a
    compact tape, its forward steps (``active``), the length of ``G`` and the program; None
    when there is no linear region to preaccumulate, its matrix is too costly
    (:func:`_linear_jacobian`), or the program would do more work than the pruned tangent
    sweep (``sweep_steps`` steps of ``n_colors`` directions).

    The core is the live instructions whose partials read values and everything their
    tangents are computed from; every other live instruction (constant partials) is in the
    region, whose outputs are then a fixed linear function ``C`` of the core slots and inputs
    it reads (:func:`fasttape.linear_region.region_tape`).
    """
    arity, ndiff, _ = _op_tables()
    valdep = _valdep()
    n_in = tape.n_inputs + tape.n_params
    n_pre = n_in + tape.n_consts
    live = _live(tape, np.ones(tape.n_outputs))
    wanted = np.zeros_like(live)  # the core's ends: live instructions whose partials read values
    wanted[n_pre:] = live[n_pre:] & valdep[tape.ops]
    flags = _ka.jacobian_activity(tape.ops, tape.args, arity, ndiff, valdep, n_pre, wanted)
    in_core = (flags & _ka.TAN) != 0
    region = live[n_pre:] & ~in_core[n_pre:]
    if not region.any():
        return None
    boundary = np.zeros(tape.n_slots, np.bool_)
    boundary[tape.outputs] = True
    boundary |= region_reads(tape, region)
    in_core[:n_in] = True  # inputs (and parameters, which have no entries) too
    boundary &= in_core
    sub, slots, _ = region_tape(tape, region, boundary)
    jac = _linear_jacobian(sub)
    if jac is None:
        return None
    core, flags, _, where = _compact(tape, flags, _ka.VAL | _ka.TAN)
    n_pre = core.n_inputs + core.n_params + core.n_consts
    start, length, idx = _sets(core)
    gstart, n_grad = _gradient_layout(core, flags, start, length)
    active = _sweep_steps(core, flags, _ka.VAL | _ka.TAN, 0)
    eptr, target, source, arg = _ke.gradient_edges(
        core.ops, core.args, ndiff, flags, active[1], active[2], _ka.TAN, n_pre, start,
        length, idx, gstart)
    tptr, tsource, tcoef = _ke.entry_terms(
        jac.indptr.astype(np.int64), where[slots[jac.indices]], jac.data.astype(np.float64),
        start, length, idx, gstart, pattern.indptr.astype(np.int64), pattern.indices)
    if len(target) + len(tsource) > 2 * sweep_steps * max(n_colors, 1) + pattern.nnz:
        return None
    # Terms on an input's own entry (always 1) are constants: summed once, here, into each
    # entry's base (the collocation equations' entries are nothing else).
    entry = np.repeat(np.arange(pattern.nnz), np.diff(tptr))
    fixed = tsource < tape.n_inputs
    base = np.bincount(entry[fixed], tcoef[fixed], minlength=pattern.nnz)
    tptr = np.zeros(pattern.nnz + 1, np.int64)
    np.cumsum(np.bincount(entry[~fixed], minlength=pattern.nnz), out=tptr[1:])
    gbeg, glen = _step_entries(core, flags, active[1], gstart, length)
    return core, active, n_grad, (gbeg, glen, eptr, target, source, arg, base, tptr,
                                  tsource[~fixed], tcoef[~fixed], tape.n_inputs)


def _compact(tape: TapeRecord, flags: np.ndarray, mask: int,
             seeds: tuple[np.ndarray, ...] | None = None) -> tuple[Any, ...]:
    """The instructions whose flags meet ``mask`` as a compact tape
    (:func:`fasttape.linear_region.core_tape`), with their flags, the rows of ``seeds``
    moved to its slots, and ``where``."""
    n_pre = tape.n_inputs + tape.n_params + tape.n_consts
    keep = (flags[n_pre:] & mask) != 0
    core, where = core_tape(tape, keep)
    moved = np.zeros(core.n_slots, np.uint8)
    moved[:n_pre] = flags[:n_pre]
    moved[n_pre + 1 :] = flags[n_pre:][keep]  # after the added zero constant
    if seeds is not None:
        seeds = (where[seeds[0]], *seeds[1:])
    return core, moved, seeds, where


def _gradient_layout(tape: TapeRecord, flags: np.ndarray, start: np.ndarray,
                     length: np.ndarray) -> tuple[np.ndarray, int]:
    """Where each slot's entries of ``G`` start (:mod:`fasttape.kernels.entries`): one entry
    per input first, then each ``TAN`` instruction's, in tape order (``-1``: none); and the
    length of ``G``."""
    n_pre = tape.n_inputs + tape.n_params + tape.n_consts
    gstart = np.full(tape.n_slots, -1, np.int64)
    gstart[: tape.n_inputs] = np.arange(tape.n_inputs)
    own = n_pre + np.flatnonzero(flags[n_pre:] & _ka.TAN)
    lens = length[own]
    gstart[own] = tape.n_inputs + np.cumsum(lens) - lens
    return gstart, tape.n_inputs + int(lens.sum())


def _step_entries(tape: TapeRecord, flags: np.ndarray, steps: np.ndarray, gstart: np.ndarray,
                  length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each forward step's own entries of ``G`` lie (none for a step without ``TAN``)."""
    slot = tape.n_inputs + tape.n_params + tape.n_consts + steps
    tangent = (flags[slot] & _ka.TAN) != 0
    return np.where(tangent, gstart[slot], 0), np.where(tangent, length[slot], 0)


def _hessian_program(tape: TapeRecord, flags: np.ndarray, seeds: tuple[np.ndarray, ...],
                     pattern: Any, n_colors: int) -> tuple[Any, ...] | None:
    """What a preaccumulated Hessian runs (:func:`fasttape.kernels.entries.hessian_entries`):
    ``(core, active, len(G), len(coef), program)``, the core a compact tape of the
    instructions its passes visit, or None when the program would do more work than the
    pruned sweeps (their steps times ``n_colors`` directions)."""
    sp = _scipy_sparse()
    _, ndiff, nonlin = _op_tables()
    core, flags, seeds, _ = _compact(tape, flags, _ka.VAL | _ka.TAN | _ka.ADJ, seeds)
    n_pre = core.n_inputs + core.n_params + core.n_consts
    start, length, idx = _sets(core)
    gstart, n_grad = _gradient_layout(core, flags, start, length)
    active = _sweep_steps(core, flags, _ka.VAL | _ka.TAN, _ka.ADJ, seeds)
    eptr, target, source, arg = _ke.gradient_edges(
        core.ops, core.args, ndiff, flags, active[1], active[2], _ka.TAN, n_pre, start,
        length, idx, gstart)
    low = sp.tril(pattern, format="csr")
    low.sort_indices()
    hbase, tptr, tc, ta, tb = _ke.hessian_terms(
        core.ops, core.args, nonlin, flags[n_pre:], _ka.NONLIN, active[3], active[4], start,
        length, idx, gstart, low.indptr.astype(np.int64), low.indices)
    sweeps = len(active[1]) + len(active[3])
    if len(target) + len(ta) > 2 * sweeps * max(n_colors, 1) + pattern.nnz:
        return None
    n = pattern.shape[0]
    coo = pattern.tocoo()
    key = coo.row.astype(np.int64) * n + coo.col  # ascending: the CSR order
    lc = low.tocoo()
    lower = np.searchsorted(key, lc.row.astype(np.int64) * n + lc.col)
    upper = np.flatnonzero(coo.row < coo.col)
    partner = np.searchsorted(key, coo.col[upper].astype(np.int64) * n + coo.row[upper])
    gbeg, glen = _step_entries(core, flags, active[1], gstart, length)
    program = (gbeg, glen, eptr, target, source, arg, hbase, tptr, tc, ta, tb,
               lower.astype(np.int64), upper.astype(np.int64), partner.astype(np.int64),
               tape.n_inputs)
    return core, active, n_grad, 3 * int((hbase >= 0).sum()), program


def hessian_sparsity(tape: TapeRecord, output: int | None = None, w: Any = None) -> Any:
    """The structural sparsity pattern of a Hessian, ``(n_inputs, n_inputs)``, symmetric.

    Parameters
    ----------
    tape : Tape
    output : int, optional
        The output whose Hessian is meant (required when the tape has several and ``w`` is
        not given).
    w : array_like, shape (n_outputs,), optional
        Weights of a weighted sum of outputs (a Lagrangian): the pattern covers every output
        whose weight is nonzero (pass ``np.ones(n_outputs)`` for all of them; the values
        matter only as zero / nonzero).

    Returns
    -------
    scipy.sparse.csr_matrix of int8 ones, sorted indices, both triangles stored.
    """
    sp = _scipy_sparse()
    wv = _weights(tape, output, w)
    arity, ndiff, nonlin = _op_tables()
    n = tape.n_inputs
    n_pre = n + tape.n_params + tape.n_consts
    start, length, idx = _ks.index_sets(tape.ops, tape.args, arity, ndiff, n, n_pre)
    live = _live(tape, wv)
    rows, cols = _ks.hessian_pairs(tape.ops, tape.args, arity, nonlin, n_pre, live, start,
                                   length, idx)
    indptr, indices = _ks.symmetric_csr(rows, cols, n)
    data = np.ones(len(indices), np.int8)
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))


def _canonical(csr: Any) -> Any:
    """``csr`` with sorted indices and no repeated entries; a copy when it needs changes
    (``csr_matrix(pattern)`` shares the caller's arrays, which stay untouched)."""
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    return csr


def color_columns(pattern: Any) -> tuple[np.ndarray, int]:
    """Greedy distance-2 coloring of the columns of a sparse pattern, largest column first.

    Columns ``j != k`` get different colors whenever some row holds a nonzero in both.

    Returns
    -------
    colors : ndarray of int64, shape (n_cols,)
        ``-1`` for an empty column (it needs no sweep).
    n_colors : int
    """
    sp = _scipy_sparse()
    csr = _canonical(sp.csr_matrix(pattern))
    csc = csr.tocsc()
    csc.sort_indices()
    counts = np.diff(csc.indptr)
    # Largest first; ties by column index (a stable sort), so the coloring is deterministic.
    order = np.argsort(-counts, kind="stable").astype(np.int64)
    colors = np.full(csr.shape[1], -1, np.int64)
    n_colors = _ks.greedy_distance2(
        order, csc.indptr.astype(np.int64), csc.indices.astype(np.int64),
        csr.indptr.astype(np.int64), csr.indices.astype(np.int64), colors,
    )
    return colors, int(n_colors)


#: Hessian colorings: "star" (fewer colors, recovery from whichever of ``H[i, j]`` and
#: ``H[j, i]`` its row determines) or "distance2" (every column alone in each of its rows).
HESSIAN_COLORINGS = ("star", "distance2")


def star_color(pattern: Any) -> tuple[np.ndarray, int]:
    """Greedy star coloring of a symmetric pattern, largest column first.

    Adjacent columns (``H[i, j]`` stored, ``i != j``) get different colors and every path on
    four vertices uses at least three colors (Gebremedhin, Manne and Pothen 2005, Algorithm
    4.1), so each entry can be read directly from row ``i`` or row ``j`` of ``H @ S``.  An
    arrowhead needs 2 colors where :func:`color_columns` needs ``n``.

    Returns
    -------
    colors : ndarray of int64, shape (n,)
        ``-1`` for an empty column.
    n_colors : int
    """
    sp = _scipy_sparse()
    # Repeated entries would count a neighbor twice in the kernel's per-vertex color counts.
    csr = _canonical(sp.csr_matrix(pattern))
    counts = np.diff(csr.indptr)
    order = np.argsort(-counts, kind="stable").astype(np.int64)
    colors = np.full(csr.shape[1], -1, np.int64)
    n_colors = _ks.greedy_star(order, csr.indptr.astype(np.int64),
                               csr.indices.astype(np.int64), colors)
    return colors, int(n_colors)


def _seed_blocks(colors: np.ndarray, n_colors: int, n_full: int) -> list[tuple[int, np.ndarray]]:
    """``(c0, S)``: seed matrices of up to :data:`MAX_COLORS_PER_SWEEP` colors each; rows past
    ``len(colors)`` (parameters) stay zero."""
    blocks = []
    for c0 in range(0, n_colors, MAX_COLORS_PER_SWEEP):
        kk = min(MAX_COLORS_PER_SWEEP, n_colors - c0)
        seed = np.zeros((n_full, kk))
        sel = np.flatnonzero((colors >= c0) & (colors < c0 + kk))
        seed[sel, colors[sel] - c0] = 1.0
        blocks.append((c0, seed))
    return blocks


def _buf(tape: TapeRecord, name: str, shape: tuple[int, ...], zero: bool = False) -> np.ndarray:
    """This module's per-thread work array ``name`` (:meth:`TapeRecord.work_array`)."""
    return tape.work_array("sparse", name, shape, zero)


def _check_flag(value: Any, name: str = "prune") -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


class _Plan:
    """Shared parts of the two plans: the point (and parameters) check and ``out=``."""

    tape: TapeRecord
    pattern: Any
    colors: np.ndarray
    n_colors: int

    def _point(self, x: Any, p: Any) -> tuple[TapeRecord, np.ndarray]:
        tape = self.tape
        if tape.n_params or p is not None:
            xp = tape.join_params(x, p)
            if xp.ndim != 1:
                raise ValueError("sparse derivatives take one point (x and p 1-D), not a batch")
            return tape.params_as_inputs(), xp
        return tape, tape.as_input(x)

    def _seeds(self, full: TapeRecord) -> list[tuple[int, np.ndarray]]:
        """The seed blocks for ``full`` (the tape, or its parameters-as-inputs form), made
        once per plan."""
        cached = self.__dict__.get("_seed_cache")
        if cached is None or cached[0] != full.n_inputs:
            cached = (full.n_inputs, _seed_blocks(self.colors, self.n_colors, full.n_inputs))
            self._seed_cache = cached
        return cached[1]

    def _data(self, out: Any) -> np.ndarray:
        """The array the entries go to: ``out`` checked, or a new one."""
        if out is None:
            return np.empty(self.nnz)
        return check_out(out, self.nnz, "out")

    def _finish(self, data: np.ndarray, values_only: bool) -> Any:
        if values_only:
            return data
        pat = self.pattern
        return type(pat)((data, pat.indices, pat.indptr), shape=pat.shape)

    @property
    def nnz(self) -> int:
        """Number of stored entries of the pattern (the length of the data array)."""
        return int(self.pattern.nnz)


class SparseJacobian(_Plan):
    """A reusable sparse Jacobian of a tape: pattern and coloring computed once.

    Parameters
    ----------
    tape : Tape
    prune : bool, optional
        Compute once, when the plan is made, every output row whose entries are the same at
        every point (all partials on its paths constant: the linear equations of a
        collocation scheme), and per evaluation only the tangents and values the other rows
        need (:mod:`fasttape.kernels.activity`).  Default True; with
        ``preaccumulate=False`` the entries are bitwise the same either way.
    preaccumulate : bool, optional
        With ``prune``: compute once, as a matrix, how the instructions with constant
        partials between the nonlinear ones and the outputs (the collocation equations
        around an optimal-control problem's dynamics) combine the tangents they read, and
        per evaluation sweep only the instructions whose partials read values (and what
        their tangents need), then apply the matrix (:mod:`fasttape.linear_region`).
        Default True.  The sums over the region's paths are formed in another order, so
        entries agree with ``preaccumulate=False`` (bitwise the full sweep) to rounding.

    Attributes
    ----------
    pattern : scipy.sparse.csr_matrix
        :func:`jacobian_sparsity` of the tape; every result has exactly this structure.
    colors, n_colors
        The column coloring (:func:`color_columns`): ``ceil(n_colors / 32)`` tangent sweeps
        per evaluation.
    prune : bool
        Whether evaluations skip what does not depend on the point (the constructor's
        ``prune``).
    preaccumulated : bool
        Whether a linear region was preaccumulated (``preaccumulate`` asked for it, the tape
        has one, and its matrix was cheap enough).
    """

    def __init__(self, tape: TapeRecord, prune: bool = True,
                 preaccumulate: bool = True) -> None:
        self.tape = tape
        self.prune = _check_flag(prune)
        preaccumulate = _check_flag(preaccumulate, "preaccumulate")
        self.preaccumulated = False
        self._program: Any = None  # (core, active, len(G), program) when preaccumulated
        self.pattern = jacobian_sparsity(tape)
        self.colors, self.n_colors = color_columns(self.pattern)
        # Entry (i, j) is read at row i, column colors[j] of the compressed matrix.
        coo = self.pattern.tocoo()
        self._ia = coo.row.astype(np.int64) * self.n_colors + self.colors[coo.col]
        self._ib = np.full(len(self._ia), -1, np.int64)
        self._active = None
        self._fixed_rows: np.ndarray | None = None  # output rows copied, not swept
        if prune:
            flags = jacobian_activity(tape)
            # The fixed rows' entries, from one full sweep at any point (here zero: their
            # tangents read no value, so NaNs elsewhere cannot reach them).  Full by flags
            # that keep every slot rather than by active=None: the same compiled sweep as
            # the pruned calls (a second specialization cost 4 s on a cold first call).
            every = _ka.VAL | _ka.TAN
            self._active = _sweep_steps(tape, np.full_like(flags, every), every, 0)
            fixed = np.flatnonzero(flags[tape.outputs] & _ka.FIXED)
            comp = self.compressed(np.zeros(tape.n_inputs),
                                   None if not tape.n_params else np.zeros(tape.n_params))
            self._fixed_comp = np.ascontiguousarray(comp[fixed])
            self._fixed_rows = fixed
            self._active = _sweep_steps(tape, flags, _ka.VAL | _ka.TAN, 0)
            if preaccumulate:
                self._program = _entry_program(tape, self.pattern, len(self._active[1]),
                                               self.n_colors)
                self.preaccumulated = self._program is not None

    def __repr__(self) -> str:
        m, n = self.pattern.shape
        return f"<SparseJacobian {m}x{n}, {self.nnz} nonzeros, {self.n_colors} colors>"

    def compressed(self, x: Any, p: Any = None) -> np.ndarray:
        """``J(x) @ S``, shape ``(n_outputs, n_colors)``: column ``c`` sums the Jacobian's
        columns of color ``c``."""
        full, xin = self._point(x, p)
        comp = np.empty((full.n_outputs, self.n_colors))
        self._compress(full, xin, comp)
        return comp

    def _compress(self, full: TapeRecord, xin: np.ndarray, comp: np.ndarray) -> None:
        """Fill ``comp`` (C-contiguous, ``(n_outputs, n_colors)``) at the checked point."""
        m = full.n_outputs
        vals = _buf(full, "vals", (full.n_slots,))
        out = _buf(full, "jout", (m,))
        blocks = self._seeds(full)
        for c0, seed in blocks:
            kk = seed.shape[1]
            # Own names: a tape with a Jacobian and a Hessian plan (an NLP's constraints)
            # keeps both buffers instead of reallocating them at every call.
            tan = _buf(full, "jtan", (full.n_slots, kk))
            # One block (up to 32 colors): the sweep writes the compressed matrix itself.
            res = comp if len(blocks) == 1 else np.empty((m, kk))
            tangent_driver(full.ops, full.args, full.consts, full.outputs, xin, seed, False,
                           vals, tan, out, res, self._active)
            if len(blocks) > 1:
                comp[:, c0 : c0 + kk] = res
        if self._fixed_rows is not None:
            comp[self._fixed_rows] = self._fixed_comp

    def __call__(self, x: Any, *, p: Any = None, out: Any = None,
                 values_only: bool = False) -> Any:
        """The Jacobian at ``x`` as a ``scipy.sparse.csr_matrix`` with :attr:`pattern`'s
        structure.

        ``values_only=True`` returns just the data array (in the pattern's CSR order);
        ``out=`` (float64, shape ``(nnz,)``) receives it instead of a new array.
        """
        data = self._data(out)  # checked before any sweep runs
        full, xin = self._point(x, p)
        if self._program is not None:
            core, active, n_grad, program = self._program
            grad = _buf(full, f"jgrad{n_grad}", (n_grad,))
            _ke.jacobian_entries(core.ops, core.args, core.consts, xin,
                                 _buf(full, f"jvals{core.n_slots}", (core.n_slots,)), active,
                                 grad, program, data)
            return self._finish(data, values_only)
        comp = _buf(full, "jcomp", (full.n_outputs, self.n_colors))
        self._compress(full, xin, comp)
        _ks.recover(comp.reshape(-1), self._ia, self._ib, data)
        return self._finish(data, values_only)


class SparseHessian(_Plan):
    """A reusable sparse Hessian of one output or of a weighted sum of outputs.

    Parameters
    ----------
    tape : Tape
    output : int, optional
        The output (required when the tape has several and ``w`` is not given).
    w : array_like, shape (n_outputs,), optional
        Default weights of a Lagrangian ``sum_j w[j] * f_j``.  The pattern covers the outputs
        with nonzero weight; a call may pass other weights, zero wherever these are zero.
    coloring : {"star", "distance2"}, optional
        See the attribute below.
    prune : bool, optional
        Skip the parts of the sweeps that cannot change the Hessian (default): values,
        tangents and adjoints that no second partial reaches, found once from the op table
        (:mod:`fasttape.kernels.activity`).  With ``preaccumulate=False`` the entries are
        bitwise the same either way; where most of the graph is linear (the constraints of
        an optimal-control problem) an evaluation costs a fraction of the full sweeps.
        ``prune=False`` runs the full sweeps (for comparison).
    preaccumulate : bool, optional
        With ``prune``: when the instructions whose adjoint only flows on (constant partials,
        downstream of every nonlinear instruction: the collocation equations of an
        optimal-control problem) form a region whose Jacobian is cheap to keep, compute it
        once, as a matrix, and seed the nonlinear instructions from it instead of sweeping
        the region at every call (:mod:`fasttape.linear_region`).  Default True.  The sums
        over the region's paths are then formed in another order, so entries agree with
        ``preaccumulate=False`` (bitwise the full sweeps) to rounding, not bit for bit.

    Attributes
    ----------
    pattern : scipy.sparse.csr_matrix
        :func:`hessian_sparsity` (both triangles).
    colors, n_colors
        The coloring: ``ceil(n_colors / 32)`` sweep pairs per evaluation.
    coloring : {"star", "distance2"}
        "star" (default, :func:`star_color`): fewest colors, each entry read from whichever
        of its two rows determines it.  "distance2" (:func:`color_columns`): every column
        alone in each of its rows, both ``H[i, j]`` and ``H[j, i]`` read directly and
        combined as the dense ``hessian`` does (bitwise its values on the tests' problems).
    prune : bool
        Whether evaluations run the pruned sweeps (the constructor's ``prune``).
    preaccumulated : bool
        Whether a linear region was preaccumulated (``preaccumulate`` asked for it, the tape
        has one, and its matrix was cheap enough).
    """

    def __init__(self, tape: TapeRecord, output: int | None = None, w: Any = None,
                 coloring: str = "star", prune: bool = True,
                 preaccumulate: bool = True) -> None:
        preaccumulate = _check_flag(preaccumulate, "preaccumulate")
        if coloring not in HESSIAN_COLORINGS:
            raise ValueError(f"coloring must be one of {HESSIAN_COLORINGS}, got {coloring!r}")
        self.tape = tape
        self.prune = _check_flag(prune)
        self.coloring = coloring
        self.w = _weights(tape, output, w)
        self._every_output = bool(np.all(self.w != 0.0))
        self.pattern = hessian_sparsity(tape, w=self.w)
        # The pruning flags hold for any call weights: those are zero wherever self.w is.
        self._active = None
        self.preaccumulated = False
        self._program: Any = None  # (core, active, len(G), len(coef), program) if preaccumulated
        if prune:
            flags = hessian_activity(tape, self.w)
            seeds = None
            if preaccumulate:
                found = _preaccumulated_seeds(tape, flags)
                if found is not None:
                    flags, seeds = found
                    self.preaccumulated = True
            if seeds is None:
                seeds = _output_seeds(tape, flags)
            self._active = _sweep_steps(tape, flags, _ka.VAL | _ka.TAN, _ka.TAN | _ka.ADJ,
                                        seeds)
        if coloring == "star":
            self.colors, self.n_colors = star_color(self.pattern)
        else:
            self.colors, self.n_colors = color_columns(self.pattern)
        if prune and preaccumulate:
            self._program = _hessian_program(tape, self._active[0], self._active[5:],
                                             self.pattern, self.n_colors)
            self.preaccumulated |= self._program is not None
        # Where each entry is read in the flattened compressed matrix (see _ks.recover).
        nc = self.n_colors
        if coloring == "star":
            self._ia, self._ib = _ks.star_sources(
                self.pattern.indptr.astype(np.int64), self.pattern.indices.astype(np.int64),
                self.colors, nc)
            if ((self._ia < 0) & (self._ib < 0)).any():  # pragma: no cover (never, for a star)
                raise RuntimeError("star coloring leaves an entry undetermined: a bug")
        else:
            coo = self.pattern.tocoo()
            r, c = coo.row.astype(np.int64), coo.col.astype(np.int64)
            self._ia = r * nc + self.colors[c]
            self._ib = c * nc + self.colors[r]

    def __repr__(self) -> str:
        n = self.pattern.shape[0]
        return (f"<SparseHessian {n}x{n}, {self.nnz} nonzeros, {self.n_colors} colors "
                f"({self.coloring})>")

    def _call_weights(self, w: Any) -> np.ndarray:
        if w is None:
            return self.w
        wv = _weights(self.tape, None, w)
        if self._every_output:  # no weight can fall outside the pattern
            return wv
        bad = np.flatnonzero((wv != 0.0) & (self.w == 0.0))
        if len(bad):
            raise ValueError(
                f"w[{bad[0]}] is nonzero but this plan's pattern leaves output {bad[0]} out: "
                "build the plan with weights that are nonzero for every output you will "
                "weight (e.g. tape.sparse_hessian_plan(w=np.ones(tape.n_outputs)))"
            )
        return wv

    def compressed(self, x: Any, w: Any = None, p: Any = None) -> np.ndarray:
        """``H(x) @ S``, shape ``(n_inputs, n_colors)``, ``H`` the Hessian of
        ``sum_j w[j] * f_j``."""
        wv = self._call_weights(w)
        full, xin = self._point(x, p)
        comp = np.empty((full.n_inputs, self.n_colors))
        self._compress(full, xin, wv, comp)
        return comp[: self.tape.n_inputs]

    def _compress(self, full: TapeRecord, xin: np.ndarray, wv: np.ndarray,
                  comp: np.ndarray) -> None:
        """Fill ``comp`` (C-contiguous, ``(full.n_inputs, n_colors)``) at the checked point."""
        vals = _buf(full, "vals", (full.n_slots,))
        adj = _buf(full, "adj", (full.n_slots,), zero=True)
        blocks = self._seeds(full)
        if self.n_colors == 1:
            # One direction: the sweeps without direction loops (about 2x faster, bitwise
            # the same numbers).
            seed = blocks[0][1].reshape(-1)
            tan = _buf(full, "htan1", (full.n_slots,))
            adjdot = _buf(full, "hadjdot1", (full.n_slots,), zero=True)
            _ks.weighted_hvp1(full.ops, full.args, full.consts, full.outputs, wv, xin, seed,
                              vals, tan, adj, adjdot, comp.reshape(-1), self._active)
            return
        for c0, seed in blocks:
            kk = seed.shape[1]
            tan = _buf(full, "htan", (full.n_slots, kk))
            adjdot = _buf(full, "hadjdot", (full.n_slots, kk), zero=True)
            # One block (up to 32 colors): the sweep writes the compressed matrix itself.
            res = comp if len(blocks) == 1 else np.empty((full.n_inputs, kk))
            _ks.weighted_hvp(full.ops, full.args, full.consts, full.outputs, wv, xin, seed,
                             vals, tan, adj, adjdot, res, self._active)
            if len(blocks) > 1:
                comp[:, c0 : c0 + kk] = res

    def __call__(self, x: Any, *, w: Any = None, p: Any = None, out: Any = None,
                 values_only: bool = False) -> Any:
        """The Hessian at ``x`` as a ``scipy.sparse.csr_matrix`` with :attr:`pattern`'s
        structure, exactly symmetric.

        A preaccumulated plan computes each entry of the lower triangle once and copies it
        to the upper.  The sweeps read ``H[i, j]`` and ``H[j, i]`` from different compressed
        columns, which can differ in the last bits; where they do, both become
        ``0.5 * a + 0.5 * b`` (as ``tape.hessian``).  ``values_only`` and ``out=`` as
        :meth:`SparseJacobian.__call__`.
        """
        data = self._data(out)  # checked before any sweep runs
        wv = self._call_weights(w)
        full, xin = self._point(x, p)
        if self._program is not None:
            core, active, n_grad, n_coef, program = self._program
            # Named by size: two plans on one tape (an objective's, a Lagrangian's) keep
            # their own arrays instead of reallocating them at every call.
            grad = _buf(full, f"hgrad{n_grad}", (n_grad,))
            n = core.n_slots
            _ke.hessian_entries(core.ops, core.args, core.consts, xin, wv,
                                _buf(full, f"hvals{n}", (n,)),
                                _buf(full, f"hadj{n}", (n,), zero=True), active, grad,
                                _buf(full, f"hcoef{n_coef}", (n_coef,)), program, data)
            return self._finish(data, values_only)
        comp = _buf(full, "hcomp", (full.n_inputs, self.n_colors))
        self._compress(full, xin, wv, comp)
        _ks.recover(comp.reshape(-1), self._ia, self._ib, data)
        return self._finish(data, values_only)
