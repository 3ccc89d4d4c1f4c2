"""Generate the batch (chunked, multi-point) sweep kernels from the op table.

Discovered by ``python -m fasttape.kernels.codegen`` (any ``gen_<name>.py`` module with
``TARGET`` and ``generate()``), which writes ``fasttape/kernels/_batch_generated.py``.

Layout.  A *chunk* of ``nb <= C`` points is evaluated at once in buffers laid out
``[slot, point]`` (``vals[s, p]``, C-contiguous, shape ``(n_slots, C)``): each instruction is
decoded once per chunk (op code, argument slots) and then applied to a contiguous row of
points, so the op dispatch and index loads are paid once per chunk and the inner loop over
points is a plain strided-by-one loop that LLVM vectorizes where the formula allows (it always
does for the arithmetic ops; calls to libm functions stay scalar unless SVML is available).

Semantics.  The per-point operations are exactly those of the single-point sweeps in
``_generated.py``, in the same order and from the same table formulas, so a batch is bitwise
the loop of single calls (without SVML; a NaN's sign and payload excepted, which IEEE leaves
open when both operands of an addition are NaN, docs/batch.md).  In particular the reverse
sweeps keep the single sweeps' zero rules: an adjoint of exactly 0 or a partial of exactly 0
contributes nothing (written as a select, ``t + g * d if g != 0 and d != 0 else t``, which is
what the scalar ``continue`` / ``if d != 0`` does and what keeps a signed zero or a
``0 * inf`` out of the sum).

Drivers.  ``*_chunks`` process chunks ``first, first + step, ...`` of a batch serially with one
set of buffers; ``*_parallel`` hand the chunks to Numba's threads under ``numba.prange``
(dynamically, one chunk at a time), each thread owning one set of the 3-D buffers (indexed by
``numba.get_thread_id()``), so there is no race on adjoint accumulation and no allocation
inside the parallel region.
"""

from __future__ import annotations

from pathlib import Path

from fasttape import ops as _ops
from fasttape.kernels import codegen as _cg

TARGET = Path(__file__).with_name("_batch_generated.py")

_ARGS = ("x", "y", "z")


def _load_rows(spec: _ops.OpSpec, ind: str) -> list[str]:
    # Argument slots are read once per chunk, outside the loop over points.
    return [f"{ind}a{j} = args[k + {j}]" for j in range(1, spec.arity)]


def _load_points(spec: _ops.OpSpec, ind: str, src: str = "vals") -> list[str]:
    return [f"{ind}{_ARGS[j]} = {src}[a{j}, p]" for j in range(spec.arity)]


def _forward(partials: bool) -> list[str]:
    name = "chunk_forward_partials" if partials else "chunk_forward_values"
    sig = "ops, args, dest, consts, X, b0, nb, vals" + (", parts" if partials else "")
    what = "values and partials (``parts[e, p]``)" if partials else "values"
    lines = [
        "@_kernel",
        f"def {name}({sig}):",
        f'    """Forward sweep over points ``b0 .. b0 + nb - 1`` of ``X``: {what}.',
        "",
        "    ``X`` has shape ``(B, n_inputs)``; ``vals`` has shape ``(n_work, C)`` with",
        "    ``nb <= C``; instruction ``i`` writes row ``dest[i]`` (``n_pre + i`` without a",
        "    slot-reuse plan; with one, ``args`` and ``dest`` are the plan's).  No bounds",
        "    checks: the caller validated the tape and the shapes.",
        '    """',
        "    n_in = X.shape[1]",
        "    for i in range(n_in):",
        "        for p in range(nb):",
        "            vals[i, p] = X[b0 + p, i]",
        "    for i in range(consts.shape[0]):",
        "        c = consts[i]",
        "        for p in range(nb):",
        "            vals[n_in + i, p] = c",
        "    k = 0",
        "    for i in range(ops.shape[0]):",
        "        op = ops[i]",
        "        s = dest[i]",
        "        a0 = args[k]",
    ]
    if partials:
        lines += _prefetch_rows("k + ", "prefetch_write", "parts.shape[0]")

    def body(spec: _ops.OpSpec, ind: str) -> list[str]:
        out = _load_rows(spec, ind)
        out.append(f"{ind}for p in range(nb):")
        inner = ind + "    "
        out += _load_points(spec, inner)
        out.append(f"{inner}f = {spec.forward}")
        out.append(f"{inner}vals[s, p] = f")
        if partials:
            for j, d in enumerate(spec.partials):
                if d not in _cg.UNIT:  # +-1 is not stored: the reverse knows it
                    out.append(f"{inner}parts[k + {j}, p] = {d}")
        out.append(f"{ind}k += {spec.arity}")
        return out

    _cg._chain(lines, _ops.OPS, body)
    lines += [
        "        else:",
        "            for p in range(nb):  # unreachable for a validated tape",
        "                vals[s, p] = np.nan",
        "",
        "",
    ]
    return lines


def _unit_acc(j: int, d: str, ind: str) -> list[str]:
    sign = "+" if d == "1.0" else "-"
    return [f"{ind}t = adj[a{j}, p]",
            f"{ind}adj[a{j}, p] = t {sign} g if g != 0.0 else t"]


def _acc(j: int, d: str, ind: str) -> list[str]:
    # The scalar sweep's `if g == 0: continue` and `_acc`'s `if d != 0` as one select.
    return [f"{ind}d = {d}", f"{ind}t = adj[a{j}, p]",
            f"{ind}adj[a{j}, p] = t + g * d if g != 0.0 and d != 0.0 else t"]


_REVERSE_HEAD = [
    "    k = args.shape[0]",
    "    for i in range(ops.shape[0] - 1, -1, -1):",
    "        op = ops[i]",
    "        k -= _ARITY[op]",
    "        s = dest[i]",
    "        a0 = args[k]",
]


def _unit_reverse() -> list[str]:
    # Ops with a unit partial first (unit partials are not stored; see codegen.unit_partials),
    # then the generic loops over stored partials.
    lines: list[str] = []
    for spec in _ops.OPS:
        if not _cg.unit_partials(spec):
            continue
        kw = "if" if not lines else "elif"
        lines.append(f"        {kw} op == {spec.code}:  # {spec.name}")
        # The differentiable arguments' rows only (fmac's constant gets no adjoint).
        lines += [f"            a{j} = args[k + {j}]" for j in range(1, spec.ndiff)]
        lines += ["            for p in range(nb):",
                  "                g = adj[s, p]",
                  "                adj[s, p] = 0.0"]
        for j, d in enumerate(spec.partials):
            if d in _cg.UNIT:
                lines += _unit_acc(j, d, "                ")
            else:  # an op with both kinds of edge (fmac): this one was stored
                lines += _acc(j, f"parts[k + {j}, p]", "                ")
        lines.append("            continue")
    return lines


#: How far ahead (in rows of ``parts``, about two per instruction) the stored reverse sweep
#: prefetches the partials it will read, and the forward sweep with partials the rows it will
#: write (fasttape/kernels/memhint.py).  Measured on the reverse sweep of
#: autograd-west (25 MB of partials per worker): 16 rows already gains, 48-128 gain most,
#: 400 a little less (the lines start to leave L1/L2 before they are used).
PREFETCH_ROWS = 64

MAX_ARITY = max(spec.arity for spec in _ops.OPS)


def _prefetch_rows(base: str = "k - ", fn: str = "prefetch", limit: str = "") -> list[str]:
    # The rows PREFETCH_ROWS rows beyond the current instruction's, in the sweep's direction
    # (``base`` "k - " for the reverse sweep, "k + " for the forward one, which also passes
    # the row count as ``limit`` so the rows stay inside the buffer): over a sweep, every row
    # about once.  One prefetch per cache line of a row, and one for its last element (a row
    # need not start on a line boundary).  The instruction's own arity is used, so up to
    # MAX_ARITY rows beyond q are touched.
    cond = "q >= 0" if not limit else f"q + {MAX_ARITY} <= {limit}"
    return [
        f"        q = {base}{PREFETCH_ROWS}",
        f"        if {cond}:",
        "            for r in range(q, q + _ARITY[op]):",
        "                for col in range(0, nb, LINE_DOUBLES):",
        f"                    {fn}(parts, r, col)",
        f"                {fn}(parts, r, nb - 1)",
    ]


def _reverse_stored() -> list[str]:
    return [
        "@_kernel",
        "def chunk_reverse_stored(ops, args, dest, parts, adj, nb):",
        '    """Reverse sweep over the partials of :func:`chunk_forward_partials`.',
        "",
        "    ``adj`` (shape ``(n_work, C)``) holds the seed on entry and zeros elsewhere; on exit",
        "    the instruction rows are zero again and rows below ``n_pre`` hold the input and",
        "    constant adjoints of each point.  The partials are prefetched ``PREFETCH_ROWS``",
        "    rows ahead (see fasttape/kernels/memhint.py).",
        '    """',
        *_REVERSE_HEAD,
        *_prefetch_rows(),
        *_unit_reverse(),
        "        nd = _NDIFF[op]",
        "        if nd == 0:",
        "            for p in range(nb):",
        "                adj[s, p] = 0.0",
        "        elif nd == 1:",
        "            for p in range(nb):",
        "                g = adj[s, p]",
        "                adj[s, p] = 0.0  # read-then-zero, as the scalar sweep",
        *_acc(0, "parts[k, p]", "                "),
        "        else:",
        "            a1 = args[k + 1]",
        "            for p in range(nb):",
        "                g = adj[s, p]",
        "                adj[s, p] = 0.0",
        *_acc(0, "parts[k, p]", "                "),
        *_acc(1, "parts[k + 1, p]", "                "),
        "",
        "",
    ]


def _reverse_lean() -> list[str]:
    lines = [
        "@_kernel",
        "def chunk_reverse_lean(ops, args, dest, vals, adj, nb):",
        '    """Reverse sweep recomputing each partial from ``vals`` (lean mode).',
        "",
        "    Same contract as :func:`chunk_reverse_stored`.",
        '    """',
        *_REVERSE_HEAD,
    ]

    def body(spec: _ops.OpSpec, ind: str) -> list[str]:
        out = _load_rows(spec, ind)
        out.append(f"{ind}for p in range(nb):")
        inner = ind + "    "
        out += [f"{inner}g = adj[s, p]", f"{inner}adj[s, p] = 0.0"]
        out += _load_points(spec, inner)
        if any("f" in _cg._tokens(d) for d in spec.partials):
            out.append(f"{inner}f = vals[s, p]")
        for j, d in enumerate(spec.partials):
            out += _acc(j, d, inner)
        return out

    _cg._chain(lines, [s for s in _ops.OPS if s.ndiff], body)
    lines += [
        "        else:  # no differentiable argument: only clear the row",
        "            for p in range(nb):",
        "                adj[s, p] = 0.0",
        "",
        "",
    ]
    return lines


_DRIVERS = '''
@_kernel
def _outputs_of_chunk(outputs, vals, b0, nb, out):
    for j in range(outputs.shape[0]):
        o = outputs[j]
        for p in range(nb):
            out[b0 + p, j] = vals[o, p]


@_kernel
def _collect_chunk(adj, n_in, n_pre, b0, nb, grad):
    # Copy the inputs' adjoints out and zero every pre-slot row: adj is clean for next time.
    for i in range(n_in):
        for p in range(nb):
            grad[b0 + p, i] = adj[i, p]
    for i in range(n_pre):
        for p in range(nb):
            adj[i, p] = 0.0


@_kernel
def value_chunks(ops, args, dest, consts, outputs, X, first, step, vals, out):
    """Outputs at the points of chunks ``first, first + step, ...`` into ``out[b, j]``.

    ``vals`` has shape ``(n_slots, C)``; chunk ``c`` holds points ``c * C .. c * C + C - 1``.
    """
    B = X.shape[0]
    C = vals.shape[1]
    n_chunks = (B + C - 1) // C
    for c in range(first, n_chunks, step):
        b0 = c * C
        nb = min(C, B - b0)
        chunk_forward_values(ops, args, dest, consts, X, b0, nb, vals)
        _outputs_of_chunk(outputs, vals, b0, nb, out)


@_kernel
def value_and_grad_chunks(ops, args, dest, consts, outputs, which, X, first, step, vals, parts,
                          adj, out, grad):
    """Value of output ``which`` into ``out[b]`` and its gradient into ``grad[b, :]``.

    Stored mode (``parts`` of shape ``(n_edges, C)``); ``adj`` must be all zeros on entry and
    is again on exit.
    """
    B = X.shape[0]
    C = vals.shape[1]
    n_in = X.shape[1]
    n_pre = n_in + consts.shape[0]
    n_chunks = (B + C - 1) // C
    o = outputs[which]
    for c in range(first, n_chunks, step):
        b0 = c * C
        nb = min(C, B - b0)
        chunk_forward_partials(ops, args, dest, consts, X, b0, nb, vals, parts)
        for p in range(nb):
            out[b0 + p] = vals[o, p]
            adj[o, p] = 1.0
        chunk_reverse_stored(ops, args, dest, parts, adj, nb)
        _collect_chunk(adj, n_in, n_pre, b0, nb, grad)


@_kernel
def value_and_grad_lean_chunks(ops, args, dest, consts, outputs, which, X, first, step, vals,
                               adj, out, grad):
    """As :func:`value_and_grad_chunks`, recomputing partials (lean mode, no ``parts``)."""
    B = X.shape[0]
    C = vals.shape[1]
    n_in = X.shape[1]
    n_pre = n_in + consts.shape[0]
    n_chunks = (B + C - 1) // C
    o = outputs[which]
    for c in range(first, n_chunks, step):
        b0 = c * C
        nb = min(C, B - b0)
        chunk_forward_values(ops, args, dest, consts, X, b0, nb, vals)
        for p in range(nb):
            out[b0 + p] = vals[o, p]
            adj[o, p] = 1.0
        chunk_reverse_lean(ops, args, dest, vals, adj, nb)
        _collect_chunk(adj, n_in, n_pre, b0, nb, grad)


# Parallel drivers: prange over the chunks.  The caller sets Numba's parallel chunksize to 1
# (fasttape.batch._launch; from Python, because calling numba.set_parallel_chunksize in a
# kernel makes it uncachable), so chunks are handed out one at a time to whichever thread is
# free: on a machine shared with other work a descheduled thread does not hold up the rest,
# as a static split would.  The thread with id numba.get_thread_id() uses buffer set [id], so
# the buffers need numba.get_num_threads() <= their first axis: the caller sets the count.
# ``flush`` sets FTZ/DAZ on the worker thread around each chunk (fasttape/kernels/fpenv.py):
# worker threads do not inherit the caller's MXCSR register.


@_pkernel
def value_parallel(ops, args, dest, consts, outputs, X, vals, out, flush):
    """:func:`value_chunks` on all threads; ``vals`` is ``(threads, n_slots, C)``."""
    C = vals.shape[2]
    n_chunks = (X.shape[0] + C - 1) // C
    for c in numba.prange(n_chunks):
        w = numba.get_thread_id()
        old = fpenv_enter(flush)
        value_chunks(ops, args, dest, consts, outputs, X, c, n_chunks, vals[w], out)
        fpenv_leave(old)


@_pkernel
def value_and_grad_parallel(ops, args, dest, consts, outputs, which, X, vals, parts, adj, out,
                            grad, flush):
    """:func:`value_and_grad_chunks` on all threads, each with its own 2-D buffers."""
    C = vals.shape[2]
    n_chunks = (X.shape[0] + C - 1) // C
    for c in numba.prange(n_chunks):
        w = numba.get_thread_id()
        old = fpenv_enter(flush)
        value_and_grad_chunks(ops, args, dest, consts, outputs, which, X, c, n_chunks, vals[w],
                              parts[w], adj[w], out, grad)
        fpenv_leave(old)


@_pkernel
def value_and_grad_lean_parallel(ops, args, dest, consts, outputs, which, X, vals, adj, out,
                                 grad, flush):
    """:func:`value_and_grad_lean_chunks` on all threads."""
    C = vals.shape[2]
    n_chunks = (X.shape[0] + C - 1) // C
    for c in numba.prange(n_chunks):
        w = numba.get_thread_id()
        old = fpenv_enter(flush)
        value_and_grad_lean_chunks(ops, args, dest, consts, outputs, which, X, c, n_chunks,
                                   vals[w], adj[w], out, grad)
        fpenv_leave(old)
'''


def generate() -> str:
    """Return the full text of ``_batch_generated.py`` for the current table."""
    arity = ", ".join(str(o.arity) for o in _ops.OPS)
    ndiff = ", ".join(str(o.ndiff) for o in _ops.OPS)
    lines = _cg.header(
        "Batch sweep kernels generated from the op table (see fasttape/kernels/gen_batch.py)."
    )
    # The kernels call fasttape.kernels.fpenv and .memhint: a digest of their sources keeps
    # the Numba cache in step with them (the table digest above covers the formulas only).
    lines += [f"# {name} sha256: {_cg.source_digest(name)}" for name in ("fpenv.py", "memhint.py")]
    lines += [
        "# ruff: noqa: E501, RUF100  (generated: lines follow the table, not the line limit)",
        "# Parallel drivers: same options plus parallel=True (prange over workers).  Their",
        "# threading layer is Numba's choice (docs/batch.md: fork- and thread-safety).",
        "_pkernel = _kernel(parallel=True)",
        "",
        "from fasttape.kernels.fpenv import enter as fpenv_enter  # noqa: E402",
        "from fasttape.kernels.fpenv import leave as fpenv_leave  # noqa: E402",
        "from fasttape.kernels.memhint import LINE_DOUBLES, prefetch, prefetch_write  # noqa: E402",
        "",
        f"_ARITY = np.array([{arity}], dtype=np.int64)",
        f"_NDIFF = np.array([{ndiff}], dtype=np.int64)",
        "",
        "# --- scalar helpers, copied from fasttape/kernels/scalar.py ---",
    ]
    lines += _cg.helper_lines()
    lines += ["", "", "# --- chunk sweeps ---", "", ""]
    lines += _forward(False)
    lines += _forward(True)
    lines += _reverse_stored()
    lines += _reverse_lean()
    lines += _DRIVERS.strip("\n").splitlines()
    return "\n".join(lines) + "\n"
