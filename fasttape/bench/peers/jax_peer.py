"""Peer "jax": ``jax.jit(jax.value_and_grad(f))`` in float64.

Straight-line scalar code for the scalar families (its compile time grows quickly with the
graph, hence the size cap), vectorized ``jax.numpy`` code for rosenbrock, lennard-jones,
mlp and the ``-vec`` families, as JAX users write them.  Compile time is measured ahead of time
(``jit(...).lower(x).compile()``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fasttape.bench.cases import Case
from fasttape.bench.families import ArrayNamespace
from fasttape.bench.peers.base import ArrayPeer, Built, as_numpy

__all__ = ["JaxPeer"]


# XLA's compile time explodes on straight-line scalar code (on the shared 2-core machine: 1 s
# for 600 instructions of random-local, 70 s for 600 of autograd-west, 3 minutes for about 900
# of random-local), and a compile cannot be interrupted (the runner waits for a timed-out one,
# up to 10 times the limit), so straight-line code is tried only up to 600 instructions: never
# at the default sizes (1,000 and up); pass --nodes 300 to see it.
class JaxPeer(ArrayPeer, name="jax", module="jax", scalar_cap=600, scalar_cap_quick=300):
    """JAX jit on CPU, float64."""

    def build(self, case: Case) -> Built:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        t0 = time.perf_counter()
        xp = ArrayNamespace(jnp, logsumexp=jax.nn.logsumexp)
        f, style = self.array_function(case, xp, {
            "atan": jnp.arctan, "asin": jnp.arcsin, "acos": jnp.arccos,
            "sigmoid": jax.nn.sigmoid, "stop_gradient": jax.lax.stop_gradient,
            # the stable formula written out: jax.nn.softplus compiles slower still
            "softplus": lambda a: jnp.maximum(a, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(a))),
        })
        x0 = jnp.asarray(case.x)
        t1 = time.perf_counter()
        vg = jax.jit(jax.value_and_grad(f)).lower(x0).compile()
        val = jax.jit(f).lower(x0).compile()
        t2 = time.perf_counter()

        def on_device(x: Any) -> Callable[[], Any]:
            xd = jax.device_put(x)
            return lambda: jax.block_until_ready(vg(xd))

        return as_numpy(val, vg, t1 - t0, t2 - t1, style, on_device)
