"""Sparsity kernels: index-set propagation over a tape, greedy coloring, the weighted HVP sweep.

Index sets are **sorted lists of input indices in one shared int32 array**, addressed per slot
by ``(start, length)`` (a CSR layout in which a slot's list may be *shared*: a unary op or a
one-argument-set op points at its argument's list instead of copying it, so a chain of
``sin(exp(...))`` costs no memory).  A union of two sorted lists is one merge.  Bitsets would
cost ``n_slots * n_inputs / 8`` bytes whatever the sparsity (125 GB for 1e6 slots and 1e6
inputs); sorted lists cost what the pattern holds, which is what banded and arrowhead
problems need.

Nonlinear interactions (the Hessian pattern) follow Walther's forward algorithm (as in
ADOL-C and CppAD): an instruction whose second partial ``d2f / (da db)`` is structurally
nonzero contributes every pair of ``X(a) x X(b)`` (``X``: the argument's index set), provided
the instruction reaches a selected output through differentiable edges.  The pairs are
emitted (``i <= j``, counted first, then written into arrays of the exact size) and
de-duplicated by the caller.
"""

from __future__ import annotations

import numpy as np

from fasttape.kernels.activity import (
    ADJOINT,
    SKIP,
    TANGENT,
    forward_at,
    forward_count,
    reverse_at,
    reverse_count,
    reverse_mode,
    seed_adjoints,
    wants_adjoint,
    wants_first,
)
from fasttape.kernels.dispatch import NDIFF, partials_and_second
from fasttape.kernels.jit import kernel
from fasttape.kernels.sweep import load_inputs
from fasttape.kernels.tangent import (
    adjoint_step,
    evaluate_active,
    forward_tangent,
    reverse_hvp,
    reverse_step,
)


@kernel(inline=True)
def _take_smallest_color(forbidden, v, colors, n_colors):  # pragma: no cover (jitted)
    """Give vertex ``v`` the smallest color not marked ``forbidden[c] == v`` (greedy
    coloring's last step); returns the updated number of colors."""
    c = 0
    while forbidden[c] == v:
        c += 1
    colors[v] = c
    return max(n_colors, c + 1)


@kernel
def _sets_from(ops, args, arity, ndiff, n_pre, start, length, idx, i0, k0, top):
    # pragma: no cover (jitted)
    """The set propagation of :func:`index_sets` from instruction ``i0`` (arguments at
    ``k0``, ``top`` entries of ``idx`` used) until the end or until ``idx`` is too small for
    the next union; returns ``(i, k, top)`` where it stopped.

    ``idx`` is an argument that this loop never reassigns: growing it inside the loop (the
    array variable rebound) made the whole loop several times slower.
    """
    k = k0
    for i in range(i0, ops.shape[0]):
        op = ops[i]
        s = n_pre + i
        nd = ndiff[op]
        if nd == 1:
            a = args[k]
            start[s] = start[a]
            length[s] = length[a]
        elif nd >= 2:
            a = args[k]
            b = args[k + 1]
            la = length[a]
            lb = length[b]
            if lb == 0 or a == b:
                start[s] = start[a]
                length[s] = la
            elif la == 0:
                start[s] = start[b]
                length[s] = lb
            else:
                if top + la + lb > idx.shape[0]:
                    return i, k, top  # the caller grows idx and resumes here
                pa = start[a]
                pb = start[b]
                ea = pa + la
                eb = pb + lb
                q = top
                while pa < ea and pb < eb:
                    va = idx[pa]
                    vb = idx[pb]
                    if va < vb:
                        idx[q] = va
                        pa += 1
                    elif vb < va:
                        idx[q] = vb
                        pb += 1
                    else:
                        idx[q] = va
                        pa += 1
                        pb += 1
                    q += 1
                while pa < ea:
                    idx[q] = idx[pa]
                    pa += 1
                    q += 1
                while pb < eb:
                    idx[q] = idx[pb]
                    pb += 1
                    q += 1
                # A union equal to one argument's set needs no copy of its own.
                if q - top == la:
                    start[s] = start[a]
                    length[s] = la
                elif q - top == lb:
                    start[s] = start[b]
                    length[s] = lb
                else:
                    start[s] = top
                    length[s] = q - top
                    top = q
        k += arity[op]
    return ops.shape[0], k, top


@kernel
def index_sets(ops, args, arity, ndiff, n_inputs, n_pre):  # pragma: no cover (jitted)
    """The input-index set of every slot: ``(start, length, idx)``.

    Slot ``s``'s sorted set is ``idx[start[s] : start[s] + length[s]]``.  Input ``i`` has
    ``{i}``; parameters and constants have the empty set; an instruction has the union of the
    sets of its first ``ndiff[op]`` (differentiable) arguments.  Non-differentiable arguments
    (``where``'s condition, comparisons, ``sign``, ``floor``, exponents) contribute nothing:
    the op table gives them no partial, so no derivative flows through them.
    """
    n_instr = ops.shape[0]
    n_slots = n_pre + n_instr
    start = np.zeros(n_slots, np.int64)
    length = np.zeros(n_slots, np.int64)
    idx = np.empty(max(16, n_inputs + 2 * n_instr), np.int32)
    for i in range(n_inputs):
        idx[i] = i
        start[i] = i
        length[i] = 1
    i, k, top = _sets_from(ops, args, arity, ndiff, n_pre, start, length, idx, 0, 0,
                           n_inputs)
    while i < n_instr:
        # Out of room before instruction i: double (at least what its union needs).
        a = args[k]
        b = args[k + 1]
        bigger = np.empty(max(2 * idx.shape[0], top + length[a] + length[b]), np.int32)
        bigger[:top] = idx[:top]
        idx = bigger
        i, k, top = _sets_from(ops, args, arity, ndiff, n_pre, start, length, idx, i, k, top)
    return start, length, idx[:top]


@kernel
def reaching(ops, args, arity, ndiff, n_pre, seeds):  # pragma: no cover (jitted)
    """Mark the slots whose value reaches a slot already marked in ``seeds`` through
    differentiable edges (one backward pass; ``seeds`` is updated in place)."""
    k = args.shape[0]
    for i in range(ops.shape[0] - 1, -1, -1):
        op = ops[i]
        k -= arity[op]
        if seeds[n_pre + i]:
            for j in range(ndiff[op]):
                seeds[args[k + j]] = True


@kernel(inline=True)
def pair_args(e):  # pragma: no cover (jitted)
    """Second partial number ``e`` -> its argument pair, in the table's order: one argument:
    ``(0, 0)``; two: ``(0, 0), (0, 1), (1, 1)``."""
    return (0 if e < 2 else 1), (0 if e == 0 else 1)


@kernel
def hessian_pairs(ops, args, arity, nonlin, n_pre, live, start, length, idx):
    # pragma: no cover (jitted)
    """Input pairs ``(i, j)``, ``i <= j``, of the nonlinear interactions that reach an output.

    ``nonlin[op, e]`` says whether the op's second partial number ``e`` is structurally
    nonzero, in the table's order: ``(aa,)`` for one differentiable argument, ``(aa, ab, bb)``
    for two.  Only instructions marked in ``live`` (see :func:`reaching`) contribute.
    Returns ``(rows, cols)`` with duplicates.  Two passes: the first lists the interacting
    argument pairs ``(a, b)`` and counts their products, the second fills arrays of the exact
    size (a growing array rebound inside the loop made it 10x slower).
    """
    n_ops = ops.shape[0]
    # At most three second partials per instruction: (aa,) or (aa, ab, bb).
    pair_a = np.empty(3 * n_ops, np.int64)
    pair_b = np.empty(3 * n_ops, np.int64)
    n_pairs = 0
    total = 0
    k = 0
    for i in range(n_ops):
        op = ops[i]
        if live[n_pre + i]:
            for e in range(3):
                if nonlin[op, e]:
                    ja, jb = pair_args(e)
                    a = args[k + ja]
                    b = args[k + jb]
                    pair_a[n_pairs] = a
                    pair_b[n_pairs] = b
                    n_pairs += 1
                    total += length[a] * length[b]
        k += arity[op]
    rows = np.empty(total, np.int32)
    cols = np.empty(total, np.int32)
    top = 0
    for t in range(n_pairs):
        a = pair_a[t]
        b = pair_b[t]
        for p in range(start[a], start[a] + length[a]):
            u = idx[p]
            for q in range(start[b], start[b] + length[b]):
                v = idx[q]
                if u <= v:
                    rows[top] = u
                    cols[top] = v
                else:
                    rows[top] = v
                    cols[top] = u
                top += 1
    return rows, cols


#: Rows longer than this (and longer than ``n_cols / 64``) are *dense* in
#: :func:`greedy_distance2`: their used colors are kept as a bitset instead of being walked.
DENSE_ROW = 64


@kernel
def greedy_distance2(order, col_ptr, col_rows, row_ptr, row_cols, colors):
    # pragma: no cover (jitted)
    """Greedy distance-2 column coloring in the given ``order``; returns the color count.

    Two columns conflict when some row has a nonzero in both (they would share a compressed
    column).  Each column takes the smallest color not used by a conflicting column already
    colored.  ``col_ptr/col_rows`` is the pattern by columns (CSC), ``row_ptr/row_cols`` by
    rows (CSR); ``colors`` (filled with -1 on entry) receives the colors (-1 stays for an
    empty column).

    Walking every row of a column costs ``sum_r len(r)**2`` in all: quadratic in the length
    of a dense row (an arrowhead).  So a *dense* row (longer than :data:`DENSE_ROW` and than
    ``n_cols / 64``) is never walked: it keeps the colors used in it as a bitset, and a
    column in dense rows searches the OR of their bitsets 64 colors per word.  The bitsets
    cost at most ``8 * nnz`` bytes (``nnz / limit`` dense rows of ``n_cols / 64`` words);
    the colors are exactly the plain greedy's.
    """
    n_cols = colors.shape[0]
    n_rows = row_ptr.shape[0] - 1
    limit = max(DENSE_ROW, n_cols // 64)
    dense = np.full(n_rows, -1, np.int64)
    n_dense = 0
    for r in range(n_rows):
        if row_ptr[r + 1] - row_ptr[r] > limit:
            dense[r] = n_dense
            n_dense += 1
    n_words = n_cols // 64 + 1  # colors are < n_cols
    used = np.zeros((n_dense, n_words), np.int64)
    forbidden = np.full(n_cols + 1, -1, np.int64)
    n_colors = 0
    for t in range(order.shape[0]):
        j = order[t]
        if col_ptr[j] == col_ptr[j + 1]:
            continue  # an empty column needs no direction: it keeps color -1
        in_dense = False
        for p in range(col_ptr[j], col_ptr[j + 1]):
            r = col_rows[p]
            if dense[r] >= 0:
                in_dense = True
                continue
            for q in range(row_ptr[r], row_ptr[r + 1]):
                c = colors[row_cols[q]]
                if c >= 0:
                    forbidden[c] = j
        if not in_dense:
            n_colors = _take_smallest_color(forbidden, j, colors, n_colors)
            continue
        # The first color free in every dense row of j (a zero bit of the OR of their
        # bitsets) and not forbidden by its other rows.
        c = -1
        for wi in range(n_words):
            m = np.int64(0)
            for p in range(col_ptr[j], col_ptr[j + 1]):
                d = dense[col_rows[p]]
                if d >= 0:
                    m |= used[d, wi]
            if m == -1:
                continue  # all 64 colors of this word are taken
            for b in range(64):
                if (m >> b) & 1 == 0 and forbidden[64 * wi + b] != j:
                    c = 64 * wi + b
                    break
            if c >= 0:
                break
        colors[j] = c
        n_colors = max(n_colors, c + 1)
        for p in range(col_ptr[j], col_ptr[j + 1]):
            d = dense[col_rows[p]]
            if d >= 0:
                used[d, c // 64] |= np.int64(1) << (c % 64)
    return n_colors


@kernel(inline=True)
def _seed_weights(outputs, w, adj):  # pragma: no cover (jitted)
    """Seed the reverse sweep of a weighted HVP: ``adj[outputs[j]] += w[j]``, zero weights
    skipped (an output may appear twice: the weights add up)."""
    for j in range(outputs.shape[0]):
        if w[j] != 0.0:
            adj[outputs[j]] += w[j]


@kernel(inline=True)
def _seed(outputs, w, adj, active):  # pragma: no cover (jitted)
    """Seed a weighted HVP's reverse sweep: every weighted output (:func:`_seed_weights`),
    or the pruned sweep's seed matrix (:func:`fasttape.kernels.activity.seed_adjoints`)."""
    if active is None:
        _seed_weights(outputs, w, adj)
    else:
        seed_adjoints(active, w, adj)


@kernel
def weighted_hvp(ops, args, consts, outputs, w, xin, xdot, vals, tan, adj, adjdot, res,
                 active):  # pragma: no cover (jitted)
    """``sum_j w[j] * H_j(x) @ xdot``: one tangent sweep and one forward-over-reverse sweep.

    As ``tangent.hvp_driver`` with ``identity=False``, but the reverse sweep is seeded with
    the weights (``adj[outputs[j]] += w[j]``, zero weights skipped) instead of one unit
    output: the Hessian of a Lagrangian in one sweep pair.  ``adj`` and ``adjdot`` must be
    zero on entry and are zero again on exit; ``res`` has shape ``(n_inputs, K)``.
    ``active``: the pruned sweeps' steps, flags and seeds (:mod:`fasttape.kernels.activity`;
    bitwise the same ``res`` with the plain seeds), or None.
    """
    n_in = xin.shape[0]
    n_pre = n_in + consts.shape[0]
    nk = tan.shape[1]
    forward_tangent(ops, args, consts, xin, xdot, vals, tan, active)
    _seed(outputs, w, adj, active)
    reverse_hvp(ops, args, vals, tan, adj, adjdot, n_pre, active)
    for i in range(n_in):
        for d in range(nk):
            res[i, d] = adjdot[i, d]
    for i in range(n_pre):
        adj[i] = 0.0
        for d in range(nk):
            adjdot[i, d] = 0.0


@kernel
def forward_tangent1(ops, args, consts, xin, xdot, vals, tan, active):
    # pragma: no cover (jitted)
    """:func:`fasttape.kernels.tangent.forward_tangent` for one direction, ``xdot`` and
    ``tan`` 1-D: the same products in the same order (bitwise its column), without the
    direction loops, whose overhead at ``K = 1`` makes the general sweep 1.5-2x slower."""
    n_in = xin.shape[0]
    n_pre = load_inputs(consts, xin, vals)
    for i in range(n_in):
        tan[i] = xdot[i]
    for i in range(n_in, n_pre):
        tan[i] = 0.0
    k = 0
    for t in range(forward_count(ops, active)):
        i, k = forward_at(active, t, k)
        mode, s, nd, p0, p1, k_next = evaluate_active(ops, args, vals, active, n_pre, i, k)
        if mode != TANGENT:
            k = k_next
            continue
        if nd == 0:
            tan[s] = 0.0
        elif nd == 1:
            t0 = tan[args[k]]
            tan[s] = p0 * t0 if (p0 != 0.0 and t0 != 0.0) else 0.0
        else:
            t0 = tan[args[k]]
            t1 = tan[args[k + 1]]
            u = p0 * t0 if (p0 != 0.0 and t0 != 0.0) else 0.0
            tan[s] = u + p1 * t1 if (p1 != 0.0 and t1 != 0.0) else u
        k = k_next


@kernel
def reverse_hvp1(ops, args, vals, tan, adj, adjdot, n_pre, active):  # pragma: no cover
    """:func:`fasttape.kernels.tangent.reverse_hvp` for one direction, ``tan`` and
    ``adjdot`` 1-D: per element the same terms in the same order (``gd * p0``,
    ``g * h00 * t0``, ``g * h01 * t1``, then the same for the second argument), so bitwise
    its column; about 2x faster than the general sweep at ``K = 1``."""
    k = args.shape[0]
    for t in range(reverse_count(ops, active) - 1, -1, -1):
        i, k = reverse_at(active, t, k)
        op, s, k, g = reverse_step(ops, adj, n_pre, i, k)
        mode = reverse_mode(active, s)
        if mode == SKIP:
            continue
        gd = adjdot[s]
        adjdot[s] = 0.0
        nd = NDIFF[op]
        if (g == 0.0 and gd == 0.0) or nd == 0:
            continue  # nothing flows
        p0, p1, h00, h01, h11 = partials_and_second(
            op, vals, args, k, s, g, gd != 0.0 or wants_first(active, args, k, nd, g))
        if mode == ADJOINT:  # g != 0 (gd is 0 outside TAN); no second partial
            adjoint_step(adj, active, args, k, nd, g, p0, p1)
            continue
        a0 = args[k]
        t0 = tan[a0]
        live = g != 0.0
        if live and p0 != 0.0 and wants_adjoint(active, a0):
            adj[a0] += g * p0
        u = adjdot[a0]
        u = u + gd * p0 if (p0 != 0.0 and gd != 0.0) else u
        u = u + (g * h00) * t0 if (live and h00 != 0.0 and t0 != 0.0) else u
        if nd == 1:
            adjdot[a0] = u
            continue
        a1 = args[k + 1]
        t1 = tan[a1]
        u = u + (g * h01) * t1 if (live and h01 != 0.0 and t1 != 0.0) else u
        adjdot[a0] = u  # written before a1 is read: a0 == a1 (x * x) adds up in order
        if live and p1 != 0.0 and wants_adjoint(active, a1):
            adj[a1] += g * p1
        v = adjdot[a1]
        v = v + gd * p1 if (p1 != 0.0 and gd != 0.0) else v
        v = v + (g * h01) * t0 if (live and h01 != 0.0 and t0 != 0.0) else v
        v = v + (g * h11) * t1 if (live and h11 != 0.0 and t1 != 0.0) else v
        adjdot[a1] = v


@kernel
def weighted_hvp1(ops, args, consts, outputs, w, xin, xdot, vals, tan, adj, adjdot, res,
                  active):  # pragma: no cover (jitted)
    """:func:`weighted_hvp` for one direction (``xdot``, ``tan``, ``adjdot``, ``res`` 1-D):
    a compressed Hessian of one color (a diagonal Hessian, say) at about half the cost."""
    n_in = xin.shape[0]
    n_pre = n_in + consts.shape[0]
    forward_tangent1(ops, args, consts, xin, xdot, vals, tan, active)
    _seed(outputs, w, adj, active)
    reverse_hvp1(ops, args, vals, tan, adj, adjdot, n_pre, active)
    for i in range(n_in):
        res[i] = adjdot[i]
    for i in range(n_pre):
        adj[i] = 0.0
        adjdot[i] = 0.0


@kernel
def star_sources(ptr, adj, colors, n_c):  # pragma: no cover (jitted)
    """Where each entry of a star-colored symmetric pattern is read in ``H @ S``.

    Returns ``(ia, ib)``, positions in the flattened compressed matrix (``n_c`` columns):
    ``ia[e] = i * n_c + colors[j]`` when ``j``'s color is alone in row ``i`` (the entry
    ``(i, j)`` is read there), else -1; ``ib[e] = j * n_c + colors[i]`` likewise for row
    ``j``.  A star coloring leaves no entry with both -1 (the caller checks).  Entries follow
    the CSR order of ``ptr/adj`` (sorted indices).
    """
    n = ptr.shape[0] - 1
    tally = np.zeros(max(n_c, 1), np.int64)
    stamp = np.full(max(n_c, 1), -1, np.int64)
    # unique[e]: entry e (row i, col j) is alone with its color in row i
    unique = np.zeros(adj.shape[0], np.bool_)
    for i in range(n):
        for p in range(ptr[i], ptr[i + 1]):
            c = colors[adj[p]]
            if stamp[c] != i:
                stamp[c] = i
                tally[c] = 0
            tally[c] += 1
        for p in range(ptr[i], ptr[i + 1]):
            unique[p] = tally[colors[adj[p]]] == 1
    ia = np.full(adj.shape[0], -1, np.int64)
    ib = np.full(adj.shape[0], -1, np.int64)
    for i in range(n):
        for p in range(ptr[i], ptr[i + 1]):
            j = adj[p]
            # Find entry (j, i) in row j (sorted indices: binary search).
            lo = ptr[j]
            hi = ptr[j + 1]
            while lo < hi:
                mid = (lo + hi) // 2
                if adj[mid] < i:
                    lo = mid + 1
                else:
                    hi = mid
            if unique[p]:
                ia[p] = i * n_c + colors[j]
            if unique[lo]:
                ib[p] = j * n_c + colors[i]
    return ia, ib


@kernel
def recover(comp, ia, ib, data):  # pragma: no cover (jitted)
    """Direct recovery: ``data[e]`` from the flattened compressed matrix ``comp``.

    ``comp[ia[e]]`` where only ``ia[e] >= 0``, ``comp[ib[e]]`` where only ``ib[e] >= 0``;
    where both are given (a symmetric entry readable from both of its rows) the two
    readings can differ in the last bits, and then both ``H[i, j]`` and ``H[j, i]`` become
    ``0.5 * a + 0.5 * b`` (as the dense ``hessian``), so the result is symmetric bit for
    bit.
    """
    for e in range(ia.shape[0]):
        pa = ia[e]
        pb = ib[e]
        if pb < 0:
            data[e] = comp[pa]
        elif pa < 0:
            data[e] = comp[pb]
        else:
            a = comp[pa]
            b = comp[pb]
            data[e] = a if a == b else 0.5 * a + 0.5 * b


@kernel
def scatter_add(out, pos, src, idx, scale):  # pragma: no cover (jitted)
    """``out[pos[e]] += scale * src[idx[e]]`` for every ``e`` in order (``scale == 1``: the
    value itself), without the temporaries of NumPy's fancy indexing: assembling a sum of
    sparse matrices with different patterns (the IPOPT bridge's Lagrangian Hessian)."""
    for e in range(pos.shape[0]):
        v = src[idx[e]]
        out[pos[e]] += v if scale == 1.0 else scale * v


@kernel
def symmetric_csr(rows, cols, n):  # pragma: no cover (jitted)
    """``(indptr, indices)`` of the symmetric pattern holding each pair ``(i, j)`` and
    ``(j, i)``, duplicates removed, indices sorted per row.

    Linear in the number of pairs apart from the per-row sorts (rows are short for sparse
    problems): a bucket pass by row, then a marker array drops repeats.
    """
    count = np.zeros(n + 1, np.int64)
    for e in range(rows.shape[0]):
        count[rows[e] + 1] += 1
        if rows[e] != cols[e]:
            count[cols[e] + 1] += 1
    for i in range(n):
        count[i + 1] += count[i]
    fill = count[:n].copy()
    bucket = np.empty(count[n], np.int32)
    for e in range(rows.shape[0]):
        i = rows[e]
        j = cols[e]
        bucket[fill[i]] = j
        fill[i] += 1
        if i != j:
            bucket[fill[j]] = i
            fill[j] += 1
    seen = np.full(n, -1, np.int64)
    indptr = np.zeros(n + 1, np.int64)
    indices = np.empty(count[n], np.int32)
    top = 0
    for i in range(n):
        row_start = top
        for p in range(count[i], count[i + 1]):
            j = bucket[p]
            if seen[j] != i:
                seen[j] = i
                indices[top] = j
                top += 1
        if top - row_start > 32:
            indices[row_start:top] = np.sort(indices[row_start:top])
            indptr[i + 1] = top
            continue
        # Short rows: insertion sort in place (np.sort allocates per row: 4x slower here).
        for p in range(row_start + 1, top):
            v = indices[p]
            q = p - 1
            while q >= row_start and indices[q] > v:
                indices[q + 1] = indices[q]
                q -= 1
            indices[q + 1] = v
        indptr[i + 1] = top
    return indptr, indices[:top]


@kernel
def gather_rows(start, length, idx, slots):  # pragma: no cover (jitted)
    """``(indptr, indices)``: the index sets of ``slots`` as the rows of a CSR pattern."""
    m = slots.shape[0]
    indptr = np.zeros(m + 1, np.int64)
    for r in range(m):
        indptr[r + 1] = indptr[r] + length[slots[r]]
    indices = np.empty(indptr[m], np.int32)
    for r in range(m):
        s0 = start[slots[r]]
        for q in range(length[slots[r]]):
            indices[indptr[r] + q] = idx[s0 + q]
    return indptr, indices


@kernel(inline=True)
def _find_color(keys, lo, n, c):  # pragma: no cover (jitted)
    """The position of ``c`` in ``keys[lo : lo + n]``, or -1."""
    for q in range(lo, lo + n):
        if keys[q] == c:
            return q
    return -1


@kernel(inline=True)
def _add_color(keys, lo, size, v, c):  # pragma: no cover (jitted)
    """Add ``c`` to the set ``keys[lo : lo + size[v]]`` (no repeats)."""
    if _find_color(keys, lo, size[v], c) < 0:
        keys[lo + size[v]] = c
        size[v] += 1


@kernel
def greedy_star(order, ptr, adj, colors):  # pragma: no cover (jitted)
    """Greedy star coloring of a symmetric pattern's adjacency graph; returns the color count.

    Algorithm 4.1 of Gebremedhin, Manne and Pothen, "What color is your Jacobian?" (SIAM
    Review 47, 2005): vertex ``v`` may not take the color of a neighbor ``w`` (distance 1), nor
    the color of a vertex ``x`` two steps away through ``w`` when ``w`` is uncolored, or when
    ``x`` has a neighbor ``y != w`` colored like ``w`` (that would make the path ``v w x y``
    two-colored).  Every path on four vertices then uses at least three colors, which is what
    direct symmetric recovery needs (:func:`recover_star`).  ``ptr/adj`` is the pattern in CSR
    form without repeated entries (the diagonal is ignored); ``colors`` is -1 on entry;
    vertices with no entry at all keep -1.

    Walking the paths ``v w x`` costs ``deg(w)`` per ``v``: quadratic in a dense row (an
    arrowhead's hub).  Instead, the walk's outcome is kept per vertex and updated as
    vertices are colored (the idea of ColPack's star coloring, Gebremedhin, Tarafdar, Manne
    and Pothen 2007), with exactly the colors of the walk:

    * ``cnt[x][c]``: how many colored neighbors ``x`` has of color ``c`` (and the first of
      them).  An uncolored ``w`` forbids every color with ``cnt[w][c] >= 1``.
    * ``B(w)`` for a colored ``w``: the colors of its colored neighbors ``x`` with
      ``cnt[x][color(w)] >= 2`` (a neighbor ``y != w`` colored like ``w``).  A colored ``w``
      forbids its color and ``B(w)``.

    Both live in the CSR layout of ``adj`` (a vertex has at most ``deg`` distinct neighbor
    colors), so the memory is a few arrays of ``nnz``, and the time is ``nnz`` times the
    number of distinct colors around a vertex.
    """
    n = ptr.shape[0] - 1
    nnz = adj.shape[0]
    cnt_color = np.empty(nnz, np.int64)  # per vertex x: the colors of its colored neighbors
    cnt = np.empty(nnz, np.int64)  # ... how many of each
    first = np.empty(nnz, np.int64)  # ... and the first one colored
    n_cnt = np.zeros(n, np.int64)
    b_color = np.empty(nnz, np.int64)  # B(w)
    n_b = np.zeros(n, np.int64)
    forbidden = np.full(order.shape[0] + 1, -1, np.int64)
    n_colors = 0
    for t in range(order.shape[0]):
        v = order[t]
        if ptr[v] == ptr[v + 1]:
            continue  # a vertex with no entry needs no direction: it keeps color -1
        for p in range(ptr[v], ptr[v + 1]):
            w = adj[p]
            if w == v:
                continue
            cw = colors[w]
            if cw >= 0:
                forbidden[cw] = v
                for q in range(ptr[w], ptr[w] + n_b[w]):
                    forbidden[b_color[q]] = v
            else:
                for q in range(ptr[w], ptr[w] + n_cnt[w]):
                    forbidden[cnt_color[q]] = v
        n_colors = _take_smallest_color(forbidden, v, colors, n_colors)
        c = colors[v]
        # v as the new neighbor of each w: count it; a colored w with two neighbors of
        # color c now puts its color in B of both (v and the first one).
        has_pair = False
        for p in range(ptr[v], ptr[v + 1]):
            w = adj[p]
            if w == v:
                continue
            q = _find_color(cnt_color, ptr[w], n_cnt[w], c)
            if q < 0:
                q = ptr[w] + n_cnt[w]
                n_cnt[w] += 1
                cnt_color[q] = c
                cnt[q] = 0
                first[q] = v
            cnt[q] += 1
            cw = colors[w]
            if cw >= 0 and cnt[q] >= 2:
                _add_color(b_color, ptr[v], n_b, v, cw)
                if cnt[q] == 2:
                    _add_color(b_color, ptr[first[q]], n_b, first[q], cw)
        # v as the newly colored middle vertex: its neighbors y of a color it already
        # has twice get c in B(y).
        for q in range(ptr[v], ptr[v] + n_cnt[v]):
            if cnt[q] >= 2:
                has_pair = True
                break
        if has_pair:
            for p in range(ptr[v], ptr[v + 1]):
                y = adj[p]
                cy = colors[y]
                if y == v or cy < 0:
                    continue
                q = _find_color(cnt_color, ptr[v], n_cnt[v], cy)
                if cnt[q] >= 2:
                    _add_color(b_color, ptr[y], n_b, y, c)
    return n_colors
