"""Compile: flatten a Graph into a tape, then optimise it.

The pipeline: dead-code elimination (:mod:`fasttape.passes.dce`) finds the nodes the outputs
need, then the live nodes are renumbered into slots -- inputs first, then parameters, then
constants, then instructions in creation order (already topological) -- and the arrays are
gathered.  The optimisation passes (:mod:`fasttape.passes.pipeline`: constant folding, exact
simplification, common subexpressions, slot reuse; docs/passes.md) then run on those arrays.
Every step is a vectorised NumPy operation or one linear Numba pass; nothing recurses.

``ft.compile`` (:func:`fasttape.api.compile`) calls :func:`compile_graph` with the user-facing
:class:`fasttape.Tape` and adds ``memory_limit=`` (checkpointing sits above this module).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fasttape.graph import Graph
from fasttape.ops import CONST_CODE, INPUT_CODE, N_OPS, PARAM_CODE
from fasttape.passes.dce import GRAPH_ARITY, live_nodes
from fasttape.passes.pipeline import PassRecord, optimize_arrays, resolve_passes
from fasttape.tape import GRAD_MODES, TapeRecord
from fasttape.validate import validate_arrays

__all__ = ["compile_graph"]

_INT32_MAX = np.iinfo(np.int32).max


def compile_graph(
    graph: Graph,
    *,
    grad_mode: str = "stored",
    optimize: Any = True,
    finite_math: bool = False,
    tape_class: type[TapeRecord] = TapeRecord,
) -> Any:
    """Flatten ``graph`` into a tape of class ``tape_class``: the work of :func:`fasttape.compile`.

    What becomes an instruction, and what each option means, is documented on
    :func:`fasttape.compile`; this function adds only the choice of tape class.

    Parameters
    ----------
    graph, grad_mode, optimize, finite_math
        As in :func:`fasttape.compile`.
    tape_class : type
        :class:`~fasttape.tape.TapeRecord` or a subclass (``ft.compile`` passes
        :class:`fasttape.Tape`).

    Returns
    -------
    TapeRecord
        An instance of ``tape_class``; ``tape.pass_records`` says what each pass did.

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
        return _checked(graph, tape_class, grad_mode, arrays)
    n_graph_ops = int(np.count_nonzero(graph.to_arrays()["ops"] < N_OPS))
    records = []
    if "dce" in passes:
        records.append(PassRecord("dce", n_graph_ops, int(arrays["ops"].shape[0]),
                                  time.perf_counter() - t0, "flatten"))
    # dce already ran while flattening; alone it needs no second run.
    rest = [p for p in passes if p != "dce" or len(passes) > 1]
    out, plan, records = optimize_arrays(arrays, rest, finite_math=finite_math,
                                         records=records)
    return _checked(graph, tape_class, grad_mode, out, reuse_plan=plan, pass_records=records)


def _checked(graph: Graph, tape_class: type[TapeRecord], grad_mode: str, arrays: dict[str, Any],
             **extra: Any) -> Any:
    """The tape of ``arrays``, once it passed the validator.

    compile never emits a tape that fails validation, whatever the graph's columns hold (the
    kernels run without bounds checks); the check is one linear pass: 6 ms at 1e6 instructions,
    3% of a default compile (docs/architecture.md).  A graph that records sources travels with
    the tape (a private copy) for ``tape.explain``.
    """
    a = [arrays[k] for k in ("ops", "args", "consts", "outputs", "n_inputs")]
    n_params = int(arrays.get("n_params", 0))
    validate_arrays(*a, n_params=n_params)
    source = graph.copy() if graph.records_source else None
    return tape_class.from_trusted_arrays(*a, grad_mode, n_params=n_params, source_graph=source,
                                          **extra)


def _flatten(graph: Graph, dce: bool) -> dict[str, Any]:
    """The graph's nodes renumbered into tape arrays; only live ones with ``dce``."""
    a = graph.to_arrays()
    ops, args, consts_all, outputs = a["ops"], a["args"], a["consts"], a["outputs"]
    n_in = int(a["n_inputs"])
    n_p = int(a["n_params"])
    n_lead = n_in + n_p  # inputs, then params: both kept even when unused

    live = live_nodes(ops, args, outputs) if dce else np.ones(len(ops), dtype=np.bool_)
    arity = GRAPH_ARITY[ops]
    start = np.cumsum(arity) - arity  # offset of each node's first argument

    is_input = ops == INPUT_CODE
    is_param = ops == PARAM_CODE
    live_const = (ops == CONST_CODE) & live
    live_op = live & (ops < N_OPS)
    n_c = int(np.count_nonzero(live_const))
    n_op = int(np.count_nonzero(live_op))
    n_slots = n_lead + n_c + n_op
    idx = np.int32 if n_slots <= _INT32_MAX else np.int64

    slot = np.full(len(ops), -1, dtype=np.int64)
    slot[is_input] = args[start[is_input]]  # an input's argument is its position
    if n_p:
        slot[is_param] = n_in + args[start[is_param]]  # params follow the inputs
    slot[live_const] = np.arange(n_lead, n_lead + n_c)
    slot[live_op] = np.arange(n_lead + n_c, n_slots)

    consts = consts_all[args[start[live_const]]]
    new_args = slot[args[np.repeat(live_op, arity)]].astype(idx)
    return {"ops": ops[live_op], "args": new_args, "consts": consts,
            "outputs": slot[outputs], "n_inputs": n_in, "n_params": n_p}
