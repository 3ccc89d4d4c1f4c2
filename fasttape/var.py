"""Symbolic scalars: Python operators on a :class:`Var` record nodes into its Graph.

A ``Var`` is a handle (graph, node index) and nothing more, so tracing allocates one small
object per node.  The dunders are written out one by one (micrograd style) because this is the
tracing hot path: each avoids generic dispatch so that Python can record over a million nodes per
second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fasttape.ops import OP_BY_NAME

if TYPE_CHECKING:
    from fasttape.graph import Graph

__all__ = ["Var"]

_ADD = OP_BY_NAME["add"].code
_SUB = OP_BY_NAME["sub"].code
_MUL = OP_BY_NAME["mul"].code
_DIV = OP_BY_NAME["div"].code
_NEG = OP_BY_NAME["neg"].code
_LT = OP_BY_NAME["lt"].code
_LE = OP_BY_NAME["le"].code
_GT = OP_BY_NAME["gt"].code
_GE = OP_BY_NAME["ge"].code


class Var:
    """A traced scalar: node ``i`` of graph ``g``.

    Supports ``+ - * / **``, unary ``-`` and ``+``, ``abs()`` and the comparisons
    ``< <= > >=`` (which record 0/1-valued nodes for :func:`fasttape.where`), with Python and
    NumPy numbers on either side.  ``==`` and ``!=`` keep Python's identity meaning so that Vars
    can live in sets and dicts; use :func:`fasttape.eq` / :func:`fasttape.ne` for the traced
    comparison.
    """

    __slots__ = ("g", "i")

    g: Graph
    i: int

    # NumPy: return NotImplemented from ndarray/np.float64 operators so Python falls back to our
    # reflected dunders, and let np.sin(var) etc. map onto fasttape ops.
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        from fasttape.trace import from_ufunc

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
        return self.g._binary(_ADD, self.i, self._other(other))

    def __radd__(self, other: Any) -> Var:  # other + self
        return self.g._binary(_ADD, self.g._constant_node(other), self.i)

    def __sub__(self, other: Any) -> Var:  # self - other
        return self.g._binary(_SUB, self.i, self._other(other))

    def __rsub__(self, other: Any) -> Var:  # other - self
        return self.g._binary(_SUB, self.g._constant_node(other), self.i)

    def __mul__(self, other: Any) -> Var:  # self * other
        return self.g._binary(_MUL, self.i, self._other(other))

    def __rmul__(self, other: Any) -> Var:  # other * self
        return self.g._binary(_MUL, self.g._constant_node(other), self.i)

    def __truediv__(self, other: Any) -> Var:  # self / other
        return self.g._binary(_DIV, self.i, self._other(other))

    def __rtruediv__(self, other: Any) -> Var:  # other / self
        return self.g._binary(_DIV, self.g._constant_node(other), self.i)

    def __pow__(self, other: Any) -> Var:  # self ** other
        from fasttape.trace import pow as _pow

        return _pow(self, other)

    def __rpow__(self, other: Any) -> Var:  # other ** self
        from fasttape.trace import pow as _pow

        return _pow(other, self)

    def __neg__(self) -> Var:  # -self
        return self.g._unary(_NEG, self.i)

    def __pos__(self) -> Var:  # +self
        return self

    def __abs__(self) -> Var:  # abs(self)
        from fasttape.trace import abs as _abs

        return _abs(self)

    def __lt__(self, other: Any) -> Var:  # self < other
        return self.g._binary(_LT, self.i, self._other(other))

    def __le__(self, other: Any) -> Var:  # self <= other
        return self.g._binary(_LE, self.i, self._other(other))

    def __gt__(self, other: Any) -> Var:  # self > other
        return self.g._binary(_GT, self.i, self._other(other))

    def __ge__(self, other: Any) -> Var:  # self >= other
        return self.g._binary(_GE, self.i, self._other(other))

    def __bool__(self) -> bool:
        raise TypeError(
            "a traced fasttape value has no truth value: the tape records one fixed sequence of "
            "operations and cannot follow a branch that depends on the input. Write the choice "
            "as data instead, e.g. ft.where(x > 0, a, b), or ft.maximum / ft.minimum / ft.abs."
        )

    def __float__(self) -> float:
        raise TypeError(
            "a traced fasttape value has no number yet: it is a node of a graph. Compile the "
            "graph (ft.compile) and evaluate it with tape.value(x)."
        )

    __int__ = __float__
    __index__ = __float__

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise TypeError("a traced fasttape value is a scalar and cannot be iterated")
