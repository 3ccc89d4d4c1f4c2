"""Jacobian entries without colors: sparse forward mode over a structure built once.

What a preaccumulated :class:`fasttape.sparse.SparseJacobian` runs.  The tape splits into a
*core*, the instructions whose partials read values and everything their derivatives are
computed from, and a linear *region* around it whose Jacobian is a constant matrix ``C``
(:mod:`fasttape.linear_region`).  Per call:

1. the core's forward sweep (its listed steps, :mod:`fasttape.kernels.activity`) computes
   each core slot's value and its partials, and carries the slot's gradient with respect to
   the inputs it depends on as a short sparse vector: one entry of ``G`` per input of the
   slot's index set (:func:`fasttape.kernels.sparsity.index_sets`), filled from the
   arguments' entries by the *edges* found when the plan was made (:func:`gradient_edges`:
   ``G[target] += p_j * G[source]``, a zero factor contributing nothing, as in the tangent
   sweeps).  An input's own entry is 1.
2. each Jacobian entry ``(o, i)`` is the sum of ``C[o, b] * G[b, i]`` over the boundary slots
   ``b`` its row of ``C`` reaches, its *terms* also listed once (:func:`entry_terms`).

So a call touches each nonzero partial and each term once, in one pass, with no compressed
directions to carry (most of a coloring's ``K`` tangent lanes are zeros on a sparse problem)
and no recovery.  The sums are formed in another order than the tangent sweeps', so the
entries agree with theirs to rounding.
"""

from __future__ import annotations

import numpy as np

from fasttape.kernels.activity import (
    TANGENT,
    forward_at,
    forward_count,
    reverse_at,
    reverse_count,
    seed_adjoints,
    wants_first,
)
from fasttape.kernels.dispatch import ARITY, NDIFF, partials_and_second
from fasttape.kernels.jit import kernel
from fasttape.kernels.sparsity import pair_args
from fasttape.kernels.sweep import load_inputs
from fasttape.kernels.tangent import adjoint_step, evaluate_active, reverse_step

__all__ = ["entry_terms", "forward_gradients", "gradient_edges", "hessian_entries",
           "hessian_terms", "jacobian_entries"]


@kernel(inline=True)
def _position(idx, lo, hi, v):  # pragma: no cover (jitted)
    """Where ``v`` is in the sorted ``idx[lo:hi]`` (``-1`` if absent)."""
    end = hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if idx[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    if lo < end and idx[lo] == v:
        return lo
    return -1


@kernel
def gradient_edges(ops, args, ndiff, flags, steps, step_k, tan, n_pre, start, length, idx,
                   gstart):  # pragma: no cover (jitted)
    """The edges of step 1 (module docstring), for the forward ``steps`` (instructions, with
    their first argument's position ``step_k``) whose flags have ``tan``.

    ``gstart[s]``: where slot ``s``'s entries start in ``G`` (one per element of its index
    set ``idx[start[s] : start[s] + length[s]]``), ``-1`` for a slot without entries.

    Returns
    -------
    eptr : ndarray of int64, shape (len(steps) + 1,)
        Step ``t``'s edges are ``eptr[t] : eptr[t + 1]``.
    target, source : ndarray of int64
        ``G[target[e]] += p * G[source[e]]``...
    arg : ndarray of int8
        ... with ``p`` the partial by argument ``arg[e]`` (0 or 1).
    """
    n = steps.shape[0]
    eptr = np.zeros(n + 1, np.int64)
    for t in range(n):
        i = steps[t]
        count = 0
        if flags[n_pre + i] & tan:
            k = step_k[t]
            for j in range(ndiff[ops[i]]):
                count += length[args[k + j]]
        eptr[t + 1] = eptr[t] + count
    m = eptr[n]
    target = np.empty(m, np.int64)
    source = np.empty(m, np.int64)
    arg = np.empty(m, np.int8)
    for t in range(n):
        i = steps[t]
        if (flags[n_pre + i] & tan) == 0:
            continue
        s = n_pre + i
        k = step_k[t]
        e = eptr[t]
        for j in range(ndiff[ops[i]]):
            a = args[k + j]
            ps = start[s]
            for pa in range(start[a], start[a] + length[a]):
                while idx[ps] != idx[pa]:  # the set of s holds the set of a: a merge walk
                    ps += 1
                target[e] = gstart[s] + ps - start[s]
                source[e] = gstart[a] + pa - start[a]
                arg[e] = j
                e += 1
    return eptr, target, source, arg


@kernel
def entry_terms(cptr, cslot, ccoef, start, length, idx, gstart, pptr, pidx):
    # pragma: no cover (jitted)
    """The terms of step 2 (module docstring): for output row ``o``, each ``(b, c)`` of its
    row of ``C`` (slots ``cslot[cptr[o] : cptr[o + 1]]``, coefficients ``ccoef``) and each
    input ``i`` of ``b``'s index set adds ``c * G[b, i]`` to entry ``(o, i)`` of the pattern
    (CSR ``pptr``, sorted ``pidx``).

    Returns ``(tptr, tsource, tcoef)``: entry ``q``'s terms are ``tptr[q] : tptr[q + 1]``,
    in row-of-``C`` order.  Raises if a term falls outside the pattern (which holds every
    structural dependence, so never).
    """
    m = cptr.shape[0] - 1
    nnz = pidx.shape[0]
    count = np.zeros(nnz + 1, np.int64)
    for o in range(m):
        for p in range(cptr[o], cptr[o + 1]):
            b = cslot[p]
            for e in range(start[b], start[b] + length[b]):
                q = _position(pidx, pptr[o], pptr[o + 1], idx[e])
                if q < 0:
                    raise RuntimeError("a Jacobian term outside the pattern: a bug")
                count[q + 1] += 1
    tptr = np.cumsum(count)
    fill = tptr[:-1].copy()
    tsource = np.empty(tptr[nnz], np.int64)
    tcoef = np.empty(tptr[nnz], np.float64)
    for o in range(m):
        for p in range(cptr[o], cptr[o + 1]):
            b = cslot[p]
            for e in range(start[b], start[b] + length[b]):
                q = _position(pidx, pptr[o], pptr[o + 1], idx[e])
                tsource[fill[q]] = gstart[b] + e - start[b]
                tcoef[fill[q]] = ccoef[p]
                fill[q] += 1
    return tptr, tsource, tcoef


@kernel(inline=True)
def _entry(grad, e, n_in):  # pragma: no cover (jitted)
    """Entry ``e`` of ``G``: an input's own entry (the first ``n_in``) is 1, never stored, so
    a call writes only the entries of the steps it runs."""
    return 1.0 if e < n_in else grad[e]


@kernel(inline=True)
def forward_gradients(ops, args, consts, xin, vals, active, grad, gbeg, glen, eptr, target,
                      source, arg, n_in):  # pragma: no cover (jitted)
    """Step 1 (module docstring): the forward steps of ``active`` evaluated into ``vals``,
    and the entries of ``grad`` (``G``) of each ``TAN`` step cleared, then filled by its
    edges (the first ``n_in`` entries, the inputs', are 1).  Returns ``n_pre``."""
    n_pre = load_inputs(consts, xin, vals)
    k = 0
    for t in range(forward_count(ops, active)):
        i, k = forward_at(active, t, k)
        mode, _s, _nd, p0, p1, _k = evaluate_active(ops, args, vals, active, n_pre, i, k)
        if mode != TANGENT:
            continue
        for e in range(gbeg[t], gbeg[t] + glen[t]):
            grad[e] = 0.0
        for e in range(eptr[t], eptr[t + 1]):
            p = p0 if arg[e] == 0 else p1
            g = _entry(grad, source[e], n_in)
            if p != 0.0 and g != 0.0:
                grad[target[e]] += p * g
    return n_pre


@kernel
def hessian_terms(ops, args, nonlin, own, nonlin_flag, steps, step_k, start, length, idx,
                  gstart, lptr, lidx):  # pragma: no cover (jitted)
    """The terms of a Hessian's lower triangle (CSR ``lptr``, sorted ``lidx``): for each
    reverse step ``t`` (instruction ``steps[t]``, its arguments ending at ``step_k[t]``)
    whose flags (``own``, one per instruction) have ``nonlin_flag``, and each of its
    structurally nonzero second partials
    ``e`` (``nonlin[op, e]``, arguments ``j, l``), every pair of entries ``(ea, eb)`` of the
    gradients of arguments ``j`` and ``l`` adds ``c[3 r + e] * G[ea] * G[eb]`` to the entry
    of their inputs (both orders for ``j != l``; lower triangle only), ``r`` the step's rank
    among such steps.

    Returns ``(hbase, tptr, tc, ta, tb)``: ``hbase[t] = 3 r`` (``-1`` for other steps);
    entry ``q``'s terms are ``tptr[q] : tptr[q + 1]``, with factors ``c[tc]``, ``G[ta]``,
    ``G[tb]``.
    """
    n = steps.shape[0]
    nlow = lidx.shape[0]
    hbase = np.full(n, -1, np.int64)
    count = np.zeros(nlow + 1, np.int64)
    tptr = count
    fill = count
    tc = np.empty(0, np.int64)
    ta = tc
    tb = tc
    for sweep in range(2):
        if sweep == 1:
            tptr = np.cumsum(count)
            fill = tptr[:-1].copy()
            tc = np.empty(tptr[nlow], np.int64)
            ta = np.empty(tptr[nlow], np.int64)
            tb = np.empty(tptr[nlow], np.int64)
        rank = 0
        for t in range(n):
            i = steps[t]
            op = ops[i]
            if (own[i] & nonlin_flag) == 0:
                continue
            hbase[t] = 3 * rank
            rank += 1
            k = step_k[t] - ARITY[op]
            for e in range(3):
                if not nonlin[op, e]:
                    continue
                j, m = pair_args(e)
                a = args[k + j]
                b = args[k + m]
                for pa in range(start[a], start[a] + length[a]):
                    for pb in range(start[b], start[b] + length[b]):
                        ia = idx[pa]
                        ib = idx[pb]
                        for turn in range(2):
                            if turn == 0:
                                r, c = ia, ib
                            elif j != m:
                                r, c = ib, ia
                            else:
                                break
                            if r < c:
                                continue
                            q = _position(lidx, lptr[r], lptr[r + 1], c)
                            if q < 0:
                                raise RuntimeError("a Hessian term outside the pattern: a bug")
                            if sweep == 0:
                                count[q + 1] += 1
                            else:
                                f = fill[q]
                                tc[f] = hbase[t] + e
                                ta[f] = gstart[a] + pa - start[a]
                                tb[f] = gstart[b] + pb - start[b]
                                fill[q] = f + 1
    return hbase, tptr, tc, ta, tb


@kernel
def hessian_entries(ops, args, consts, xin, w, vals, adj, active, grad, coef, program, data):
    # pragma: no cover (jitted)
    """The Hessian of ``sum_j w[j] * f_j`` at ``xin`` into ``data`` (the full symmetric
    pattern's CSR order), as ``sum_s adj_s * sum_jl h_jl * grad a_j * grad a_l^T`` over the
    nonlinear instructions ``s``.

    The forward steps of ``active`` compute values and gradients (:func:`forward_gradients`);
    its seeds and reverse steps the adjoints (each step's adjoint passed on along its first
    partials, as the tangent sweeps' ``adjoint_step``), and at each nonlinear step
    ``coef[hbase[t] + e] = adj_s * h_e``; then each lower entry sums its terms and the upper
    ones copy them (exactly symmetric).  ``adj`` must be zero on entry and is on exit.
    ``program``: ``(gbeg, glen, eptr, target, source, arg, hbase, tptr, tc, ta, tb, low,
    upper, partner, n_in)``: those of :func:`gradient_edges` and :func:`hessian_terms`, the
    full positions ``low`` of the lower entries, each upper entry ``upper[u]`` with its
    mirror ``partner[u]``, and the number of inputs' entries of ``G`` (read as 1).
    """
    (gbeg, glen, eptr, target, source, arg, hbase, tptr, tc, ta, tb, low, upper, partner,
     n_in) = program
    n_pre = forward_gradients(ops, args, consts, xin, vals, active, grad, gbeg, glen, eptr,
                              target, source, arg, n_in)
    seed_adjoints(active, w, adj)
    k = args.shape[0]
    for t in range(reverse_count(ops, active) - 1, -1, -1):
        i, k = reverse_at(active, t, k)
        op, s, k, g = reverse_step(ops, adj, n_pre, i, k)
        hb = hbase[t]
        nd = NDIFF[op]
        if g == 0.0 or nd == 0:
            if hb >= 0:
                coef[hb] = 0.0
                coef[hb + 1] = 0.0
                coef[hb + 2] = 0.0
            continue
        p0, p1, h00, h01, h11 = partials_and_second(
            op, vals, args, k, s, g, wants_first(active, args, k, nd, g))
        adjoint_step(adj, active, args, k, nd, g, p0, p1)
        if hb >= 0:
            coef[hb] = g * h00
            coef[hb + 1] = g * h01
            coef[hb + 2] = g * h11
    for q in range(low.shape[0]):
        acc = 0.0
        for r in range(tptr[q], tptr[q + 1]):
            c = coef[tc[r]]
            ga = _entry(grad, ta[r], n_in)
            gb = _entry(grad, tb[r], n_in)
            if c != 0.0 and ga != 0.0 and gb != 0.0:
                acc += c * ga * gb
        data[low[q]] = acc
    for u in range(upper.shape[0]):
        data[upper[u]] = data[partner[u]]


@kernel
def jacobian_entries(ops, args, consts, xin, vals, active, grad, program, data):
    # pragma: no cover (jitted)
    """The Jacobian's entries at ``xin`` into ``data`` (the pattern's CSR order).

    ``active``: the core's forward steps and flags (:mod:`fasttape.kernels.activity`);
    ``grad``: ``G``; ``program``: ``(gbeg, glen, eptr, target, source, arg, base, tptr,
    tsource, tcoef, n_in)``: where each step's own entries lie (cleared before its edges add
    into them), the edges of :func:`gradient_edges`, each entry's constant part (the sum of
    its terms on inputs' own entries, which are always 1), its other terms
    (:func:`entry_terms`), and the number of inputs' entries (read as 1, never stored).
    """
    gbeg, glen, eptr, target, source, arg, base, tptr, tsource, tcoef, n_in = program
    forward_gradients(ops, args, consts, xin, vals, active, grad, gbeg, glen, eptr, target,
                      source, arg, n_in)
    for q in range(data.shape[0]):
        acc = base[q]
        for r in range(tptr[q], tptr[q + 1]):
            g = _entry(grad, tsource[r], n_in)
            if g != 0.0:
                acc += tcoef[r] * g
        data[q] = acc
