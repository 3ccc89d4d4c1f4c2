"""Single-point sweeps: every slot's value, and the gradient by reverse accumulation.

The arrays follow docs/tape-format.md: instruction ``i`` has op code ``ops[i]`` and its
arguments at ``args[k:k + ARITY[op]]``; its value goes to slot ``n_pre + i`` (after the inputs
and the constants).  With a slot-reuse plan (:mod:`fasttape.passes.reuse`) it goes to slot
``dest[i]`` of a shorter work vector instead, and ``args`` holds work-vector slots: the
sweeps take an optional last argument ``dest`` (Numba compiles one version without it and one
with it, so the plain sweep pays nothing for it).

What each op computes comes from :mod:`fasttape.kernels.dispatch` (generated from the op
table, inlined here).  No bounds checks: the caller validated the tape and the buffers.

The drivers ``value_kernel``, ``value_and_grad_kernel`` and ``value_and_grad_lean_kernel`` and
the sweeps they call are the stable embedding API (docs/embedding.md): they can be called from
your own jitted code with a tape's arrays.
"""

from __future__ import annotations

from fasttape.kernels.dispatch import (
    ARITY,
    NDIFF,
    partials,
    unit_adjoint,
    value,
    value_store_all_partials,
    value_store_partials,
)
from fasttape.kernels.jit import kernel
from fasttape.kernels.memhint import prefetch, prefetch_write
from fasttape.kernels.scalar import SMALLEST_NORMAL, accumulate, add_product

__all__ = [
    "ALL_PARTIALS_MAX_EDGES",
    "PREFETCH_ARGS",
    "PREFETCH_MIN_SLOTS",
    "collect_grad",
    "forward_partials",
    "forward_values",
    "load_inputs",
    "reverse_lean",
    "reverse_stored",
    "stores_unit_partials",
    "value_and_grad_kernel",
    "value_and_grad_lean_kernel",
    "value_and_grad_plan_kernel",
    "value_kernel",
    "value_plan_kernel",
]

#: How many argument positions ahead the reverse sweeps prefetch the slots they will update
#: (``adj``) and, in lean mode, read (``vals``); fasttape/kernels/memhint.py.  About 16
#: instructions.  On random-uniform at 1e6 instructions, 16 and 64 gave the same gain and
#: 256 a little less (docs/tape-format.md, "Memory access").
PREFETCH_ARGS = 32

#: The stored-mode sweeps store a tape's unit partials (+-1) too, so that the reverse sweep
#: reads every edge alike, without a branch on the op, unless the tape runs with a slot-reuse
#: plan and has at least this many argument positions.  The mispredicted jump costs more than
#: the extra store and load: 1.03-1.25x the value-and-gradient speed on random graphs of 1e3
#: to 1e6 instructions and on Rosenbrock, Lennard-Jones and autograd-west of 1e3 to 6e4 (A/B).
#: A plan keeps the values and adjoints in cache, so on large planned tapes the partials are
#: most of the memory traffic: with them, autograd-west and Lennard-Jones at 1e5 instructions
#: (1.7e5 and 2e5 positions) ran at 0.97-0.98x, Lennard-Jones at 1e6 at 0.95-0.96x.
ALL_PARTIALS_MAX_EDGES = 1 << 17

#: Slots from which the reverse sweeps prefetch: below it the adjoints (8 bytes each) fit in
#: L2 and the prefetches only cost instructions (random-local at 1e3: 2-4%).
PREFETCH_MIN_SLOTS = 1 << 16


# ------------------------------------------------------------------------------- forward


@kernel(inline=True)
def load_inputs(consts, xin, vals):  # pragma: no cover (jitted)
    """Load ``xin`` and ``consts`` into the first slots of ``vals``; returns ``n_pre``.

    Parameters
    ----------
    consts : ndarray, shape (n_consts,)
        The tape's constants, into slots ``n_inputs ..``.
    xin : ndarray, shape (n_inputs,)
        The point, into slots ``0 .. n_inputs - 1``.
    vals : ndarray, shape (n_slots,)
        The value (or work) vector.

    Returns
    -------
    int
        ``n_pre = n_inputs + n_consts``, the first instruction slot.
    """
    n_in = xin.shape[0]
    for i in range(n_in):
        vals[i] = xin[i]
    for i in range(consts.shape[0]):
        vals[n_in + i] = consts[i]
    return n_in + consts.shape[0]


@kernel(inline=True)
def _store_result(vals, dest, n_pre, i, f):  # pragma: no cover (jitted)
    """Store instruction ``i``'s result ``f`` in its slot: ``n_pre + i``, or ``dest[i]``
    with a slot-reuse plan.

    Parameters
    ----------
    vals : ndarray, shape (n_slots,)
        The value (or work) vector.
    dest : ndarray of int64, shape (n_instructions,), or None
        The plan's destination slots; ``None`` without a plan (Numba compiles the test away:
        ``dest`` is typed ``none`` then).
    n_pre : int
        The first instruction slot (inputs and constants come before it).
    i : int
        The instruction.
    f : float
        Its result.
    """
    if dest is None:
        vals[n_pre + i] = f
    else:
        vals[dest[i]] = f


@kernel
def forward_values(ops, args, consts, xin, vals, dest=None):  # pragma: no cover (jitted)
    """Forward sweep: the value of every slot.

    Loads ``xin`` and ``consts`` into the first slots of ``vals``, then evaluates every
    instruction in order into slot ``n_pre + i``, or ``dest[i]`` with a plan.
    """
    n_pre = load_inputs(consts, xin, vals)
    k = 0
    for i in range(ops.shape[0]):
        op = ops[i]
        # Every op has a first argument: loading it before the dispatch lets the load
        # overlap the indirect branch (value: 1.16x -> 1.10x the baseline, report.py).
        x = vals[args[k]]
        f, k_next = value(op, x, vals, args, k)
        _store_result(vals, dest, n_pre, i, f)
        k = k_next


@kernel(inline=True)
def stores_unit_partials(args, dest):  # pragma: no cover (jitted)
    """Whether the stored-mode sweeps of a tape with argument array ``args`` (and slot-reuse
    plan ``dest``, or None) store and read its unit partials (:data:`ALL_PARTIALS_MAX_EDGES`);
    :func:`forward_partials` and :func:`reverse_stored` both ask, so a pair always agrees."""
    if dest is None:
        return True
    return args.shape[0] < ALL_PARTIALS_MAX_EDGES


@kernel
def forward_partials(ops, args, consts, xin, vals, parts, dest=None):  # pragma: no cover
    """As :func:`forward_values`, also storing the partial derivative of every
    differentiable edge (``parts[e]`` parallel to ``args[e]``), except the unit ones (+-1)
    on large tapes with a plan (:func:`stores_unit_partials`), which the reverse sweep knows
    (:func:`fasttape.kernels.forms.unit_partials`)."""
    n_pre = load_inputs(consts, xin, vals)
    # Two loops, not one with the test inside: LLVM does not unswitch a loop around two
    # switches, and the test alone cost 3-10% (A/B).
    if stores_unit_partials(args, dest):
        _forward_loop(value_store_all_partials, ops, args, vals, parts, dest, n_pre)
    else:
        _forward_loop(value_store_partials, ops, args, vals, parts, dest, n_pre)


@kernel(inline=True)
def _forward_loop(store, ops, args, vals, parts, dest, n_pre):  # pragma: no cover (jitted)
    # The forward sweep with ``store`` (a generated form, inlined as a call to a global
    # would be) computing each result and storing its partials.
    k = 0
    for i in range(ops.shape[0]):
        op = ops[i]
        x = vals[args[k]]
        f, k_next = store(op, x, vals, args, k, parts)
        _store_result(vals, dest, n_pre, i, f)
        k = k_next


# ------------------------------------------------------------------------------- reverse


@kernel
def reverse_stored(ops, args, parts, adj, n_pre, dest=None):  # pragma: no cover (jitted)
    """Reverse sweep over partials stored by :func:`forward_partials`.

    Each differentiable edge adds ``adjoint * partial`` to its parent; a zero adjoint or
    partial contributes nothing (see docs/derivatives.md).  Every edge is read alike, a unit
    partial (+-1) too, as one select (:func:`~fasttape.kernels.scalar.add_product`) with no
    branch on the op (the reverse sweep of a random 4,000-instruction tape went from 23 to
    9 us), except on a large tape with a plan (:func:`stores_unit_partials`), where ops whose
    partials are +-1 add or subtract the adjoint without reading them.  Both are bitwise the
    same (``g * 1.0`` and ``g * -1.0`` are exact).  From the first subnormal adjoint on, the
    first kind of sweep adds as the second, which spares a unit product the x86 microcode
    assist.  ``adj`` must hold the seed on entry and zeros elsewhere; on exit
    the instruction slots are zero again and the slots below ``n_pre`` hold the input and
    constant adjoints.
    """
    if dest is None:
        far = adj.shape[0] >= PREFETCH_MIN_SLOTS
    else:
        # A plan's work vector is small and mostly local: prefetches would only cost (3-5% on
        # lennard-jones and rosenbrock at 1e6).
        far = False
    if stores_unit_partials(args, dest):
        _reverse_all(ops, args, parts, adj, n_pre, dest, far)
    else:
        _reverse_nonunit(ops, args, parts, adj, n_pre, dest, far)


@kernel(inline=True)
def _slot(dest, n_pre, i):  # pragma: no cover (jitted)
    """Instruction ``i``'s slot: ``n_pre + i``, or ``dest[i]`` with a slot-reuse plan."""
    if dest is None:
        return n_pre + i
    return dest[i]


@kernel(inline=True)
def _reverse_head(ops, args, adj, n_pre, dest, far, i, k):  # pragma: no cover (jitted)
    """Step :func:`reverse_stored` back to instruction ``i`` (``k``: the argument position
    past it): its op, argument position and adjoint, read and zeroed; prefetches ahead."""
    op = ops[i]
    k -= ARITY[op]
    # The slots of the argument PREFETCH_ARGS positions further along, and of the next
    # one: about one instruction's worth per instruction (the mean arity is near 2).
    q = k - PREFETCH_ARGS
    if far and q >= 0:
        prefetch_write(adj, args[q])
        prefetch_write(adj, args[q + 1])
    s = _slot(dest, n_pre, i)
    g = adj[s]
    adj[s] = 0.0  # read-then-zero: the buffer is clean for the next call
    return op, k, g


@kernel(inline=True)
def _reverse_all(ops, args, parts, adj, n_pre, dest, far):  # pragma: no cover (jitted)
    # Every partial stored: one select per edge, no branch on the op.  Once an adjoint is
    # subnormal (the residue of a cancelling sum can stay so for the rest of the sweep:
    # docs/derivatives.md, "stop_gradient"), the rest goes through accumulate, which adds a
    # unit partial's adjoint without the product that x86 charges a microcode assist for
    # (autograd-west at 6e4 instructions: 0.90x the old sweep without this, 1.06x with it).
    # The test is a loop exit after the updates: as an if/else around them, or before them,
    # it made LLVM branch instead of select, and the loop 10-20% slower than the old one.
    k = args.shape[0]
    last = -1
    for i in range(ops.shape[0] - 1, -1, -1):
        op, k, g = _reverse_head(ops, args, adj, n_pre, dest, far, i, k)
        if g == 0.0:
            continue
        nd = NDIFF[op]
        if nd >= 1:
            a0 = args[k]
            adj[a0] = add_product(adj[a0], g, parts[k])
            if nd >= 2:
                a1 = args[k + 1]
                adj[a1] = add_product(adj[a1], g, parts[k + 1])
        if abs(g) < SMALLEST_NORMAL:
            last = i
            break
    for i in range(last - 1, -1, -1):
        op, k, g = _reverse_head(ops, args, adj, n_pre, dest, far, i, k)
        if g == 0.0:
            continue
        _accumulate_edges(adj, args, parts, k, g, NDIFF[op])


@kernel(inline=True)
def _accumulate_edges(adj, args, parts, k, g, nd):  # pragma: no cover (jitted)
    # The ``nd`` differentiable edges of the instruction at ``k``, each by accumulate.
    if nd >= 1:
        accumulate(adj, args[k], g, parts[k])
        if nd >= 2:
            accumulate(adj, args[k + 1], g, parts[k + 1])


@kernel(inline=True)
def _reverse_nonunit(ops, args, parts, adj, n_pre, dest, far):  # pragma: no cover (jitted)
    # Unit partials not stored: ops with one add or subtract the adjoint (unit_adjoint).
    k = args.shape[0]
    for i in range(ops.shape[0] - 1, -1, -1):
        op, k, g = _reverse_head(ops, args, adj, n_pre, dest, far, i, k)
        if g == 0.0:
            continue
        if unit_adjoint(op, args, parts, k, g, adj):
            continue
        _accumulate_edges(adj, args, parts, k, g, NDIFF[op])


@kernel
def reverse_lean(ops, args, vals, adj, n_pre):  # pragma: no cover (jitted)
    """Reverse sweep that recomputes each partial from the stored values.

    Needs no per-edge memory (the lean mode); same contract as :func:`reverse_stored`.
    """
    far = adj.shape[0] >= PREFETCH_MIN_SLOTS
    k = args.shape[0]
    for i in range(ops.shape[0] - 1, -1, -1):
        op = ops[i]
        k -= ARITY[op]
        s = n_pre + i
        q = k - PREFETCH_ARGS
        if far and q >= 0:
            prefetch_write(adj, args[q])
            prefetch_write(adj, args[q + 1])
        g = adj[s]
        adj[s] = 0.0
        if g == 0.0:
            continue
        if far and q >= 0:  # the partials read the arguments' values too
            prefetch(vals, args[q])
            prefetch(vals, args[q + 1])
        nd = NDIFF[op]
        if nd >= 1:
            p0, p1 = partials(op, vals, args, k, s)
            accumulate(adj, args[k], g, p0)
            if nd >= 2:
                accumulate(adj, args[k + 1], g, p1)


# ------------------------------------------------------------------------------- drivers


@kernel
def value_kernel(ops, args, consts, outputs, xin, vals, out):  # pragma: no cover (jitted)
    """Evaluate the outputs at ``xin`` into ``out`` (shape ``(n_outputs,)``)."""
    forward_values(ops, args, consts, xin, vals)
    for j in range(outputs.shape[0]):
        out[j] = vals[outputs[j]]


@kernel
def collect_grad(adj, n_in, n_pre, grad):  # pragma: no cover (jitted)
    """The inputs' adjoints into ``grad``; zero every pre-slot so ``adj`` is clean again."""
    for i in range(n_in):
        grad[i] = adj[i]
    for i in range(n_pre):
        adj[i] = 0.0


@kernel(inline=True)
def _value_and_grad(ops, args, consts, outputs, which, xin, vals, parts, adj,
                    grad):  # pragma: no cover (jitted)
    """The gradient drivers' body, in stored mode (``parts`` an array) or lean mode
    (``parts`` is None).

    Parameters
    ----------
    ops, args, consts, outputs : ndarray
        The tape's arrays.
    which : int
        The output whose gradient is taken.
    xin : ndarray, shape (n_inputs,)
        The point.
    vals : ndarray, shape (n_slots,)
        Receives every slot's value.
    parts : ndarray, shape (len(args),), or None
        The stored partials; ``None`` recomputes them from ``vals`` (Numba types ``parts``
        as ``none`` then and compiles the test away, as for ``dest``).
    adj : ndarray, shape (n_slots,)
        All zeros on entry, and again on exit.
    grad : ndarray, shape (n_inputs,)
        Receives the gradient.

    Returns
    -------
    float
        The output's value.
    """
    if parts is None:
        forward_values(ops, args, consts, xin, vals)
    else:
        forward_partials(ops, args, consts, xin, vals, parts)
    n_pre = xin.shape[0] + consts.shape[0]
    adj[outputs[which]] = 1.0
    if parts is None:
        reverse_lean(ops, args, vals, adj, n_pre)
    else:
        reverse_stored(ops, args, parts, adj, n_pre)
    collect_grad(adj, xin.shape[0], n_pre, grad)
    return vals[outputs[which]]


@kernel
def value_and_grad_kernel(ops, args, consts, outputs, which, xin, vals, parts, adj,
                          grad):  # pragma: no cover (jitted)
    """Value of output ``which`` and its gradient into ``grad``; stores partials (fast mode).

    ``adj`` must be all zeros on entry (it is again on exit); ``parts`` has ``len(args)``
    entries.  Returns the output's value.
    """
    return _value_and_grad(ops, args, consts, outputs, which, xin, vals, parts, adj, grad)


@kernel
def value_and_grad_lean_kernel(ops, args, consts, outputs, which, xin, vals, adj,
                               grad):  # pragma: no cover (jitted)
    """As :func:`value_and_grad_kernel` but recomputes partials (lean mode, no ``parts``)."""
    return _value_and_grad(ops, args, consts, outputs, which, xin, vals, None, adj, grad)


@kernel
def value_plan_kernel(ops, args, dest, consts, outputs, xin, vals, out):  # pragma: no cover
    """Evaluate the outputs at ``xin`` into ``out`` with a slot-reuse plan.

    ``args``, ``dest`` and ``outputs`` are the plan's (work-vector slots); ``vals`` has the
    plan's ``n_work`` entries.
    """
    forward_values(ops, args, consts, xin, vals, dest)
    for j in range(outputs.shape[0]):
        out[j] = vals[outputs[j]]


@kernel
def value_and_grad_plan_kernel(ops, args, dest, consts, outputs, which, xin, vals, parts, adj,
                               grad):  # pragma: no cover (jitted)
    """Value of output ``which`` and its gradient, stored partials, with a slot-reuse plan.

    ``vals`` and ``adj`` have the plan's ``n_work`` entries; ``adj`` must be all zeros on entry
    (it is again on exit); ``parts`` has ``len(args)`` entries.  Returns the output's value.
    """
    forward_partials(ops, args, consts, xin, vals, parts, dest)
    n_pre = xin.shape[0] + consts.shape[0]
    adj[outputs[which]] = 1.0
    reverse_stored(ops, args, parts, adj, 0, dest)
    collect_grad(adj, xin.shape[0], n_pre, grad)
    return vals[outputs[which]]
