"""Peer "casadi-sx": CasADi's SX scalar graphs, a ``Function`` of the value and the gradient.

How CasADi users write it: ``x = SX.sym("x", n)``, the function in scalar operations,
``Function("f", [x], [f, gradient(f, x)])``, evaluated by CasADi's SX virtual machine.
"""

from __future__ import annotations

import time

import numpy as np

from fasttape.bench.cases import Case
from fasttape.bench.peers.base import Built, OpNamespace, ScalarGraphPeer

__all__ = ["CasadiPeer"]


class CasadiPeer(ScalarGraphPeer, name="casadi-sx", module="casadi"):
    """CasADi SX (virtual machine, no code generation)."""

    def build(self, case: Case) -> Built:
        import casadi as ca

        ns = OpNamespace(self.name, ca, {
            "square": lambda a: ca.constpow(a, 2), "maximum": ca.fmax, "minimum": ca.fmin,
            "abs": ca.fabs,
            "stop_gradient": lambda a: a,  # SX has none (MX's stop_diff only)
            # no single function: how a CasADi user writes them
            "softplus": lambda a: ca.fmax(a, 0.0) + ca.log1p(ca.exp(-ca.fabs(a))),
            "sigmoid": lambda a: 1.0 / (1.0 + ca.exp(-a)),
        })
        n = case.tape.n_inputs
        t0 = time.perf_counter()
        x = ca.SX.sym("x", n)
        xs = [x[i] for i in range(n)]
        f = case.fn(xs, ns)
        t1 = time.perf_counter()
        fvg = ca.Function("f", [x], [f, ca.gradient(f, x)])
        fv = ca.Function("v", [x], [f])
        t2 = time.perf_counter()

        def value(xv: np.ndarray) -> float:
            return float(fv(xv))

        def value_and_grad(xv: np.ndarray) -> tuple[float, np.ndarray]:
            v, g = fvg(xv)
            return float(v), np.asarray(g).ravel()

        return Built(value, value_and_grad, t1 - t0, t2 - t1, "scalar")
