"""Numba kernels: the sweeps over a tape's arrays, and the structural helpers.

Every kernel takes the tape's arrays as arguments (never as globals), is compiled by the one
JIT wrapper (:mod:`fasttape.kernels.jit`) and runs without bounds checks: callers validate
first.  See
docs/tape-format.md for the array layout; the ``*_kernel`` drivers can be called from your own
``@numba.njit`` code with a tape's arrays (the stable embedding API; buffer contract in
docs/embedding.md, checked wrappers from ``tape.numba_kernel()``).
"""

from __future__ import annotations

import numpy as np

from fasttape.kernels.sweep import (
    forward_partials,
    forward_values,
    reverse_lean,
    reverse_stored,
    value_and_grad_kernel,
    value_and_grad_lean_kernel,
    value_kernel,
)

__all__ = [
    "forward_values",
    "forward_partials",
    "reverse_stored",
    "reverse_lean",
    "value_kernel",
    "value_and_grad_kernel",
    "value_and_grad_lean_kernel",
    "eval_op",
]


def eval_op(code: int, args: tuple[float, ...]) -> float:
    """Evaluate one op on numbers with exactly the kernels' semantics.

    Runs :func:`forward_values` on a one-instruction tape whose arguments are constants, so
    the result is bitwise what a compiled tape computes (used for constant arguments in the
    frontend, and by constant folding).
    """
    n = len(args)
    vals = np.empty(n + 1)
    forward_values(
        np.array([code], dtype=np.uint8),
        np.arange(n, dtype=np.int32),
        np.array(args, dtype=np.float64),
        np.empty(0),
        vals,
    )
    return float(vals[n])
