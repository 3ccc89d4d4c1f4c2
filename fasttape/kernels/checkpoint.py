"""Checkpointing drivers: revolve's counting formulas, ``ft.scan`` and segmented gradients.

The drivers contain no op formulas: they call the single-point sweeps of
:mod:`fasttape.kernels.sweep` (``forward_values``, ``forward_partials``, ``reverse_stored``) on
a step tape (``ft.scan``) or on one segment of a flat tape (``memory_limit=``), so every value,
partial and adjoint is computed by exactly the code that the store-everything gradient runs.
The Python side is :mod:`fasttape.checkpoint`.
"""

from __future__ import annotations

from fasttape.kernels.jit import kernel
from fasttape.kernels.sweep import forward_partials, forward_values, reverse_stored

# --- revolve: Griewank's binomial checkpointing, counting formulas and the optimal split ---


@kernel
def revolve_reps(n, c):
    """Repetition number ``r`` (smallest ``r >= 0`` with ``C(c + r, c) >= n``) and ``C(c + r, c)``.

    ``b * (c + r)`` never overflows for ``n, c < 2**31``: ``b < n`` before each product.
    """
    r = 0
    b = 1
    while b < n:
        r += 1
        b = b * (c + r) // r
    return r, b


@kernel
def revolve_cost(n, c):
    """Minimal number of advance steps to reverse ``n`` steps with ``c >= 1`` snapshots.

    Griewank's formula ``r * n - C(c + r, c + 1)``; ``C(c + r, c + 1) = C(c + r, c) * r / (c + 1)``
    exactly.  The taped step that every reversal needs (one per step) is not counted.
    """
    r, b = revolve_reps(n, c)
    return r * n - b * r // (c + 1)


@kernel
def revolve_split(n, c):
    """Optimal first advance ``m`` (``1 <= m < n``) for ``n >= 2`` steps and ``c >= 2`` snapshots.

    Minimises ``h(m) = m + cost(m, c) + cost(n - m, c - 1)`` (advance ``m``, reverse the right
    part with one snapshot fewer, then the left part).  ``h`` is convex (a sum of convex
    piecewise-linear functions), so a bisection on its forward difference finds the minimum in
    ``O(log n)`` evaluations; its value is ``cost(n, c)`` (Griewank's theorem, checked by the
    tests against counted evaluations).
    """
    lo = 1
    hi = n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        h0 = mid + revolve_cost(mid, c) + revolve_cost(n - mid, c - 1)
        h1 = mid + 1 + revolve_cost(mid + 1, c) + revolve_cost(n - mid - 1, c - 1)
        if h1 >= h0:
            hi = mid
        else:
            lo = mid + 1
    return lo


# --- scan: one step tape, T steps, reversed with revolve ---


@kernel
def _scan_add_cost(svals, souts, n_state, t, acc, cnt):
    # The running cost is summed once per step, in step order, as the unrolled tape does:
    # acc = c_0, then acc = acc + c_t.  cnt[2] is the next step whose cost is due.
    if t == cnt[2]:
        c = svals[souts[n_state]]
        acc[0] = c if t == 0 else acc[0] + c
        cnt[2] = t + 1


@kernel
def _scan_advance(sops, sargs, sconsts, souts, n_state, has_cost, xin, svals, t0, k, acc, cnt):
    # k plain forward steps from position t0: xin[:n_state] holds state t0 on entry and
    # state t0 + k on exit (xin[n_state:] are the parameters).  vals still holds the old
    # input values, so permuted or passed-through outputs read the right thing.
    for t in range(t0, t0 + k):
        forward_values(sops, sargs, sconsts, xin, svals)
        if has_cost:
            _scan_add_cost(svals, souts, n_state, t, acc, cnt)
        for j in range(n_state):
            xin[j] = svals[souts[j]]
    cnt[0] += k


@kernel
def _scan_taped(
    sops, sargs, sconsts, souts, fops, fargs, fconsts, fouts, has_final, has_cost, n_state,
    xin, svals, sparts, sadj, fxin, fvals, fparts, fadj, ct, t, n_steps, acc, cnt, res,
):
    # Step t with partials, then its reverse sweep with the state cotangent ct (of state t+1)
    # seeded on its outputs; on exit ct holds the cotangent of state t.  The parameter
    # adjoints live in sadj[n_state:n_in] and are never reset between steps: the unrolled
    # tape adds every step's contribution into one slot, and so must we (bitwise equality).
    n_in = xin.shape[0]
    forward_partials(sops, sargs, sconsts, xin, svals, sparts)
    cnt[1] += 1
    if has_cost:
        _scan_add_cost(svals, souts, n_state, t, acc, cnt)
    s_pre = n_in + sconsts.shape[0]
    if t == n_steps - 1:
        # The turn: the objective's value, and the final function's reverse sweep first (its
        # instructions come last in the unrolled tape).
        if has_final:
            for j in range(n_state):
                fxin[j] = svals[souts[j]]
            for j in range(n_state, n_in):
                fxin[j] = xin[j]
            forward_partials(fops, fargs, fconsts, fxin, fvals, fparts)
            jf = fvals[fouts[0]]
            res[0] = acc[0] + jf if has_cost else jf
            f_pre = n_in + fconsts.shape[0]
            fadj[fouts[0]] = 1.0
            reverse_stored(fops, fargs, fparts, fadj, f_pre)
            for j in range(n_state):
                ct[j] = fadj[j]
            for j in range(n_state, n_in):
                sadj[j] = fadj[j]
            for j in range(f_pre):
                fadj[j] = 0.0
        else:
            res[0] = acc[0]
            for j in range(n_state):
                ct[j] = 0.0
            for j in range(n_state, n_in):
                sadj[j] = 0.0
    # Seed state outputs first, then the cost: in the unrolled tape the next step's reads of
    # a slot are reversed before the running-cost addition that reads it.
    for j in range(n_state):
        sadj[souts[j]] += ct[j]
    if has_cost:
        sadj[souts[n_state]] += 1.0
    reverse_stored(sops, sargs, sparts, sadj, s_pre)
    for j in range(n_state):
        ct[j] = sadj[j]
        sadj[j] = 0.0
    for j in range(n_in, s_pre):
        sadj[j] = 0.0


@kernel
def scan_value_and_grad(
    sops, sargs, sconsts, souts, fops, fargs, fconsts, fouts, has_final, has_cost, n_state,
    x0, n_steps, n_snaps, xin, svals, sparts, sadj, fxin, fvals, fparts, fadj, ct, snaps,
    stack, acc, cnt, res, g_params,
):
    """Objective and gradient of a scan, reversed with the binomial (revolve) schedule.

    ``xin[n_state:]`` holds the parameters on entry.  ``snaps`` has ``n_snaps`` rows (the
    first holds ``x0``); ``stack`` has ``n_snaps`` rows of (pos, n, c) continuations.  On exit
    ``ct`` is the gradient with respect to ``x0`` and ``g_params`` with respect to the
    parameters; ``cnt`` = (advances, taped steps, -, snapshots used at peak).  Iterative: a
    task (pos, n, c) reverses steps pos .. pos + n - 1 from the snapshot on top (state pos) with c
    snapshots; it advances m = revolve_split(n, c) steps, pushes a snapshot and the left
    task (pos, m, c), and continues with (pos + m, n - m, c - 1).
    """
    n_in = xin.shape[0]
    for j in range(n_state):
        snaps[0, j] = x0[j]
    for j in range(4):
        cnt[j] = 0
    cnt[3] = 1
    top = 0
    depth = 0
    pos = 0
    n = n_steps
    c = n_snaps
    while True:
        if n == 1 or c == 1:
            # No snapshot left to place: re-advance from state pos before each reversal.
            for k in range(n - 1, -1, -1):
                for j in range(n_state):
                    xin[j] = snaps[top, j]
                _scan_advance(sops, sargs, sconsts, souts, n_state, has_cost, xin, svals,
                              pos, k, acc, cnt)
                _scan_taped(sops, sargs, sconsts, souts, fops, fargs, fconsts, fouts,
                            has_final, has_cost, n_state, xin, svals, sparts, sadj, fxin,
                            fvals, fparts, fadj, ct, pos + k, n_steps, acc, cnt, res)
            if depth == 0:
                break
            depth -= 1
            pos = stack[depth, 0]
            n = stack[depth, 1]
            c = stack[depth, 2]
            top -= 1
        else:
            m = revolve_split(n, c)
            for j in range(n_state):
                xin[j] = snaps[top, j]
            _scan_advance(sops, sargs, sconsts, souts, n_state, has_cost, xin, svals,
                          pos, m, acc, cnt)
            top += 1
            for j in range(n_state):
                snaps[top, j] = xin[j]
            if top + 1 > cnt[3]:
                cnt[3] = top + 1
            stack[depth, 0] = pos
            stack[depth, 1] = m
            stack[depth, 2] = c
            depth += 1
            pos += m
            n -= m
            c -= 1
    for j in range(n_state, n_in):
        g_params[j - n_state] = sadj[j]
        sadj[j] = 0.0
    return res[0]


@kernel
def scan_value(
    sops, sargs, sconsts, souts, fops, fargs, fconsts, fouts, has_final, has_cost, n_state,
    n_steps, xin, svals, fxin, fvals, acc, cnt,
):
    """Objective of a scan by plain forward steps; ``xin[:n_state]`` ends as the final state."""
    for j in range(4):
        cnt[j] = 0
    _scan_advance(sops, sargs, sconsts, souts, n_state, has_cost, xin, svals, 0, n_steps,
                  acc, cnt)
    if not has_final:
        return acc[0]
    for j in range(xin.shape[0]):
        fxin[j] = xin[j]
    forward_values(fops, fargs, fconsts, fxin, fvals)
    jf = fvals[fouts[0]]
    return acc[0] + jf if has_cost else jf


# --- segments: a flat tape reversed segment by segment from boundary checkpoints ---


@kernel
def segment_counts(ops, args, arity, n_pre, seg_len, last, cross):
    """Sizes of the segment plan with segments of ``seg_len`` instructions.

    ``last`` (int64, n_slots, all -1) and ``cross`` (bool, n_slots, all False) are scratch;
    ``cross`` marks on exit the instruction slots read by a later segment.  Returns
    (total externals, crossing slots, most externals of one segment, most edges of one
    segment).  An *external* of segment k is a slot it reads that it does not compute.
    """
    n = ops.shape[0]
    k = 0
    total = 0
    n_cross = 0
    e_max = 0
    edges_max = 0
    seg = -1
    e_here = 0
    edges_here = 0
    base = 0
    for i in range(n):
        s = i // seg_len
        if s != seg:
            if e_here > e_max:
                e_max = e_here
            if edges_here > edges_max:
                edges_max = edges_here
            seg = s
            e_here = 0
            edges_here = 0
            base = n_pre + s * seg_len
        for j in range(arity[ops[i]]):
            a = args[k + j]
            if a < base and last[a] != s:
                last[a] = s
                e_here += 1
                total += 1
                if a >= n_pre and not cross[a]:
                    cross[a] = True
                    n_cross += 1
        edges_here += arity[ops[i]]
        k += arity[ops[i]]
    if e_here > e_max:
        e_max = e_here
    if edges_here > edges_max:
        edges_max = edges_here
    return total, n_cross, e_max, edges_max


@kernel
def segment_fill(ops, args, arity, n_pre, seg_len, n_seg, cid, last, edge_ptr, ext_ptr,
                 ext_slot, ext_src):
    """Fill the plan: edge offsets, and each segment's sorted externals with their sources.

    ``cid[a]`` is the checkpoint index of crossing slot ``a`` (-1 otherwise); an external's
    source is its checkpoint index, or the slot itself for inputs and constants.
    """
    k = 0
    q = 0
    for s in range(n_seg):
        edge_ptr[s] = k
        ext_ptr[s] = q
        base = n_pre + s * seg_len
        for i in range(s * seg_len, min((s + 1) * seg_len, ops.shape[0])):
            for j in range(arity[ops[i]]):
                a = args[k + j]
                if a < base and last[a] != s:
                    last[a] = s
                    ext_slot[q] = a
                    q += 1
            k += arity[ops[i]]
        ext_slot[ext_ptr[s]:q].sort()
        for r in range(ext_ptr[s], q):
            a = ext_slot[r]
            ext_src[r] = a if a < n_pre else cid[a]
    edge_ptr[n_seg] = k
    ext_ptr[n_seg] = q


@kernel
def _segment_local(args, xin, consts, n_pre, e0, e1, base, x0, x1, ext_slot, ext_src, ck_val,
                   lxin, largs):
    # Gather the segment's externals into lxin and rewrite its arguments to local slots:
    # externals first (0 .. E - 1), then the segment's own instructions (E ..).
    n_in = xin.shape[0]
    ne = x1 - x0
    for q in range(ne):
        a = ext_slot[x0 + q]
        if a < n_in:
            lxin[q] = xin[a]
        elif a < n_pre:
            lxin[q] = consts[a - n_in]
        else:
            lxin[q] = ck_val[ext_src[x0 + q]]
    for e in range(e0, e1):
        a = args[e]
        if a >= base:
            largs[e - e0] = ne + (a - base)
        else:
            lo = x0
            hi = x1 - 1
            while lo < hi:
                mid = (lo + hi) >> 1
                if ext_slot[mid] < a:
                    lo = mid + 1
                else:
                    hi = mid
            largs[e - e0] = lo - x0
    return ne


@kernel
def segment_forward(ops, args, consts, xin, n_pre, seg_len, edge_ptr, ext_ptr, ext_slot,
                    ext_src, cid_slot, exp_ptr, ck_val, lxin, largs, lvals, no_consts, out_slot):
    """Forward sweep segment by segment, keeping only the checkpoints; returns ``out_slot``'s value.

    Values of crossing slots are stored in ``ck_val`` (one per checkpoint index).
    """
    n_in = xin.shape[0]
    n_seg = edge_ptr.shape[0] - 1
    if out_slot < n_in:
        res = xin[out_slot]
    elif out_slot < n_pre:
        res = consts[out_slot - n_in]
    else:
        res = 0.0
    for s in range(n_seg):
        b0 = s * seg_len
        b1 = min(b0 + seg_len, ops.shape[0])
        e0 = edge_ptr[s]
        e1 = edge_ptr[s + 1]
        base = n_pre + b0
        ne = _segment_local(args, xin, consts, n_pre, e0, e1, base, ext_ptr[s], ext_ptr[s + 1],
                            ext_slot, ext_src, ck_val, lxin, largs)
        forward_values(ops[b0:b1], largs[:e1 - e0], no_consts, lxin[:ne], lvals)
        for ci in range(exp_ptr[s], exp_ptr[s + 1]):
            ck_val[ci] = lvals[ne + cid_slot[ci] - base]
        if base <= out_slot < n_pre + b1:
            res = lvals[ne + out_slot - base]
    return res


@kernel
def segment_reverse(ops, args, consts, xin, n_pre, seg_len, edge_ptr, ext_ptr, ext_slot,
                    ext_src, cid_slot, exp_ptr, ck_val, pend, acc_pre, lxin, largs, lvals,
                    lparts, ladj, no_consts, out_slot, out_cid):
    """Reverse sweep segment by segment, recomputing each segment from its checkpoints.

    ``ck_val`` must hold the checkpoints (:func:`segment_forward`); ``pend`` (one per
    checkpoint), ``acc_pre`` (n_pre) and ``ladj`` must be zero on entry.  Adjoint
    accumulation order is that of ``reverse_stored`` on the whole tape: every slot's adjoint
    is one running sum, carried from segment to segment (``pend`` for crossing slots,
    ``acc_pre`` for inputs and constants), never restarted.  ``acc_pre[:n_inputs]`` is the
    gradient on exit.
    """
    n_seg = edge_ptr.shape[0] - 1
    if out_slot < n_pre:
        acc_pre[out_slot] = 1.0
    elif out_cid >= 0:
        pend[out_cid] = 1.0
    for s in range(n_seg - 1, -1, -1):
        b0 = s * seg_len
        b1 = min(b0 + seg_len, ops.shape[0])
        e0 = edge_ptr[s]
        e1 = edge_ptr[s + 1]
        x0 = ext_ptr[s]
        base = n_pre + b0
        ne = _segment_local(args, xin, consts, n_pre, e0, e1, base, x0, ext_ptr[s + 1],
                            ext_slot, ext_src, ck_val, lxin, largs)
        forward_partials(ops[b0:b1], largs[:e1 - e0], no_consts, lxin[:ne], lvals, lparts)
        for q in range(ne):
            a = ext_slot[x0 + q]
            ladj[q] = acc_pre[a] if a < n_pre else pend[ext_src[x0 + q]]
        for ci in range(exp_ptr[s], exp_ptr[s + 1]):
            ladj[ne + cid_slot[ci] - base] = pend[ci]
        if out_cid < 0 and base <= out_slot < n_pre + b1:
            ladj[ne + out_slot - base] = 1.0
        reverse_stored(ops[b0:b1], largs[:e1 - e0], lparts, ladj, ne)
        for q in range(ne):
            a = ext_slot[x0 + q]
            if a < n_pre:
                acc_pre[a] = ladj[q]
            else:
                pend[ext_src[x0 + q]] = ladj[q]
            ladj[q] = 0.0
