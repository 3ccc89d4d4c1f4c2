"""Peer "autograd": HIPS autograd's ``value_and_grad`` (operator overloading on NumPy).

Vectorized ``autograd.numpy`` code for rosenbrock, lennard-jones and mlp; straight-line
scalar code for the other families (small sizes).  Each call retraces, as autograd does.
"""

from __future__ import annotations

import time

from fasttape.bench.cases import Case
from fasttape.bench.families import ArrayNamespace
from fasttape.bench.peers.base import ArrayPeer, Built, as_numpy

__all__ = ["AutogradPeer"]


class AutogradPeer(ArrayPeer, name="autograd", module="autograd"):
    """HIPS autograd."""

    def build(self, case: Case) -> Built:
        import autograd
        import autograd.numpy as anp
        from autograd.scipy.special import expit, logsumexp

        t0 = time.perf_counter()
        f, style = self.array_function(case, ArrayNamespace(anp, logsumexp=logsumexp), {
            "atan": anp.arctan, "asin": anp.arcsin, "acos": anp.arccos,
            "stop_gradient": lambda a: a,  # HIPS autograd has none
            "softplus": lambda a: anp.logaddexp(0.0, a),  # no softplus of its own
            "sigmoid": expit,
        })
        vg = autograd.value_and_grad(f)
        t1 = time.perf_counter()
        return as_numpy(f, vg, t1 - t0, 0.0, style)
