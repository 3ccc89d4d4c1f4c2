"""Locality ordering: reorder instructions (keeping a topological order) so that each
instruction sits close to its arguments.

The new order is the depth-first post-order from the outputs: an instruction is emitted as
soon as all of its arguments are, right after the last of them, so most instructions read a
value computed just before (on the random-uniform family the median distance between an
instruction and its arguments drops from 32 slots to 1 and the geometric mean several-fold).
The edges to far-away values, which no order can shorten in a random graph, get somewhat
longer, so the arithmetic mean distance does not improve; whether the sweeps get faster is
measured in benchmarks/bench_passes.py.

The depth-first search uses an explicit stack (no recursion) and visits each edge once.
Values are bitwise unchanged (each instruction computes the same thing); gradients are equal
up to rounding (adjoint sums are accumulated in another order).  Off by default.
"""

from __future__ import annotations

import numpy as np

from fasttape.kernels.jit import kernel
from fasttape.ops import OPS

__all__ = ["locality_order", "reorder", "distances", "typical_distance"]

_ARITY = np.array([op.arity for op in OPS], dtype=np.int64)


@kernel
def dfs_postorder(ops, args, outputs, n_pre, arity):  # pragma: no cover (jitted)
    """Instruction indices in depth-first post-order from the outputs (then the rest)."""
    n = ops.shape[0]
    start = np.empty(n, dtype=np.int64)
    k = 0
    for i in range(n):
        start[i] = k
        k += arity[ops[i]]
    done = np.zeros(n, dtype=np.bool_)
    order = np.empty(n, dtype=np.int64)
    stack = np.empty(n, dtype=np.int64)
    pos = np.empty(n, dtype=np.int64)  # next argument to visit, per stacked node
    m = 0
    for r in range(outputs.shape[0] + n):
        root = outputs[r] - n_pre if r < outputs.shape[0] else r - outputs.shape[0]
        if root < 0 or done[root]:
            continue
        top = 0
        stack[0] = root
        pos[0] = 0
        done[root] = True  # "on the stack or emitted": each node is pushed once
        while top >= 0:
            t = stack[top]
            p = pos[top]
            if p < arity[ops[t]]:
                pos[top] = p + 1
                c = args[start[t] + p] - n_pre
                if c >= 0 and not done[c]:
                    done[c] = True
                    top += 1
                    stack[top] = c
                    pos[top] = 0
            else:
                order[m] = t
                m += 1
                top -= 1
    return order


@kernel
def _permute(ops, args, outputs, n_pre, order, arity, new_ops, new_args,
             new_outputs):  # pragma: no cover (jitted)
    n = ops.shape[0]
    slot = np.empty(n_pre + n, dtype=np.int64)  # old slot -> new slot
    for s in range(n_pre):
        slot[s] = s
    for j in range(n):
        slot[n_pre + order[j]] = n_pre + j
    start = np.empty(n, dtype=np.int64)
    k = 0
    for i in range(n):
        start[i] = k
        k += arity[ops[i]]
    k = 0
    for j in range(n):
        i = order[j]
        new_ops[j] = ops[i]
        for a in range(arity[ops[i]]):
            new_args[k] = slot[args[start[i] + a]]
            k += 1
    for j in range(outputs.shape[0]):
        new_outputs[j] = slot[outputs[j]]


def reorder(ops: np.ndarray, args: np.ndarray, outputs: np.ndarray, n_pre: int,
            order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tape arrays with instructions permuted by ``order`` (a topological order).

    One Numba pass (a NumPy gather of the argument blocks cost 150 ms per million
    instructions, more than all the other passes together).
    """
    new_ops = np.empty_like(ops)
    new_args = np.empty_like(args)
    outputs = np.asarray(outputs)
    new_outputs = np.empty(outputs.shape[0], dtype=np.int64)
    _permute(ops, args, outputs.astype(np.int64), n_pre, np.asarray(order, dtype=np.int64),
             _ARITY, new_ops, new_args, new_outputs)
    return new_ops, new_args, new_outputs.astype(outputs.dtype)


def locality_order(ops: np.ndarray, args: np.ndarray, outputs: np.ndarray,
                   n_pre: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorder a tape's instructions into depth-first post-order (see the module docstring)."""
    order = dfs_postorder(ops, args, np.asarray(outputs, np.int64), n_pre, _ARITY)
    return reorder(ops, args, outputs, n_pre, order)


def distances(ops: np.ndarray, args: np.ndarray, n_pre: int) -> np.ndarray:
    """``own slot - argument slot`` for every edge that reads an instruction's value."""
    arity = _ARITY[ops]
    owner = n_pre + np.repeat(np.arange(ops.shape[0]), arity)
    a = np.asarray(args, np.int64)
    sel = a >= n_pre
    return owner[sel] - a[sel]


def typical_distance(ops: np.ndarray, args: np.ndarray, n_pre: int) -> float:
    """Geometric mean of :func:`distances` (1.0 for a tape without such edges).

    The measure the pass improves: on random-uniform graphs it shrinks several-fold while the
    arithmetic mean, dominated by the edges to random far slots, grows (docs/passes.md).
    """
    d = distances(ops, args, n_pre)
    return float(np.exp(np.mean(np.log(d)))) if d.size else 1.0
