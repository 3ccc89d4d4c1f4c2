"""The benchmarks' hand-written baseline kernel: now :mod:`fasttape.bench.baseline`.

Kept as a thin wrapper with the old signatures (no constants) for ``benchmarks/report.py`` and
``benchmarks/bench_core.py``.  The kernels themselves live in the package so that
``fasttape bench`` can use them after ``pip install``.
"""

import numpy as np

from fasttape.bench.baseline import (  # noqa: F401 (re-exported)
    BASELINE_OPS,
    run_baseline,
    supports,
    value_and_grad_kernel,
    value_kernel,
)

_NO_CONSTS = np.zeros(0)


def baseline_value(ops, args, x, vals):
    """Forward sweep of a tape without constants; the value of the last slot."""
    return value_kernel(ops, args, _NO_CONSTS, x, vals)


def baseline_value_and_grad(ops, args, x, vals, adj, grad):
    """Both sweeps of a tape without constants; the gradient goes to ``grad``."""
    return value_and_grad_kernel(ops, args, _NO_CONSTS, x, vals, adj, grad)
