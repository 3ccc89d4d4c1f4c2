"""Peer "torch": PyTorch eager autograd in float64 (CPU).

Vectorized tensor code for rosenbrock, lennard-jones and mlp; for the scalar families,
straight-line code on 0-d tensors (one tensor per node, as in the "Fastest Autograd in the
West" post), capped at small sizes.  Each value+gradient call rebuilds the graph, as eager
PyTorch does.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from fasttape.bench.cases import Case
from fasttape.bench.peers.base import ArrayPeer, Built, OpNamespace, vectorized_fn

__all__ = ["TorchPeer"]


class TorchPeer(ArrayPeer, name="torch", module="torch"):
    """PyTorch eager, float64."""

    def build(self, case: Case) -> Built:
        import torch

        t0 = time.perf_counter()
        if self.style(case.family) == "vectorized":
            xp = SimpleNamespace(
                sum=torch.sum, tanh=torch.tanh, matmul=torch.matmul, transpose=torch.t,
                reshape=torch.reshape,
            )
            f0 = vectorized_fn(case.family, case, xp)
            data = {k: torch.from_numpy(np.asarray(v)) for k, v in case.data.items()}
            if data:  # the MLP: its data as tensors (matmul needs both sides tensors)
                sub = type(case)(**{**case.__dict__, "data": data})
                f0 = vectorized_fn(case.family, sub, xp)
            f = f0
            style = "vectorized"
        else:
            fn = case.fn
            ns = OpNamespace(self.name, torch, {
                "stop_gradient": torch.Tensor.detach,
                "softplus": torch.nn.functional.softplus,
            })

            def f(x: Any) -> Any:
                return fn(list(x.unbind()), ns)

            style = "scalar"
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
