"""Activity analysis for sparse derivatives: which slots a Hessian or a Jacobian needs at all.

A forward-over-reverse sweep (:func:`fasttape.kernels.tangent.reverse_hvp`) computes, for
every slot, a value, a tangent, an adjoint and an adjoint tangent.  Most of them are known to
be exactly zero or unused before any number is seen, from the op table alone:

``ADJ`` (adjoints)
    The adjoint of a slot matters only where it meets a second partial: at a *nonlinear*
    instruction (an op with a structurally nonzero second partial, the table's ``second``)
    that reaches a weighted output.  Its adjoint needs the adjoints of everything downstream,
    so ``ADJ`` is the nonlinear instructions and their descendants (differentiable edges,
    outputs of nonzero weight only).
``TAN`` (tangents and adjoint tangents)
    Second-order terms read the tangents of a nonlinear instruction's differentiable
    arguments, and an adjoint tangent is nonzero only on those arguments and their ancestors
    (it starts at zero on the outputs and grows only through second partials).  ``TAN`` is
    that ancestor set; tangents elsewhere are computed by nobody.
``VAL`` (values)
    A value is needed to compute a tangent (``TAN``), or a partial that depends on values
    (``valdep``: ``mul``'s ``y``, ``exp``'s ``f``; not ``add``'s ``1.0`` nor ``mulc``'s
    constant), and then so are the values of all its arguments.

The pruned sweeps skip every instruction outside ``ADJ | TAN`` in the reverse sweep and every
instruction outside ``VAL`` in the forward one, and write adjoints only into ``ADJ`` slots.
On the slots they keep they perform the same operations in the same order as the full
sweeps, whose skipped terms are exact zeros (a zero factor contributes nothing: the zero rules
of :mod:`fasttape.kernels.tangent`), so the results are bitwise the full sweeps' (tested).
In an optimal-control NLP most of the graph is linear (the collocation equations), and the
Lagrangian's Hessian then costs a fraction of the full sweeps.

A Jacobian's tangent sweep has its own flags (:func:`jacobian_activity`): rows whose partials
are all constant are ``FIXED`` (computed once per plan), and only the tangents and values the
other rows need are computed per call.

What the pruned sweeps take (``active``) is a tuple built once per plan by
:mod:`fasttape.sparse`:

``active[0]``
    the flags, one ``uint8`` per slot;
``active[1]``, ``active[2]``
    the forward sweep's steps: the instructions it evaluates, in tape order, and the
    position of each one's first argument in ``args`` (so a sweep visits only those, not
    every instruction to test its flags);
``active[3]``, ``active[4]``
    the reverse sweep's steps, in tape order, and the position just past each one's last
    argument;
``active[5]`` .. ``active[8]``
    a Hessian's reverse seeds, a sparse matrix by rows (slots ``active[5]``, row pointers
    ``active[6]``, output indices ``active[7]``, coefficients ``active[8]``):
    ``adj[active[5][r]] += active[8][p] * w[active[7][p]]`` in order, zero weights skipped
    (:func:`seed_adjoints`).  With one unit coefficient per weighted output this is the
    plain seeding, bit for bit; with the linear region after the nonlinear instructions
    preaccumulated (:class:`fasttape.sparse.SparseHessian`'s ``preaccumulate``,
    :mod:`fasttape.linear_region`) it is that region's transposed Jacobian, and the reverse
    steps leave the region out.  A Jacobian's sweep has none.
"""

from __future__ import annotations

import numpy as np

from fasttape.kernels.jit import kernel

__all__ = [
    "ADJ",
    "ADJOINT",
    "FIXED",
    "NONLIN",
    "SKIP",
    "TAN",
    "TANGENT",
    "VAL",
    "VALUE",
    "forward_at",
    "forward_count",
    "forward_mode",
    "hessian_activity",
    "jacobian_activity",
    "reverse_at",
    "reverse_count",
    "reverse_mode",
    "seed_adjoints",
    "wants_adjoint",
    "wants_first",
]

#: Flag: the slot's value is computed in the forward sweep.
VAL = 1
#: Flag: the slot's tangent and adjoint tangent are computed.
TAN = 2
#: Flag: the slot's adjoint is accumulated.
ADJ = 4
#: Flag: an ``ADJ`` instruction with a structurally nonzero second partial.
NONLIN = 8
#: Flag (Jacobians): the slot's tangent does not depend on the point.
FIXED = 16

# What a pruned sweep does with an instruction (forward_mode, reverse_mode).
SKIP = 0
VALUE = 1
ADJOINT = 1
TANGENT = 2


@kernel(inline=True)
def _mark(flags, args, k, n, bit):  # pragma: no cover (jitted)
    """Set ``bit`` on the first ``n`` arguments (from ``args[k]``) of an instruction."""
    for j in range(n):
        flags[args[k + j]] |= bit


@kernel
def hessian_activity(ops, args, arity, ndiff, nonlin, valdep, n_pre, live):
    # pragma: no cover (jitted)
    """The flags (``VAL | TAN | ADJ``, uint8 per slot) of a weighted Hessian's sweeps.

    Parameters
    ----------
    ops, args : ndarray
        The tape (instruction ``i`` writes slot ``n_pre + i``).
    arity, ndiff : ndarray of int64, one per op
        From the op table.
    nonlin : ndarray of bool, shape (n_ops, 3)
        ``nonlin[op, e]``: second partial ``e`` of ``op`` is structurally nonzero.
    valdep : ndarray of bool, one per op
        The op's partials or second partials read a value (an argument or its result).
    n_pre : int
        Inputs, parameters and constants: the slots before the first instruction.
    live : ndarray of bool, shape (n_slots,)
        Slots that reach an output of nonzero weight through differentiable edges.
    """
    n_instr = ops.shape[0]
    flags = np.zeros(n_pre + n_instr, np.uint8)
    # ADJ: live nonlinear instructions and their live descendants (one forward pass).
    k = 0
    for i in range(n_instr):
        op = ops[i]
        s = n_pre + i
        if live[s]:
            nonlinear = nonlin[op, 0] or nonlin[op, 1] or nonlin[op, 2]
            hot = nonlinear
            for j in range(ndiff[op]):
                hot = hot or (flags[args[k + j]] & ADJ) != 0
            if hot:
                flags[s] |= ADJ
            if nonlinear:
                flags[s] |= NONLIN
        k += arity[op]
    # TAN and VAL in one backward pass: a slot's flags are final once its consumers, all
    # later in the tape, have been visited.
    for i in range(n_instr - 1, -1, -1):
        op = ops[i]
        s = n_pre + i
        k -= arity[op]
        fl = flags[s]
        if fl & (TAN | NONLIN):
            _mark(flags, args, k, ndiff[op], TAN)
        if (fl & TAN) or ((fl & ADJ) and valdep[op]):
            fl |= VAL
            flags[s] = fl
        if fl & VAL:
            _mark(flags, args, k, arity[op], VAL)
    return flags


@kernel
def jacobian_activity(ops, args, arity, ndiff, valdep, n_pre, live):
    # pragma: no cover (jitted)
    """The flags (``VAL | TAN | FIXED``, uint8 per slot) of a Jacobian's tangent sweep.

    ``FIXED``: the slot's tangents are the same at every point: every partial on every path
    from the inputs is a constant (``add``, ``sub``, ``mulc``: ops that are not
    ``valdep``), so an output row that is ``FIXED`` is computed once per plan.  ``TAN``: the
    live slots that are not ``FIXED`` and the arguments they read tangents from (the
    ``FIXED`` ones included).  ``VAL``: the ``TAN`` instructions whose partials read values
    and, recursively, everything those values are computed from.  Arguments as in
    :func:`hessian_activity`; ``live`` marks the slots that reach an output.
    """
    n_instr = ops.shape[0]
    flags = np.zeros(n_pre + n_instr, np.uint8)
    for s in range(n_pre):
        flags[s] = FIXED
    k = 0
    for i in range(n_instr):
        op = ops[i]
        fixed = not valdep[op]
        for j in range(ndiff[op]):
            fixed = fixed and (flags[args[k + j]] & FIXED) != 0
        if fixed:
            flags[n_pre + i] = FIXED
        k += arity[op]
    for i in range(n_instr - 1, -1, -1):
        op = ops[i]
        s = n_pre + i
        k -= arity[op]
        fl = flags[s]
        if live[s] and (fl & FIXED) == 0:
            fl |= TAN
        if fl & TAN:
            _mark(flags, args, k, ndiff[op], TAN)
            if valdep[op]:
                fl |= VAL
        flags[s] = fl
        if fl & VAL:
            _mark(flags, args, k, arity[op], VAL)
    return flags


@kernel(inline=True)
def forward_mode(active, slot):  # pragma: no cover (jitted)
    """What a pruned forward tangent sweep does with ``slot``'s instruction: ``SKIP``,
    ``VALUE`` (evaluate it, no tangent) or ``TANGENT`` (evaluate it and its tangents, the
    only answer when ``active`` is None: Numba compiles the test away).

    A ``TAN`` instruction without ``VAL`` (a constant-partial op whose value nobody reads)
    is evaluated all the same: its value is cheap and unused, and one evaluation site keeps
    the sweep's compiled body (and its first-call compile time) as it was.
    """
    if active is None:
        return TANGENT
    fl = active[0][slot]
    if fl & TAN:
        return TANGENT
    if fl & VAL:
        return VALUE
    return SKIP


@kernel(inline=True)
def reverse_mode(active, slot):  # pragma: no cover (jitted)
    """What a pruned reverse (forward-over-reverse) sweep does with ``slot``'s instruction:
    ``SKIP`` (outside ``TAN | ADJ``), ``ADJOINT`` (a linear ``ADJ`` instruction outside
    ``TAN``: it has no adjoint tangent and no second partial, only its adjoint flows) or
    ``TANGENT`` (everything; always when ``active`` is None)."""
    if active is None:
        return TANGENT
    fl = active[0][slot]
    if (fl & (TAN | ADJ)) == 0:
        return SKIP
    if (fl & (TAN | NONLIN)) == 0:
        return ADJOINT
    return TANGENT


@kernel(inline=True)
def wants_adjoint(active, slot):  # pragma: no cover (jitted)
    """Whether a pruned reverse sweep accumulates the adjoint of ``slot`` (always, unpruned)."""
    return active is None or (active[0][slot] & ADJ) != 0


@kernel(inline=True)
def wants_first(active, args, k, nd, g):  # pragma: no cover (jitted)
    """Whether a reverse step with adjoint ``g`` passes it to one of its ``nd``
    differentiable arguments (from ``args[k]``): then it needs its first partials (so does a
    step with a nonzero adjoint tangent, which the caller knows)."""
    if g == 0.0:
        return False
    if wants_adjoint(active, args[k]):
        return True
    return nd == 2 and wants_adjoint(active, args[k + 1])


@kernel(inline=True)
def forward_count(ops, active):  # pragma: no cover (jitted)
    """How many steps a forward sweep takes: every instruction, or the listed ones."""
    if active is None:
        return ops.shape[0]
    return active[1].shape[0]


@kernel(inline=True)
def forward_at(active, t, k):  # pragma: no cover (jitted)
    """``(i, k)``: the instruction of forward step ``t`` and its first argument's position.

    Without ``active`` step ``t`` is instruction ``t`` and ``k`` (the running position the
    caller advances) is returned as it came.
    """
    if active is None:
        return t, k
    return active[1][t], active[2][t]


@kernel(inline=True)
def reverse_count(ops, active):  # pragma: no cover (jitted)
    """How many steps a reverse sweep takes: every instruction, or the listed ones."""
    if active is None:
        return ops.shape[0]
    return active[3].shape[0]


@kernel(inline=True)
def reverse_at(active, t, k):  # pragma: no cover (jitted)
    """``(i, k)``: the instruction of reverse step ``t`` and the position just past its last
    argument (without ``active``: ``t`` and the caller's running position ``k``)."""
    if active is None:
        return t, k
    return active[3][t], active[4][t]


@kernel(inline=True)
def seed_adjoints(active, w, adj):  # pragma: no cover (jitted)
    """Seed a pruned reverse sweep: ``adj[slot] += c * w[j]`` for each term of each row of
    ``active``'s seed matrix, in order, terms of zero weight skipped (module docstring)."""
    rows = active[5]
    ptr = active[6]
    cols = active[7]
    coef = active[8]
    for r in range(rows.shape[0]):
        s = rows[r]
        for p in range(ptr[r], ptr[r + 1]):
            wj = w[cols[p]]
            if wj != 0.0:
                adj[s] += coef[p] * wj
