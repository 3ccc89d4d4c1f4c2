"""The replacement map ``rep`` that the graph passes share, and its two kernel helpers.

``rep[i] == i`` for a surviving node; a node merged (cse), folded (fold) or rewritten away
(simplify) points at the earlier node that replaces it.  Targets are always earlier, so a
forward sweep finds every target already final and compresses paths as it goes
(:mod:`fasttape.passes.ir` describes the IR).  Both helpers are inlined into the pass loops
that call them (``kernel(inline=True)``): no call per node.
"""

from __future__ import annotations

from fasttape.kernels.jit import kernel

__all__ = ["replaced", "resolve_args", "surviving_instruction"]


@kernel(inline=True)
def replaced(rep, i):  # pragma: no cover (jitted)
    """True when node ``i`` was replaced by an earlier node (``rep[i]`` is then compressed to
    its final target); a forward sweep skips such a node."""
    r = rep[i]
    if r != i:
        rep[i] = rep[r]
        return True
    return False


@kernel(inline=True)
def resolve_args(a, rep, i, n):  # pragma: no cover (jitted)
    """Map the first ``n`` arguments of node ``i`` (row ``i`` of ``a``) through ``rep``."""
    for j in range(n):
        a[i, j] = rep[a[i, j]]


@kernel(inline=True)
def surviving_instruction(ops, rep, i, n_real_ops):  # pragma: no cover (jitted)
    """True for an instruction (an op, not an input, parameter or constant) that was not
    replaced; compresses ``rep[i]`` either way (:func:`replaced`)."""
    return not replaced(rep, i) and ops[i] < n_real_ops
