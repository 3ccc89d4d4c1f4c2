"""Compile: flatten a Graph into a Tape.

The pipeline: dead-code elimination (:mod:`fasttape.passes.dce`) finds the nodes the outputs
need, then the live nodes are renumbered into slots -- inputs first, then constants, then
instructions in creation order (already topological) -- and the arrays are gathered.  Every
step is a vectorised NumPy operation or one linear Numba pass; nothing recurses.
"""

from __future__ import annotations

import numpy as np

from fasttape.graph import Graph
from fasttape.ops import CONST_CODE, INPUT_CODE
from fasttape.passes.dce import GRAPH_ARITY, live_nodes
from fasttape.tape import GRAD_MODES, Tape

__all__ = ["compile"]

_INT32_MAX = np.iinfo(np.int32).max


def compile(graph: Graph, *, grad_mode: str = "stored") -> Tape:
    """Flatten ``graph`` into a :class:`~fasttape.tape.Tape`.

    Only nodes that some output depends on become instructions.  All inputs are kept (in order),
    so the tape takes the same ``x`` as the graph; unreachable inputs get gradient 0.

    Parameters
    ----------
    graph : Graph
        With at least one output marked by :meth:`Graph.output`.
    grad_mode : {"stored", "lean"}
        "stored" (default) saves each edge's partial derivative in the forward sweep, so the
        reverse sweep is a plain multiply-add per edge; "lean" recomputes partials in the
        reverse sweep and needs 16 bytes per slot of work memory instead of 16 + 8 per edge.
        See docs/tape-format.md for the measured trade-off.

    Returns
    -------
    Tape
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"compile() expects a fasttape.Graph, got {type(graph).__name__}")
    if graph.n_outputs == 0:
        raise ValueError("the graph has no outputs: mark them with graph.output(value)")
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
    a = graph.to_arrays()
    ops, args, consts_all, outputs = a["ops"], a["args"], a["consts"], a["outputs"]
    n_in = int(a["n_inputs"])

    live = live_nodes(ops, args, outputs)
    arity = GRAPH_ARITY[ops]
    start = np.cumsum(arity) - arity  # offset of each node's first argument

    is_input = ops == INPUT_CODE
    live_const = (ops == CONST_CODE) & live
    live_op = live & ~is_input & (ops != CONST_CODE)
    n_c = int(np.count_nonzero(live_const))
    n_op = int(np.count_nonzero(live_op))
    n_slots = n_in + n_c + n_op
    idx = np.int32 if n_slots <= _INT32_MAX else np.int64

    slot = np.full(len(ops), -1, dtype=np.int64)
    slot[is_input] = args[start[is_input]]  # an input's argument is its position
    slot[live_const] = np.arange(n_in, n_in + n_c)
    slot[live_op] = np.arange(n_in + n_c, n_slots)

    consts = consts_all[args[start[live_const]]]
    new_args = slot[args[np.repeat(live_op, arity)]].astype(idx)
    return Tape._trusted(ops[live_op], new_args, consts, slot[outputs], n_in, grad_mode)
