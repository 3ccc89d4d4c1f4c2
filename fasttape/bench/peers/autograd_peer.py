"""Peer "autograd": HIPS autograd's ``value_and_grad`` (operator overloading on NumPy).

Vectorized ``autograd.numpy`` code for rosenbrock, lennard-jones and mlp; straight-line
scalar code for the other families (small sizes).  Each call retraces, as autograd does.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fasttape.bench.cases import Case
from fasttape.bench.peers.base import Built, OpNamespace, Peer
from fasttape.bench.peers.jax_peer import vectorized_fn

__all__ = ["AutogradPeer"]


class AutogradPeer(Peer):
    """HIPS autograd."""

    name = "autograd"
    module = "autograd"
    scalar_cap = 12_000
    scalar_cap_quick = 1_200
    vector_cap = None
    vector_cap_quick = 12_000
    vectorized = True

    def build(self, case: Case) -> Built:
        import autograd
        import autograd.numpy as anp

        t0 = time.perf_counter()
        if self.style(case.family) == "vectorized":
            f = vectorized_fn(case.family, case, anp)
            style = "vectorized"
        else:
            fn = case.fn
            n = case.tape.n_inputs
            ns = OpNamespace(self.name, anp, {
                "atan": anp.arctan, "asin": anp.arcsin, "acos": anp.arccos,
                "stop_gradient": lambda a: a,  # HIPS autograd has none
                # no single function: how an autograd user writes them
                "softplus": lambda a: anp.logaddexp(0.0, a),
                "sigmoid": lambda a: 1.0 / (1.0 + anp.exp(-a)),
            })

            def f(x: Any) -> Any:
                return fn([x[i] for i in range(n)], ns)

            style = "scalar"
        vg = autograd.value_and_grad(f)
        t1 = time.perf_counter()

        def value(x: np.ndarray) -> float:
            return float(f(x))

        def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
            v, g = vg(x)
            return float(v), np.asarray(g)

        return Built(value, value_and_grad, t1 - t0, 0.0, style)
