"""Tracing: the ``ft.*`` math functions and :func:`trace`.

Every op of the table gets a module function here, made from its row (so a new row is a new
function with no code written).  Called on traced :class:`~fasttape.var.Var` values they record a
node; called on plain numbers only they evaluate at once with the kernels' own semantics
(bitwise the same as a compiled tape), so ``ft.sin(0.5) * x`` works.
"""

from __future__ import annotations

import ast
import gc
import linecache
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from fasttape.graph import Graph, as_float
from fasttape.kernels import eval_op
from fasttape.ops import INTERNAL_OPS, OP_BY_NAME, OPS, OpSpec
from fasttape.tensor.graph import TensorGraph
from fasttape.tensor.tensor import Tensor, elementwise
from fasttape.tensor.tensor import logsumexp as tensor_logsumexp
from fasttape.tensor.tensor import mean as tensor_mean
from fasttape.tensor.tensor import softmax as tensor_softmax
from fasttape.tensor.tensor import where as tensor_where
from fasttape.tensor.trace import trace_tensors
from fasttape.var import Var, is_integral_number

__all__ = ["trace", "sum", "mean", "logsumexp", "softmax", "where", "pow", "OP_FUNCTIONS"]


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


def _node_of(g: Graph, v: Any) -> int:
    return v.i if type(v) is Var else g._constant_node(v)


def _make_function(spec: OpSpec) -> Callable[..., Any]:
    code = spec.code
    if spec.arity == 1:

        def fn(x: Any) -> Any:
            if type(x) is Var:
                return x.g._node(code, x.i)
            if isinstance(x, Tensor):
                return elementwise(spec.name, x)
            return eval_op(code, (as_float(x),))

    else:

        def fn(*xs: Any) -> Any:  # type: ignore[misc]
            if len(xs) != spec.arity:
                raise TypeError(f"{spec.name}() takes {spec.arity} arguments, got {len(xs)}")
            g = _graph_of(*xs)
            if g is None:  # numbers, or tensors (checked only here: Vars pay nothing)
                if any(isinstance(x, Tensor) for x in xs):
                    return elementwise(spec.name, *xs)
                return eval_op(code, tuple(as_float(x) for x in xs))
            return g._node(code, *[_node_of(g, x) for x in xs])

    fn.__name__ = fn.__qualname__ = spec.name
    fn.__module__ = "fasttape"
    fn.__doc__ = f"{spec.doc[:1].upper()}{spec.doc[1:]}  (op ``{spec.name}``, {spec.arity} args)."
    if spec.nonsmooth:
        fn.__doc__ += f"\n\nDerivative convention: {spec.nonsmooth}."
    return fn


# Ops without a function of their own name: reached through another public function (pow,
# where), or made only by the passes (the constant-argument forms and the fused pairs).
# pow and where have hand-written functions below (the exponent picks the op; where's argument
# order differs from the tape's).
_INTERNAL = INTERNAL_OPS | {"pow", "where"}

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
    if isinstance(x, Tensor) or isinstance(y, Tensor):
        return x ** y  # the Tensor operators hold the same rule
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

    Examples
    --------
    >>> import fasttape as ft
    >>> tape = ft.compile(ft.trace(lambda v: ft.where(v[0] > 0, ft.sqrt(v[0]), 0.0), 1))
    >>> tape.value_and_grad([4.0])
    (2.0, array([0.25]))
    >>> tape.value_and_grad([-1.0])  # sqrt(-1) is NaN, but its branch is not taken
    (0.0, array([0.]))
    >>> ft.where(0.0, 1.0, 2.0)  # on plain numbers it evaluates at once
    2.0
    """
    g = _graph_of(cond, a, b)
    if g is None:
        if any(isinstance(v, Tensor) for v in (cond, a, b)):
            return tensor_where(cond, a, b)
        return eval_op(_WHERE, (as_float(a), as_float(b), as_float(cond)))
    # Stored as (a, b, cond): differentiable arguments first (see fasttape.ops).
    return g._node(_WHERE, _node_of(g, a), _node_of(g, b), _node_of(g, cond))


def sum(values: Iterable[Any] | Tensor, axis: Any = None, keepdims: bool = False) -> Any:
    """Sum of an iterable of traced values and numbers, as a balanced tree of additions.

    Pairwise summation keeps the tree depth at log2(n) and is more accurate than a running sum;
    it is built by iteration, never by recursion, so any length works.  An empty iterable gives
    ``0.0``.  On a traced tensor it is ``np.sum(values, axis, keepdims=keepdims)``: one
    reduction instruction.
    """
    if isinstance(values, Tensor):
        return values.sum(axis, keepdims)
    if axis is not None or keepdims:
        raise TypeError("axis and keepdims apply to a traced tensor, not to an iterable")
    items = list(values)
    if not items:
        return 0.0
    while len(items) > 1:
        paired = [items[i] + items[i + 1] for i in range(0, len(items) - 1, 2)]
        if len(items) % 2:
            paired.append(items[-1])
        items = paired
    return items[0]


def mean(values: Iterable[Any] | Tensor, axis: Any = None, keepdims: bool = False) -> Any:
    """Mean: ``np.mean`` on a traced tensor, else ``ft.sum(values) / len(values)``."""
    if isinstance(values, Tensor):
        return tensor_mean(values, axis, keepdims)
    items = list(values)
    if not items:
        raise ValueError("mean of an empty iterable")
    return sum(items, axis, keepdims) / len(items)


def logsumexp(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    """``log(sum(exp(x), axis))`` of a traced tensor, without overflow (as SciPy's)."""
    return tensor_logsumexp(x, axis, keepdims)


def softmax(x: Tensor, axis: Any = -1) -> Tensor:
    """``exp(x) / sum(exp(x), axis)`` of a traced tensor, without overflow."""
    return tensor_softmax(x, axis)


class InputIndexError(IndexError):
    """An index past the inputs of a traced function; names ``n_inputs``.

    An :class:`IndexError`, so code that expects one (``except IndexError``) still works.
    """


def _inputs_index_error(
    exc: IndexError, x: list[Var], noun: str = "inputs", count: str = "n_inputs"
) -> InputIndexError | None:
    """The error to raise instead of ``exc`` if ``exc`` came from indexing the inputs ``x``.

    ``x`` stays a plain list: a list subclass whose ``__getitem__`` could raise this itself
    costs a Python call per ``x[i]``, measured at 4-12% of tracing time on index-heavy
    functions (docs/architecture.md).  Instead, once ``fn`` has failed, the innermost frame's
    failing instruction is located (``co_positions``, Python 3.11+) and parsed: when it is
    ``name[index]`` and ``name`` is bound to ``x`` itself, it was the inputs that ran out.
    Anything else (no source, a subscript of another expression) keeps the original error.
    ``noun`` and ``count`` name the list in the message (the parameters: ``"parameters"``,
    ``"n_params"``).
    """
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame, code = tb.tb_frame, tb.tb_frame.f_code
    if not hasattr(code, "co_positions"):  # Python 3.10
        return None
    try:
        lineno, end_lineno, col, end_col = list(code.co_positions())[tb.tb_lasti // 2]
        if None in (lineno, end_lineno, col, end_col):
            return None
        assert lineno is not None and end_lineno is not None  # for the type checker
        lines = [linecache.getline(code.co_filename, k).encode() for k in
                 range(lineno, end_lineno + 1)]
        if not all(lines):
            return None
        lines[-1] = lines[-1][:end_col]
        lines[0] = lines[0][col:]
        node = ast.parse(b"".join(lines).decode().strip(), mode="eval").body
    except (SyntaxError, ValueError, IndexError, AssertionError, UnicodeDecodeError):
        return None
    if not isinstance(node, ast.Subscript) or not isinstance(node.value, ast.Name):
        return None
    if _lookup(node.value.id, frame) is not x:
        return None
    n = len(x)
    index = _index_value(node.slice, frame)
    which = "index" if index is None else f"index {index}"
    if n == 0:
        return InputIndexError(
            f"{which} out of range: the traced function has no {noun} ({count}=0)"
        )
    return InputIndexError(
        f"{which} out of range for the traced function's {n} {noun} ({count}={n}): valid "
        f"indices are 0..{n - 1} (or -{n}..-1). Trace with a larger {count}, or check the "
        "index."
    )


def _maybe_inputs_index_error(
    exc: IndexError, n_inputs: int, n_params: int
) -> InputIndexError | None:
    """For a list's own "index out of range" whose subscript could not be read back (no source:
    a REPL, ``exec``, Python 3.10): the same error, with the traced counts it may be about."""
    if str(exc) != "list index out of range":
        return None
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    readable = tb is not None and linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno)
    if readable and hasattr(tb.tb_frame.f_code, "co_positions"):
        return None  # _inputs_index_error read the subscript: it was not the inputs
    counts = f"n_inputs={n_inputs}" + (f", n_params={n_params}" if n_params else "")
    return InputIndexError(
        f"list index out of range while tracing ({counts}): if the function indexed its traced "
        f"inputs, valid indices are 0..{n_inputs - 1}; trace with a larger n_inputs, or check "
        "the index"
    )


_MISSING = object()


def _lookup(name: str, frame: Any) -> Any:
    """The object ``name`` is bound to in ``frame`` (locals and closure cells, then globals)."""
    for scope in (frame.f_locals, frame.f_globals, frame.f_builtins):
        if name in scope:
            return scope[name]
    return _MISSING


def _index_value(node: ast.expr, frame: Any) -> int | None:
    """The value of a simple index expression (ints, names, unary -, + - *), else None.

    Evaluated from the AST without calling anything, so reading it has no side effects.
    """
    if isinstance(node, ast.Constant):
        return node.value if type(node.value) is int else None
    if isinstance(node, ast.Name):
        v = _lookup(node.id, frame)
        return int(v) if is_integral_number(v) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _index_value(node.operand, frame)
        return None if v is None else -v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
        a, b = _index_value(node.left, frame), _index_value(node.right, frame)
        if a is None or b is None:
            return None
        return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(
            node.op, ast.Sub) else a * b
    return None


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


def trace(
    fn: Callable[..., Any],
    n_inputs: int | None = None,
    *,
    n_params: int = 0,
    pause_gc: bool = True,
    record_source: bool = False,
    shapes: Sequence[Any] | None = None,
    params: Sequence[Any] | None = None,
) -> Graph | TensorGraph:
    """Trace ``fn`` over ``n_inputs`` symbolic scalars and return the Graph.

    With ``shapes=`` instead of ``n_inputs``, ``fn`` is NumPy code on tensors: it is called
    with one traced :class:`~fasttape.tensor.tensor.Tensor` (or a dict, list or tuple of them)
    per entry of ``shapes``, then one per entry of ``params`` (parameters: inputs that get no
    gradient), and a :class:`~fasttape.tensor.graph.TensorGraph` is returned
    (docs/tensors.md)::

        ft.trace(lambda x: np.sum(x ** 2), shapes=[(1000,)])

    ``fn`` receives a list of ``n_inputs`` :class:`Var` and returns a scalar (one output) or a
    sequence of scalars (several outputs, in order).  An index past the inputs raises an
    IndexError that names ``n_inputs``.

    With ``n_params=k > 0``, ``fn`` is called as ``fn(x, p)``: ``p`` is a list of ``k``
    parameters (:meth:`Graph.params`), non-differentiated inputs that every evaluation of the
    tape takes as ``p=`` and that get no gradient (data that changes between calls without
    tracing again).

    ``record_source=True`` records the file and line that created every node, so that
    :meth:`fasttape.Tape.explain` can name the line that produced a NaN (off by default: it
    costs a frame walk per node, docs/debugging.md).

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
    >>> g2 = ft.trace(lambda x: [x[0] * x[1], x[0] + x[1]], n_inputs=2)  # two outputs
    >>> ft.compile(g2).value([2.0, 3.0])
    array([6., 5.])
    >>> g3 = ft.trace(lambda x, p: p[0] * x[0] ** 2, n_inputs=1, n_params=1)  # p: no gradient
    >>> ft.compile(g3).value_and_grad([3.0], p=[2.0])
    (18.0, array([12.]))
    """
    if shapes is not None or params is not None:
        if n_inputs is not None or n_params or record_source:
            raise TypeError("trace takes either n_inputs (scalar code) or shapes= (tensor "
                            "code), not both; record_source is for scalar graphs")
        with gc_paused(pause_gc):
            return trace_tensors(fn, shapes if shapes is not None else [], params)
    if n_inputs is None:
        raise TypeError("trace needs n_inputs (the number of scalar inputs) or shapes= (the "
                        "shapes of tensor arguments)")
    g = Graph(record_source=record_source)
    with gc_paused(pause_gc):
        x = g.inputs(n_inputs)
        p = g.params(n_params)
        try:
            result = fn(x, p) if n_params else fn(x)
        except IndexError as exc:
            named = _inputs_index_error(exc, x)
            if named is None and n_params:
                named = _inputs_index_error(exc, p, "parameters", "n_params")
            if named is None:
                named = _maybe_inputs_index_error(exc, n_inputs, n_params)
            if named is None:
                raise
            raise named.with_traceback(exc.__traceback__) from None
    if isinstance(result, np.ndarray) and result.ndim == 0:
        result = result.item()
    g.output(result)
    return g


# pow and where dispatch or reorder their arguments, so they are written by hand above.
OP_FUNCTIONS["pow"] = pow
OP_FUNCTIONS["where"] = where
