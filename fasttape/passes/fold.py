"""Constant folding: evaluate at compile time every instruction whose arguments are constants.

Exactness comes from running the kernels themselves: the instructions to fold (found in one
linear sweep, :func:`foldable`) form a sub-tape whose only inputs are constants, and
:func:`fasttape.kernels.forward_values` evaluates that sub-tape once.  A folded graph therefore
gives bitwise the values an unfolded tape computes, NaN and inf included, for every op of the
table, with no formula written here.  Folding whole runs at once (``exp(log(2.0) * 3.0)``)
costs one sweep, not a Python call per node.

Gradients are unchanged too: an instruction with only constant arguments has zero derivative
with respect to every input.
"""

from __future__ import annotations

import numpy as np

from fasttape import kernels
from fasttape.kernels.jit import kernel
from fasttape.ops import CONST_CODE, N_OPS
from fasttape.passes.dce import GRAPH_ARITY
from fasttape.passes.ir import IR
from fasttape.passes.rep import surviving_instruction

__all__ = ["fold_constants", "foldable"]


@kernel
def foldable(ops, a, rep, arity, n_real_ops, const_code, mask):  # pragma: no cover (jitted)
    """Mark in ``mask`` every surviving instruction whose arguments are all constant.

    "Constant" means a constant node or an instruction already marked, so one forward sweep
    finds whole constant sub-graphs.  Resolves arguments through ``rep`` on the way (see
    :mod:`fasttape.passes.ir`).  Returns the number of marked instructions.
    """
    count = 0
    for i in range(ops.shape[0]):
        if not surviving_instruction(ops, rep, i, n_real_ops):
            continue
        op = ops[i]
        all_const = True
        for j in range(arity[op]):
            t = rep[a[i, j]]
            a[i, j] = t
            if not (ops[t] == const_code or mask[t]):
                all_const = False
        if all_const:
            mask[i] = True
            count += 1
    return count


def fold_constants(ir: IR) -> int:
    """Fold every constant instruction of ``ir`` in place; return how many were folded.

    Folded instructions become constant nodes holding the value the kernels compute (new
    entries appended to ``ir.consts``; equal constants are merged later by CSE).
    """
    mask = np.zeros(len(ir.ops), dtype=np.bool_)
    n = foldable(ir.ops, ir.a, ir.rep, GRAPH_ARITY, N_OPS, CONST_CODE, mask)
    if n == 0:
        return 0
    idx = np.flatnonzero(mask)
    n_c = len(ir.consts)
    # Sub-tape: every constant of the IR is a constant slot (slot = its index in consts), the
    # folded instructions follow in order (slot n_c + rank).
    sub_slot = np.full(len(ir.ops), -1, dtype=np.int64)
    is_const = ir.ops == CONST_CODE
    sub_slot[is_const] = ir.a[is_const, 0]
    sub_slot[idx] = n_c + np.arange(n)
    sub_ops = ir.ops[idx]
    rows = ir.a[idx]
    used = np.arange(3)[None, :] < GRAPH_ARITY[sub_ops][:, None]
    sub_args = sub_slot[rows[used]]
    vals = np.empty(n_c + n)
    kernels.forward_values(sub_ops, sub_args, ir.consts, np.empty(0), vals)
    ir.consts = np.concatenate([ir.consts, vals[n_c:]])
    ir.ops[idx] = CONST_CODE
    ir.a[idx, 0] = n_c + np.arange(n)
    ir.a[idx, 1:] = -1
    return n
