"""Flat-tape checkpointing: reverse one huge tape segment by segment under a memory budget.

After Chen, Xu, Zhang and Guestrin, "Training deep nets with sublinear memory cost" (2016).
The instructions are cut into segments of ``L`` consecutive instructions.  The first forward
sweep runs segment by segment and keeps only the *checkpoints*: the values of slots read by
a later segment (the values that cross a boundary).  The reverse sweep then visits the
segments last to first; each is recomputed from its checkpoints with partials
(``forward_partials``) into small local buffers and reversed (``reverse_stored``).  Cost:
about one extra forward sweep; memory: the checkpoints plus one segment's buffers, about
``2 sqrt(N)`` values for a chain of ``N`` instructions with ``L = sqrt(N)``.

Local slots.  A segment's buffers hold its *externals* (inputs, constants and earlier slots
it reads, sorted) first, then its own instructions; its arguments are rewritten to these
local slots as it is loaded (a subtraction, or a bisection among the externals), so the core
sweeps of ``kernels/sweep.py`` run unchanged on a slice of the tape's ``ops``.

Bitwise equality.  The store-everything reverse sweep adds each slot's adjoint contributions
as one running sum in reverse instruction order.  Here a crossing slot's sum is carried from
segment to segment (``pend``), and input adjoints in ``acc_pre``: each segment starts its
externals' adjoints from the carried sum instead of zero, so every addition happens in the
same order on the same operands.

When it cannot help.  If most values are read far away (every segment reads most earlier
slots), the checkpoints are nearly the whole value vector and segmenting saves nothing; the
plan then falls back to the plain gradient and the report says so (with a
:class:`~fasttape.checkpoint.report.CheckpointWarning` when the budget is not met).
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from fasttape.checkpoint.report import CheckpointReport, CheckpointWarning
from fasttape.kernels import checkpoint as _k
from fasttape.kernels.dispatch import ARITY

# Any tape will do: this module uses only the record's interface.
from fasttape.tape import TapeRecord as Tape

__all__ = ["CheckpointedTape", "checkpointed", "SegmentPlan", "plan_nbytes"]

#: Largest segment length preferred when several fit the budget: one segment's buffers
#: (about 28 bytes per instruction) then stay in the CPU's L2 cache.
PREFERRED_MAX_SEGMENT = 1 << 15


@dataclass
class SegmentPlan:
    """Segment length and the sizes that decide the memory of a segmented gradient."""

    seg_len: int
    n_seg: int
    n_ext: int  # externals summed over segments
    n_cross: int  # checkpoints: instruction slots read by a later segment
    e_max: int  # most externals of one segment
    edges_max: int  # most arguments of one segment
    work_nbytes: int  # allocated per gradient call
    plan_nbytes: int  # held by the plan arrays

    @property
    def nbytes(self) -> int:
        return self.work_nbytes + self.plan_nbytes


def _sizes(tape: Tape, seg_len: int, counts: tuple[int, int, int, int]) -> SegmentPlan:
    n_ext, n_cross, e_max, edges_max = (int(v) for v in counts)
    n_seg = -(-tape.n_instructions // seg_len)
    n_pre = tape.n_inputs + tape.n_consts
    idx = tape.args.dtype.itemsize
    work = (
        16 * n_cross  # checkpoint values and carried adjoints
        + 8 * n_pre  # input and constant adjoints
        + 8 * e_max  # gathered externals
        + 4 * edges_max  # local arguments (int32)
        + 8 * edges_max  # partials
        + 16 * (e_max + seg_len)  # local values and adjoints
        + 8 * tape.n_inputs  # the gradient
    )
    ptr = 4 if tape.n_edges < 2**31 else 8
    plan = 3 * ptr * (n_seg + 1) + 2 * idx * n_ext + idx * n_cross
    return SegmentPlan(seg_len, n_seg, n_ext, n_cross, e_max, edges_max, work, plan)


def store_all_nbytes(tape: Tape) -> int:
    """Work bytes of the plain stored-mode gradient (values, adjoints, partials, gradient)."""
    return tape.with_grad_mode("stored").work_nbytes(grad=True) + 8 * tape.n_inputs


def plan_nbytes(tape: Tape, seg_len: int) -> SegmentPlan:
    """Sizes of the segmented gradient of ``tape`` with segments of ``seg_len`` instructions."""
    n_pre = tape.n_inputs + tape.n_consts
    last = np.full(tape.n_slots, -1, np.int64)
    cross = np.zeros(tape.n_slots, np.bool_)
    counts = _k.segment_counts(tape.ops, tape.args, ARITY, n_pre, seg_len, last, cross)
    return _sizes(tape, seg_len, counts)


class CheckpointedTape:
    """A tape whose gradient keeps within ``memory_limit`` bytes; see :func:`checkpointed`.

    Attributes
    ----------
    tape : Tape
        The underlying tape (its own arrays are not counted in the budget).
    memory_limit : int
    plan : SegmentPlan or None
        ``None`` when the plain gradient is used (it fits, or segmenting cannot help).
    report : CheckpointReport
        What a gradient call holds at peak and recomputes.
    """

    def __init__(self, tape: Tape, memory_limit: int, *, segment_length: int | None = None
                 ) -> None:
        if not isinstance(tape, Tape):
            raise TypeError(f"checkpointed() expects a fasttape.Tape, got {type(tape).__name__}")
        if isinstance(memory_limit, bool) or not isinstance(memory_limit, numbers.Integral):
            raise TypeError(
                f"memory_limit must be an int (bytes), got {type(memory_limit).__name__}"
            )
        if memory_limit <= 0:
            raise ValueError(f"memory_limit must be > 0 bytes, got {memory_limit}")
        self.tape = tape
        # The tape the kernels run: with parameters, the same slots with x and p joined (the
        # plan, budget and sweeps are those of params_as_inputs; the gradient keeps n_inputs).
        self._kt = tape.params_as_inputs()
        self.memory_limit = int(memory_limit)
        self.plan: SegmentPlan | None = None
        if segment_length is None:
            self._choose()
            return
        if isinstance(segment_length, bool) or not isinstance(segment_length, numbers.Integral):
            raise TypeError(
                f"segment_length must be an int, got {type(segment_length).__name__}"
            )
        if not 1 <= segment_length:
            raise ValueError(f"segment_length must be >= 1, got {segment_length}")
        if tape.n_instructions == 0:
            self._plain(store_all_nbytes(self._kt), "")
            return
        p = plan_nbytes(self._kt, int(segment_length))
        note = "" if p.nbytes <= self.memory_limit else (
            f"segment_length={segment_length} needs {p.nbytes:,} B > memory_limit "
            f"{self.memory_limit:,} B"
        )
        self._build(p, note)

    # ------------------------------------------------------------------ planning
    def _choose(self) -> None:
        tape, limit = self._kt, self.memory_limit
        full = store_all_nbytes(tape)
        if full <= limit or tape.n_instructions < 2:
            self._plain(full, "")
            return
        n = tape.n_instructions
        # Lengths 8, 12, 16, 24, 32, ...: the memory is a flat function of the length near its
        # minimum, so steps of 1.5x and 1.33x are fine enough.
        lens = []
        L = 8
        while L < n:
            lens.append(L)
            if L * 3 // 2 < n:
                lens.append(L * 3 // 2)
            L *= 2
        plans = [plan_nbytes(tape, L) for L in lens]
        fits = [p for p in plans if p.nbytes <= limit]
        if fits:
            small = [p for p in fits if p.seg_len <= PREFERRED_MAX_SEGMENT]
            if small:
                best = max(small, key=lambda p: p.seg_len)
            else:
                best = min(fits, key=lambda p: p.seg_len)
            self._build(best, "")
            return
        best = min(plans, key=lambda p: p.nbytes) if plans else None
        if best is None or best.nbytes >= full:
            note = (
                f"segmenting cannot save memory on this graph: its values are read far from "
                f"where they are computed (the best segmentation would hold "
                f"{best.nbytes if best else full:,} B, the plain gradient {full:,} B); using the "
                f"plain gradient, {full:,} B > memory_limit {limit:,} B"
            )
            self._plain(full, note)
        else:
            note = (
                f"memory_limit {limit:,} B is below the smallest segmented plan, "
                f"{best.nbytes:,} B (segments of {best.seg_len} instructions, "
                f"{best.n_cross:,} checkpoints); using it"
            )
            self._build(best, note)
        warnings.warn(note, CheckpointWarning, stacklevel=3)

    def _plain(self, full: int, note: str) -> None:
        self.plan = None
        self._stored = self._kt.with_grad_mode("stored")
        self.report = CheckpointReport(
            kind="store-all", budget_nbytes=self.memory_limit, peak_nbytes=full,
            overhead_nbytes=0, within_budget=full <= self.memory_limit, snapshots=1,
            forward_evaluations=self._kt.n_instructions,
            taped_evaluations=self._kt.n_instructions, note=note,
        )

    def _build(self, p: SegmentPlan, note: str) -> None:
        tape = self._kt
        n_pre = tape.n_inputs + tape.n_consts
        last = np.full(tape.n_slots, -1, np.int64)
        cross = np.zeros(tape.n_slots, np.bool_)
        _k.segment_counts(tape.ops, tape.args, ARITY, n_pre, p.seg_len, last, cross)
        idx = tape.args.dtype
        cid_slot = np.flatnonzero(cross).astype(idx)
        cid = np.full(tape.n_slots, -1, idx)
        cid[cid_slot] = np.arange(len(cid_slot), dtype=idx)
        del cross
        last.fill(-1)
        ptr = np.int32 if tape.n_edges < 2**31 else np.int64
        edge_ptr = np.empty(p.n_seg + 1, ptr)
        ext_ptr = np.empty(p.n_seg + 1, ptr)
        ext_slot = np.empty(p.n_ext, idx)
        ext_src = np.empty(p.n_ext, idx)
        _k.segment_fill(tape.ops, tape.args, ARITY, n_pre, p.seg_len, p.n_seg, cid, last,
                        edge_ptr, ext_ptr, ext_slot, ext_src)
        bounds = n_pre + np.arange(p.n_seg + 1, dtype=np.int64) * p.seg_len
        exp_ptr = np.searchsorted(cid_slot, bounds).astype(ptr)
        self.plan = p
        # The slot -> checkpoint map (n_slots entries) is dropped here: only the plan's
        # small arrays are kept.
        del cid, last
        self._arrays = (edge_ptr, ext_ptr, ext_slot, ext_src, cid_slot, exp_ptr)
        overhead = 8 * (n_pre + tape.n_inputs)  # input and constant adjoints, gradient
        self.report = CheckpointReport(
            kind="segments", budget_nbytes=self.memory_limit, peak_nbytes=p.nbytes,
            overhead_nbytes=overhead, within_budget=p.nbytes <= self.memory_limit,
            snapshots=p.n_seg, forward_evaluations=2 * tape.n_instructions,
            taped_evaluations=tape.n_instructions, note=note,
        )

    # ------------------------------------------------------------------ evaluation
    def _out(self, output: int | None) -> int:
        return int(self._kt.outputs[self._kt.output_index(output)])

    def _forward(self, xin: np.ndarray, out_slot: int) -> tuple[float, np.ndarray]:
        p, tape = self.plan, self._kt
        assert p is not None
        edge_ptr, ext_ptr, ext_slot, ext_src, cid_slot, exp_ptr = self._arrays
        ck_val = np.empty(p.n_cross)
        lxin = np.empty(p.e_max)
        largs = np.empty(p.edges_max, np.int32)
        lvals = np.empty(p.e_max + p.seg_len)
        v = _k.segment_forward(
            tape.ops, tape.args, tape.consts, xin, tape.n_inputs + tape.n_consts, p.seg_len,
            edge_ptr, ext_ptr, ext_slot, ext_src, cid_slot, exp_ptr, ck_val, lxin, largs,
            lvals, np.empty(0), out_slot,
        )
        return float(v), ck_val

    def _point(self, x: Any, p: Any) -> np.ndarray:
        """``x`` checked (and joined with the parameters ``p`` when the tape has some)."""
        if p is None and not self.tape.n_params:
            return self.tape.as_input(x)
        xp = self.tape.join_params(x, p)
        if xp.ndim != 1:
            raise ValueError(
                "a checkpointed tape evaluates one point at a time: x and p must be 1-D"
            )
        return xp

    def value(self, x: Any, *, output: int | None = None, p: Any = None) -> float:
        """Value of one output, by the segmented forward sweep (checkpoints only).

        ``p``: the parameters, required when the tape has some (one set, 1-D).
        """
        xin = self._point(x, p)
        if self.plan is None:
            v = self._stored.value(xin)
            if self.tape.n_outputs == 1:
                return float(v)
            return float(v[self.tape.output_index(output)])
        return self._forward(xin, self._out(output))[0]

    def value_and_grad(
        self, x: Any, *, output: int | None = None, p: Any = None
    ) -> tuple[float, np.ndarray]:
        """Value of one output and its gradient, within the memory budget.

        Bitwise equal to ``tape.value_and_grad`` in ``"stored"`` mode.  Every work array is
        allocated by this call (so ``tracemalloc`` measures the true peak).  ``p``: the
        parameters, as in :meth:`value` (they get no gradient).
        """
        xin = self._point(x, p)
        n = self.tape.n_inputs
        if self.plan is None:
            v, g = self._stored.value_and_grad(xin, output=output)
            return v, (g if g.shape[0] == n else g[:n].copy())
        p, tape = self.plan, self._kt
        out_slot = self._out(output)
        v, ck_val = self._forward(xin, out_slot)
        edge_ptr, ext_ptr, ext_slot, ext_src, cid_slot, exp_ptr = self._arrays
        n_pre = tape.n_inputs + tape.n_consts
        j = int(np.searchsorted(cid_slot, out_slot))
        out_cid = j if j < len(cid_slot) and int(cid_slot[j]) == out_slot else -1
        pend = np.zeros(p.n_cross)
        acc_pre = np.zeros(n_pre)
        lxin = np.empty(p.e_max)
        largs = np.empty(p.edges_max, np.int32)
        lvals = np.empty(p.e_max + p.seg_len)
        lparts = np.empty(p.edges_max)
        ladj = np.zeros(p.e_max + p.seg_len)
        _k.segment_reverse(
            tape.ops, tape.args, tape.consts, xin, n_pre, p.seg_len, edge_ptr, ext_ptr,
            ext_slot, ext_src, cid_slot, exp_ptr, ck_val, pend, acc_pre, lxin, largs, lvals,
            lparts, ladj, np.empty(0), out_slot, out_cid,
        )
        return v, acc_pre[:n].copy()

    def grad(self, x: Any, *, output: int | None = None, p: Any = None) -> np.ndarray:
        """Gradient of one output; see :meth:`value_and_grad`."""
        return self.value_and_grad(x, output=output, p=p)[1]

    def stats(self) -> dict[str, Any]:
        """The tape's stats plus the plan and the report."""
        d = dict(self.tape.stats())
        d["memory_limit"] = self.memory_limit
        d["store_all_nbytes"] = store_all_nbytes(self._kt)
        d["checkpoint"] = self.report.as_dict()
        if self.plan is not None:
            d["segment_length"] = self.plan.seg_len
            d["checkpoints"] = self.plan.n_cross
        return d

    def __repr__(self) -> str:
        r = self.report
        return (
            f"<fasttape.CheckpointedTape: {self.tape.n_instructions:,} instructions, {r.kind}, "
            f"peak {r.peak_nbytes:,} B of {self.memory_limit:,} B>"
        )


def checkpointed(
    tape: Tape, memory_limit: int, *, segment_length: int | None = None
) -> CheckpointedTape:
    """Wrap ``tape`` so that its gradient holds at most ``memory_limit`` bytes of work memory.

    If the plain stored-mode gradient fits, it is used.  Otherwise the instructions are cut
    into segments (power-of-two lengths from 8 are tried; the longest one up to
    :data:`PREFERRED_MAX_SEGMENT` that fits is chosen) and the gradient recomputes each
    segment from its checkpoints (about one extra forward sweep).  The budget counts every
    array a gradient call allocates plus the plan's index arrays; the tape's own arrays are
    not counted.  When no plan fits, the smallest is used (or the plain gradient, when
    segmenting saves nothing) and a :class:`CheckpointWarning` says so; ``.report`` has the
    figures.  ``segment_length=`` forces the segment length (no search, no warning; the
    report still compares the plan with the budget).
    """
    return CheckpointedTape(tape, memory_limit, segment_length=segment_length)
