"""Dead-code elimination on tape arrays, for the array-built benchmark families.

``ft.compile`` drops the instructions no output depends on, and so do CasADi, JAX and ddx
when they build their functions; the random generators keep them (a random DAG leaves about
half of its instructions, or more, off every path to its one output).  Timing a tape that still
carries them against peers that dropped them would compare different work, so the benchmark
prunes array-built tapes first (:func:`prune`).
"""

from __future__ import annotations

import numpy as np

import fasttape as ft
from fasttape.kernels.jit import kernel
from fasttape.ops import OPS

__all__ = ["prune"]

_ARITY = np.array([op.arity for op in OPS], dtype=np.int64)


@kernel
def _mark(ops, args, arity, n_pre, live):  # pragma: no cover (jitted)
    # live[slot]: some output depends on it.  Last instruction first, so a slot's readers
    # are all decided before the slot itself.
    k = args.shape[0]
    for i in range(ops.shape[0] - 1, -1, -1):
        ar = arity[ops[i]]
        k -= ar
        if live[n_pre + i]:
            for j in range(ar):
                live[args[k + j]] = True


def prune(tape: ft.Tape) -> ft.Tape:
    """The tape without the instructions that no output depends on (inputs all kept).

    Constants are kept as they are (the random families have none).  Returns ``tape`` itself
    when nothing is dead.
    """
    n_pre = tape.n_inputs + tape.n_consts
    live = np.zeros(tape.n_slots, dtype=np.bool_)
    live[tape.outputs] = True
    _mark(tape.ops, tape.args, _ARITY, n_pre, live)
    keep = live[n_pre:]
    if keep.all():
        return tape
    new_slot = np.arange(tape.n_slots, dtype=np.int64)
    new_slot[n_pre:] = n_pre + np.cumsum(keep) - 1
    keep_args = np.repeat(keep, _ARITY[tape.ops])
    return ft.Tape.from_arrays(
        tape.ops[keep], new_slot[tape.args[keep_args]], tape.consts, new_slot[tape.outputs],
        tape.n_inputs, grad_mode=tape.grad_mode,
    )
