"""Peers "torch" (PyTorch eager autograd) and "torch-compile" (``torch.compile``), float64, CPU.

Vectorized tensor code for rosenbrock, lennard-jones, mlp and the ``-vec`` families; for the
other families, straight-line code on 0-d tensors (one tensor per node, as in the "Fastest
Autograd in the West" post), capped at small sizes.  Each value+gradient call rebuilds the
graph, as eager PyTorch does.  ``torch-compile`` runs the same vectorized code through
``torch.compile`` (TorchInductor generates and compiles C++ for the forward and the backward
on the first call), on the vectorized families only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fasttape.bench.cases import Case
from fasttape.bench.families import ArrayNamespace
from fasttape.bench.peers.base import ArrayPeer, Built, OpNamespace, vectorized_fn

__all__ = ["TorchCompilePeer", "TorchPeer"]


def _vectorized(case: Case) -> Callable[[Any], Any]:
    """The case's vectorized code over torch, its data (arrays) as tensors."""
    import torch

    xp = ArrayNamespace(torch, transpose=torch.t)
    data = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
            for k, v in case.data.items()}
    return vectorized_fn(case.family, type(case)(**{**case.__dict__, "data": data}), xp)


class TorchPeer(ArrayPeer, name="torch", module="torch"):
    """PyTorch eager, float64."""

    def function(self, case: Case) -> tuple[Callable[[Any], Any], str]:
        """The case's function of one tensor, and its style."""
        import torch

        if self.style(case.family) == "vectorized":
            return _vectorized(case), "vectorized"
        fn = case.fn
        ns = OpNamespace(self.name, torch, {
            "stop_gradient": torch.Tensor.detach,
            "softplus": torch.nn.functional.softplus,
        })

        def f(x: Any) -> Any:
            return fn(list(x.unbind()), ns)

        return f, "scalar"

    def build(self, case: Case) -> Built:
        import torch

        t0 = time.perf_counter()
        f, style = self.function(case)
        t1 = time.perf_counter()

        def value(xv: np.ndarray) -> float:
            with torch.no_grad():
                return float(f(torch.from_numpy(xv)))  # no graph recorded

        def value_and_grad(xv: np.ndarray) -> tuple[float, np.ndarray]:
            x = torch.tensor(xv, requires_grad=True)
            y = f(x)
            y.backward()
            return float(y.detach()), x.grad.numpy()

        return Built(value, value_and_grad, t1 - t0, 0.0, style)


class TorchCompilePeer(TorchPeer, name="torch-compile", module="torch"):
    """``torch.compile`` of the vectorized code (default mode), float64, eager backward call.

    Compiling takes tens of seconds per function (about 45 s for the first one in a process
    on the shared 2-core machine), so this peer sits out ``--quick`` runs.
    """

    dist = "torch"

    def applies(self, family: str, quick: bool) -> str | None:
        """Vectorized families only, and not in ``--quick`` runs."""
        from fasttape.bench.cases import VECTORIZED

        if family not in VECTORIZED:
            return "n/a (vectorized families only)"
        if quick:
            return "skipped (--quick: torch.compile takes tens of seconds a function)"
        return None

    def build(self, case: Case) -> Built:
        import torch

        t0 = time.perf_counter()
        f0, style = self.function(case)
        f = torch.compile(f0)
        t1 = time.perf_counter()
        # torch.compile compiles on the first call of each kind (with and without a graph
        # for the backward): both are made here, so that compile_s counts them.
        x0 = torch.tensor(case.x, requires_grad=True)
        f(x0).backward()
        with torch.no_grad():
            f(torch.from_numpy(case.x))
        t2 = time.perf_counter()

        def value(xv: np.ndarray) -> float:
            with torch.no_grad():
                return float(f(torch.from_numpy(xv)))

        def value_and_grad(xv: np.ndarray) -> tuple[float, np.ndarray]:
            x = torch.tensor(xv, requires_grad=True)
            y = f(x)
            y.backward()
            return float(y.detach()), x.grad.numpy()

        return Built(value, value_and_grad, t1 - t0, t2 - t1, style)
