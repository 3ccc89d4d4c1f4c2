"""The passes' working form: a graph with fixed-width arguments and a replacement map.

The optimisation passes (:mod:`~fasttape.passes.fold`, :mod:`~fasttape.passes.simplify`,
:mod:`~fasttape.passes.cse`) rewrite this structure in place, one linear Numba sweep each;
:func:`to_tape_arrays` then drops dead and replaced nodes and renumbers the survivors into a
tape (docs/tape-format.md).  Why this form:

- **Nodes, not slots.**  Inputs, constants and instructions are all nodes, in one topological
  order (as in a :class:`~fasttape.graph.Graph`), so a pass can turn an instruction into a
  constant in place (constant folding) without renumbering anything.
- **Fixed width.**  ``a[i]`` holds node ``i``'s (at most three) arguments, so a pass can read
  the arguments of any earlier node (``neg(neg(x))``, CSE key comparison) without an offset
  table.  Unused entries are -1.
- **Replacement, not deletion.**  A pass that finds node ``i`` equal to an earlier node ``t``
  sets ``rep[i] = t`` and leaves the arrays alone; every sweep starts each node by mapping its
  arguments through ``rep`` (and path-compressing ``rep``), so later nodes see the survivor.
  Deleting is done once, at the end, together with dead-code elimination.

An input node's ``a[i, 0]`` is its input position, a constant node's is its index in ``consts``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fasttape.kernels.jit import kernel
from fasttape.ops import CONST_CODE, INPUT_CODE, N_OPS
from fasttape.passes.dce import GRAPH_ARITY, mark_live_ir, resolve

__all__ = ["IR", "from_columns", "from_tape_arrays", "to_tape_arrays"]

_INT32_MAX = np.iinfo(np.int32).max


@dataclass
class IR:
    """Mutable working graph of the optimisation passes (see the module docstring).

    Attributes
    ----------
    ops : ndarray of uint8, shape (N,)
        Op code per node; ``INPUT_CODE`` / ``CONST_CODE`` for inputs and constants.
    a : ndarray of int64, shape (N, 3)
        Arguments per node (node indices), -1 where the op has fewer than three.
    consts : ndarray of float64
        Constant values; passes may append (folded values).
    rep : ndarray of int64, shape (N,)
        ``rep[i] == i`` for a surviving node, else an earlier node that replaces it.
    outputs : ndarray of int64
        Output node indices (map them through ``rep``).
    n_inputs : int
    """

    ops: np.ndarray
    a: np.ndarray
    consts: np.ndarray
    rep: np.ndarray
    outputs: np.ndarray
    n_inputs: int

    @property
    def n_instructions(self) -> int:
        """Surviving op nodes (not replaced, not constants or inputs); dead ones included."""
        return int(np.count_nonzero((self.rep == np.arange(len(self.rep))) & (self.ops < N_OPS)))

    def add_const(self, value: float) -> int:
        """Append a constant value and return its index in ``consts``."""
        self.consts = np.append(self.consts, np.float64(value))
        return len(self.consts) - 1


@kernel
def _fill(ops, args, arity, a):  # pragma: no cover (jitted)
    # Scatter concatenated arguments into the fixed-width rows.
    k = 0
    for i in range(ops.shape[0]):
        for j in range(arity[ops[i]]):
            a[i, j] = args[k]
            k += 1


@kernel
def _renumber(ops, a, live, consts, arity, n_real_ops, input_code, const_code, n_in,
              out_args):  # pragma: no cover (jitted)
    """Slot of every live node, the kept ops and constants; fills ``out_args``.

    Returns ``(slot, new_ops, new_consts, n_edges)``.
    """
    n = ops.shape[0]
    n_c = 0
    n_op = 0
    for i in range(n):
        if live[i]:
            if ops[i] == const_code:
                n_c += 1
            elif ops[i] < n_real_ops:
                n_op += 1
    slot = np.full(n, -1, dtype=np.int64)
    new_ops = np.empty(n_op, dtype=np.uint8)
    new_consts = np.empty(n_c, dtype=np.float64)
    c = 0
    m = 0
    k = 0
    n_pre = n_in + n_c
    for i in range(n):
        op = ops[i]
        if op == input_code:
            slot[i] = a[i, 0]
        elif not live[i]:
            continue
        elif op == const_code:
            slot[i] = n_in + c
            new_consts[c] = consts[a[i, 0]]
            c += 1
        else:
            slot[i] = n_pre + m
            new_ops[m] = op
            m += 1
            for j in range(arity[op]):
                out_args[k] = slot[a[i, j]]
                k += 1
    return slot, new_ops, new_consts, k


def from_columns(
    ops: np.ndarray, args: np.ndarray, consts: np.ndarray, outputs: np.ndarray, n_inputs: int
) -> IR:
    """Working form of Graph-style columns (variable-width ``args``, GRAPH_ARITY per node)."""
    ops = np.array(ops, dtype=np.uint8)  # a copy: passes write into it
    args = np.asarray(args, dtype=np.int64)
    n = ops.shape[0]
    a = np.full((n, 3), -1, dtype=np.int64)
    _fill(ops, args, GRAPH_ARITY, a)
    return IR(ops, a, np.array(consts, dtype=np.float64), np.arange(n, dtype=np.int64),
              np.array(outputs, dtype=np.int64), int(n_inputs))


def from_tape_arrays(
    ops: np.ndarray, args: np.ndarray, consts: np.ndarray, outputs: np.ndarray, n_inputs: int
) -> IR:
    """Working form of a tape's arrays: input and constant nodes first, then instructions."""
    n_c = len(consts)
    col_ops = np.concatenate([
        np.full(n_inputs, INPUT_CODE, np.uint8), np.full(n_c, CONST_CODE, np.uint8),
        np.asarray(ops, np.uint8),
    ])
    col_args = np.concatenate([
        np.arange(n_inputs, dtype=np.int64), np.arange(n_c, dtype=np.int64),
        np.asarray(args, np.int64),
    ])
    return from_columns(col_ops, col_args, consts, outputs, n_inputs)


def to_tape_arrays(ir: IR, dce: bool = True) -> dict:
    """Renumber the surviving nodes into tape arrays (inputs, constants, instructions).

    With ``dce`` only nodes that an output depends on are kept (dead-code elimination);
    without it every surviving node is.  All inputs are always kept, in order.

    Returns
    -------
    dict
        ``ops, args, consts, outputs, n_inputs`` as :meth:`Tape.from_arrays` takes them.
    """
    resolve(ir.ops, ir.a, ir.rep, GRAPH_ARITY, N_OPS)
    ops, a, rep = ir.ops, ir.a, ir.rep
    outputs = rep[ir.outputs]
    n_in = ir.n_inputs
    if dce:
        live = np.zeros(len(ops), dtype=np.bool_)
        live[outputs] = True
        mark_live_ir(ops, a, GRAPH_ARITY, N_OPS, live)
    else:
        live = rep == np.arange(len(rep))
    out_args = np.empty(int(GRAPH_ARITY[ops[live & (ops < N_OPS)]].sum()), dtype=np.int64)
    slot, new_ops, new_consts, _ = _renumber(ops, a, live, ir.consts, GRAPH_ARITY, N_OPS,
                                             INPUT_CODE, CONST_CODE, n_in, out_args)
    n_slots = n_in + new_consts.shape[0] + new_ops.shape[0]
    idx = np.int32 if n_slots <= _INT32_MAX else np.int64
    return {
        "ops": new_ops,
        "args": out_args.astype(idx),
        "consts": new_consts,
        "outputs": slot[outputs],
        "n_inputs": n_in,
    }
