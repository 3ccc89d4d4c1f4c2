"""Fusion: an instruction pair whose inner result has no other use becomes one instruction.

An interpreter pays a fixed cost per instruction in each sweep (decode the op, dispatch, load
and clear the adjoint, update the arguments' adjoints); CasADi's virtual machine and ours
alike.  Two pairs make up most of the scalar losses people write (the ``mlp`` and
``lennard-jones`` families):

=============================  =========================  =====================================
pair                           becomes                    where it comes from
=============================  =========================  =====================================
``add(mulc(x, c), y)``         ``fmac(x, y, c)``          dot products ``w1 * x1 + w2 * x2 ...``
``add(y, mulc(x, c))``         ``fmac(x, y, c)``          (``add`` is commutative bitwise)
``square(sub(x, y))``          ``sqdiff(x, y)``           squared distances and residuals
=============================  =========================  =====================================

Each fused op computes exactly what the pair did, with the same two roundings (``x * c + y``
is not contracted into an fma: kernels never use fastmath), so **values are bitwise
unchanged**.  The partials are the pair's chain rule evaluated the same way (``fmac``: ``c``
and ``1``; ``sqdiff``: ``2 (x - y)`` and its negation, which is exact), and the inner
instruction's adjoint, which received only this one contribution, was exactly the outer
adjoint times its partial.  So each gradient term is bitwise the same; what changes is the
order in which an argument's adjoint sums its terms (the fused instruction adds its term at
the outer instruction's position in the reverse sweep), so **gradients agree to rounding**,
as after ``cse`` or ``interleave``.

The inner instruction must have exactly one use (its outer instruction) and not be an output;
otherwise it is still needed and nothing is fused.  The pass runs once, after ``fold``,
``simplify`` and ``cse`` have reached their fixed point (whose ``mulc`` rewrite it needs), and
is idempotent: it never makes a new candidate.  The absorbed instructions become dead and are
dropped by the final ``dce``.
"""

from __future__ import annotations

import numpy as np

from fasttape.kernels.jit import kernel
from fasttape.ops import N_OPS, OP_BY_NAME
from fasttape.passes.dce import GRAPH_ARITY, resolve
from fasttape.passes.ir import IR

__all__ = ["fuse"]

_CODES = np.array([OP_BY_NAME[n].code for n in ("add", "mulc", "square", "sub", "fmac",
                                                  "sqdiff")], dtype=np.int64)


@kernel
def fuse_sweep(ops, a, rep, outputs, arity, n_real_ops, codes):  # pragma: no cover (jitted)
    """Fuse every eligible pair in place; return the number fused.

    ``a`` must be resolved through ``rep`` (:func:`fasttape.passes.dce.resolve`) and
    ``outputs`` mapped through it.  Uses are counted over every surviving instruction (a dead
    user makes the count conservative, never wrong) plus the outputs.
    """
    ADD, MULC, SQUARE, SUB, FMAC, SQDIFF = (codes[0], codes[1], codes[2], codes[3], codes[4],
                                            codes[5])
    n = ops.shape[0]
    uses = np.zeros(n, dtype=np.int64)
    for i in range(n):
        op = ops[i]
        if rep[i] == i and op < n_real_ops:
            for j in range(arity[op]):
                uses[a[i, j]] += 1
    for j in range(outputs.shape[0]):
        uses[outputs[j]] += 1
    fused = 0
    for i in range(n):
        if rep[i] != i:
            continue
        op = ops[i]
        if op == ADD:
            x = a[i, 0]
            y = a[i, 1]
            m = -1
            other = -1
            if ops[x] == MULC and uses[x] == 1:
                m, other = x, y
            elif ops[y] == MULC and uses[y] == 1:
                m, other = y, x
            if m >= 0:
                ops[i] = FMAC
                a[i, 0] = a[m, 0]
                a[i, 1] = other
                a[i, 2] = a[m, 1]
                uses[m] = 0
                fused += 1
        elif op == SQUARE:
            x = a[i, 0]
            if ops[x] == SUB and uses[x] == 1:
                ops[i] = SQDIFF
                a[i, 0] = a[x, 0]
                a[i, 1] = a[x, 1]
                uses[x] = 0
                fused += 1
    return fused


def fuse(ir: IR) -> int:
    """Fuse the eligible pairs of ``ir`` in place; return how many instructions were absorbed."""
    resolve(ir.ops, ir.a, ir.rep, GRAPH_ARITY, N_OPS)
    outputs = ir.rep[ir.outputs]
    return int(fuse_sweep(ir.ops, ir.a, ir.rep, outputs, GRAPH_ARITY, N_OPS, _CODES))
