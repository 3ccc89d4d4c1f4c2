"""Evaluation over a slot-reuse plan, and the pass statistics of a Tape.

A tape (:class:`~fasttape.tape.TapeRecord`) delegates here when it carries a plan
(:mod:`fasttape.passes.reuse`): ``value`` and the ``"stored"`` ``value_and_grad`` then run the
kernels of ``fasttape/kernels/sweep.py`` on per-thread work buffers of the plan's
``n_work`` slots instead of ``n_slots``.  The buffers have their own names in the tape's
thread-local store, so code that uses the plain buffers (``vals``, ``adj``) is unaffected.
The functions take the tape as an argument and use only its public interface (``reuse_plan``,
``pass_records``, ``work_buffers()``): this module does not import the tape.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fasttape.kernels.sweep import value_and_grad_plan_kernel, value_plan_kernel

__all__ = ["value", "value_and_grad", "work_nbytes", "stats"]


def value(tape: Any, xin: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """Outputs at ``xin`` into ``out`` (already checked), or a per-thread buffer; returns it."""
    plan = tape.reuse_plan
    local = tape.work_buffers()
    vals = getattr(local, "plan_vals", None)
    if vals is None:
        vals = _allocate(tape, local, grad=False).plan_vals
    res = local.plan_res if out is None else out
    value_plan_kernel(tape.ops, plan.args, plan.dest, tape.consts, plan.outputs, xin, vals, res)
    return res


def value_and_grad(tape: Any, which: int, xin: np.ndarray, grad: np.ndarray) -> float:
    """Value of output ``which`` and its gradient into ``grad``, stored partials, with the plan."""
    plan = tape.reuse_plan
    local = tape.work_buffers()
    adj = getattr(local, "plan_adj", None)
    if adj is None:
        adj = _allocate(tape, local, grad=True).plan_adj
    vals = local.plan_vals  # allocated with (or before) plan_adj
    return value_and_grad_plan_kernel(
        tape.ops, plan.args, plan.dest, tape.consts, plan.outputs, which, xin, vals,
        local.plan_parts, adj, grad,
    )


def _allocate(tape: Any, local: Any, grad: bool) -> Any:
    """The calling thread's plan buffers, allocated where missing; returns ``local``.

    ``plan_vals`` (the plan's ``n_work`` slots) and ``plan_res`` (``n_outputs``); with
    ``grad`` also ``plan_adj`` and ``plan_parts`` (``n_edges``).  Called on a thread's first
    use only: the per-call path is one ``getattr``.
    """
    n_work = tape.reuse_plan.n_work
    if getattr(local, "plan_vals", None) is None:
        local.plan_vals = np.empty(n_work)
        local.plan_res = np.empty(tape.n_outputs)
    if grad and getattr(local, "plan_adj", None) is None:
        # Zeros once: the reverse sweep leaves them zeroed (read-then-zero).
        local.plan_adj = np.zeros(n_work)
        local.plan_parts = np.empty(tape.n_edges)
    return local


def work_nbytes(tape: Any, grad: bool) -> int:
    """Per-thread work bytes with the plan (``"lean"`` gradients do not use it)."""
    n = tape.reuse_plan.n_work
    if not grad:
        return 8 * n
    if tape.grad_mode == "stored":
        return 16 * n + 8 * tape.n_edges
    return 16 * tape.n_slots


def stats(tape: Any) -> dict[str, Any]:
    """The entries that the passes add to ``Tape.stats()``."""
    plan = tape.reuse_plan
    out: dict[str, Any] = {
        "passes": [r.as_dict() for r in tape.pass_records],
        "work_slots": plan.n_work if plan is not None else tape.n_slots,
        "plan_nbytes": plan.nbytes if plan is not None else 0,
    }
    return out


def listing_lines(tape: Any) -> list[str]:
    """``print(tape)``'s summary of the passes: instructions after each, slots of the plan."""
    recs = tape.pass_records
    if not recs:
        return []
    steps = [f"{r.name} {r.nodes_after:,}" for r in recs if r.name != "reuse"]
    line = f"  passes: {recs[0].nodes_before:,} instructions"
    if steps:
        line += " -> " + " -> ".join(steps)
    for r in recs:
        if r.name == "reuse" and r.detail == "slots":
            line += f"; slots {r.nodes_before:,} -> {r.nodes_after:,} (reuse)"
    return [line]
