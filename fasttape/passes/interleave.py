"""Interleaving: reorder instructions so that consecutive ones are independent.

A traced function comes out in the order Python evaluated it, one expression after another:
each instruction usually reads the value the one just before it wrote.  The sweeps then run at
the latency of that chain -- store, load the value back, compute -- in the forward sweep, and
at the latency of the adjoint read-modify-writes in the reverse sweep, while the CPU could
overlap independent instructions.  This pass cuts the instruction list into windows of
:data:`WINDOW` instructions and orders each window by *depth* (one more than the deepest
argument; inputs and constants are depth 0), keeping the old order among equal depths.
Instructions of equal depth never depend on each other, so a window's instructions become
runs of independent work: value+gradient at 1e6 instructions was 1.06-1.24x faster on mlp,
0.97-1.07x on lennard-jones and 1.04-1.08x on rosenbrock in two runs of
``benchmarks/bench_ab_passes.py --without interleave`` (docs/passes.md); a chain (one
instruction per depth) keeps its order.

Windows keep the order valid: an argument is either in an earlier window or in the same
window at a smaller depth.  Instructions never leave their window, so memory access stays as
local as before, the slot-reuse plan sees live ranges at most a window longer, and a second
run changes nothing (the pass is idempotent).  Values are bitwise unchanged (each instruction
computes the same thing); gradients are equal up to rounding (adjoint sums are accumulated in
another order), like the other reordering passes.
"""

from __future__ import annotations

import numpy as np

from fasttape.kernels.jit import kernel
from fasttape.ops import OPS
from fasttape.passes.locality import reorder

__all__ = ["WINDOW", "depths", "interleave_order"]

#: Instructions per window.  Measured on the mlp family at 2e5 instructions (value+gradient,
#: ns per instruction): 9.9 unordered, 9.0 at 256, 8.35 at 1024, 8.3 at 4096.
WINDOW = 4096

_ARITY = np.array([op.arity for op in OPS], dtype=np.int64)


@kernel
def depths(ops, args, n_pre, arity):  # pragma: no cover (jitted)
    """Depth of every instruction: 1 + the deepest instruction argument (0 if none)."""
    n = ops.shape[0]
    d = np.zeros(n, dtype=np.int64)
    k = 0
    for i in range(n):
        m = 0
        for j in range(arity[ops[i]]):
            a = args[k + j] - n_pre
            if a >= 0 and d[a] + 1 > m:
                m = d[a] + 1
        d[i] = m
        k += arity[ops[i]]
    return d


def interleave_order(ops: np.ndarray, args: np.ndarray, outputs: np.ndarray, n_pre: int,
                     window: int = WINDOW) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tape arrays reordered by depth within windows (see the module docstring)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = ops.shape[0]
    idx = np.arange(n)
    d = depths(ops, args, n_pre, _ARITY)
    # One stable sort on (window, depth): equal depths keep their order within a window.
    order = np.argsort((idx // window) * (int(d.max(initial=0)) + 1) + d, kind="stable")
    if np.array_equal(order, idx):
        return ops, args, np.asarray(outputs)
    return reorder(ops, args, np.asarray(outputs), n_pre, order)
