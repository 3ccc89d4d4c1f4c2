"""Derivative kernels beyond the gradient: tangents, vector reverse, Hessian-vector products.

The Python API on top of these kernels is :mod:`fasttape.derivatives`; what each op computes
(its partials and second partials) comes from :mod:`fasttape.kernels.dispatch`.

Layout.  ``K`` directions are carried per sweep in buffers laid out ``[slot, direction]``
(``tan[s, d]``, C-contiguous, shape ``(n_slots, K)``): each instruction is decoded and its
partials are computed once, then applied to a contiguous row of ``K`` directions, which LLVM
vectorizes.  So the tape is read once per ``K`` directions, not once per direction.

Kernels.

``forward_tangent``
    values and ``K`` tangents (forward mode): ``tan[s, d]`` is the derivative of slot ``s``
    along input direction ``xdot[:, d]``.
``reverse_vec``
    reverse sweep with ``K`` cotangents ``adj[s, d]`` (vector-Jacobian products), partials
    recomputed from the values.
``vjp_driver``
    one cotangent (a vector-Jacobian product): the gradient's stored sweeps
    (:mod:`fasttape.kernels.sweep`) with every output seeded by its weight.
``reverse_hvp``
    forward-over-reverse: the gradient adjoint ``adj[s]`` (one per slot, shared by every
    direction) and its ``K`` tangents ``adjdot[s, d]``, using the table's second partials
    (:attr:`fasttape.ops.OpSpec.second`).  With ``tan`` from ``forward_tangent``, the inputs'
    ``adjdot`` rows are the Hessian-vector products.

Drivers.  ``tangent_driver`` (JVPs and forward Jacobians), ``cotangent_driver`` (VJPs and
reverse Jacobians) and ``hvp_driver`` (HVPs and Hessians): each serves a given block of
directions or, with ``identity=True``, all unit directions in blocks of ``K``.  There is one
driver per sweep kind because each driver compiles the sweeps it calls again (LLVM inlines
them), so every extra driver would add seconds to the first call.

Zero rules.  They are those of the gradient (docs/derivatives.md), applied to every product
the sweeps form: a product with an exactly-zero factor (adjoint, tangent, partial or second
partial) contributes nothing, so ``0 * inf`` and ``0 * NaN`` never form.  In forward mode this
is the dual of the zero-adjoint rule: a zero tangent contributes nothing, so a direction that
does not move an argument is not poisoned by that argument's infinite partial, and a forward
Jacobian column equals the reverse one.  Accumulations are written as selects
(``u = u + g * d if g != 0.0 else u``, as in the batch kernels) so they vectorize and keep
signed zeros exactly as the scalar ``if``.
"""

from __future__ import annotations

from fasttape.kernels.activity import (
    ADJOINT,
    SKIP,
    TANGENT,
    forward_at,
    forward_count,
    forward_mode,
    reverse_at,
    reverse_count,
    reverse_mode,
    wants_adjoint,
    wants_first,
)
from fasttape.kernels.dispatch import (
    ARITY,
    NDIFF,
    partials,
    partials_and_second,
    value_and_partials,
)
from fasttape.kernels.jit import kernel
from fasttape.kernels.sweep import (
    collect_grad,
    forward_partials,
    forward_values,
    load_inputs,
    reverse_lean,
    reverse_stored,
)

__all__ = [
    "adjoint_step",
    "cotangent_driver",
    "evaluate_active",
    "evaluate_instruction",
    "forward_tangent",
    "hvp_driver",
    "hvp_rows",
    "jvp_rows",
    "reverse_hvp",
    "reverse_step",
    "reverse_vec",
    "tangent_driver",
    "vjp_driver",
    "vjp_rows",
]


@kernel(inline=True)
def _any_nonzero(rows, s):  # pragma: no cover (jitted)
    """Whether row ``s`` of ``rows`` (shape ``(n_slots, K)``) has a non-zero entry."""
    for d in range(rows.shape[1]):
        if rows[s, d] != 0.0:
            return True
    return False


@kernel(inline=True)
def _clear_row(rows, s):  # pragma: no cover (jitted)
    """Zero row ``s`` of ``rows`` (shape ``(n_slots, K)``)."""
    for d in range(rows.shape[1]):
        rows[s, d] = 0.0


@kernel(inline=True)
def evaluate_instruction(ops, args, vals, n_pre, i, k, first):  # pragma: no cover (jitted)
    """Evaluate instruction ``i`` (arguments from ``args[k]``) into its slot ``n_pre + i``.

    The step every forward tangent sweep starts an instruction with (:func:`forward_tangent`
    and the one-direction sweep of :mod:`fasttape.kernels.sparsity`): the value and the
    partials come from one dispatch.  ``first``: whether the partials are wanted (false: a
    partial that calls a function, ``sin``'s ``cos``, is not computed and reads 0.0).

    Returns
    -------
    tuple
        ``(s, nd, p0, p1, k_next)``: the slot, the op's number of differentiable arguments,
        its two partials (0.0 where absent) and the next instruction's argument position.
    """
    op = ops[i]
    s = n_pre + i
    x = vals[args[k]]
    f, p0, p1 = value_and_partials(op, x, vals, args, k, first)
    vals[s] = f
    return s, NDIFF[op], p0, p1, k + ARITY[op]


@kernel(inline=True)
def evaluate_active(ops, args, vals, active, n_pre, i, k):  # pragma: no cover (jitted)
    """Step ``i`` of a forward tangent sweep, pruned by ``active`` (or not: None).

    Returns ``(mode, s, nd, p0, p1, k_next)``: the :func:`fasttape.kernels.activity.
    forward_mode` of the instruction, then :func:`evaluate_instruction`'s answer (the
    instruction evaluated unless the mode is ``SKIP``); the caller computes tangents only
    when the mode is ``TANGENT`` (the only mode that reads the partials: they are computed
    for it alone).
    """
    mode = forward_mode(active, n_pre + i)
    if mode == SKIP:
        return mode, n_pre + i, 0, 0.0, 0.0, k + ARITY[ops[i]]
    s, nd, p0, p1, k_next = evaluate_instruction(ops, args, vals, n_pre, i, k,
                                                  mode == TANGENT)
    return mode, s, nd, p0, p1, k_next


@kernel
def forward_tangent(ops, args, consts, xin, xdot, vals, tan, active=None):
    # pragma: no cover (jitted)
    """Forward sweep with ``K = tan.shape[1]`` tangent directions.

    ``vals`` (shape ``(n_slots,)``) receives every slot's value and ``tan`` (shape
    ``(n_slots, K)``) its derivative along each input direction ``xdot[:, d]``
    (``xdot`` has shape ``(n_inputs, K)``; constants have tangent 0).  A zero tangent
    or a zero partial contributes nothing (module docstring).  No bounds checks.
    ``active``: a pruned sweep's steps and flags (:mod:`fasttape.kernels.activity`: only
    the listed instructions are evaluated, and only the ``TAN`` ones get tangents), or None
    for every slot.
    """
    n_in = xin.shape[0]
    nk = tan.shape[1]
    n_pre = load_inputs(consts, xin, vals)
    for i in range(n_in):
        for d in range(nk):
            tan[i, d] = xdot[i, d]
    for i in range(n_in, n_pre):
        _clear_row(tan, i)
    k = 0
    for t in range(forward_count(ops, active)):
        i, k = forward_at(active, t, k)
        mode, s, nd, p0, p1, k_next = evaluate_active(ops, args, vals, active, n_pre, i, k)
        if mode != TANGENT:
            k = k_next
            continue
        if nd == 0:
            _clear_row(tan, s)
        elif nd == 1:
            a0 = args[k]
            q0 = p0 != 0.0
            for d in range(nk):
                t0 = tan[a0, d]
                tan[s, d] = p0 * t0 if (q0 and t0 != 0.0) else 0.0
        else:
            a0 = args[k]
            a1 = args[k + 1]
            q0 = p0 != 0.0
            q1 = p1 != 0.0
            for d in range(nk):
                t0 = tan[a0, d]
                t1 = tan[a1, d]
                u = p0 * t0 if (q0 and t0 != 0.0) else 0.0
                tan[s, d] = u + p1 * t1 if (q1 and t1 != 0.0) else u
        k = k_next


@kernel
def reverse_vec(ops, args, vals, adj, n_pre):  # pragma: no cover (jitted)
    """Reverse sweep with ``K = adj.shape[1]`` cotangents, partials from the values.

    ``adj`` (shape ``(n_slots, K)``) holds the seeds on entry; on exit the instruction
    rows are zero again and rows below ``n_pre`` hold the input and constant adjoints.
    Each direction follows exactly the scalar reverse sweep's rules and order.
    """
    nk = adj.shape[1]
    k = args.shape[0]
    for i in range(ops.shape[0] - 1, -1, -1):
        op = ops[i]
        k -= ARITY[op]
        s = n_pre + i
        if not _any_nonzero(adj, s):
            continue  # zero adjoints in every direction: the row is already clean
        nd = NDIFF[op]
        if nd == 0:
            _clear_row(adj, s)
            continue
        p0, p1 = partials(op, vals, args, k, s)
        a0 = args[k]
        q0 = p0 != 0.0
        if nd == 1:
            for d in range(nk):
                g = adj[s, d]
                adj[s, d] = 0.0
                adj[a0, d] = adj[a0, d] + g * p0 if (q0 and g != 0.0) else adj[a0, d]
        else:
            a1 = args[k + 1]
            q1 = p1 != 0.0
            for d in range(nk):
                g = adj[s, d]
                adj[s, d] = 0.0
                adj[a0, d] = adj[a0, d] + g * p0 if (q0 and g != 0.0) else adj[a0, d]
                adj[a1, d] = adj[a1, d] + g * p1 if (q1 and g != 0.0) else adj[a1, d]


@kernel(inline=True)
def _add_scaled_row(dst, r, src, q, c):  # pragma: no cover (jitted)
    """Add ``c * src[q, d]`` to ``dst[r, d]`` for every direction ``d``, skipping zeros.

    Parameters
    ----------
    dst : ndarray, shape (n_slots, K)
        The rows being accumulated into (``adjdot`` of :func:`reverse_hvp`).
    r : int
        The row of ``dst`` that receives the terms.
    src : ndarray, shape (n_slots, K)
        The rows the terms are read from; may be ``dst`` itself, with ``q != r``.
    q : int
        The row of ``src`` that is scaled.
    c : float
        The scale (a partial, or an adjoint times a second partial).

    Notes
    -----
    A zero ``src[q, d]`` contributes nothing (the zero rules of the module docstring), as a
    select, so the loop vectorizes.  Always inlined: :func:`reverse_hvp` calls it once per
    term of every instruction, so the loop and its loop-invariant guard stay one plain loop.
    """
    for d in range(dst.shape[1]):
        t = src[q, d]
        u = dst[r, d]
        dst[r, d] = u + c * t if t != 0.0 else u


@kernel(inline=True)
def reverse_step(ops, adj, n_pre, i, k):  # pragma: no cover (jitted)
    """Step a forward-over-reverse sweep back to instruction ``i`` and take its adjoint.

    ``k`` is the argument position just past instruction ``i``.  The adjoint ``adj[s]`` is
    read and cleared (the sweeps leave the instruction slots zero): the step both
    :func:`reverse_hvp` and the one-direction sweep of :mod:`fasttape.kernels.sparsity`
    start an instruction with.

    Returns
    -------
    tuple
        ``(op, s, k, g)``: the op, the slot, the instruction's argument position and its
        adjoint.
    """
    op = ops[i]
    s = n_pre + i
    g = adj[s]
    adj[s] = 0.0
    return op, s, k - ARITY[op], g


@kernel(inline=True)
def adjoint_step(adj, active, args, k, nd, g, p0, p1):  # pragma: no cover (jitted)
    """The adjoint updates of a forward-over-reverse step, and nothing else (a linear
    instruction outside ``TAN`` in a pruned sweep): the same products, in the same order,
    under the same zero rules as the full step."""
    a0 = args[k]
    if p0 != 0.0 and wants_adjoint(active, a0):
        adj[a0] += g * p0
    if nd == 2:
        a1 = args[k + 1]
        if p1 != 0.0 and wants_adjoint(active, a1):
            adj[a1] += g * p1


@kernel
def reverse_hvp(ops, args, vals, tan, adj, adjdot, n_pre, active=None):
    # pragma: no cover (jitted)
    """Forward-over-reverse sweep: adjoints ``adj`` and their ``K`` tangents ``adjdot``.

    ``vals`` and ``tan`` come from :func:`forward_tangent`.  ``adj`` (shape
    ``(n_slots,)``) and ``adjdot`` (shape ``(n_slots, K)``) hold the seeds on entry
    (zeros elsewhere); on exit the instruction slots are zero again and the slots below
    ``n_pre`` hold the gradient and its directional derivatives (Hessian-vector
    products).  For an edge ``s -> a_j`` with partial ``p_j`` and second partials
    ``h_jl``: ``adj[a_j] += g * p_j`` and
    ``adjdot[a_j, d] += gd * p_j + sum_l g * h_jl * tan[a_l, d]``, skipping every
    product with an exactly-zero factor.  ``active`` (see :func:`forward_tangent`): only
    ``TAN | ADJ`` instructions are visited and only ``ADJ`` slots get adjoints (so the
    gradient is not left below ``n_pre``), or None for every slot.
    """
    k = args.shape[0]
    for t in range(reverse_count(ops, active) - 1, -1, -1):
        i, k = reverse_at(active, t, k)
        op, s, k, g = reverse_step(ops, adj, n_pre, i, k)
        mode = reverse_mode(active, s)
        if mode == SKIP:
            continue
        if g == 0.0 and (mode == ADJOINT or not _any_nonzero(adjdot, s)):
            continue  # nothing flows: the rows are already clean
        nd = NDIFF[op]
        if nd == 0:
            _clear_row(adjdot, s)
            continue
        # The first partials are read where the adjoint reaches an argument or the adjoint
        # tangents move (g == 0 here means they do).
        first = g == 0.0 or wants_first(active, args, k, nd, g) or (
            mode == TANGENT and _any_nonzero(adjdot, s))
        p0, p1, h00, h01, h11 = partials_and_second(op, vals, args, k, s, g, first)
        a0 = args[k]
        q0 = p0 != 0.0
        if mode == ADJOINT:  # g != 0 here; no adjoint tangent, no second partial
            adjoint_step(adj, active, args, k, nd, g, p0, p1)
            continue
        if g != 0.0:
            if q0 and wants_adjoint(active, a0):
                adj[a0] += g * p0
            c00 = g * h00
            c01 = g * h01
            c11 = g * h11
        else:
            c00 = 0.0
            c01 = 0.0
            c11 = 0.0
        r00 = h00 != 0.0 and g != 0.0
        # One simple loop per term, each guarded by its loop-invariant flag outside the
        # loop, so every loop is a plain vectorizable select.  The per-element order of
        # the additions is gd * p0, c00 * t0, c01 * t1 (then the same for a1), as in
        # the oracle (tests/reference_derivs.py).
        if q0:
            _add_scaled_row(adjdot, a0, adjdot, s, p0)
        if r00:
            _add_scaled_row(adjdot, a0, tan, a0, c00)
        if nd == 2:
            a1 = args[k + 1]
            q1 = p1 != 0.0
            if g != 0.0 and q1 and wants_adjoint(active, a1):
                adj[a1] += g * p1
            r01 = h01 != 0.0 and g != 0.0
            r11 = h11 != 0.0 and g != 0.0
            if r01:
                _add_scaled_row(adjdot, a0, tan, a1, c01)
            if q1:
                _add_scaled_row(adjdot, a1, adjdot, s, p1)
            if r01:
                _add_scaled_row(adjdot, a1, tan, a0, c01)
            if r11:
                _add_scaled_row(adjdot, a1, tan, a1, c11)
        _clear_row(adjdot, s)


@kernel
def _identity_block(xdot, j0):
    # Unit seeds for directions j0 .. j0 + K - 1 (columns past the last direction stay 0).
    n_in, nk = xdot.shape
    for i in range(n_in):
        for d in range(nk):
            xdot[i, d] = 1.0 if i == j0 + d else 0.0


# One driver per sweep kind, each serving two methods (a given block of directions, or the
# identity in blocks for a full matrix): every driver recompiles the sweeps it calls, so
# fewer drivers means a shorter first call.


@kernel
def tangent_driver(ops, args, consts, outputs, xin, xdot, identity, vals, tan, out, res,
                   active=None):  # pragma: no cover (jitted)
    """Forward mode: outputs into ``out`` and output tangents into ``res``.

    ``identity=False``: one sweep along the ``K`` columns of ``xdot`` (shape
    ``(n_inputs, K)``), ``res`` has shape ``(m, K)`` (JVPs).  ``identity=True``: the Jacobian,
    ``K = tan.shape[1]`` unit directions per sweep (``xdot`` is overwritten), ``res`` has
    shape ``(m, n_inputs)``.  ``active``: a pruned sweep's steps and flags
    (:mod:`fasttape.kernels.activity`; then only the rows of ``res`` whose outputs are
    ``TAN`` are computed, and ``out`` is not), or None.
    """
    n_in = xin.shape[0]
    nk = tan.shape[1]
    m = outputs.shape[0]
    if not identity:
        forward_tangent(ops, args, consts, xin, xdot, vals, tan, active)
        for j in range(m):
            for d in range(nk):
                res[j, d] = tan[outputs[j], d]
    else:
        for j0 in range(0, n_in, nk):
            _identity_block(xdot, j0)
            forward_tangent(ops, args, consts, xin, xdot, vals, tan)
            nb = min(nk, n_in - j0)
            for j in range(m):
                for d in range(nb):
                    res[j, j0 + d] = tan[outputs[j], d]
        if n_in == 0:
            forward_values(ops, args, consts, xin, vals)
    for j in range(m):
        out[j] = vals[outputs[j]]


@kernel
def cotangent_driver(ops, args, consts, outputs, xin, w, identity, vals, adj, out, res):
    """Reverse mode: outputs into ``out``, input cotangents into ``res``.

    ``identity=False``: one reverse sweep with the ``K`` cotangents ``w`` (shape ``(m, K)``),
    ``res`` has shape ``(n_inputs, K)`` (VJPs).  ``identity=True``: the Jacobian, ``K =
    adj.shape[1]`` outputs per reverse sweep after one value sweep, ``res`` has shape
    ``(m, n_inputs)``.  ``adj`` (shape ``(n_slots, K)``) must be zero on entry and is zero
    again on exit.
    """
    forward_values(ops, args, consts, xin, vals)
    n_in = xin.shape[0]
    n_pre = n_in + consts.shape[0]
    m = outputs.shape[0]
    nk = adj.shape[1]
    for j in range(m):
        out[j] = vals[outputs[j]]
    step = nk if identity else max(m, 1)
    for i0 in range(0, max(m, 1), step):
        nb = min(nk, m - i0)
        if identity:
            for d in range(nb):
                adj[outputs[i0 + d], d] += 1.0
        else:
            for j in range(m):
                for d in range(nk):
                    adj[outputs[j], d] += w[j, d]
        reverse_vec(ops, args, vals, adj, n_pre)
        if identity:
            for d in range(nb):
                for i in range(n_in):
                    res[i0 + d, i] = adj[i, d]
        else:
            for i in range(n_in):
                for d in range(nk):
                    res[i, d] = adj[i, d]
        for i in range(n_pre):
            _clear_row(adj, i)


@kernel
def vjp_driver(ops, args, consts, outputs, xin, w, vals, parts, adj, out, res):
    # pragma: no cover (jitted)
    """Outputs into ``out`` and ``sum_j w[j] * grad(output j)`` into ``res``.

    One cotangent, so the gradient's stored sweeps serve (partials stored in the forward
    sweep, read by the reverse one): about 1.4x faster than :func:`cotangent_driver` with
    ``K = 1``, whose reverse sweep recomputes every partial and runs a direction loop per
    edge (docs/derivatives.md); and the sweeps are the gradient's compiled ones, so after a
    first ``value_and_grad`` the first call compiles little.  Each output's adjoint is
    seeded with its weight (``adj[outputs[j]] += w[j]``, so repeated outputs add); then the
    reverse sweep applies exactly :func:`reverse_vec`'s rules and order, so the result is
    bitwise the same.  ``parts`` has ``len(args)`` entries, or is
    None for a lean tape (partials recomputed, no per-edge memory, as its gradient does);
    ``adj`` (shape ``(n_slots,)``) must be zero on entry and is zero again on exit.
    """
    if parts is None:
        forward_values(ops, args, consts, xin, vals)
    else:
        forward_partials(ops, args, consts, xin, vals, parts)
    n_in = xin.shape[0]
    n_pre = n_in + consts.shape[0]
    for j in range(outputs.shape[0]):
        out[j] = vals[outputs[j]]
        adj[outputs[j]] += w[j]
    if parts is None:
        reverse_lean(ops, args, vals, adj, n_pre)
    else:
        reverse_stored(ops, args, parts, adj, n_pre)
    collect_grad(adj, n_in, n_pre, res)


@kernel
def jvp_rows(ops, args, consts, outputs, X, V, vals, tan, out, outdot):
    # pragma: no cover (jitted)
    """One JVP per row of a batch: :func:`tangent_driver` at ``X[b]`` along ``V[b]``, the
    values into ``out[b]`` and the tangents into ``outdot[b]`` (shapes ``(B, n_inputs)`` and
    ``(B, n_outputs)``), so the results are bitwise those of single-point calls.  ``tan`` has
    shape ``(n_slots, 1)``.  One loop here instead of one Python call per row."""
    n = X.shape[1]
    m = outputs.shape[0]
    for b in range(X.shape[0]):
        tangent_driver(ops, args, consts, outputs, X[b], V[b].reshape((n, 1)), False, vals,
                       tan, out[b], outdot[b].reshape((m, 1)))


@kernel
def vjp_rows(ops, args, consts, outputs, X, W, vals, parts, adj, out, res):
    # pragma: no cover (jitted)
    """One VJP per row of a batch: :func:`vjp_driver` at ``X[b]`` with the weights ``W[b]``,
    the values into ``out[b]`` and the products into ``res[b]``; bitwise single-point calls.
    The buffers are :func:`vjp_driver`'s, shared by the rows (``adj`` is clean after each)."""
    for b in range(X.shape[0]):
        vjp_driver(ops, args, consts, outputs, X[b], W[b], vals, parts, adj, out[b], res[b])


@kernel
def hvp_driver(ops, args, consts, outputs, which, xin, xdot, identity, vals, tan, adj, adjdot,
               grad, res):
    """Value, gradient and Hessian-vector products of output ``which`` (forward-over-reverse).

    ``identity=False``: one sweep pair along the ``K`` columns of ``xdot``, ``res`` has shape
    ``(n_inputs, K)``.  ``identity=True``: the Hessian, ``K = tan.shape[1]`` unit vectors per
    sweep pair, ``res`` has shape ``(n_inputs, n_inputs)`` and is symmetrized: ``res[i, j]``
    and ``res[j, i]`` come from different sweeps and can differ in the last bits; where they
    differ both become ``0.5 * a + 0.5 * b``.  ``adj`` and ``adjdot`` must be zero on entry
    and are zero again on exit.
    """
    n_in = xin.shape[0]
    n_pre = n_in + consts.shape[0]
    nk = tan.shape[1]
    step = nk if identity else max(n_in, 1)
    for j0 in range(0, max(n_in, 1), step):
        if identity:
            _identity_block(xdot, j0)
        forward_tangent(ops, args, consts, xin, xdot, vals, tan)
        adj[outputs[which]] = 1.0
        reverse_hvp(ops, args, vals, tan, adj, adjdot, n_pre)
        nb = min(nk, res.shape[1] - j0)
        for i in range(n_in):
            grad[i] = adj[i]
            for d in range(nb):
                res[i, j0 + d] = adjdot[i, d]
        for i in range(n_pre):
            adj[i] = 0.0
            _clear_row(adjdot, i)
    if identity:
        for i in range(n_in):
            for j in range(i + 1, n_in):
                a = res[i, j]
                b = res[j, i]
                if a != b:
                    c = 0.5 * a + 0.5 * b
                    res[i, j] = c
                    res[j, i] = c
    return vals[outputs[which]]


@kernel
def hvp_rows(ops, args, consts, outputs, which, X, V, vals, tan, adj, adjdot, grad, out):
    # pragma: no cover (jitted)
    """One Hessian-vector product per row of a batch: :func:`hvp_driver` at ``X[b]`` along
    ``V[b]`` into ``out[b]`` (shape ``(B, n_inputs)``), bitwise single-point calls; ``tan``
    and ``adjdot`` have shape ``(n_slots, 1)``, ``grad`` ``(n_inputs,)`` (overwritten)."""
    n = X.shape[1]
    for b in range(X.shape[0]):
        hvp_driver(ops, args, consts, outputs, which, X[b], V[b].reshape((n, 1)), False, vals,
                   tan, adj, adjdot, grad, out[b].reshape((n, 1)))
