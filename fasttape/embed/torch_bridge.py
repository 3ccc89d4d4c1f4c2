"""A tape as a ``torch.autograd.Function``: call it from a PyTorch model and backpropagate.

The forward pass evaluates the tape on the CPU in float64 (the input is copied to a float64
NumPy array); the backward pass is one fasttape reverse sweep seeded with the incoming gradient
of every output (:func:`fasttape.embed.numba_api.vjp`).  Results come back with the input's
dtype and device.  Inputs of shape ``(..., n_inputs)`` are evaluated row by row.  The backward
is not itself differentiable (``once_differentiable``): no double backward through a tape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from fasttape.embed.numba_api import vjp

# Any tape will do: this module uses only the record's interface.
from fasttape.tape import TapeRecord as Tape

__all__ = ["TapeFunction", "to_torch"]


def _rows(x: torch.Tensor, n_in: int) -> np.ndarray:
    if x.shape[-1:] != (n_in,):
        raise ValueError(
            f"the fasttape function takes x of shape (..., {n_in}); got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    # Through torch's own cast: NumPy has no bfloat16.
    arr = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.ascontiguousarray(arr).reshape(-1, n_in)


class TapeFunction(torch.autograd.Function):
    """``TapeFunction.apply(x, tape)``: the outputs of ``tape`` at ``x``, shape ``(..., m)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, tape: Tape) -> torch.Tensor:  # type: ignore[override]
        rows = _rows(x, tape.n_inputs)
        out = np.empty((rows.shape[0], tape.n_outputs))
        for r in range(rows.shape[0]):
            tape.value(rows[r], out=out[r])
        ctx.tape = tape
        ctx.save_for_backward(x)
        y = torch.from_numpy(out).to(dtype=x.dtype, device=x.device)
        return y.reshape(*x.shape[:-1], tape.n_outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        tape: Tape = ctx.tape
        rows = _rows(x, tape.n_inputs)
        cots = np.ascontiguousarray(grad_out.detach().to(device="cpu", dtype=torch.float64).numpy())
        cots = cots.reshape(-1, tape.n_outputs)
        g = np.empty_like(rows)
        for r in range(rows.shape[0]):
            vjp(tape, rows[r], cots[r], out=g[r])
        return torch.from_numpy(g).to(dtype=x.dtype, device=x.device).reshape(x.shape), None


def to_torch(tape: Tape) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap ``tape`` as a differentiable PyTorch function.

    Parameters
    ----------
    tape : Tape
        Evaluated on the CPU in float64, row by row (:class:`TapeFunction`); the backward is
        not itself differentiable.

    Returns
    -------
    callable
        ``f(x)`` for a floating tensor ``x`` of shape ``(..., n_inputs)``: shape ``(...,)`` for
        a single-output tape, ``(..., n_outputs)`` otherwise.
    """
    if not isinstance(tape, Tape):
        raise TypeError(f"to_torch() expects a fasttape.Tape, got {type(tape).__name__}")
    scalar = tape.n_outputs == 1

    def call(x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        y = TapeFunction.apply(x, tape)
        return y[..., 0] if scalar else y

    call.__doc__ = (
        f"fasttape tape with {tape.n_inputs} inputs and {tape.n_outputs} outputs, as a "
        "differentiable PyTorch function."
    )
    return call
