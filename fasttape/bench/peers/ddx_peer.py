"""Peer "ddx": ddx-ad's runtime graphs (``ddx.equation`` of a model, ``jacobian``).

The model names one ``ddx.var`` per input and returns the function written in scalar
operations; ``equation.buffer(x)`` is ddx's allocation-free way to call it in a loop.
Default options (the interpreter); ddx's LLVM kernel compilation is not used, since its
compile time on graphs of this size is the cost the "graph changes constantly" use case avoids.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fasttape.bench.cases import Case
from fasttape.bench.peers.base import Built, OpNamespace, ScalarGraphPeer

__all__ = ["DdxPeer"]


class DdxPeer(ScalarGraphPeer, name="ddx", module="ddx", dist="ddx-ad"):
    """ddx-ad (import name ``ddx``).

    ``DdxPeer(compile_options={...})``: the same graph compiled by ddx's LLVM backend
    (``equation.compile(**options)``, ``Backend.COMPILE``), its compile time reported as the
    build's ``compile_s``; what ``benchmarks/bench_native.py --ddx`` compares native code
    with.  Not in :data:`fasttape.bench.peers.PEERS`: compiling a large graph takes ddx
    minutes.
    """

    def __init__(self, compile_options: dict[str, Any] | None = None) -> None:
        self.compile_options = compile_options

    def build(self, case: Case) -> Built:
        import ddx

        ns = OpNamespace(self.name, ddx, {
            "maximum": ddx.max, "square": lambda a: a * a,
            "stop_gradient": lambda a: a,  # ddx has none
            # no single function: how a ddx user writes them
            "softplus": lambda a: ddx.max(a, 0.0) + ddx.log(1.0 + ddx.exp(-abs(a))),
            "sigmoid": lambda a: 1.0 / (1.0 + ddx.exp(-a)),
            # fasttape's fused ops, in a replayed tape (the table's formulas)
            "sqdiff": lambda a, b: (a - b) * (a - b),
            "fmac": lambda a, b, c: a * c + b,
            "powi": lambda a, n: a ** n,  # n: the tape's constant, a float
        })
        n = case.tape.n_inputs
        fn = case.fn

        def model() -> Any:
            return fn([ddx.var(f"x{i}") for i in range(n)], ns)

        t0 = time.perf_counter()
        eq = ddx.equation(model)
        t1 = time.perf_counter()
        compile_s = 0.0
        if self.compile_options is not None:
            eq.compile(**self.compile_options)
            compile_s = time.perf_counter() - t1

        def value(x: np.ndarray) -> float:
            return float(eq.evaluate(x))

        def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
            v, g = eq.jacobian(x)
            return float(v), np.asarray(g).ravel()

        return Built(value, value_and_grad, t1 - t0, compile_s, "scalar")
