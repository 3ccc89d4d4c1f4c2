"""The Graph: a flat, append-only record of nodes in creation (hence topological) order.

Storage is two ``array.array`` columns, not Python node objects, so that a graph of tens of
millions of nodes costs a few bytes per node and turns into NumPy arrays without copying:

``_ops``   (``'B'``)  op code per node; :data:`~fasttape.ops.INPUT_CODE` and
                      :data:`~fasttape.ops.CONST_CODE` mark inputs and constants;
``_args``  (``'i'``)  the arguments of every node, concatenated; an op's arity comes from the
                      table, so no offsets are stored.  An input's one "argument" is its input
                      position and a constant's is its index in ``_consts``.

A node only ever refers to earlier nodes, so creation order is a topological order and nothing
in the pipeline needs recursion.
"""

from __future__ import annotations

import numbers
import struct
from array import array
from collections.abc import Iterable
from typing import Any

import numpy as np

from fasttape.ops import CONST_CODE, INPUT_CODE
from fasttape.var import Var

__all__ = ["Graph"]

_MAX_NODES = 2**31 - 1  # int32 argument columns


class Graph:
    """A scalar computational graph under construction.

    Create inputs with :meth:`inputs`, combine them with Python operators and ``ft.*``
    functions, mark results with :meth:`output`, then hand the graph to :func:`fasttape.compile`.

    Examples
    --------
    >>> import fasttape as ft
    >>> g = ft.Graph()
    >>> x = g.inputs(2)
    >>> g.output(x[0] * x[1] + 1)
    >>> ft.compile(g).value([2.0, 3.0])
    7.0
    """

    __slots__ = ("__weakref__", "_args", "_const_nodes", "_consts", "_n_inputs", "_ops", "_outputs")

    def __init__(self) -> None:
        self._ops = array("B")
        self._args = array("i")
        self._consts = array("d")
        self._const_nodes: dict[Any, int] = {}
        self._n_inputs = 0
        self._outputs: list[int] = []

    # ------------------------------------------------------------------ building
    def inputs(self, n: int) -> list[Var]:
        """Add ``n`` scalar inputs and return them as a list of :class:`Var`.

        Inputs are numbered in creation order across calls; ``tape.value(x)`` takes them in
        that order.
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"inputs(n) expects a non-negative integer n, got {n!r}")
        n = int(n)
        start = len(self._ops)
        self._check_room(n)
        self._ops.extend(array("B", [INPUT_CODE]) * n)
        self._args.extend(array("i", range(self._n_inputs, self._n_inputs + n)))
        self._n_inputs += n
        new = Var.__new__
        out = []
        for i in range(start, start + n):
            v = new(Var)
            v.g = self
            v.i = i
            out.append(v)
        return out

    def input(self) -> Var:
        """Add one scalar input and return it."""
        return self.inputs(1)[0]

    def constant(self, value: float) -> Var:
        """Return a constant node (equal constants, bit for bit, share one node)."""
        v = Var.__new__(Var)
        v.g = self
        v.i = self._constant_node(value)
        return v

    def output(self, *values: Any) -> None:
        """Mark one or more values (Vars, numbers, or iterables of them) as outputs.

        Outputs are numbered in the order they are marked.
        """
        flat: list[Any] = []
        for v in values:
            if isinstance(v, (Var, numbers.Real, np.generic)) or not isinstance(v, Iterable):
                flat.append(v)
            else:
                flat.extend(v)
        if not flat:
            raise ValueError("output() needs at least one value")
        # Check everything first, so that a bad value leaves the graph unchanged.
        for v in flat:
            if type(v) is Var:
                if v.g is not self:
                    self._foreign(v)
            else:
                as_float(v)
        self._outputs.extend(v.i if type(v) is Var else self._constant_node(v) for v in flat)

    # ------------------------------------------------------------------ sizes
    @property
    def n_inputs(self) -> int:
        """Number of inputs."""
        return self._n_inputs

    @property
    def n_outputs(self) -> int:
        """Number of outputs marked so far."""
        return len(self._outputs)

    @property
    def n_nodes(self) -> int:
        """Number of nodes recorded, inputs and constants included."""
        return len(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def __repr__(self) -> str:
        return (
            f"<fasttape.Graph: {self.n_nodes} nodes, {self.n_inputs} inputs, "
            f"{len(self._consts)} constants, {self.n_outputs} outputs>"
        )

    def to_dot(self, **kwargs: Any) -> str:
        """Graphviz DOT text of the graph (small graphs); see
        :func:`fasttape.embed.dot.graph_to_dot`."""
        from fasttape.embed.dot import graph_to_dot

        return graph_to_dot(self, **kwargs)

    # ------------------------------------------------------------------ raw arrays
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The graph's columns as NumPy arrays (views where possible; do not modify).

        Returns ``ops`` (uint8, per node), ``args`` (int32, concatenated), ``consts`` (float64),
        ``outputs`` (int64 node indices) and ``n_inputs``.
        """
        return {
            "ops": np.frombuffer(self._ops, dtype=np.uint8) if len(self._ops) else
            np.zeros(0, np.uint8),
            "args": np.frombuffer(self._args, dtype=np.int32) if len(self._args) else
            np.zeros(0, np.int32),
            "consts": np.frombuffer(self._consts, dtype=np.float64) if len(self._consts) else
            np.zeros(0, np.float64),
            "outputs": np.asarray(self._outputs, dtype=np.int64),
            "n_inputs": np.int64(self._n_inputs),
        }

    # ------------------------------------------------------------------ internals
    def _unary(self, code: int, a: int) -> Var:
        ops = self._ops
        ops.append(code)
        self._args.append(a)
        v = Var.__new__(Var)
        v.g = self
        v.i = len(ops) - 1
        return v

    def _binary(self, code: int, a: int, b: int) -> Var:
        ops = self._ops
        ops.append(code)
        args = self._args
        args.append(a)
        args.append(b)
        v = Var.__new__(Var)
        v.g = self
        v.i = len(ops) - 1
        return v

    def _node(self, code: int, arg_nodes: tuple[int, ...]) -> Var:
        self._ops.append(code)
        self._args.extend(arg_nodes)
        v = Var.__new__(Var)
        v.g = self
        v.i = len(self._ops) - 1
        return v

    def _constant_node(self, value: Any) -> int:
        """Node index of a constant equal (bitwise) to ``value``; created on first use."""
        if type(value) is not float:
            value = as_float(value)
        # Key on the bits so that 0.0 and -0.0 stay distinct and NaN finds itself.
        key = value if (value == value and value != 0.0) else struct.pack("<d", value)
        node = self._const_nodes.get(key)
        if node is None:
            node = len(self._ops)
            self._check_room(1)
            self._ops.append(CONST_CODE)
            self._args.append(len(self._consts))
            self._consts.append(value)
            self._const_nodes[key] = node
        return node

    def _check_room(self, n: int) -> None:
        if len(self._ops) + n > _MAX_NODES:
            raise ValueError(f"a Graph holds at most {_MAX_NODES} nodes")

    def _foreign(self, v: Var) -> None:
        raise ValueError(
            f"cannot combine {v!r} from another Graph with this one: every Var belongs to the "
            "Graph that created it. Build the whole function on one Graph (or one ft.trace call)."
        )


def as_float(value: Any) -> float:
    """Convert a Python or NumPy real number to float, with a clear error otherwise."""
    if isinstance(value, Var):  # a Var from the wrong path
        raise TypeError(f"expected a number, got {value!r}")
    if isinstance(value, (numbers.Real, np.floating, np.integer, np.bool_)):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "biuf":
        return float(value)
    if isinstance(value, (complex, np.complexfloating)):
        raise TypeError(f"fasttape works on real scalars; got the complex number {value!r}")
    raise TypeError(
        f"cannot use {type(value).__name__} {value!r:.60} in a fasttape graph: expected a "
        "traced variable or a real number (int, float, NumPy scalar)"
    )
