"""Sweeps of a tensor tape: instructions over slot ranges, forward and reverse.

A tensor tape (docs/tape-format.md, "Tensor tapes") is four arrays: instruction ``i`` has kind
``kinds[i]``, op ``ops[i]`` and its integer fields at ``fields[at[i]:]``.  Every value lives in
one flat ``vals`` vector; a tensor is a range of it, in C order.  Each kind is one loop nest
here, with its reverse rule next to it:

``ELEMENTWISE``  ``[n, T, count, member records...]``
    a group of ``count`` elementwise ops over ``n`` elements, run tile by tile (``T`` elements
    at a time, every member per tile).  Member record (:data:`MEMBER_FIELDS` fields)
    ``[op, d, td, a0, s0, ta0, a1, s1, ta1, a2, s2, ta2, b0, u0, tb0, b1, u1, tb1, inter]``:
    for the tile starting at element ``t``, ``vals[d + t*td + i] = op(vals[a0 + t*ta0 +
    i*s0], ...)``.  A stride ``sj`` is 1 (an array) or 0 (one value, broadcast); a tile
    stride is 1 for a full array and 0 for a tile of scratch (an *intermediate*, ``inter =
    1``, whose values only the group's later members read: the reverse sweep recomputes it
    per tile).  Reverse: partial times adjoint, from the op table
    (:mod:`fasttape.kernels.dispatch`), added to ``adj[bj + t*tbj + i*uj]``: the argument's
    own range (a broadcast argument sums its adjoints), or for one that needs no adjoint (a
    constant) a discarded scratch tile.
``COPY``  ``[d, n, src, nd, shape..., strides...]``
    ``n`` elements of a strided view of ``vals`` (offset ``src``, ``nd`` dimensions, strides in
    slots, 0 for a broadcast axis) copied to ``d`` in C order: slices, transposes, broadcasts.
    Reverse: the adjoints added back through the same view (a broadcast axis sums them).
``TAKE``  ``[d, n, src, i_0, ..., i_{n-1}]``
    ``vals[d + i] = vals[src + i_i]``: integer-array indexing, indices checked at trace time.
    Reverse: scatter-add.
``REDUCE``  ``[d, outer, r, inner, src]``, op ``SUM``/``PROD``/``MAX``/``MIN``
    the middle axis of the C-ordered ``(outer, r, inner)`` block at ``src`` reduced.  Reverse:
    the adjoint broadcast back (sum), to the first extremum (max, min), times the product of
    the other elements (prod).
``MATMUL``  ``[d, nb, m, k, n, a, sa, b, sb, wa, wb]``
    ``nb`` products of an ``(m, k)`` and a ``(k, n)`` block, the ``t``-th at ``a + t*sa`` and
    ``b + t*sb`` (a batch stride 0 broadcasts one matrix over the batch).  Reverse:
    ``dA += dC @ B.T`` if ``wa`` and ``dB += A.T @ dC`` if ``wb`` (0 for an operand that needs
    no adjoint: data, a constant).

``GATHER``  ``[d, npos, inner, src, k, (c_j, size_j, stride_j) * k]``
    indexing by integer arrays known only at call time (parameters): position ``pos`` copies
    the ``inner`` contiguous slots at ``src + sum_j idx_j * stride_j``, where ``idx_j`` is the
    value at slot ``c_j + pos`` (negative counts from ``size_j``, as in NumPy).  The tape
    checks those parameters before a call; an index still out of range here gives NaN and is
    never read.  Reverse: scatter-add through the same indices.

No bounds checks: the tape was validated (fasttape/tensor/tape.py) before any call.

Slot indices in the element loops are **unsigned** (``np.uint64``, and every constant added
to them too: Numba types ``uint64 + int64`` as int64).  For a signed index Numba emits a
negative-index wraparound select per access, which keeps LLVM from vectorizing; unsigned,
the loops vectorize (measured on a 1e5-element product: 0.97 -> 0.48 ns per element
forward, 1.40 -> 0.49 ns in reverse).  A negative stride (``x[::-1]``) still works: unsigned
arithmetic wraps modulo 2**64, which is two's complement addition.
"""

from __future__ import annotations

import math

import numpy as np

from fasttape.kernels.dispatch import (
    elementwise_adjoint,
    elementwise_adjoint_tangent,
    elementwise_tangent,
    elementwise_value,
)
from fasttape.kernels.jit import kernel
from fasttape.kernels.scalar import SMALLEST_NORMAL, fmax, fmin

__all__ = [
    "COPY",
    "ELEMENTWISE",
    "GATHER",
    "KIND_NAMES",
    "LANES",
    "MATMUL",
    "MAX",
    "MEMBER_FIELDS",
    "MIN",
    "PROD",
    "REDUCE",
    "REDUCE_NAMES",
    "SUM",
    "TAKE",
    "forward",
    "reverse",
    "sweep",
    "value_and_grad",
    "vjp",
]

ELEMENTWISE, COPY, TAKE, REDUCE, MATMUL, GATHER = 0, 1, 2, 3, 4, 5
#: Fields of one member of an elementwise group.
MEMBER_FIELDS = 19
#: Kind code -> name (the order of the codes above).
KIND_NAMES = ("elementwise", "copy", "take", "reduce", "matmul", "gather")
SUM, PROD, MAX, MIN = 0, 1, 2, 3
#: Reduction code -> name.
REDUCE_NAMES = ("sum", "prod", "max", "min")

# Independent accumulators of a sum over a contiguous row: the additions of one row would
# otherwise form one dependency chain (4 cycles each); eight chains run in parallel and the
# loop vectorizes.  The order is fixed, so the result is the same on every machine.
#: Partial sums of a row sum (``_sum_row``): element ``t`` of a row goes to lane ``t % LANES``.
LANES = 8
_U = np.uint64


# ------------------------------------------------------------------------------ copy


@kernel(inline=True)
def _row_offset(fields, p, nd, row):
    # Slot offset of row ``row`` (all dimensions but the last) of the COPY view at ``p``.
    off = fields[p + 2]
    q = row
    for j in range(nd - 2, -1, -1):
        size = fields[p + 4 + j]
        off += (q % size) * fields[p + 4 + nd + j]
        q //= size
    return off


@kernel(inline=True)
def _copy_rows(fields, p):
    # (rows, inner, step, nd): the COPY at p as rows of ``inner`` elements, ``step`` apart.
    n, nd = fields[p + 1], fields[p + 3]
    inner = fields[p + 3 + nd]
    return (n // inner if n else 0), _U(inner), _U(fields[p + 3 + 2 * nd]), nd


@kernel(inline=True)
def copy_view(fields, p, x, back):
    # x[d:] = x[view] row by row, or (back: the transpose, for adjoints) x[view] += x[d:]
    # (a broadcast axis sums them).
    rows, inner, step, nd = _copy_rows(fields, p)
    for row in range(rows):
        src, out = _U(_row_offset(fields, p, nd, row)), _U(fields[p]) + _U(row) * inner
        if back:
            for t in range(inner):
                x[src + t * step] += x[out + t]
        else:
            for t in range(inner):
                x[out + t] = x[src + t * step]


# ------------------------------------------------------------------------------ take


@kernel(inline=True)
def take_forward(fields, p, x):
    d, n, src, idx = _U(fields[p]), _U(fields[p + 1]), _U(fields[p + 2]), _U(p + 3)
    for i in range(n):
        x[d + i] = x[src + _U(fields[idx + i])]


@kernel(inline=True)
def take_reverse(fields, p, x):
    # The transpose, for adjoints: a scatter-add.
    d, n, src, idx = _U(fields[p]), _U(fields[p + 1]), _U(fields[p + 2]), _U(p + 3)
    for i in range(n):
        x[src + _U(fields[idx + i])] += x[d + i]


@kernel(inline=True)
def _move(kind, fields, p, x, back):
    if kind == COPY:
        copy_view(fields, p, x, back)
    elif back:
        take_reverse(fields, p, x)
    else:
        take_forward(fields, p, x)


@kernel(inline=True)
def move_sweep(kind, fields, p, vals, tan, adj, adt):
    # COPY and TAKE move data, a linear map: forward (adj None) the values, then with tan the
    # tangents; reverse the adjoints added back (the transpose), then with adt their
    # tangents.  One array per pass: a transposing view reads a row's cache lines again for
    # the next row, and two arrays at once no longer fit in L1 (measured +11-20% on a
    # 400 x 250 transpose).
    if adj is None:
        _move(kind, fields, p, vals, False)
        if tan is not None:
            _move(kind, fields, p, tan, False)
    else:
        _move(kind, fields, p, adj, True)
        if adt is not None:
            _move(kind, fields, p, adt, True)


# ------------------------------------------------------------------------------ gather


@kernel(inline=True)
def _gather_base(fields, p, vals, pos):
    # Slot of position pos's first element, or -1 if one of its indices is out of range.
    base = fields[p + 3]
    for j in range(fields[p + 4]):
        q = p + 5 + 3 * j
        size = fields[q + 1]
        v = vals[fields[q] + pos]
        if not -size <= v < size:  # also NaN
            return -1
        idx = np.int64(v)
        if idx < 0:
            idx += size
        base += idx * fields[q + 2]
    return base


@kernel(inline=True)
def gather_forward(fields, p, vals):
    d, npos, inner = fields[p], fields[p + 1], fields[p + 2]
    for pos in range(npos):
        base = _gather_base(fields, p, vals, pos)
        out = d + pos * inner
        for t in range(inner):
            vals[out + t] = vals[base + t] if base >= 0 else np.nan


@kernel(inline=True)
def gather_reverse(fields, p, vals, adj):
    d, npos, inner = fields[p], fields[p + 1], fields[p + 2]
    for pos in range(npos):
        base = _gather_base(fields, p, vals, pos)
        if base >= 0:
            out = d + pos * inner
            for t in range(inner):
                adj[base + t] += adj[out + t]


# ------------------------------------------------------------------------------ reduce


@kernel(inline=True)
def _sum_row(vals, src, r):
    # Sum of vals[src : src + r] in LANES interleaved partial sums, then in order.
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    src, r = _U(src), _U(r)
    for b in range(r // _U(LANES)):
        t = src + b * _U(LANES)
        a0 += vals[t]
        a1 += vals[t + _U(1)]
        a2 += vals[t + _U(2)]
        a3 += vals[t + _U(3)]
        a4 += vals[t + _U(4)]
        a5 += vals[t + _U(5)]
        a6 += vals[t + _U(6)]
        a7 += vals[t + _U(7)]
    s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
    for t in range(r - r % _U(LANES), r):
        s += vals[src + t]
    return s


@kernel(inline=True)
def reduce_forward(op, fields, p, vals):
    d, outer, r, inner, src = fields[p], fields[p + 1], fields[p + 2], fields[p + 3], fields[p + 4]
    if op == SUM and inner == 1:
        if r < LANES:
            # Rows shorter than the lanes: _sum_row's sum (0.0, then each element in order)
            # without its lane bookkeeping per row.  The same rows: 0.70 -> 0.56 ms.
            d, src, r = _U(d), _U(src), _U(r)
            for o in range(_U(outer)):
                s = 0.0
                row = src + o * r
                for t in range(r):
                    s += vals[row + t]
                vals[d + o] = s
            return
        for o in range(outer):
            vals[d + o] = _sum_row(vals, src + o * r, r)
        return
    outer, r, inner = _U(outer), _U(r), _U(inner)
    for o in range(outer):
        out = _U(d) + o * inner
        block = _U(src) + o * r * inner
        for j in range(inner):
            vals[out + j] = 1.0 if op == PROD else (0.0 if op == SUM else vals[block + j])
        for t in range(_U(1) if op >= MAX else _U(0), r):
            row = block + t * inner
            if op == SUM:
                for j in range(inner):
                    vals[out + j] += vals[row + j]
            elif op == PROD:
                for j in range(inner):
                    vals[out + j] *= vals[row + j]
            elif op == MAX:
                for j in range(inner):
                    vals[out + j] = fmax(vals[out + j], vals[row + j])
            else:
                for j in range(inner):
                    vals[out + j] = fmin(vals[out + j], vals[row + j])


@kernel(inline=True)
def _prod_others(vals, at, r, inner, skip):
    # Product of the elements at at + t*inner for t != skip.
    s = 1.0
    for t in range(r):
        if t != skip:
            s *= vals[at + t * inner]
    return s


@kernel(inline=True)
def reduce_reverse(op, fields, p, vals, adj):
    d, outer, r, inner, src = fields[p], fields[p + 1], fields[p + 2], fields[p + 3], fields[p + 4]
    if op == SUM:
        # The adjoint broadcast back, in unsigned slots (module docstring): no wraparound
        # select per access.  Lennard-Jones' sum over an axis of 3 (499,500 rows): 1.68 ->
        # 0.74 ms, bitwise the same.
        outer, r, inner, d, src = _U(outer), _U(r), _U(inner), _U(d), _U(src)
        if inner == 1:
            for o in range(outer):
                g = adj[d + o]
                at = src + o * r
                for t in range(r):
                    adj[at + t] += g
            return
        for o in range(outer):
            for j in range(inner):
                g = adj[d + o * inner + j]
                at = src + o * r * inner + j
                for t in range(r):
                    adj[at + t * inner] += g
        return
    for o in range(outer):
        for j in range(inner):
            g = adj[d + o * inner + j]
            at = src + o * r * inner + j
            if op == PROD:
                if g == 0.0:
                    continue
                # d prod / d x_t is the product of the others: with no zero, prod / x_t;
                # with one zero, nonzero only at the zero; with two or more, 0 everywhere.
                zeros, first = 0, -1
                for t in range(r):
                    if vals[at + t * inner] == 0.0:
                        zeros += 1
                        if first < 0:
                            first = t
                if zeros == 1:
                    adj[at + first * inner] += g * _prod_others(vals, at, r, inner, first)
                elif zeros == 0:
                    f = vals[d + o * inner + j]
                    # prod / x_t is exact to an ulp only while the product is a normal number:
                    # an underflowed, subnormal or overflowed product takes the others' product.
                    if SMALLEST_NORMAL <= abs(f) < math.inf:
                        for t in range(r):
                            adj[at + t * inner] += g * (f / vals[at + t * inner])
                    else:
                        for t in range(r):
                            adj[at + t * inner] += g * _prod_others(vals, at, r, inner, t)
            else:  # MAX, MIN: the first element equal to the result (NaN: the first NaN)
                f = vals[d + o * inner + j]
                for t in range(r):
                    v = vals[at + t * inner]
                    if v == f or (f != f and v != v):
                        adj[at + t * inner] += g
                        break


# ------------------------------------------------------------------------------ matmul


@kernel(inline=True)
def _matmul_fields(fields, p):
    return (_U(fields[p]), _U(fields[p + 1]), _U(fields[p + 2]), _U(fields[p + 3]),
            _U(fields[p + 4]), _U(fields[p + 5]), _U(fields[p + 6]), _U(fields[p + 7]),
            _U(fields[p + 8]))


@kernel(inline=True)
def _rows_times(out, o, left, la, lr, ls, right, rb, rows, red, n, clear):
    # out[o + r*n + j] = (0.0 if clear else itself) + sum over s = 0 .. red-1, in order, of
    # left[la + r*lr + s*ls] * right[rb + s*n + j]: a product's rows, eight columns at a time
    # in registers (the row of ``out`` is read and written once, not once per s: ``out`` and
    # the operands are one array, so LLVM cannot keep it in registers itself).  Each element
    # adds its terms in the order of s, as a scaled-row loop would: bitwise the same.
    eight = _U(8)
    for r in range(rows):
        orow, lrow = o + r * n, la + r * lr
        j0 = _U(0)
        while j0 + eight <= n:
            w = orow + j0
            if clear:
                c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = 0.0
            else:
                c0, c1, c2, c3 = out[w], out[w + _U(1)], out[w + _U(2)], out[w + _U(3)]
                c4, c5, c6, c7 = out[w + _U(4)], out[w + _U(5)], out[w + _U(6)], out[w + _U(7)]
            for s in range(red):
                x = left[lrow + s * ls]
                q = rb + s * n + j0
                c0 += x * right[q]
                c1 += x * right[q + _U(1)]
                c2 += x * right[q + _U(2)]
                c3 += x * right[q + _U(3)]
                c4 += x * right[q + _U(4)]
                c5 += x * right[q + _U(5)]
                c6 += x * right[q + _U(6)]
                c7 += x * right[q + _U(7)]
            out[w], out[w + _U(1)], out[w + _U(2)], out[w + _U(3)] = c0, c1, c2, c3
            out[w + _U(4)], out[w + _U(5)], out[w + _U(6)], out[w + _U(7)] = c4, c5, c6, c7
            j0 += eight
        for j in range(j0, n):
            c = 0.0 if clear else out[orow + j]
            for s in range(red):
                c += left[lrow + s * ls] * right[rb + s * n + j]
            out[orow + j] = c


@kernel(inline=True)
def _matmul_into(fields, p, va, vb, out, clear):
    # out[C] = va[A] @ vb[B] (clear) or += (not clear), over the batch.
    d, nb, m, k, n, a, sa, b, sb = _matmul_fields(fields, p)
    for t in range(nb):
        _rows_times(out, d + t * m * n, va, a + t * sa, k, _U(1), vb, b + t * sb, m, k, n, clear)


@kernel(inline=True)
def matmul_forward(fields, p, vals):
    _matmul_into(fields, p, vals, vals, vals, True)


@kernel(inline=True)
def matmul_reverse_into(fields, p, va, vb, g, out):
    # out[A] += G @ B.T and out[B] += A.T @ G, with A's values read from va, B's from vb and
    # the result's adjoint from g (the reverse sweep: va = vb = vals, g = out = adj; the
    # forward-over-reverse one also with tangents in place of values or adjoints).
    d, nb, m, k, n, a, sa, b, sb = _matmul_fields(fields, p)
    for t in range(nb):
        at, bt, ct = a + t * sa, b + t * sb, d + t * m * n
        # dA[i, q] += sum_j dC[i, j] * B[q, j]: a dot product of two contiguous rows, four
        # values of q at a time (each row of dC read once for four rows of B).
        four = _U(4)
        for i in range(m if fields[p + 9] else _U(0)):
            q = _U(0)
            while q + four <= k:
                r0, r1, r2, r3 = _four_sums_of_products(g, ct + i * n, vb, bt + q * n, n)
                o = at + i * k + q
                out[o] += r0
                out[o + _U(1)] += r1
                out[o + _U(2)] += r2
                out[o + _U(3)] += r3
                q += four
            for q2 in range(q, k):
                out[at + i * k + q2] += _sum_products(g, ct + i * n, vb, bt + q2 * n, n)
        # dB[q, :] += sum_i A[i, q] * dC[i, :], i in order: the rows of A.T @ dC.
        if fields[p + 10]:
            _rows_times(out, bt, va, at, _U(1), k, g, ct, k, m, n, False)


@kernel(inline=True)
def _lanes(s0, s1, s2, s3, x0, x1, x2, x3, v, j):
    # Four partial sums of a dot product, each advanced by one term (x_l * v[j + l]).
    return (s0 + x0 * v[j], s1 + x1 * v[j + _U(1)], s2 + x2 * v[j + _U(2)],
            s3 + x3 * v[j + _U(3)])


@kernel(inline=True)
def _four_sums_of_products(u, i, v, j, n):
    # _sum_products of the row at i with the four rows at j, j + n, j + 2n, j + 3n: each sum
    # in its own four partial sums, combined and finished exactly as _sum_products does.
    four = _U(4)
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = 0.0
    c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = 0.0
    j1, j2, j3 = j + n, j + n + n, j + n + n + n
    for blk in range(n // four):
        t = blk * four
        x0, x1, x2, x3 = u[i + t], u[i + t + _U(1)], u[i + t + _U(2)], u[i + t + _U(3)]
        a0, a1, a2, a3 = _lanes(a0, a1, a2, a3, x0, x1, x2, x3, v, j + t)
        b0, b1, b2, b3 = _lanes(b0, b1, b2, b3, x0, x1, x2, x3, v, j1 + t)
        c0, c1, c2, c3 = _lanes(c0, c1, c2, c3, x0, x1, x2, x3, v, j2 + t)
        d0, d1, d2, d3 = _lanes(d0, d1, d2, d3, x0, x1, x2, x3, v, j3 + t)
    ra, rb = (a0 + a1) + (a2 + a3), (b0 + b1) + (b2 + b3)
    rc, rd = (c0 + c1) + (c2 + c3), (d0 + d1) + (d2 + d3)
    for t in range(n - n % four, n):
        x = u[i + t]
        ra += x * v[j + t]
        rb += x * v[j1 + t]
        rc += x * v[j2 + t]
        rd += x * v[j3 + t]
    return ra, rb, rc, rd


@kernel(inline=True)
def _sum_products(u, i, v, j, n):
    # sum_t u[i + t] * v[j + t] in four partial sums (as _sum_row), for dA's dot products.
    s0 = s1 = s2 = s3 = 0.0
    four = _U(4)
    for b in range(n // four):
        t = b * four
        s0 += u[i + t] * v[j + t]
        s1 += u[i + t + _U(1)] * v[j + t + _U(1)]
        s2 += u[i + t + _U(2)] * v[j + t + _U(2)]
        s3 += u[i + t + _U(3)] * v[j + t + _U(3)]
    s = (s0 + s1) + (s2 + s3)
    for t in range(n - n % four, n):
        s += u[i + t] * v[j + t]
    return s


# ------------------------------------------------------------------------------ elementwise


@kernel(inline=True)
def _at(fields, q, j, t):
    # Offset j of the member record at q (fields q+j and its tile stride q+j+1... see the
    # record layout), moved to the tile starting at element t.
    return _U(fields[q + j]) + t * _U(fields[q + j + _U(2)])


@kernel(inline=True)
def _member_args(fields, q, t):
    # (d, a0, s0, a1, s1, a2, s2) of the member record at q, for the tile starting at t.
    return (_U(fields[q + _U(1)]) + t * _U(fields[q + _U(2)]),
            _at(fields, q, _U(3), t), _U(fields[q + _U(4)]),
            _at(fields, q, _U(6), t), _U(fields[q + _U(7)]),
            _at(fields, q, _U(9), t), _U(fields[q + _U(10)]))


@kernel(inline=True)
def _member_targets(fields, q, t):
    # (b0, u0, b1, u1): where the member's two differentiable arguments' adjoints go.
    return (_at(fields, q, _U(12), t), _U(fields[q + _U(13)]),
            _at(fields, q, _U(15), t), _U(fields[q + _U(16)]))


@kernel(inline=True)
def _member_value(fields, q, vals, t, m):
    d, a0, s0, a1, s1, a2, s2 = _member_args(fields, q, t)
    elementwise_value(fields[q], vals, d, m, a0, s0, a1, s1, a2, s2)


@kernel(inline=True)
def _member_adjoint(fields, q, vals, adj, t, m):
    d, a0, s0, a1, s1, a2, s2 = _member_args(fields, q, t)
    b0, u0, b1, u1 = _member_targets(fields, q, t)
    elementwise_adjoint(fields[q], vals, adj, d, m, a0, s0, a1, s1, a2, s2, b0, u0, b1, u1)


@kernel(inline=True)
def _member_tangent(fields, q, vals, tan, t, m):
    d, a0, s0, a1, s1, a2, s2 = _member_args(fields, q, t)
    elementwise_tangent(fields[q], vals, tan, d, m, a0, s0, a1, s1, a2, s2)


@kernel(inline=True)
def _member_adjoint_tangent(fields, q, vals, tan, adj, adt, t, m):
    d, a0, s0, a1, s1, a2, s2 = _member_args(fields, q, t)
    b0, u0, b1, u1 = _member_targets(fields, q, t)
    elementwise_adjoint_tangent(fields[q], vals, tan, adj, adt, d, m, a0, s0, a1, s1, a2, s2,
                                b0, u0, b1, u1)


# ------------------------------------------------------------------------------ tangents
# Forward-mode derivatives (jvp): each kind's tangent rule, next to its values.


@kernel(inline=True)
def gather_tangent(fields, p, vals, tan):
    d, npos, inner = fields[p], fields[p + 1], fields[p + 2]
    for pos in range(npos):
        base = _gather_base(fields, p, vals, pos)  # the indices are values, not tangents
        out = d + pos * inner
        for t in range(inner):
            tan[out + t] = tan[base + t] if base >= 0 else np.nan


@kernel(inline=True)
def reduce_tangent(op, fields, p, vals, tan):
    d, outer, r, inner, src = fields[p], fields[p + 1], fields[p + 2], fields[p + 3], fields[p + 4]
    for o in range(outer):
        for j in range(inner):
            at = src + o * r * inner + j
            out = d + o * inner + j
            f = vals[out]
            s = 0.0
            if op == SUM:
                for t in range(r):
                    s += tan[at + t * inner]
            elif op == PROD:
                exact = SMALLEST_NORMAL <= abs(f) < math.inf  # as in reduce_reverse
                for t in range(r):
                    dt = tan[at + t * inner]
                    if dt != 0.0:
                        s += dt * (f / vals[at + t * inner] if exact
                                   else _prod_others(vals, at, r, inner, t))
            else:  # the first element equal to the result, as in reduce_reverse
                for t in range(r):
                    v = vals[at + t * inner]
                    if v == f or (f != f and v != v):
                        s = tan[at + t * inner]
                        break
            tan[out] = s


@kernel(inline=True)
def matmul_tangent(fields, p, vals, tan):
    # dC = dA @ B + A @ dB.
    _matmul_into(fields, p, tan, vals, tan, True)
    _matmul_into(fields, p, vals, tan, tan, False)


@kernel(inline=True)
def prod_reverse_tangent(fields, p, vals, tan, adj, adt):
    # adj_t += g P_t and adt_t += gd P_t + g dP_t, P_t the product of the others and dP_t
    # its tangent, sum over s != t of tan_s times the product of the rest (direct loops:
    # a product reduction is short).
    d, outer, r, inner, src = fields[p], fields[p + 1], fields[p + 2], fields[p + 3], fields[p + 4]
    for o in range(outer):
        for j in range(inner):
            at = src + o * r * inner + j
            g, gd = adj[d + o * inner + j], adt[d + o * inner + j]
            if g == 0.0 and gd == 0.0:
                continue
            for t in range(r):
                others = _prod_others(vals, at, r, inner, t)
                dp = 0.0
                for s2 in range(r):
                    ts = tan[at + s2 * inner]
                    if s2 != t and ts != 0.0:
                        rest = 1.0
                        for u in range(r):
                            if u != t and u != s2:
                                rest *= vals[at + u * inner]
                        dp += ts * rest
                adj[at + t * inner] += g * others
                adt[at + t * inner] += gd * others + g * dp


# ------------------------------------------------------------------------------ sweeps
# One kernel for the four sweeps, specialized by which arrays are left out: Numba drops a
# branch on an omitted argument (``adj is None``) before typing, so the forward, tangent
# and reverse specializations hold only their own rules.  A present array is no constant
# to that pruning, so the forward-over-reverse one (every array present) also types the
# plain reverse's branches, which LLVM then drops: their helpers are compiled if no other
# sweep compiled them before.  The drivers call the kernel (not inline): each big dispatch
# is compiled once, not once per driver.  The elementwise group loop stays in the kernel,
# over the member helpers above: every inline level over the op dispatch is one more LLVM
# optimization of every op's loops in a cold compile (a group helper in between measured
# +11% on a first value_and_grad).  Callers leave absent arrays out (``adj=adj``, never
# ``tan=None``): an omitted and a None argument are two types, two compiles.


@kernel
def sweep(kinds, ops, at, fields, lo, hi, vals, tan=None, adj=None, adt=None):
    """Instructions ``lo .. hi - 1``.  Without ``adj``, forward: their values into ``vals``
    and, with ``tan`` (set at the inputs), their tangents.  With ``adj``, reverse, ``hi - 1``
    down to ``lo``: their adjoints into ``adj`` (seeded at the outputs) and, with ``tan`` and
    ``adt``, the adjoints' tangents into ``adt`` (forward-over-reverse, ``vals`` and ``tan``
    from the forward sweep)."""
    for j in range(lo, hi):
        i = j if adj is None else lo + hi - 1 - j
        kind, op, p = kinds[i], ops[i], at[i]
        if kind == ELEMENTWISE:
            # Tile by tile.  Forward: every member's values (and tangents).  Reverse: the
            # intermediates' values (and tangents) again and their adjoints (and adt)
            # cleared, then, last member first, every member's adjoints (and their tangents).
            n, tile, count = _U(fields[p]), _U(fields[p + 1]), fields[p + 2]
            for t in range(_U(0), n, tile):
                m = min(tile, n - t)
                for k in range(count):
                    q = _U(p + 3 + k * MEMBER_FIELDS)
                    if adj is None or fields[q + _U(18)]:
                        _member_value(fields, q, vals, t, m)
                        if tan is not None:
                            _member_tangent(fields, q, vals, tan, t, m)
                        if adj is not None:  # the scratch tile's adjoints start from 0
                            dd = _U(fields[q + _U(1)])
                            for e in range(m):
                                adj[dd + e] = 0.0
                                if adt is not None:
                                    adt[dd + e] = 0.0
                if adj is None:
                    continue
                for k in range(count - 1, -1, -1):
                    q = _U(p + 3 + k * MEMBER_FIELDS)
                    if adt is None:
                        _member_adjoint(fields, q, vals, adj, t, m)
                    else:
                        _member_adjoint_tangent(fields, q, vals, tan, adj, adt, t, m)
        elif kind == COPY or kind == TAKE:
            move_sweep(kind, fields, p, vals, tan, adj, adt)
        elif adj is None:
            if kind == REDUCE:
                reduce_forward(op, fields, p, vals)
                if tan is not None:
                    reduce_tangent(op, fields, p, vals, tan)
            elif kind == GATHER:
                gather_forward(fields, p, vals)
                if tan is not None:
                    gather_tangent(fields, p, vals, tan)
            else:
                matmul_forward(fields, p, vals)
                if tan is not None:
                    matmul_tangent(fields, p, vals, tan)
        elif kind == REDUCE:
            if adt is None:
                reduce_reverse(op, fields, p, vals, adj)
            elif op == PROD:
                prod_reverse_tangent(fields, p, vals, tan, adj, adt)
            else:  # linear, or a selection that depends on the values only
                reduce_reverse(op, fields, p, vals, adt)
                reduce_reverse(op, fields, p, vals, adj)
        elif kind == GATHER:
            gather_reverse(fields, p, vals, adj)
            if adt is not None:
                gather_reverse(fields, p, vals, adt)
        else:
            if adt is not None:
                # adt: dG B.T + G dB.T into dA, A.T dG + dA.T G into dB.
                matmul_reverse_into(fields, p, vals, vals, adt, adt)
                matmul_reverse_into(fields, p, tan, tan, adj, adt)
            matmul_reverse_into(fields, p, vals, vals, adj, adj)


@kernel
def forward(kinds, ops, at, fields, vals):
    """Every instruction's values into ``vals`` (inputs, parameters and constants set)."""
    sweep(kinds, ops, at, fields, 0, kinds.shape[0], vals)


@kernel
def reverse(kinds, ops, at, fields, vals, adj):
    """Reverse sweep: ``adj`` seeded at the outputs on entry, every slot's adjoint on exit."""
    sweep(kinds, ops, at, fields, 0, kinds.shape[0], vals, adj=adj)


@kernel
def value_and_grad(kinds, ops, at, fields, vals, adj, out):
    """Forward sweep, then the adjoints of slot ``out`` (``adj`` is overwritten)."""
    forward(kinds, ops, at, fields, vals)
    adj[:] = 0.0
    adj[out] = 1.0
    reverse(kinds, ops, at, fields, vals, adj)


@kernel
def vjp(kinds, ops, at, fields, vals, adj, out, cot):
    """Forward sweep, then the adjoints for the cotangent ``cot`` on ``vals[out:out+len(cot)]``."""
    forward(kinds, ops, at, fields, vals)
    adj[:] = 0.0
    for i in range(cot.shape[0]):
        adj[out + i] = cot[i]
    reverse(kinds, ops, at, fields, vals, adj)
