"""Common subexpression elimination: identical (op, arguments, constant) become one node.

One forward sweep with an open-addressing hash table held in a NumPy array (linear probing,
at most half full), so a graph of N nodes costs O(N) expected time and ``4 * 2N`` bytes of
table.  Nodes are visited in topological order with their arguments already mapped to the
surviving copies, so one sweep merges whole repeated sub-graphs: ``sin(x*y) + sin(x*y)`` and
``sin(y*x) + sin(x*y)`` both become one ``mul``, one ``sin``.

Keys:

- an instruction: its op code and argument nodes; for an op flagged ``commutative`` in the
  op table the two arguments are sorted, so ``a*b`` and ``b*a`` merge (the table promises
  ``op(x, y) == op(y, x)`` bitwise, and tests/test_ops.py checks it on signed zeros and
  infinities; ``minimum``/``maximum`` are not flagged: they return the first argument on a tie);
- a constant: the bits of its value (so ``0.0`` and ``-0.0`` stay distinct and equal NaNs
  merge);
- inputs are never merged.

Values are unchanged bitwise (the merged node computes what each copy computed).  Gradients
are equal up to rounding: the adjoints of the copies are now summed before being propagated,
which reorders a floating-point sum.
"""

from __future__ import annotations

import numpy as np

from fasttape.kernels.jit import kernel
from fasttape.ops import CONST_CODE, INPUT_CODE, N_OPS, OPS
from fasttape.passes.dce import GRAPH_ARITY
from fasttape.passes.ir import IR
from fasttape.passes.rep import replaced, resolve_args

__all__ = ["eliminate_common_subexpressions"]

_COMMUTATIVE = np.zeros(256, dtype=np.bool_)
_COMMUTATIVE[:N_OPS] = [
    op.commutative and op.arity == 2 for op in OPS
]

_M1 = 0x100000001B3  # FNV prime: per-field combine (int64 arithmetic wraps in Numba)
_M2 = 0x2545F4914F6CDD1D  # xorshift* finaliser multiplier


@kernel
def cse_sweep(ops, a, rep, cbits, arity, commutative, n_real_ops, const_code, input_code,
              table):  # pragma: no cover (jitted)
    """Merge identical nodes into their first occurrence (``rep``).

    Returns ``(instructions merged, constants merged)``.

    ``table`` is an int32/int64 array of ``-1`` whose length is a power of two at least twice
    the number of nodes; ``cbits`` is ``consts.view(int64)``.  (The key is computed inline
    twice rather than by a helper: a helper call per node cost 10x in Numba.)
    """
    mask = table.shape[0] - 1
    merged = 0
    merged_c = 0
    for i in range(ops.shape[0]):
        if replaced(rep, i):
            continue
        op = ops[i]
        if op == input_code:
            continue
        if op == const_code:
            k0 = cbits[a[i, 0]]
            k1 = np.int64(-1)
            k2 = np.int64(-1)
        else:
            resolve_args(a, rep, i, arity[op])
            k0 = a[i, 0]
            k1 = a[i, 1]
            k2 = a[i, 2]
            if commutative[op] and k1 < k0:
                k0, k1 = k1, k0
        h = ((np.int64(op) * _M1 + k0) * _M1 + k1) * _M1 + k2
        h ^= h >> 31
        h *= _M2
        h ^= h >> 29
        s = h & mask
        while True:
            j = table[s]
            if j < 0:
                table[s] = i
                break
            if ops[j] == op:
                if op == const_code:
                    same = cbits[a[j, 0]] == k0
                else:
                    j0 = a[j, 0]
                    j1 = a[j, 1]
                    if commutative[op] and j1 < j0:
                        j0, j1 = j1, j0
                    same = j0 == k0 and j1 == k1 and a[j, 2] == k2
                if same:
                    rep[i] = j
                    if op == const_code:
                        merged_c += 1
                    else:
                        merged += 1
                    break
            s = (s + 1) & mask
    return merged, merged_c


def eliminate_common_subexpressions(ir: IR) -> tuple[int, int]:
    """Run CSE on ``ir`` in place.

    Returns
    -------
    (instructions merged, constants merged)
    """
    n = len(ir.ops)
    cap = 1 << max(4, int(n + n // 2).bit_length())  # load factor <= 2/3
    table = np.full(cap, -1, dtype=np.int32 if n < 2**31 else np.int64)
    merged, merged_c = cse_sweep(ir.ops, ir.a, ir.rep, ir.consts.view(np.int64), GRAPH_ARITY,
                                 _COMMUTATIVE, N_OPS, CONST_CODE, INPUT_CODE, table)
    return int(merged), int(merged_c)
