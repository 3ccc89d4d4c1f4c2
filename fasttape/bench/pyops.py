"""The op table evaluated in plain Python: one function per row, made from its formulas.

Each row of :data:`fasttape.ops.OPS` spells its result and its partials as expressions; this
module turns them into Python functions (over ``math``, ``np`` and the helpers of
:mod:`fasttape.kernels.scalar`, the same names the kernels see), so that the benchmarks never
spell an op a second time: the ``numpy-python`` peer sweeps a tape with :data:`FORWARD` and
:data:`PARTIALS`, and :data:`FLOATS` evaluates a family's code ``fn(x, m)`` on Python floats.

Plain Python is not the kernels' arithmetic in every corner: a division by zero or a
``math.log`` of a negative number raises here where a kernel returns inf or NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

import fasttape as ft
from fasttape.kernels import scalar
from fasttape.ops import OPS, OpSpec

__all__ = ["FLOATS", "FORWARD", "PARTIALS"]

#: The names an op table formula may use (what the generated kernels see too).
_NAMES: dict[str, Any] = {
    "math": math,
    "np": np,
    **{k: v for k, v in vars(scalar).items() if callable(v) and not isinstance(v, type)},
}
_ARGS = ("x", "y", "z")


def _function(spec: OpSpec, params: tuple[str, ...], body: str) -> Callable[..., Any]:
    # The formulas are the op table's data, evaluated as the kernel generator reads them.
    code = compile(f"lambda {', '.join(params)}: {body}", f"<op table: {spec.name}>", "eval")
    return eval(code, dict(_NAMES))


#: Op name -> ``forward(x[, y[, z]])``: the row's result formula.
FORWARD: dict[str, Callable[..., float]] = {
    op.name: _function(op, _ARGS[: op.arity], op.forward) for op in OPS
}

#: Op name -> ``partials(x[, y[, z]], f)``: a tuple, one partial per differentiable argument.
PARTIALS: dict[str, Callable[..., tuple[float, ...]]] = {
    op.name: _function(op, (*_ARGS[: op.arity], "f"),
                       "(" + "".join(f"{p}, " for p in op.partials) + ")")
    for op in OPS
}

#: The math namespace that evaluates a family's ``fn(x, m)`` on Python floats: every op by
#: name, and ``sum`` as fasttape's balanced tree of additions.
FLOATS = SimpleNamespace(sum=ft.sum, **FORWARD)
