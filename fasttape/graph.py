"""The Graph: a flat, append-only record of nodes in creation (hence topological) order.

Storage is two ``array.array`` columns, not Python node objects, so that a graph of tens of
millions of nodes costs a few bytes per node and turns into NumPy arrays without copying:

``_ops``   (``'B'``)  op code per node; :data:`~fasttape.ops.INPUT_CODE`,
                      :data:`~fasttape.ops.PARAM_CODE` and :data:`~fasttape.ops.CONST_CODE`
                      mark inputs, parameters and constants;
``_args``  (``'i'``)  the arguments of every node, concatenated; an op's arity comes from the
                      table, so no offsets are stored.  An input's (a parameter's) one
                      "argument" is its input (parameter) position and a constant's is its index
                      in ``_consts``.

A node only ever refers to earlier nodes, so creation order is a topological order and nothing
in the pipeline needs recursion.

Recording is for one thread at a time.  Each node creation checks, after its appends, that no
other node was appended in between (one ``len`` and a compare: +2-3% on a 1.5e6-node trace,
where a lock costs 18-34%; docs/architecture.md).  A clash raises RuntimeError in the thread
that sees it and marks the Graph, which then refuses to compile: a Graph extended from several
threads at once is never compiled into a wrong tape.

``Graph(record_source=True)`` also records, per node, the user's source line that created it
(the first frame outside the fasttape package), for :meth:`fasttape.Tape.explain`.
"""

from __future__ import annotations

import numbers
import operator
import os
import struct
import sys
from array import array
from collections.abc import Iterable
from typing import Any

import numpy as np

from fasttape.ops import CONST_CODE, INPUT_CODE, PARAM_CODE
from fasttape.var import Var, is_integral_number

__all__ = ["Graph"]

_MAX_NODES = 2**31 - 1  # int32 argument columns

# Var's constructor without the attribute lookup of Var.__new__ (tracing hot path: one per node).
_new_var = object.__new__

# Frames whose file lies under this folder are fasttape's own; source recording skips them.
# Built from this module's __file__, so it is spelled exactly as the package's co_filename.
_PACKAGE_DIR = os.path.dirname(__file__) + os.sep

_CLASH = (
    "two threads added nodes to this Graph at the same time, so its columns no longer match "
    "(recording a Graph is not thread-safe) and it cannot be compiled. Record each Graph from "
    "one thread at a time: to trace in parallel, give each thread its own Graph (a compiled "
    "Tape can be evaluated from many threads at once)."
)


class Graph:
    """A scalar computational graph under construction.

    Create inputs with :meth:`inputs`, combine them with Python operators and ``ft.*``
    functions, mark results with :meth:`output`, then hand the graph to :func:`fasttape.compile`.

    Parameters
    ----------
    record_source : bool
        Record, for every node, the file, line and function of the user's code that created it
        (the first frame outside the fasttape package), so that :meth:`fasttape.Tape.explain`
        can name the line that produced a NaN.  Off by default: it costs a frame walk per node
        (measured in docs/debugging.md).

    Examples
    --------
    >>> import fasttape as ft
    >>> g = ft.Graph()
    >>> x = g.inputs(2)
    >>> g.output(x[0] * x[1] + 1)
    >>> ft.compile(g).value([2.0, 3.0])
    7.0
    """

    __slots__ = (
        "__weakref__", "_args", "_clash", "_const_nodes", "_consts", "_n_inputs", "_n_params",
        "_ops", "_outputs",
    )

    def __new__(cls, record_source: bool = False) -> Graph:
        # Source recording lives in a subclass, so a plain Graph's node creation pays nothing.
        if not isinstance(record_source, (bool, np.bool_)):
            raise TypeError(f"record_source must be True or False, got {record_source!r}")
        if record_source and cls is Graph:
            cls = _SourceGraph
        return object.__new__(cls)

    def __init__(self, record_source: bool = False) -> None:
        self._ops = array("B")
        self._args = array("i")
        self._consts = array("d")
        self._const_nodes: dict[Any, int] = {}
        self._n_inputs = 0
        self._n_params = 0
        self._outputs: list[int] = []
        self._clash = False

    # ------------------------------------------------------------------ building
    def inputs(self, n: int) -> list[Var]:
        """Add ``n`` scalar inputs and return them as a list of :class:`Var`.

        Inputs are numbered in creation order across calls; ``tape.value(x)`` takes them in
        that order.
        """
        n = _count_of(n, "inputs")
        out = self._leaves(INPUT_CODE, self._n_inputs, n)
        self._n_inputs += n
        return out

    def params(self, n: int) -> list[Var]:
        """Add ``n`` scalar parameters (non-differentiated inputs) and return them as Vars.

        A parameter is set at every evaluation (``tape.value(x, p=p)``) like an input, but no
        gradient is computed or returned for it (CasADi's ``p``, the arguments JAX's
        ``argnums`` leaves out): data such as a regression's ``X`` and ``y`` can change between
        calls without tracing again.  Parameters are numbered in creation order across calls,
        independently of the inputs; passes never fold them (they are not constants).
        """
        n = _count_of(n, "params")
        out = self._leaves(PARAM_CODE, self._n_params, n)
        self._n_params += n
        return out

    def _leaves(self, code: int, first: int, n: int) -> list[Var]:
        """Append ``n`` leaf nodes of ``code`` with positions ``first ..`` (inputs, params)."""
        ops = self._ops
        start = len(ops)
        self._check_room(n)
        ops.extend(array("B", [code]) * n)
        self._args.extend(array("i", range(first, first + n)))
        if len(ops) != start + n:
            self._concurrent()
        new = _new_var
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
        v = _new_var(Var)
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
    n_inputs = property(operator.attrgetter("_n_inputs"), doc="Number of inputs.")
    n_params = property(operator.attrgetter("_n_params"),
                        doc="Number of parameters (non-differentiated inputs, :meth:`params`).")

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

    @property
    def records_source(self) -> bool:
        """Whether this graph records the source line of every node (``record_source=True``)."""
        return False

    def source(self, node: int) -> tuple[str, int, str] | None:
        """``(filename, line, function)`` of the user code that created ``node``, or None when
        the graph does not record sources."""
        self._check_node(node)
        return None

    def op_code(self, node: int) -> int:
        """The op code of ``node``: its row in :data:`fasttape.ops.OPS`, or ``INPUT_CODE`` /
        ``CONST_CODE`` (:mod:`fasttape.ops`) for inputs and constants."""
        self._check_node(node)
        return int(self._ops[node])

    def copy(self) -> Graph:
        """An independent copy: nodes, constants, outputs (and recorded sources)."""
        self._check_usable()
        new = type(self).__new__(type(self))
        Graph.__init__(new)
        new._ops = array("B", self._ops)
        new._args = array("i", self._args)
        new._consts = array("d", self._consts)
        new._const_nodes = dict(self._const_nodes)
        new._n_inputs = self._n_inputs
        new._n_params = self._n_params
        new._outputs = list(self._outputs)
        return new

    def __repr__(self) -> str:
        params = f"{self._n_params} params, " if self._n_params else ""
        return (
            f"<fasttape.Graph: {self.n_nodes} nodes, {self.n_inputs} inputs, {params}"
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
        ``outputs`` (int64 node indices), ``n_inputs`` and ``n_params``.
        """
        self._check_usable()
        return {
            "ops": np.frombuffer(self._ops, dtype=np.uint8) if len(self._ops) else
            np.zeros(0, np.uint8),
            "args": np.frombuffer(self._args, dtype=np.int32) if len(self._args) else
            np.zeros(0, np.int32),
            "consts": np.frombuffer(self._consts, dtype=np.float64) if len(self._consts) else
            np.zeros(0, np.float64),
            "outputs": np.asarray(self._outputs, dtype=np.int64),
            "n_inputs": np.int64(self._n_inputs),
            "n_params": np.int64(self._n_params),
        }

    # ------------------------------------------------------------------ internals
    # Node creation: read the index, append, then check that exactly one node was appended.
    # Any other thread's append between the read and the check (ops or args) fails the check
    # in this thread or in the other one, so an interleaving never goes unnoticed.
    # One method for every arity (the table's ops take one to three arguments): the unused
    # arguments' compares cost what a second method's call would save, and the Var is made
    # with object.__new__ bound once (_new_var), cheaper than looking up Var.__new__.
    def _node(self, code: int, a: int, b: int = -1, c: int = -1) -> Var:
        """Append a node of op ``code`` on nodes ``a`` (, ``b``, ``c``: as many as its arity;
        node indices are never negative) and return its Var."""
        ops = self._ops
        i = len(ops)
        ops.append(code)
        args = self._args
        args.append(a)
        if b >= 0:
            args.append(b)
            if c >= 0:
                args.append(c)
        if len(ops) != i + 1:
            self._concurrent()
        v = _new_var(Var)
        v.g = self
        v.i = i
        return v

    def _constant_node(self, value: Any) -> int:
        """Node index of a constant equal (bitwise) to ``value``; created on first use."""
        if type(value) is not float:
            value = as_float(value)
        # Key on the bits so that 0.0 and -0.0 stay distinct and NaN finds itself.
        key = value if (value == value and value != 0.0) else struct.pack("<d", value)
        node = self._const_nodes.get(key)
        if node is None:
            ops = self._ops
            node = len(ops)
            self._check_room(1)
            ops.append(CONST_CODE)
            self._args.append(len(self._consts))
            self._consts.append(value)
            if len(ops) != node + 1:
                self._concurrent()
            self._const_nodes[key] = node
        return node

    def _concurrent(self) -> None:
        self._clash = True  # compile and to_arrays refuse this graph from now on
        raise RuntimeError(_CLASH)

    def _check_usable(self) -> None:
        if self._clash:
            raise RuntimeError(_CLASH)

    def _check_node(self, node: Any) -> None:
        if not is_integral_number(node) or not 0 <= node < len(self._ops):
            raise ValueError(
                f"node must be an int in 0..{len(self._ops) - 1} (this graph's nodes), "
                f"got {node!r}"
            )

    def _check_room(self, n: int) -> None:
        if len(self._ops) + n > _MAX_NODES:
            raise ValueError(f"a Graph holds at most {_MAX_NODES} nodes")

    def _foreign(self, v: Var) -> None:
        raise ValueError(
            f"cannot combine {v!r} from another Graph with this one: every Var belongs to the "
            "Graph that created it. Build the whole function on one Graph (or one ft.trace call)."
        )


class _SourceGraph(Graph):
    """A Graph that also records, per node, where the user's code created it.

    ``_src[node]`` indexes ``_src_keys``, the distinct ``(code object, line)`` pairs seen; the
    code object gives the file and function name when asked (:meth:`source`).  Every
    node-creating method runs the plain Graph's, then labels the nodes it appended (a constant
    created on the way gets the line of the op that needed it).
    """

    __slots__ = ("_src", "_src_ids", "_src_keys")

    def __init__(self, record_source: bool = True) -> None:
        super().__init__()
        self._src = array("i")
        self._src_keys: list[tuple[Any, int]] = []
        self._src_ids: dict[tuple[Any, int], int] = {}

    @property
    def records_source(self) -> bool:
        return True

    def source(self, node: int) -> tuple[str, int, str] | None:
        self._check_node(node)
        code, line = self._src_keys[self._src[node]]
        if code is None:
            return ("<unknown>", 0, "")
        return (code.co_filename, line, code.co_name)

    def copy(self) -> Graph:
        new = super().copy()
        assert isinstance(new, _SourceGraph)
        new._src = array("i", self._src)
        new._src_keys = list(self._src_keys)
        new._src_ids = dict(self._src_ids)
        return new

    def _label(self, n: int) -> None:
        """Label the last ``n`` nodes with the first frame outside fasttape."""
        f = sys._getframe(2)
        while f is not None and f.f_code.co_filename.startswith(_PACKAGE_DIR):
            f = f.f_back
        key = (None, 0) if f is None else (f.f_code, f.f_lineno)
        ids = self._src_ids
        sid = ids.get(key)
        if sid is None:
            sid = ids[key] = len(self._src_keys)
            self._src_keys.append(key)
        if n == 1:
            self._src.append(sid)
        else:
            self._src.extend(array("i", [sid]) * n)

    def inputs(self, n: int) -> list[Var]:
        out = super().inputs(n)
        self._label(len(out))
        return out

    def params(self, n: int) -> list[Var]:
        out = super().params(n)
        self._label(len(out))
        return out

    def _node(self, code: int, a: int, b: int = -1, c: int = -1) -> Var:
        v = Graph._node(self, code, a, b, c)
        self._label(1)
        return v

    def _constant_node(self, value: Any) -> int:
        n = len(self._ops)
        node = Graph._constant_node(self, value)
        if len(self._ops) != n:  # a new constant (an existing one keeps its first label)
            self._label(1)
        return node


def _count_of(n: Any, method: str) -> int:
    """``n`` as a count of new leaves for ``Graph.<method>(n)``, or a clear ValueError."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"{method}(n) expects a non-negative integer n, got {n!r}")
    return int(n)


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
