"""Sweeps of a tensor tape: instructions over slot ranges, forward and reverse.

A tensor tape (docs/tape-format.md, "Tensor tapes") is four arrays: instruction ``i`` has kind
``kinds[i]``, op ``ops[i]`` and its integer fields at ``fields[at[i]:]``.  Every value lives in
one flat ``vals`` vector; a tensor is a range of it, in C order.  Each kind is one loop nest
here, with its reverse rule next to it:

``ELEMENTWISE``  ``[d, n, a0, s0, a1, s1, a2, s2]``
    ``vals[d + i] = op(vals[a0 + i*s0], ...)`` for ``i < n``; a stride ``sj`` is 1 (an array of
    the result's size) or 0 (one value, broadcast).  Reverse: partial times adjoint, from the
    op table (:mod:`fasttape.kernels.dispatch`); a broadcast argument sums its adjoints.
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
``MATMUL``  ``[d, nb, m, k, n, a, sa, b, sb]``
    ``nb`` products of an ``(m, k)`` and a ``(k, n)`` block, the ``t``-th at ``a + t*sa`` and
    ``b + t*sb`` (a batch stride 0 broadcasts one matrix over the batch).  Reverse:
    ``dA += dC @ B.T`` and ``dB += A.T @ dC``.

No bounds checks: the tape was validated (fasttape/tensor/tape.py) before any call.
"""

from __future__ import annotations

import math

from fasttape.kernels.dispatch import elementwise_adjoint, elementwise_value
from fasttape.kernels.jit import kernel
from fasttape.kernels.scalar import fmax, fmin

__all__ = [
    "COPY",
    "ELEMENTWISE",
    "KIND_NAMES",
    "MATMUL",
    "MAX",
    "MIN",
    "PROD",
    "REDUCE",
    "REDUCE_NAMES",
    "SUM",
    "TAKE",
    "forward",
    "reverse",
    "value_and_grad",
    "vjp",
]

ELEMENTWISE, COPY, TAKE, REDUCE, MATMUL = 0, 1, 2, 3, 4
#: Kind code -> name (the order of the codes above).
KIND_NAMES = ("elementwise", "copy", "take", "reduce", "matmul")
SUM, PROD, MAX, MIN = 0, 1, 2, 3
#: Reduction code -> name.
REDUCE_NAMES = ("sum", "prod", "max", "min")

# Independent accumulators of a sum over a contiguous row: the additions of one row would
# otherwise form one dependency chain (4 cycles each); eight chains run in parallel and the
# loop vectorizes.  The order is fixed, so the result is the same on every machine.
_LANES = 8
# The smallest normal double: below it a product has lost precision (or is 0).
_TINY = 2.2250738585072014e-308


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
def copy_forward(fields, p, vals):
    d, n, nd = fields[p], fields[p + 1], fields[p + 3]
    inner, step = fields[p + 3 + nd], fields[p + 3 + 2 * nd]
    if n == 0:
        return
    for row in range(n // inner):
        src = _row_offset(fields, p, nd, row)
        out = d + row * inner
        for t in range(inner):
            vals[out + t] = vals[src + t * step]


@kernel(inline=True)
def copy_reverse(fields, p, adj):
    d, n, nd = fields[p], fields[p + 1], fields[p + 3]
    inner, step = fields[p + 3 + nd], fields[p + 3 + 2 * nd]
    if n == 0:
        return
    for row in range(n // inner):
        src = _row_offset(fields, p, nd, row)
        out = d + row * inner
        for t in range(inner):
            adj[src + t * step] += adj[out + t]


# ------------------------------------------------------------------------------ take


@kernel(inline=True)
def take_forward(fields, p, vals):
    d, n, src = fields[p], fields[p + 1], fields[p + 2]
    for i in range(n):
        vals[d + i] = vals[src + fields[p + 3 + i]]


@kernel(inline=True)
def take_reverse(fields, p, adj):
    d, n, src = fields[p], fields[p + 1], fields[p + 2]
    for i in range(n):
        adj[src + fields[p + 3 + i]] += adj[d + i]


# ------------------------------------------------------------------------------ reduce


@kernel(inline=True)
def _sum_row(vals, src, r):
    # Sum of vals[src : src + r] in _LANES interleaved partial sums, then in order.
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    full = r - r % _LANES
    for t in range(0, full, _LANES):
        a0 += vals[src + t]
        a1 += vals[src + t + 1]
        a2 += vals[src + t + 2]
        a3 += vals[src + t + 3]
        a4 += vals[src + t + 4]
        a5 += vals[src + t + 5]
        a6 += vals[src + t + 6]
        a7 += vals[src + t + 7]
    s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
    for t in range(full, r):
        s += vals[src + t]
    return s


@kernel(inline=True)
def reduce_forward(op, fields, p, vals):
    d, outer, r, inner, src = fields[p], fields[p + 1], fields[p + 2], fields[p + 3], fields[p + 4]
    if op == SUM and inner == 1:
        for o in range(outer):
            vals[d + o] = _sum_row(vals, src + o * r, r)
        return
    for o in range(outer):
        out = d + o * inner
        block = src + o * r * inner
        for j in range(inner):
            vals[out + j] = 1.0 if op == PROD else (0.0 if op == SUM else vals[block + j])
        for t in range(1 if op >= MAX else 0, r):
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
    for o in range(outer):
        for j in range(inner):
            g = adj[d + o * inner + j]
            at = src + o * r * inner + j
            if op == SUM:
                for t in range(r):
                    adj[at + t * inner] += g
            elif op == PROD:
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
                    if _TINY <= abs(f) < math.inf:
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
def matmul_forward(fields, p, vals):
    d, nb, m, k, n = fields[p], fields[p + 1], fields[p + 2], fields[p + 3], fields[p + 4]
    a, sa, b, sb = fields[p + 5], fields[p + 6], fields[p + 7], fields[p + 8]
    for t in range(nb):
        at, bt, ct = a + t * sa, b + t * sb, d + t * m * n
        for i in range(m):
            row = ct + i * n
            for j in range(n):
                vals[row + j] = 0.0
            for q in range(k):
                x = vals[at + i * k + q]
                brow = bt + q * n
                for j in range(n):
                    vals[row + j] += x * vals[brow + j]


@kernel(inline=True)
def matmul_reverse(fields, p, vals, adj):
    d, nb, m, k, n = fields[p], fields[p + 1], fields[p + 2], fields[p + 3], fields[p + 4]
    a, sa, b, sb = fields[p + 5], fields[p + 6], fields[p + 7], fields[p + 8]
    for t in range(nb):
        at, bt, ct = a + t * sa, b + t * sb, d + t * m * n
        # dA[i, q] += sum_j dC[i, j] * B[q, j]: a dot product of two contiguous rows.
        for i in range(m):
            for q in range(k):
                adj[at + i * k + q] += _sum_products(adj, ct + i * n, vals, bt + q * n, n)
        # dB[q, :] += A[i, q] * dC[i, :]: a scaled row added to a row (vectorizes).
        for i in range(m):
            crow = ct + i * n
            for q in range(k):
                x = vals[at + i * k + q]
                brow = bt + q * n
                for j in range(n):
                    adj[brow + j] += x * adj[crow + j]


@kernel(inline=True)
def _sum_products(u, i, v, j, n):
    # sum_t u[i + t] * v[j + t] in four partial sums (as _sum_row), for dA's dot products.
    s0 = s1 = s2 = s3 = 0.0
    full = n - n % 4
    for t in range(0, full, 4):
        s0 += u[i + t] * v[j + t]
        s1 += u[i + t + 1] * v[j + t + 1]
        s2 += u[i + t + 2] * v[j + t + 2]
        s3 += u[i + t + 3] * v[j + t + 3]
    s = (s0 + s1) + (s2 + s3)
    for t in range(full, n):
        s += u[i + t] * v[j + t]
    return s


# ------------------------------------------------------------------------------ sweeps
# forward and reverse are separate kernels that the drivers call (not inline): each of the
# two big dispatches is compiled once, not once per driver.


@kernel
def forward(kinds, ops, at, fields, vals):
    """Every instruction's values into ``vals`` (inputs, parameters and constants set)."""
    for i in range(kinds.shape[0]):
        kind, op, p = kinds[i], ops[i], at[i]
        if kind == ELEMENTWISE:
            elementwise_value(op, vals, fields[p], fields[p + 1], fields[p + 2], fields[p + 3],
                              fields[p + 4], fields[p + 5], fields[p + 6], fields[p + 7])
        elif kind == COPY:
            copy_forward(fields, p, vals)
        elif kind == TAKE:
            take_forward(fields, p, vals)
        elif kind == REDUCE:
            reduce_forward(op, fields, p, vals)
        else:
            matmul_forward(fields, p, vals)


@kernel
def reverse(kinds, ops, at, fields, vals, adj):
    """Reverse sweep: ``adj`` seeded at the outputs on entry, every slot's adjoint on exit."""
    for i in range(kinds.shape[0] - 1, -1, -1):
        kind, op, p = kinds[i], ops[i], at[i]
        if kind == ELEMENTWISE:
            elementwise_adjoint(op, vals, adj, fields[p], fields[p + 1], fields[p + 2],
                                fields[p + 3], fields[p + 4], fields[p + 5], fields[p + 6],
                                fields[p + 7])
        elif kind == COPY:
            copy_reverse(fields, p, adj)
        elif kind == TAKE:
            take_reverse(fields, p, adj)
        elif kind == REDUCE:
            reduce_reverse(op, fields, p, vals, adj)
        else:
            matmul_reverse(fields, p, vals, adj)


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
