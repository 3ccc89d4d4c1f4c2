"""Dead-code elimination: find the nodes that some output depends on."""

from __future__ import annotations

import numpy as np

from fasttape.kernels.structure import mark_live
from fasttape.ops import CONST_CODE, INPUT_CODE, N_OPS, OPS

#: Arity of every graph op code (inputs and constants carry one non-node argument).
GRAPH_ARITY = np.zeros(256, dtype=np.int64)
GRAPH_ARITY[: N_OPS] = [op.arity for op in OPS]
GRAPH_ARITY[INPUT_CODE] = 1
GRAPH_ARITY[CONST_CODE] = 1


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
