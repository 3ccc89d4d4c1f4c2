"""The optimisation pipeline: run the passes in order and record what each one did.

Order (each pass switchable by name; :data:`DEFAULT_PASSES` is what ``optimize=True`` runs):

1. ``"dce"``: dead-code elimination when the graph is flattened (and again at the end);
2. ``"fold"``, ``"simplify"``, ``"cse"``: constant folding, exact algebraic simplification
   and common subexpression elimination, each one linear sweep over the working form
   (:mod:`fasttape.passes.ir`).  One pass can give another work: folding makes constants
   (for the rules and for CSE), a simplification can make a constant or a node whose
   arguments are all constant (for folding), any removal can expose a repeat (for CSE), and a
   CSE merge can make two arguments equal (``x*y * y*x`` -> ``square``; for the rules).  A
   pass reruns only when another has given it work, until none has: the result is a fixed
   point of all three, which is what makes the pipeline idempotent;
3. ``"fuse"``: an instruction pair whose inner result has no other use becomes one fused
   instruction (``add(mulc(x, c), y)`` -> ``fmac``, ``square(sub(x, y))`` -> ``sqdiff``),
   once, after the fixed point;
4. ``"locality"`` (off by default): depth-first reordering of the instructions;
5. ``"interleave"``: within windows of 4,096 instructions, order by depth so that
   consecutive instructions are independent (the sweeps overlap them);
6. ``"reuse"``: the value-slot reuse plan used by ``value`` and the ``"stored"`` gradient
   (for tapes of at least :data:`fasttape.passes.reuse.MIN_SLOTS` slots).

Every pass is a linear (expected) time Numba sweep or vectorised NumPy: no Python loop per
node, no recursion.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fasttape.passes import cse, fold, fuse, interleave, ir, locality, reuse, simplify

__all__ = [
    "PASS_NAMES",
    "DEFAULT_PASSES",
    "PassRecord",
    "resolve_passes",
    "optimize_arrays",
    "optimize",
]

#: Every pass, in pipeline order.
PASS_NAMES = ("dce", "fold", "simplify", "cse", "fuse", "locality", "interleave", "reuse")
#: The passes ``optimize=True`` runs (``"locality"`` is opt-in: its effect on speed is mixed).
DEFAULT_PASSES = ("dce", "fold", "simplify", "cse", "fuse", "interleave", "reuse")
_REWRITES = ("fold", "simplify", "cse")
_MAX_ROUNDS = 20


@dataclass(frozen=True)
class PassRecord:
    """What one run of one pass did (``Tape.stats()["passes"]`` lists them in order).

    ``nodes_before`` / ``nodes_after`` count instructions (not inputs or constants); the
    rewriting passes only replace nodes, so instructions they make dead are counted as removed
    by the final ``"dce"``.  For ``"reuse"`` the counts are slots (before: one per input,
    constant and instruction; after: the work vector's length).
    """

    name: str
    nodes_before: int
    nodes_after: int
    seconds: float
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The record as a plain dict."""
        return {"pass": self.name, "before": self.nodes_before, "after": self.nodes_after,
                "seconds": self.seconds, "detail": self.detail}


def resolve_passes(optimize: Any) -> tuple[str, ...]:
    """The tuple of pass names meant by an ``optimize=`` argument.

    ``True`` gives :data:`DEFAULT_PASSES`; ``False`` gives ``("dce",)`` (the flattening step
    always dropped dead code; this keeps that behaviour); an iterable of names gives those
    passes (``[]`` runs none: every node of the graph becomes an instruction).
    """
    if optimize is True:
        return DEFAULT_PASSES
    if optimize is False:
        return ("dce",)
    if isinstance(optimize, str) or not isinstance(optimize, Iterable):
        raise TypeError(
            "optimize must be True, False or a list of pass names from "
            f"{list(PASS_NAMES)}; got {optimize!r}"
        )
    names = list(optimize)
    bad = [n for n in names if n not in PASS_NAMES]
    if bad:
        raise ValueError(f"unknown pass name(s) {bad}: choose from {list(PASS_NAMES)}")
    return tuple(n for n in PASS_NAMES if n in names)


def optimize_arrays(
    arrays: dict[str, Any], passes: Iterable[str], *, finite_math: bool = False,
    records: list[PassRecord] | None = None,
) -> tuple[dict[str, Any], reuse.ReusePlan | None, list[PassRecord]]:
    """Run ``passes`` on valid tape arrays (``ops, args, consts, outputs, n_inputs[, n_params]``).

    Parameters
    ----------
    arrays : dict
        As returned by :meth:`Tape.to_arrays`.
    passes : iterable of str
        Pass names (see :func:`resolve_passes`).
    finite_math : bool
        Enable the simplification rules that are exact only for finite values (see
        :mod:`fasttape.passes.simplify`).
    records : list of PassRecord, optional
        Records of earlier steps (compile's flattening) to prepend.

    Returns
    -------
    (arrays, plan or None, records)
    """
    passes = tuple(passes)
    records = list(records or [])
    out = dict(arrays)
    # Parameters are leaves that are not constants: the passes see them as inputs (slots
    # n_inputs .. n_inputs + n_params - 1), so nothing folds, merges or drops them.
    n_params = int(out.pop("n_params", 0))
    out["n_inputs"] = int(out["n_inputs"]) + n_params
    if "dce" in passes or "fuse" in passes or any(p in passes for p in _REWRITES):
        work = ir.from_tape_arrays(out["ops"], out["args"], out["consts"], out["outputs"],
                                   out["n_inputs"])
        count = work.n_instructions
        # Run a pass again only while another pass may have given it work (the dependencies
        # are in the module docstring); stop when every pass has run on the current graph
        # without changing it.  That final state is a fixed point of all three.
        need = {name: name in passes for name in _REWRITES}
        runs = dict.fromkeys(_REWRITES, 0)
        while any(need.values()) and sum(runs.values()) < 3 * _MAX_ROUNDS:
            for name in _REWRITES:
                if not need[name]:
                    continue
                need[name] = False
                runs[name] += 1
                t0 = time.perf_counter()
                if name == "fold":
                    removed = fold.fold_constants(work)
                    detail = ""
                    if removed:  # new constants: rules and merges may apply
                        need["simplify"] = need["cse"] = True
                elif name == "simplify":
                    removed, rewritten, consts_made = simplify.simplify(work, finite_math)
                    detail = f"{rewritten} rewritten"
                    if removed or rewritten:
                        need["cse"] = True
                    if consts_made:  # a new constant argument may make a node foldable
                        need["fold"] = True
                else:
                    removed, merged_c = cse.eliminate_common_subexpressions(work)
                    detail = f"{merged_c} constants merged"
                    if removed:  # merged arguments may now be equal: x * x, where(a, a, c)
                        need["simplify"] = True
                need = {k: v and k in passes for k, v in need.items()}
                dt = time.perf_counter() - t0
                records.append(PassRecord(name, count, count - removed, dt,
                                          f"run {runs[name]}" + (f", {detail}" if detail else "")))
                count -= removed
        if "fuse" in passes:
            t0 = time.perf_counter()
            absorbed = fuse.fuse(work)
            records.append(PassRecord("fuse", count, count - absorbed, time.perf_counter() - t0,
                                      f"{absorbed} pairs fused"))
            count -= absorbed
        t0 = time.perf_counter()
        out = ir.to_tape_arrays(work, dce="dce" in passes)
        n_after = int(out["ops"].shape[0])
        if "dce" in passes:
            records.append(PassRecord("dce", count, n_after, time.perf_counter() - t0,
                                      "final"))
    n_pre = int(out["n_inputs"]) + int(np.asarray(out["consts"]).shape[0])
    if "locality" in passes:
        t0 = time.perf_counter()
        before = locality.typical_distance(out["ops"], out["args"], n_pre)
        out["ops"], out["args"], out["outputs"] = locality.locality_order(
            out["ops"], out["args"], out["outputs"], n_pre)
        after = locality.typical_distance(out["ops"], out["args"], n_pre)
        n = int(out["ops"].shape[0])
        records.append(PassRecord("locality", n, n, time.perf_counter() - t0,
                                  f"typical argument distance {before:.1f} -> {after:.1f}"))
    if "interleave" in passes:
        t0 = time.perf_counter()
        n = int(out["ops"].shape[0])
        out["ops"], out["args"], out["outputs"] = interleave.interleave_order(
            out["ops"], out["args"], out["outputs"], n_pre)
        records.append(PassRecord("interleave", n, n, time.perf_counter() - t0,
                                  f"windows of {interleave.WINDOW:,}"))
    plan = None
    if "reuse" in passes:
        t0 = time.perf_counter()
        n_slots = n_pre + int(out["ops"].shape[0])
        if n_slots >= reuse.MIN_SLOTS:
            plan = reuse.plan_slots(out["ops"], out["args"], out["outputs"], n_pre)
            records.append(PassRecord("reuse", n_slots, plan.n_work,
                                      time.perf_counter() - t0, "slots"))
        else:
            records.append(PassRecord("reuse", n_slots, n_slots, 0.0,
                                      f"skipped: fewer than {reuse.MIN_SLOTS:,} slots"))
    out["n_inputs"] = int(out["n_inputs"]) - n_params
    out["n_params"] = n_params
    return out, plan, records


def optimize(tape: Any, passes: Any = True, *, finite_math: bool = False) -> Any:
    """An optimised copy of ``tape`` (for tapes from ``from_arrays``, ``load`` or a family).

    ``passes`` takes the same values as ``compile``'s ``optimize=``.  Values are bitwise
    those of ``tape`` (see docs/passes.md for the gradients); ``tape`` is not changed.

    The passes work on arrays and never import the Tape: the copy is made by the tape's own
    class (``type(tape).from_trusted_arrays``), so it has the same type as ``tape``.
    """
    make = getattr(type(tape), "from_trusted_arrays", None)
    if make is None:
        raise TypeError(f"optimize() expects a fasttape.Tape, got {type(tape).__name__}")
    names = resolve_passes(passes)
    arrays, plan, records = optimize_arrays(tape.to_arrays(), names, finite_math=finite_math)
    return make(arrays["ops"], arrays["args"], arrays["consts"], arrays["outputs"],
                arrays["n_inputs"], tape.grad_mode, n_params=arrays["n_params"],
                reuse_plan=plan, pass_records=records)
