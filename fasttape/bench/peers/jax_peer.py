"""Peer "jax": ``jax.jit(jax.value_and_grad(f))`` in float64.

Straight-line scalar code for the scalar families (its compile time grows quickly with the
graph, hence the size cap), vectorized ``jax.numpy`` code for rosenbrock, lennard-jones and
mlp, as JAX users write them.  Compile time is measured ahead of time
(``jit(...).lower(x).compile()``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fasttape.bench.cases import Case
from fasttape.bench.families import MLP_SHAPE
from fasttape.bench.peers.base import ArrayPeer, Built, OpNamespace, as_numpy, scalar_code

__all__ = ["JaxPeer", "vectorized_fn"]


def vectorized_fn(family: str, case: Case, xp: Any) -> Any:
    """The array-code version of a VECTORIZED family, for the array module ``xp``.

    ``xp`` is ``jax.numpy``, ``autograd.numpy`` or a torch shim with the same few names
    (``sum``, ``tanh``, ``triu_indices``, ``reshape``).  The terms and their order match the
    scalar code up to rounding.
    """
    if family == "rosenbrock":
        return lambda x: xp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    if family == "lennard-jones":
        n = case.size
        iu, ju = np.triu_indices(n, k=1)

        def lj(x: Any) -> Any:
            p = xp.reshape(x, (n, 3))
            d = p[iu] - p[ju]
            r2 = xp.sum(d ** 2, 1)
            s6 = (1.0 / r2) ** 3
            return xp.sum(4.0 * (s6 * s6 - s6))

        return lj
    if family == "mlp":
        d, h = MLP_SHAPE
        feats, targets = case.data["feats"], case.data["targets"]

        def loss(x: Any) -> Any:
            w1 = xp.reshape(x[: h * d], (h, d))
            b1 = x[h * d : h * d + h]
            w2 = x[h * d + h : h * d + 2 * h]
            b2 = x[h * d + 2 * h]
            hidden = xp.tanh(xp.matmul(feats, xp.transpose(w1)) + b1)
            pred = xp.matmul(hidden, w2) + b2
            return xp.sum((pred - targets) ** 2)

        return loss
    raise ValueError(f"no vectorized code for {family!r}")


class JaxPeer(ArrayPeer):
    """JAX jit on CPU, float64."""

    name = "jax"
    module = "jax"
    # XLA's compile time explodes on straight-line scalar code (on the shared 2-core machine:
    # 1 s for 600 instructions of random-local, 70 s for 600 of autograd-west, 3 minutes for
    # about 900 of random-local), and a compile cannot be interrupted (the runner waits for a
    # timed-out one, up to 10 times the limit), so straight-line code is tried only up to 600
    # instructions: never at the default sizes (1,000 and up); pass --nodes 300 to see it.
    scalar_cap = 600
    scalar_cap_quick = 300

    def build(self, case: Case) -> Built:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        t0 = time.perf_counter()
        if self.style(case.family) == "vectorized":
            f = vectorized_fn(case.family, case, jnp)
            style = "vectorized"
        else:
            ns = OpNamespace(self.name, jnp, {
                "atan": jnp.arctan, "asin": jnp.arcsin, "acos": jnp.arccos,
                "sigmoid": jax.nn.sigmoid, "stop_gradient": jax.lax.stop_gradient,
                # the stable formula written out: jax.nn.softplus compiles slower still
                "softplus": lambda a: jnp.maximum(a, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(a))),
            })
            f = scalar_code(case, ns)
            style = "scalar"
        x0 = jnp.asarray(case.x)
        t1 = time.perf_counter()
        vg = jax.jit(jax.value_and_grad(f)).lower(x0).compile()
        val = jax.jit(f).lower(x0).compile()
        t2 = time.perf_counter()
        return as_numpy(val, vg, t1 - t0, t2 - t1, style)
