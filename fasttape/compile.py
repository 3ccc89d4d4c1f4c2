"""Compile: flatten a Graph into a Tape, then optimise it.

The pipeline: dead-code elimination (:mod:`fasttape.passes.dce`) finds the nodes the outputs
need, then the live nodes are renumbered into slots -- inputs first, then constants, then
instructions in creation order (already topological) -- and the arrays are gathered.  The
optimisation passes (:mod:`fasttape.passes.pipeline`: constant folding, exact simplification,
common subexpressions, slot reuse; docs/passes.md) then run on those arrays.  Every step is a
vectorised NumPy operation or one linear Numba pass; nothing recurses.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fasttape.graph import Graph
from fasttape.ops import CONST_CODE, INPUT_CODE, N_OPS
from fasttape.passes.dce import GRAPH_ARITY, live_nodes
from fasttape.passes.pipeline import PassRecord, optimize_arrays, resolve_passes
from fasttape.tape import GRAD_MODES, Tape
from fasttape.validate import validate_arrays

__all__ = ["compile"]

_INT32_MAX = np.iinfo(np.int32).max


def compile(
    graph: Graph,
    *,
    grad_mode: str = "stored",
    optimize: Any = True,
    finite_math: bool = False,
    memory_limit: int | None = None,
) -> Any:
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
    optimize : bool or list of str
        ``True`` (default) runs the default passes (dead code, constant folding, exact
        simplification, common subexpressions, slot reuse); ``False`` only drops dead code
        (the behaviour before the passes existed); a list names the passes to run, from
        ``fasttape.passes.PASS_NAMES`` (``[]``: every node becomes an instruction).  Values
        are bitwise those of the unoptimised tape; see docs/passes.md.
    finite_math : bool
        Opt in to simplifications that are exact only when every value is finite and the
        sign of zero does not matter (``x - x -> 0``, ``x * 0 -> 0``, ``x + 0.0 -> x``).
        Off by default.

    memory_limit : int, optional
        Bytes that one gradient may hold.  Returns a
        :class:`~fasttape.checkpoint.segments.CheckpointedTape` whose gradient stores
        checkpoints at segment boundaries and recomputes each segment in the reverse sweep
        when storing everything would not fit (docs/store-vs-recompute.md).

    Returns
    -------
    Tape
        ``tape.stats()["passes"]`` reports what each pass did.  A ``CheckpointedTape`` (same
        ``value`` / ``value_and_grad`` / ``grad`` / ``stats``, plus ``report``) when
        ``memory_limit`` is given.

    Examples
    --------
    >>> import fasttape as ft
    >>> g = ft.Graph()
    >>> x, y = g.inputs(2)
    >>> g.output(x * y + ft.sin(x))
    >>> tape = ft.compile(g)
    >>> tape.value([2.0, 3.0])
    6.909297426825682
    >>> print(tape)  # doctest: +ELLIPSIS
    <fasttape.Tape: 2 inputs, 0 constants, 3 instructions, 1 output; ...>
    ...
      %2 = mul(%0, %1)
      %3 = sin(%0)
      %4 = add(%2, %3)
      outputs: %4
    """
    if memory_limit is not None:
        from fasttape.checkpoint.segments import checkpointed

        tape = compile(graph, grad_mode=grad_mode, optimize=optimize, finite_math=finite_math)
        return checkpointed(tape, memory_limit)
    if not isinstance(graph, Graph):
        raise TypeError(f"compile() expects a fasttape.Graph, got {type(graph).__name__}")
    if graph.n_outputs == 0:
        raise ValueError("the graph has no outputs: mark them with graph.output(value)")
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
    passes = resolve_passes(optimize)
    t0 = time.perf_counter()
    arrays = _flatten(graph, dce="dce" in passes)
    if optimize is False:
        return _checked(graph, Tape._trusted(*(arrays[k] for k in (
            "ops", "args", "consts", "outputs", "n_inputs")), grad_mode))
    n_graph_ops = int(np.count_nonzero(graph.to_arrays()["ops"] < N_OPS))
    records = []
    if "dce" in passes:
        records.append(PassRecord("dce", n_graph_ops, int(arrays["ops"].shape[0]),
                                  time.perf_counter() - t0, "flatten"))
    # dce already ran while flattening; alone it needs no second run.
    rest = [p for p in passes if p != "dce" or len(passes) > 1]
    out, plan, records = optimize_arrays(arrays, rest, finite_math=finite_math,
                                         records=records)
    return _checked(graph, Tape._trusted(out["ops"], out["args"], out["consts"], out["outputs"],
                                         out["n_inputs"], grad_mode, plan=plan,
                                         passes=tuple(records)))


def _checked(graph: Graph, tape: Tape) -> Tape:
    """``tape``, once it passed the validator, remembered for ``tape.explain`` when the graph
    records sources.

    compile never emits a tape that fails validation, whatever the graph's columns hold (the
    kernels run without bounds checks); the check is one linear pass: 6 ms at 1e6 instructions,
    3% of a default compile (docs/architecture.md).
    """
    validate_arrays(tape.ops, tape.args, tape.consts, tape.outputs, tape.n_inputs)
    if graph.records_source:
        from fasttape import explain

        explain.remember(tape, graph)
    return tape


def _flatten(graph: Graph, dce: bool) -> dict[str, Any]:
    """The graph's nodes renumbered into tape arrays; only live ones with ``dce``."""
    a = graph.to_arrays()
    ops, args, consts_all, outputs = a["ops"], a["args"], a["consts"], a["outputs"]
    n_in = int(a["n_inputs"])

    live = live_nodes(ops, args, outputs) if dce else np.ones(len(ops), dtype=np.bool_)
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
    return {"ops": ops[live_op], "args": new_args, "consts": consts,
            "outputs": slot[outputs], "n_inputs": n_in}
