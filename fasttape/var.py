"""Symbolic scalars: Python operators on a :class:`Var` record nodes into its Graph.

A ``Var`` is a handle (graph, node index) and nothing more, so tracing allocates one small
object per node.  The dunders are written out one by one (micrograd style) because this is the
tracing hot path: each avoids generic dispatch so that Python can record over a million nodes per
second.
"""

from __future__ import annotations

import builtins
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from fasttape.ops import OP_BY_NAME

if TYPE_CHECKING:
    from fasttape.graph import Graph

__all__ = ["UFUNC_OPS", "Var", "from_ufunc", "is_integral_number"]

_ADD = OP_BY_NAME["add"].code
_SUB = OP_BY_NAME["sub"].code
_MUL = OP_BY_NAME["mul"].code
_DIV = OP_BY_NAME["div"].code
_NEG = OP_BY_NAME["neg"].code
_LT = OP_BY_NAME["lt"].code
_LE = OP_BY_NAME["le"].code
_GT = OP_BY_NAME["gt"].code
_GE = OP_BY_NAME["ge"].code
_EQ = OP_BY_NAME["eq"].code
_NE = OP_BY_NAME["ne"].code

# What `v == other` compares with: other Vars and real numbers record a node; anything else
# (None, strings, containers) is never equal to a traced value, so Python's default applies.
_COMPARABLE = (numbers.Number, np.generic)
_ABS = OP_BY_NAME["abs"].code
_POWI = OP_BY_NAME["powi"].code
_POWC = OP_BY_NAME["powc"].code
_POW = OP_BY_NAME["pow"].code


def _no_number(what: str) -> NoReturn:
    raise TypeError(
        f"a traced fasttape value (a node of a graph) has no number while tracing: {what}."
    )


def _refusal(what: str) -> Callable[..., NoReturn]:
    """A conversion method of :class:`Var` (``__float__``, ``__round__``, ...) that raises
    :func:`_no_number`'s TypeError with ``what``: the conversion and what to use instead."""

    def refuse(self: Var, *args: Any) -> NoReturn:  # *args: round(v, ndigits)
        _no_number(what)

    return refuse


class Var:
    """A traced scalar: node ``i`` of graph ``g``.

    Supports ``+ - * / **``, unary ``-`` and ``+``, ``abs()`` and the comparisons
    ``< <= > >= == !=`` (which record 0/1-valued nodes for :func:`fasttape.where`; ``==`` is
    :func:`fasttape.eq`), with Python and NumPy numbers on either side.  A traced comparison has
    no truth value, so ``if a == b:`` raises (as JAX's tracers do) instead of silently picking a
    branch.  Hashing stays identity-based: Vars live in sets and dict keys, but ``v in list``
    (which compares with ``==``) raises unless ``v`` itself is found first.
    """

    __slots__ = ("g", "i")

    g: Graph
    i: int

    # NumPy: return NotImplemented from ndarray/np.float64 operators so Python falls back to our
    # reflected dunders, and let np.sin(var) etc. map onto fasttape ops.
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        return from_ufunc(ufunc, method, inputs, kwargs)

    def __repr__(self) -> str:
        return f"Var(node={self.i})"

    def _other(self, other: Any) -> int:
        """Node index of ``other`` (a Var of the same graph, or a number made a constant)."""
        if type(other) is Var:
            if other.g is not self.g:
                self.g._foreign(other)
            return other.i
        return self.g._constant_node(other)

    def __add__(self, other: Any) -> Var:  # self + other
        return self.g._node(_ADD, self.i, self._other(other))

    def __radd__(self, other: Any) -> Var:  # other + self
        return self.g._node(_ADD, self.g._constant_node(other), self.i)

    def __sub__(self, other: Any) -> Var:  # self - other
        return self.g._node(_SUB, self.i, self._other(other))

    def __rsub__(self, other: Any) -> Var:  # other - self
        return self.g._node(_SUB, self.g._constant_node(other), self.i)

    def __mul__(self, other: Any) -> Var:  # self * other
        return self.g._node(_MUL, self.i, self._other(other))

    def __rmul__(self, other: Any) -> Var:  # other * self
        return self.g._node(_MUL, self.g._constant_node(other), self.i)

    def __truediv__(self, other: Any) -> Var:  # self / other
        return self.g._node(_DIV, self.i, self._other(other))

    def __rtruediv__(self, other: Any) -> Var:  # other / self
        return self.g._node(_DIV, self.g._constant_node(other), self.i)

    def __pow__(self, other: Any) -> Var:  # self ** other
        # A constant integer exponent records powi, a constant real one powc, a traced one
        # pow (fasttape.pow documents the three).
        if type(other) is Var:
            return self.g._node(_POW, self.i, self._other(other))
        if is_integral_number(other):
            n = int(other)
            if builtins.abs(n) >= 2**31:
                raise ValueError(f"integer exponent {n} out of range (|n| < 2**31)")
            return self.g._node(_POWI, self.i, self.g._constant_node(float(n)))
        return self.g._node(_POWC, self.i, self.g._constant_node(other))

    def __rpow__(self, other: Any) -> Var:  # other ** self
        return self.g._node(_POW, self.g._constant_node(other), self.i)

    def __neg__(self) -> Var:  # -self
        return self.g._node(_NEG, self.i)

    def __pos__(self) -> Var:  # +self
        return self

    def __abs__(self) -> Var:  # abs(self)
        return self.g._node(_ABS, self.i)

    def __lt__(self, other: Any) -> Var:  # self < other
        return self.g._node(_LT, self.i, self._other(other))

    def __le__(self, other: Any) -> Var:  # self <= other
        return self.g._node(_LE, self.i, self._other(other))

    def __gt__(self, other: Any) -> Var:  # self > other
        return self.g._node(_GT, self.i, self._other(other))

    def __ge__(self, other: Any) -> Var:  # self >= other
        return self.g._node(_GE, self.i, self._other(other))

    # == and != are traced comparisons (ft.eq / ft.ne), like < and >: a Python-level answer
    # would be decided once, at trace time, and baked into the tape (issue 15.5).
    def __eq__(self, other: object) -> Any:  # self == other
        if type(other) is not Var and not _is_comparable(other):
            return NotImplemented
        return self.g._node(_EQ, self.i, self._other(other))

    def __ne__(self, other: object) -> Any:  # self != other
        if type(other) is not Var and not _is_comparable(other):
            return NotImplemented
        return self.g._node(_NE, self.i, self._other(other))

    # Defining __eq__ would drop the inherited hash; Vars stay hashable by identity.
    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        comparison = ""
        if self.g.op_code(self.i) in (_EQ, _NE):
            comparison = (
                " `a == b` and `a != b` on traced values record a comparison (ft.eq / ft.ne), "
                "they do not answer it; `v in some_list` compares with == too: use a set, a "
                "dict or `is` to find a Var."
            )
        raise TypeError(
            "a traced fasttape value has no truth value: the tape records one fixed sequence of "
            "operations and cannot follow a branch that depends on the input. Write the choice "
            "as data instead, e.g. ft.where(x > 0, a, b), or ft.maximum / ft.minimum / ft.abs."
            + comparison
        )

    # Conversions to Python numbers: each message names the traced function to use instead.
    # math.sin(v), math.exp(v) ... call float(v) first, so float()'s message covers them.
    __float__ = _refusal(
        "math.sin(v) and float(v) need a number; use ft.sin(v) or np.sin(v) on traced "
        "values (likewise ft.exp, ft.sqrt, ...), or evaluate the compiled tape"
    )
    __int__ = _refusal(
        "int(v) needs a number; use ft.floor(v) or ft.ceil(v) to round traced values, or "
        "evaluate the compiled tape"
    )
    __complex__ = _refusal(
        "complex(v) needs a number, and fasttape traces real scalars only; use ft.sin(v), "
        "np.sin(v) and the like on traced values, or evaluate the compiled tape"
    )
    __index__ = _refusal(
        "an index, length or range bound needs an integer, and which element is taken "
        "cannot depend on a traced value; select values with ft.where(cond, a, b) "
        "instead, or evaluate the compiled tape"
    )
    __floor__ = _refusal("math.floor(v) needs a number; use ft.floor(v) or np.floor(v)")
    __ceil__ = _refusal("math.ceil(v) needs a number; use ft.ceil(v) or np.ceil(v)")
    __trunc__ = _refusal(
        "math.trunc(v) needs a number; use ft.where(v < 0, ft.ceil(v), ft.floor(v))"
    )
    __round__ = _refusal("round(v) needs a number; use ft.floor(v + 0.5) or ft.floor(v)")

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise TypeError("a traced fasttape value is a scalar and cannot be iterated")


def _is_comparable(other: object) -> bool:
    """True if ``v == other`` records a comparison: numbers and 0-d arrays (see _COMPARABLE)."""
    return isinstance(other, _COMPARABLE) or (isinstance(other, np.ndarray) and other.ndim == 0)


def is_integral_number(value: Any) -> bool:
    """True for Python/NumPy integers (not bools, not floats that happen to be whole)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


# NumPy ufunc name -> fasttape op, so np.sin(var) and np.float64(2) * var trace.
UFUNC_OPS = {
    "add": "add", "subtract": "sub", "multiply": "mul", "divide": "div", "true_divide": "div",
    "negative": "neg", "power": "pow", "float_power": "pow", "square": "square", "sqrt": "sqrt",
    "cbrt": "cbrt", "exp": "exp", "expm1": "expm1", "log": "log", "log1p": "log1p",
    "log2": "log2", "log10": "log10", "sin": "sin", "cos": "cos", "tan": "tan",
    "arcsin": "asin", "arccos": "acos", "arctan": "atan", "arctan2": "atan2", "sinh": "sinh",
    "cosh": "cosh", "tanh": "tanh", "arcsinh": "asinh", "arccosh": "acosh",
    "arctanh": "atanh", "absolute": "abs", "fabs": "abs", "sign": "sign", "floor": "floor",
    "ceil": "ceil", "minimum": "minimum", "maximum": "maximum", "hypot": "hypot",
    "less": "lt", "less_equal": "le", "greater": "gt", "greater_equal": "ge",
    "equal": "eq", "not_equal": "ne", "positive": "positive", "logaddexp": "logaddexp",
}


def _record(code: int, xs: tuple[Any, ...]) -> Var:
    """Record op ``code`` on ``xs`` (Vars of one graph, at least one, and numbers)."""
    g = next(x.g for x in xs if type(x) is Var)
    nodes = []
    for x in xs:
        if type(x) is Var:
            if x.g is not g:
                g._foreign(x)
            nodes.append(x.i)
        else:
            nodes.append(g._constant_node(x))
    return g._node(code, *nodes)


def _ufunc_op(name: str) -> Any:
    """The function a ufunc applies to operands among which there is a Var."""
    if name == "positive":
        return lambda v: v
    if name == "pow":  # the exponent picks powi / powc / pow
        return lambda x, y: x.__pow__(y) if type(x) is Var else y.__rpow__(x)
    code = OP_BY_NAME[name].code
    return lambda *xs: _record(code, xs)


def from_ufunc(ufunc: Any, method: str, inputs: tuple[Any, ...], kwargs: dict) -> Any:
    """``ufunc(*inputs)`` where an input is a Var (``Var.__array_ufunc__``): records the op.

    Lives here, next to Var, so that the Var class needs no module above it (tracing's op
    functions in :mod:`fasttape.trace` create Vars, so they cannot be below it).
    """
    name = UFUNC_OPS.get(ufunc.__name__)
    if method != "__call__" or kwargs or name is None:
        return NotImplemented
    fn = _ufunc_op(name)
    if any(isinstance(a, np.ndarray) and a.ndim > 0 for a in inputs):
        # An array mixed with a Var: apply elementwise, giving an object array of Vars.  (Not
        # np.frompyfunc: its ufunc would dispatch straight back to Var.__array_ufunc__.)
        arrays = [a if isinstance(a, np.ndarray) else _object_scalar(a) for a in inputs]
        b = np.broadcast(*arrays)
        out = np.empty(b.shape, dtype=object)
        flat = out.reshape(-1)
        for k, elems in enumerate(b):
            flat[k] = fn(*elems)
        return out
    inputs = tuple(a.item() if isinstance(a, np.ndarray) else a for a in inputs)
    return fn(*inputs)


def _object_scalar(v: Any) -> np.ndarray:
    arr = np.empty((), dtype=object)
    arr[()] = v
    return arr
