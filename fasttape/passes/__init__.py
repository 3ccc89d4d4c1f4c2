"""Graph passes: the optimisation pipeline run by :func:`fasttape.compile` (docs/passes.md).

Each pass is a small module with one job, run in this order:

- :mod:`~fasttape.passes.dce`: dead-code elimination;
- :mod:`~fasttape.passes.fold`: constant folding (with the kernels' own semantics);
- :mod:`~fasttape.passes.simplify`: algebraic simplification that is exact in IEEE arithmetic;
- :mod:`~fasttape.passes.cse`: common subexpression elimination (hash-consing);
- :mod:`~fasttape.passes.fuse`: instruction pairs fused into one (``fmac``, ``sqdiff``);
- :mod:`~fasttape.passes.locality`: optional depth-first reordering of the instructions;
- :mod:`~fasttape.passes.interleave`: ordering by depth within windows, so that consecutive
  instructions are independent;
- :mod:`~fasttape.passes.reuse`: the value-slot reuse plan (live variables).

:mod:`~fasttape.passes.ir` is the working form the rewriting passes share,
:mod:`~fasttape.passes.pipeline` runs them and records statistics, and
:mod:`~fasttape.passes.planned` evaluates a tape over its reuse plan.
"""

from fasttape.passes.dce import live_nodes
from fasttape.passes.pipeline import DEFAULT_PASSES, PASS_NAMES, optimize

__all__ = ["live_nodes", "optimize", "PASS_NAMES", "DEFAULT_PASSES"]
