"""Dead-code elimination: find the nodes that some output depends on.

``live_nodes`` works on a Graph's columns (used by :func:`fasttape.compile` when flattening);
``mark_live_ir`` and ``resolve`` work on the passes' fixed-width form
(:mod:`fasttape.passes.ir`), whose ``to_tape_arrays`` runs dead-code elimination last.
"""

from __future__ import annotations

import numpy as np

from fasttape.kernels.jit import kernel
from fasttape.kernels.structure import mark_live
from fasttape.ops import CONST_CODE, INPUT_CODE, N_OPS, OPS, PARAM_CODE
from fasttape.passes.rep import replaced, resolve_args

#: Arity of every graph op code (inputs, params and constants carry one non-node argument).
GRAPH_ARITY = np.zeros(256, dtype=np.int64)
GRAPH_ARITY[: N_OPS] = [op.arity for op in OPS]
GRAPH_ARITY[INPUT_CODE] = 1
GRAPH_ARITY[CONST_CODE] = 1
GRAPH_ARITY[PARAM_CODE] = 1


def live_nodes(ops: np.ndarray, args: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Boolean mask of the nodes that the ``outputs`` depend on (outputs included).

    Parameters
    ----------
    ops, args : ndarray
        A Graph's op-code column (uint8) and concatenated arguments (int32).
    outputs : ndarray of int64
        Node indices of the outputs.

    Returns
    -------
    ndarray of bool, shape (len(ops),)
    """
    live = np.zeros(len(ops), dtype=np.bool_)
    live[outputs] = True
    mark_live(ops, args, GRAPH_ARITY, N_OPS, live)
    return live


@kernel
def mark_live_ir(ops, a, arity, n_real_ops, live):  # pragma: no cover (jitted)
    """As :func:`~fasttape.kernels.structure.mark_live` on the passes' fixed-width form.

    ``a[i, j]`` is the ``j``-th argument of node ``i``; arguments must already be resolved
    through the replacement map (:func:`resolve`).  Walks backwards once.
    """
    for i in range(ops.shape[0] - 1, -1, -1):
        op = ops[i]
        if live[i] and op < n_real_ops:
            for j in range(arity[op]):
                live[a[i, j]] = True


@kernel
def resolve(ops, a, rep, arity, n_real_ops):  # pragma: no cover (jitted)
    """Map every surviving node's arguments through ``rep`` and path-compress ``rep``.

    Forward order: a replaced node's target is earlier, hence already final.  Each pass's
    own sweep does the same per node; this is the stand-alone version used before renumbering.
    """
    for i in range(ops.shape[0]):
        if replaced(rep, i):
            continue
        op = ops[i]
        if op < n_real_ops:
            resolve_args(a, rep, i, arity[op])
