"""Tracing: the ``ft.*`` math functions and :func:`trace`.

Every op of the table gets a module function here, made from its row (so a new row is a new
function with no code written).  Called on traced :class:`~fasttape.var.Var` values they record a
node; called on plain numbers only they evaluate at once with the kernels' own semantics
(bitwise the same as a compiled tape), so ``ft.sin(0.5) * x`` works.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from fasttape.graph import Graph, as_float
from fasttape.kernels import eval_op
from fasttape.ops import OP_BY_NAME, OPS, OpSpec
from fasttape.var import Var

__all__ = ["trace", "sum", "where", "pow", "OP_FUNCTIONS"]


def _graph_of(*values: Any) -> Graph | None:
    """The one Graph the Vars among ``values`` belong to (None if there are no Vars)."""
    g = None
    for v in values:
        if type(v) is Var:
            if g is None:
                g = v.g
            elif v.g is not g:
                g._foreign(v)
    return g


def _node(g: Graph, v: Any) -> int:
    return v.i if type(v) is Var else g._constant_node(v)


def _make_function(spec: OpSpec) -> Callable[..., Any]:
    code = spec.code
    if spec.arity == 1:

        def fn(x: Any) -> Any:
            if type(x) is Var:
                return x.g._unary(code, x.i)
            return eval_op(code, (as_float(x),))

    else:

        def fn(*xs: Any) -> Any:  # type: ignore[misc]
            if len(xs) != spec.arity:
                raise TypeError(f"{spec.name}() takes {spec.arity} arguments, got {len(xs)}")
            g = _graph_of(*xs)
            if g is None:
                return eval_op(code, tuple(as_float(x) for x in xs))
            return g._node(code, tuple(_node(g, x) for x in xs))

    fn.__name__ = fn.__qualname__ = spec.name
    fn.__module__ = "fasttape"
    fn.__doc__ = f"{spec.doc[:1].upper()}{spec.doc[1:]}  (op ``{spec.name}``, {spec.arity} args)."
    if spec.nonsmooth:
        fn.__doc__ += f"\n\nDerivative convention: {spec.nonsmooth}."
    return fn


# Ops without a function of their own name: reached through another public function (pow,
# where), or made only by the passes (the constant-argument forms and the fused pairs).
_INTERNAL = {"powi", "powc", "pow", "where", "mulc", "addc", "subc", "rsubc", "divc", "rdivc",
             "fmac", "sqdiff"}

#: name -> frontend function, for every public op of the table.
OP_FUNCTIONS: dict[str, Callable[..., Any]] = {
    spec.name: _make_function(spec) for spec in OPS if spec.name not in _INTERNAL
}
globals().update(OP_FUNCTIONS)
__all__ += sorted(set(OP_FUNCTIONS) - set(__all__))

_POW = OP_BY_NAME["pow"].code
_WHERE = OP_BY_NAME["where"].code


def pow(x: Any, y: Any) -> Any:
    """``x ** y``.

    A constant integer exponent records ``powi`` (repeated squaring, like JAX's
    ``integer_pow``); a constant real exponent records ``powc``; a traced exponent records
    ``pow``.  See docs/derivatives.md for the conventions at ``x = 0``.
    """
    if type(x) is Var:
        return x.__pow__(y)  # the Var operators hold the exponent rule
    if type(y) is Var:
        return y.__rpow__(x)
    return eval_op(_POW, (as_float(x), as_float(y)))


def where(cond: Any, a: Any, b: Any) -> Any:
    """``a`` where ``cond != 0``, else ``b`` (cond is typically a comparison such as ``x > 0``).

    Only the selected branch receives an adjoint, and a zero adjoint is never multiplied into
    the other branch's partials, so an inf or NaN in the unselected branch (``sqrt`` of a
    negative number, ``log(0)``) does not turn the gradient into NaN.
    """
    g = _graph_of(cond, a, b)
    if g is None:
        return eval_op(_WHERE, (as_float(a), as_float(b), as_float(cond)))
    # Stored as (a, b, cond): differentiable arguments first (see fasttape.ops).
    return g._node(_WHERE, (_node(g, a), _node(g, b), _node(g, cond)))


def sum(values: Iterable[Any]) -> Any:
    """Sum of an iterable of traced values and numbers, as a balanced tree of additions.

    Pairwise summation keeps the tree depth at log2(n) and is more accurate than a running sum;
    it is built by iteration, never by recursion, so any length works.  An empty iterable gives
    ``0.0``.
    """
    items = list(values)
    if not items:
        return 0.0
    while len(items) > 1:
        paired = [items[i] + items[i + 1] for i in range(0, len(items) - 1, 2)]
        if len(items) % 2:
            paired.append(items[-1])
        items = paired
    return items[0]


@contextmanager
def gc_paused(pause: bool) -> Iterator[None]:
    """Pause the cyclic garbage collector, restoring its previous state afterwards."""
    was_enabled = gc.isenabled()
    if pause and was_enabled:
        gc.disable()
    try:
        yield
    finally:
        if pause and was_enabled:
            gc.enable()


def trace(fn: Callable[[list[Var]], Any], n_inputs: int, *, pause_gc: bool = True) -> Graph:
    """Trace ``fn`` over ``n_inputs`` symbolic scalars and return the Graph.

    ``fn`` receives a list of ``n_inputs`` :class:`Var` and returns a scalar (one output) or a
    sequence of scalars (several outputs, in order).

    Tracing allocates one small object per node, and when the function keeps many of them
    alive (a list of a million terms) Python's cyclic garbage collector rescans them again and
    again: pausing it while ``fn`` runs makes such traces up to 2x faster.  The collector's
    previous state is restored afterwards; pass ``pause_gc=False`` to leave it alone.

    Examples
    --------
    >>> import fasttape as ft
    >>> g = ft.trace(lambda x: ft.sum(x[i] * x[i + 1] for i in range(len(x) - 1)), n_inputs=4)
    >>> ft.compile(g).value([1.0, 2.0, 3.0, 4.0])
    20.0
    """
    g = Graph()
    with gc_paused(pause_gc):
        x = g.inputs(n_inputs)
        result = fn(x)
    if isinstance(result, np.ndarray) and result.ndim == 0:
        result = result.item()
    g.output(result)
    return g


# pow and where dispatch or reorder their arguments, so they are written by hand above.
OP_FUNCTIONS["pow"] = pow
OP_FUNCTIONS["where"] = where
