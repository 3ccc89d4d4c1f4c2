"""Value-slot reuse (live variables): instructions whose lifetimes do not overlap share a slot.

The tape's own arrays keep their meaning (one slot per instruction, docs/tape-format.md); the
plan is an extra, derived structure that the value path and the forward part of the
``"stored"`` gradient use:

``dest[i]``
    the work-vector slot instruction ``i`` writes;
``args[e]``
    the argument slots remapped into the work vector (inputs and constants keep their slots
    ``0 .. n_pre - 1``, which are never reused);
``outputs[j]``
    the output slots remapped likewise;
``n_work``
    the length of the work vector: ``n_pre`` plus the most instruction values alive at once.

Assignment is a linear scan in instruction order with a stack of free slots (the classic
interval-graph colouring, optimal for the given order: ``n_work - n_pre`` is the largest
number of values alive at once).  A value's last use is the last instruction that reads it;
outputs live to the end.  An instruction may write the slot of an argument that it reads for
the last time, because every sweep reads all of an instruction's arguments before writing its
result.

The reverse sweep stays exact with read-then-zero adjoints on the same slots: visiting the
instructions backwards, a slot's later owner is finished (its adjoint read and the slot zeroed)
before any reader of the earlier owner adds into it, since the later owner was assigned the
slot only at or after the earlier owner's last read.  The gradient is then bitwise the one of
the plain layout (the same additions in the same order), with a work vector of ``n_work``
values and adjoints instead of ``n_slots`` (the per-edge partials stay).  The ``"lean"`` mode
needs every value in its reverse sweep and ignores the plan.

The pipeline plans only tapes of at least :data:`MIN_SLOTS` slots (see there);
:func:`plan_slots` itself plans any tape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fasttape.kernels.jit import kernel
from fasttape.ops import N_OPS, OPS

__all__ = ["ReusePlan", "plan_slots", "MIN_SLOTS"]

#: The pipeline's ``reuse`` pass plans only tapes with at least this many slots.  Below it the
#: plain value vector (8 bytes per slot) fits in a core's L2 cache anyway, and the plan's extra
#: index load per instruction measured up to 7% slower on small structured graphs (mlp,
#: 20,000 instructions; docs/passes.md).  Above it the plan was as fast or faster on every
#: bench family.  Read at call time, so it can be changed (tests set it to 0).
MIN_SLOTS = 65_536

_ARITY = np.array([op.arity for op in OPS], dtype=np.int64)


@dataclass(frozen=True)
class ReusePlan:
    """A slot-reuse plan for one tape (see the module docstring).  Arrays are read-only."""

    dest: np.ndarray
    args: np.ndarray
    outputs: np.ndarray
    n_work: int

    @property
    def nbytes(self) -> int:
        """Bytes of the plan's arrays (part of the tape, shared by every thread)."""
        return int(self.dest.nbytes + self.args.nbytes + self.outputs.nbytes)


@kernel
def last_uses(ops, args, outputs, n_pre, arity):  # pragma: no cover (jitted)
    """Index of the last instruction reading each instruction's value (-1 if none).

    Outputs count as read after the last instruction (index ``len(ops)``).
    """
    n = ops.shape[0]
    last = np.full(n, -1, dtype=np.int64)
    k = 0
    for i in range(n):
        for j in range(arity[ops[i]]):
            s = args[k + j]
            if s >= n_pre:
                last[s - n_pre] = i
        k += arity[ops[i]]
    for j in range(outputs.shape[0]):
        s = outputs[j]
        if s >= n_pre:
            last[s - n_pre] = n
    return last


@kernel
def assign_slots(ops, args, outputs, n_pre, arity, dest, new_args,
                 new_outputs, inplace):  # pragma: no cover (jitted)
    """Linear-scan slot assignment; fills ``dest``, ``new_args``, ``new_outputs``.

    Returns ``n_work``.  A freed slot goes on a stack and is reused first (last in, first
    out), which keeps the work vector's hot part small.  With ``inplace`` an instruction may
    take the slot of an argument it reads for the last time (the smallest work set); without,
    its arguments' slots are freed only after its own is chosen, so it never writes a slot it
    reads (the batch sweeps need that: a loop over points whose input and output rows
    overlap does not vectorize).
    """
    n = ops.shape[0]
    last = last_uses(ops, args, outputs, n_pre, arity)
    free = np.empty(n + 1, dtype=np.int64)
    n_free = 0
    n_work = n_pre
    k = 0
    dying = np.empty(4, dtype=np.int64)
    for i in range(n):
        m = arity[ops[i]]
        n_dying = 0
        for j in range(m):
            s = args[k + j]
            if s < n_pre:
                new_args[k + j] = s
            else:
                d = dest[s - n_pre]
                new_args[k + j] = d
                if last[s - n_pre] == i:
                    dying[n_dying] = d
                    n_dying += 1
                    last[s - n_pre] = -2  # freed once even if read twice here
        if inplace:
            for j in range(n_dying):
                free[n_free] = dying[j]
                n_free += 1
        if n_free > 0:
            n_free -= 1
            d = free[n_free]
        else:
            d = n_work
            n_work += 1
        dest[i] = d
        if not inplace:
            for j in range(n_dying):
                free[n_free] = dying[j]
                n_free += 1
        if last[i] == -1:  # never read: its slot is free again right away
            free[n_free] = d
            n_free += 1
        k += m
    for j in range(outputs.shape[0]):
        s = outputs[j]
        new_outputs[j] = s if s < n_pre else dest[s - n_pre]
    return n_work


def plan_slots(ops: np.ndarray, args: np.ndarray, outputs: np.ndarray, n_pre: int, *,
               inplace: bool = True) -> ReusePlan:
    """Compute the slot-reuse plan of a (valid) tape's arrays.

    Parameters
    ----------
    ops, args, outputs : ndarray
        The tape's arrays (docs/tape-format.md).
    n_pre : int
        ``n_inputs + n_consts``.
    inplace : bool
        Let an instruction write the slot of an argument it reads last (the default, the
        smallest work set); False for the batch sweeps (see :func:`assign_slots`).
    """
    if np.any(ops >= N_OPS):  # callers pass validated tapes; this keeps the kernel in bounds
        raise ValueError("plan_slots needs a valid tape (op code out of range)")
    n = ops.shape[0]
    idx = args.dtype if args.dtype in (np.int32, np.int64) else np.int64
    dest = np.empty(n, dtype=idx)
    new_args = np.empty(args.shape[0], dtype=idx)
    new_outputs = np.empty(outputs.shape[0], dtype=np.int64)
    n_work = assign_slots(ops, args, outputs, n_pre, _ARITY, dest, new_args, new_outputs,
                          bool(inplace))
    # Read-only over bytes copies, so the flag cannot be turned back on: the planned kernels
    # index the work vector with these arrays without bounds checks.
    dest, new_args, new_outputs = (np.frombuffer(a.tobytes(), dtype=a.dtype)
                                   for a in (dest, new_args, new_outputs))
    return ReusePlan(dest, new_args, new_outputs, int(n_work))
