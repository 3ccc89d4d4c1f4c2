"""The linear region of a tape as a tape of its own: what sparse plans preaccumulate.

A weighted Hessian's reverse sweep spends most of its time, on the constraints of an
optimal-control problem, carrying adjoints back through instructions with constant partials
(``add``, ``sub``, ``mulc``: the collocation equations) from the outputs to the few
nonlinear instructions.  Those adjoints are a fixed linear function of the weights, so a plan
can compute that function once, as a matrix, and seed the nonlinear instructions with it
instead of sweeping the region at every call (:class:`fasttape.sparse.SparseHessian`'s
``preaccumulate``).

:func:`region_tape` cuts the region out: its instructions become a tape whose inputs are the
*boundary* slots (the slots the region reads that are computed outside it, and the outputs
computed outside it) and whose outputs are the original tape's; the Jacobian of that tape is
the matrix.  Partials of constant-partial ops read only constant slots (the op table's
``param == "const"`` arguments, which the validator keeps constant), so the new tape keeps
the constants and its Jacobian is the same at every point.
"""

from __future__ import annotations

import numpy as np

from fasttape.ops import OPS
from fasttape.tape import TapeRecord

__all__ = ["core_tape", "region_reads", "region_tape"]

_ARITY = np.array([op.arity for op in OPS], np.int64)
_NDIFF = np.array([op.ndiff for op in OPS], np.int64)


def region_tape(tape: TapeRecord, region: np.ndarray, boundary: np.ndarray
                ) -> tuple[TapeRecord, np.ndarray, np.ndarray]:
    """The instructions ``region`` of ``tape`` as a tape of their own.

    Parameters
    ----------
    tape : TapeRecord
        Valid (its arrays come from fasttape).
    region : ndarray of bool, shape (n_instructions,)
        The instructions to keep, in tape order.  Their ops must have constant partials.
    boundary : ndarray of bool, shape (n_slots,)
        The slots that become the new tape's inputs, in slot order, none of them in the
        region: the slots outside it whose derivatives are wanted (those the region reads
        through differentiable arguments, outputs computed outside it).  Constant slots
        among them are left constants.  Every
        other slot the region reads outside itself (and outside the constants) reads as a
        zero constant: its derivative is not wanted, and constant partials never read it.

    Returns
    -------
    sub : TapeRecord
        Inputs: the boundary slots, in order.  Constants: ``tape``'s, then one ``0.0``.
        Outputs: ``tape``'s, each the new slot of its old one (a zero constant when that is
        neither in the region nor on the boundary).
    slots : ndarray of int64
        The boundary slots (``sub``'s input ``b`` is ``tape``'s slot ``slots[b]``).
    where : ndarray of int64, shape (n_slots,)
        The slot of ``sub`` that each slot of ``tape`` became (the zero constant for those
        left out).
    """
    n_in = tape.n_inputs + tape.n_params
    n_pre = n_in + tape.n_consts
    # Constants stay constants (their derivative is 0, and a constant-partial op such as
    # ``mulc`` reads its factor from one).
    slots = np.flatnonzero(boundary).astype(np.int64)
    slots = slots[(slots < n_in) | (slots >= n_pre)]
    n_b = len(slots)
    keep = np.flatnonzero(region)
    zero = n_b + tape.n_consts  # the extra constant
    where = np.full(tape.n_slots, zero, np.int64)
    where[n_in:n_pre] = np.arange(n_b, n_b + tape.n_consts)
    where[n_pre + keep] = n_b + tape.n_consts + 1 + np.arange(len(keep))
    where[slots] = np.arange(n_b)  # last: a boundary slot is read as the input
    arity = _ARITY[tape.ops]
    start = np.zeros(len(arity), np.int64)
    np.cumsum(arity[:-1], out=start[1:])
    # The argument positions of the kept instructions, in order.
    counts = arity[keep]
    first = np.repeat(start[keep], counts)
    offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    args = where[tape.args[first + offset]].astype(tape.args.dtype)
    consts = np.append(tape.consts, 0.0)
    outputs = where[tape.outputs]
    sub = TapeRecord.from_trusted_arrays(tape.ops[keep].copy(), args, consts, outputs, n_b)
    return sub, slots, where


def core_tape(tape: TapeRecord, keep: np.ndarray) -> tuple[TapeRecord, np.ndarray]:
    """The instructions ``keep`` (bool, one per instruction) of ``tape`` as a compact tape:
    the same inputs, parameters and constants in the same slots, then one ``0.0`` constant
    (what an argument outside ``keep`` reads), then the kept instructions in order.

    What the sparse plans' entry programs run (:mod:`fasttape.kernels.entries`): their
    steps are a fraction of the tape, spread over it, and on a compact tape their values,
    adjoints and arguments stay in a few contiguous megabytes instead of the whole tape's.
    Returns the tape and ``where`` (:func:`region_tape`'s).
    """
    n_in = tape.n_inputs + tape.n_params
    boundary = np.zeros(tape.n_slots, np.bool_)
    boundary[:n_in] = True
    sub, _, where = region_tape(tape, keep, boundary)
    return TapeRecord.from_trusted_arrays(sub.ops, sub.args, sub.consts, sub.outputs,
                                          tape.n_inputs, n_params=tape.n_params), where


def region_reads(tape: TapeRecord, region: np.ndarray) -> np.ndarray:
    """The slots that the instructions ``region`` read through differentiable arguments
    (bool, shape ``(n_slots,)``)."""
    arity = _ARITY[tape.ops]
    ndiff = _NDIFF[tape.ops]
    start = np.zeros(len(arity), np.int64)
    np.cumsum(arity[:-1], out=start[1:])
    keep = np.flatnonzero(region)
    counts = ndiff[keep]
    first = np.repeat(start[keep], counts)
    offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    read = np.zeros(tape.n_slots, np.bool_)
    read[tape.args[first + offset]] = True
    return read
