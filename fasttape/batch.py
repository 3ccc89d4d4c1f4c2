"""Batch evaluation: many input points in one call, in chunks, on every core.

:class:`fasttape.Tape`'s evaluation methods hand a 2-D ``x`` of shape ``(B, n_inputs)`` to this
module.  The batch is cut into *chunks* of ``C`` points; a chunk is evaluated by the kernels of
:mod:`fasttape.kernels.batch` in buffers laid out ``[slot, point]`` (the tape is read
once per chunk, the loop over points vectorizes), and chunks are spread over ``W`` workers
with ``numba.prange``, each worker owning its buffers.  Results are bitwise those of a loop of
single-point calls (up to a NaN's sign and payload).  See docs/batch.md for the layout, the
chunk-size rule and the threading layer.

Memory: a worker's buffers hold ``C`` points' work (``C * point_nbytes(tape, grad)``), never
``B``; ``C`` is chosen so that this stays under :data:`CHUNK_BYTES` (at least one point).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numba
import numpy as np

from fasttape.kernels import batch as _k
from fasttape.kernels import fpenv
from fasttape.passes import reuse
from fasttape.tape import check_out, resolve_threads

__all__ = [
    "BATCH_PLAN_MIN_SLOTS",
    "CHUNK_BYTES",
    "CHUNK_MAX",
    "CHUNK_MIN_SPLIT",
    "PARALLEL_MIN_WORK",
    "buffers",
    "chunk_size",
    "launch",
    "layout",
    "plan",
    "point_nbytes",
    "resolve_threads",
    "value",
    "value_and_grad",
]

#: Work-buffer budget of one worker, in bytes: the chunk size ``C`` is the largest power of two
#: whose buffers (``C * point_nbytes(tape, grad)``) fit, between 1 and :data:`CHUNK_MAX`.
CHUNK_BYTES = 128 * 2**20

#: Largest chunk: beyond a few dozen points the per-chunk decoding cost is already negligible
#: (docs/batch.md), and bigger chunks only cost memory.
CHUNK_MAX = 32

#: A batch with fewer node-points (``B * n_instructions``) than this runs on the calling thread: a
#: parallel launch costs some microseconds, about 1e4 node-points of work.
PARALLEL_MIN_WORK = 100_000

#: When a batch has fewer chunks than threads, chunks are halved down to this size (smaller
#: chunks vectorize worse, docs/batch.md, but an idle thread is worse still).
CHUNK_MIN_SPLIT = 8

#: Tapes with at least this many slots run their batches on a slot-reuse plan (values and, in
#: "stored" mode, adjoints in a small work set: :mod:`fasttape.passes.reuse`), even when the
#: single-point path has none (it plans from ``reuse.MIN_SLOTS``).  A chunk multiplies the
#: work by ``C`` points, so without a plan 55,000 slots of 32 points are 14 MB of values and
#: 14 MB of adjoints, far beyond the core's caches; with the plan the sweeps stream only the
#: partials (autograd-west, 10k ops: reverse sweep 3.0 -> 1.3 ns per instruction and point).
BATCH_PLAN_MIN_SLOTS = 4096

# The workqueue threading layer aborts the process if two threads launch parallel kernels at
# once; under it, batch launches from different Python threads take turns.
_LAUNCH_LOCK = threading.Lock()

# GNU OpenMP cannot run in a process forked from a parent that already used it (Numba then
# terminates the child: "fork() called from a process already using GNU OpenMP").  A child
# forked after this process ran a parallel batch under that layer evaluates batches with one
# worker (the serial drivers, which use no threads) instead of dying.
_serial_after_fork = False


def _after_fork_in_child() -> None:
    global _serial_after_fork
    try:
        layer = numba.threading_layer()
    except ValueError:  # the parent never launched a parallel kernel: nothing to inherit
        return
    if layer == "omp" and _openmp_vendor() == "GNU":
        _serial_after_fork = True


def _openmp_vendor() -> str:
    try:
        from numba.np.ufunc import omppool
    except ImportError:  # pragma: no cover - Numba built without OpenMP
        return ""
    return str(getattr(omppool, "openmp_vendor", "GNU"))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def chunk_size(tape: Any, grad: bool, n_points: int) -> int:
    """Points per chunk for ``n_points`` points: a power of two, at most ``n_points`` rounded up.

    Parameters
    ----------
    tape : Tape
    grad : bool
        Whether the call computes gradients (bigger per-point buffers).
    n_points : int
        Batch size ``B``.

    Returns
    -------
    int
        ``C >= 1`` with ``C * point_nbytes(tape, grad) <= CHUNK_BYTES`` unless ``C == 1``.
    """
    per_point = point_nbytes(tape, grad)
    c = max(1, min(CHUNK_MAX, CHUNK_BYTES // per_point))
    c = 1 << (c.bit_length() - 1)  # largest power of two <= c
    want = 1 << max(0, int(n_points) - 1).bit_length()  # smallest power of two >= n_points
    return min(c, want)


def point_nbytes(tape: Any, grad: bool) -> int:
    """Bytes of batch work buffers per point of a chunk.

    ``8 * rows`` for values; for gradients ``16 * rows`` plus, in ``"stored"`` mode,
    ``8 * n_edges``, where ``rows`` is the work set of the layout the call uses
    (:func:`layout`: the plan's ``n_work``, or ``n_slots``).
    """
    rows = layout(tape, grad)[3]
    n = 8 * rows
    if grad:
        n += 8 * rows + (8 * tape.n_edges if tape.grad_mode == "stored" else 0)
    return max(1, n)


def layout(tape: Any, grad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(args, dest, outputs, rows)`` the chunk sweeps run on for this tape.

    A slot-reuse plan without in-place slots (made from :data:`BATCH_PLAN_MIN_SLOTS` slots,
    kept per thread) for values and for "stored" gradients; the plain layout
    (``dest[i] = n_pre + i``) for "lean" gradients, whose reverse sweep rereads every value,
    and for small tapes.  Results are bitwise the same either way.  ``dest`` has the dtype
    of ``args`` in both, so the chunk kernels compile once per index width.
    """
    local = tape.work_buffers()
    plain = grad and tape.grad_mode == "lean"
    slot_plan = None
    if not plain and tape.n_slots >= BATCH_PLAN_MIN_SLOTS:
        # Not the tape's own plan: that one lets an instruction overwrite an argument's slot,
        # and a loop over points whose input and output rows overlap does not vectorize.
        slot_plan = getattr(local, "batch_plan", None)
        if slot_plan is None:
            slot_plan = local.batch_plan = reuse.plan_slots(
                tape.ops, tape.args, tape.outputs, tape.n_inputs + tape.n_consts,
                inplace=False)
    if slot_plan is not None:
        return slot_plan.args, slot_plan.dest, slot_plan.outputs, slot_plan.n_work
    dest = getattr(local, "batch_dest", None)
    if dest is None:
        n_pre = tape.n_inputs + tape.n_consts
        dest = local.batch_dest = np.arange(n_pre, n_pre + tape.n_instructions,
                                            dtype=tape.args.dtype)
    return tape.args, dest, tape.outputs, tape.n_slots


def as_batch(x: Any, n_inputs: int) -> np.ndarray:
    """``x`` as a C-contiguous float64 array of shape ``(B, n_inputs)``, or a clear error."""
    if not (type(x) is np.ndarray and x.dtype == np.float64 and x.flags.c_contiguous):
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged nested lists and the like
            raise TypeError(
                f"x must be an array of real numbers of shape (n_inputs,) or (B, n_inputs); "
                f"got {type(x).__name__}"
            ) from exc
        if arr.dtype.kind not in "biuf":
            raise TypeError(
                "x must be an array of real numbers of shape (n_inputs,) or (B, n_inputs); got "
                f"an array of dtype {arr.dtype}"
                + (" (traced Vars cannot be evaluated; pass numbers)" if arr.dtype.kind == "O"
                   else "")
            )
        x = np.ascontiguousarray(arr, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != n_inputs:
        raise ValueError(
            f"a batch x must have shape (B, {n_inputs}), one row per point (or be 1-D of "
            f"shape ({n_inputs},) for one point); got shape {x.shape}"
        )
    return x


def buffers(tape: Any, kind: str, workers: int, c: int, n: int) -> tuple[np.ndarray, ...]:
    """Per-thread, per-tape work buffers ``(W, rows, C)``; reused while ``W`` and ``C`` fit.

    ``kind`` is ``"value"``, ``"stored"`` or ``"lean"``; ``n`` the rows (:func:`layout`).
    Adjoint buffers are zeroed once: the reverse sweeps leave them zero (read-then-zero), as
    in the single-point path.
    """
    local = tape.work_buffers()
    cache = getattr(local, "batch", None)
    if cache is None:
        cache = local.batch = {}
    hit = cache.get(kind)
    if hit is not None and hit[0] >= workers and hit[1] == c and hit[2][0].shape[1] == n:
        return tuple(b[:workers] for b in hit[2])
    bufs: tuple[np.ndarray, ...] = (np.empty((workers, n, c)),)
    if kind == "stored":
        bufs += (np.empty((workers, tape.n_edges, c)), np.zeros((workers, n, c)))
    elif kind == "lean":
        bufs += (np.zeros((workers, n, c)),)
    cache[kind] = (workers, c, bufs)
    return bufs


def launch(threads: int, kernel: Any, *args: Any) -> None:
    """Run a parallel driver on exactly ``threads`` Numba threads, then restore the caller's
    setting.  The drivers index their buffer sets by ``numba.get_thread_id()``, so ``threads``
    must not exceed the buffers' first axis."""
    old = numba.get_num_threads()
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        layer = "unknown"
    lock = _LAUNCH_LOCK if layer in ("workqueue", "unknown") else None
    if lock is not None:
        lock.acquire()
    try:
        if threads != old:
            numba.set_num_threads(threads)  # thread-local in Numba: affects this thread only
        # Hand chunks out one at a time (dynamic scheduling); also thread-local, restored.
        old_chunksize = numba.set_parallel_chunksize(1)
        try:
            kernel(*args)
        finally:
            numba.set_parallel_chunksize(old_chunksize)
    finally:
        if threads != old:
            numba.set_num_threads(old)
        if lock is not None:
            lock.release()


def plan(
    tape: Any, grad: bool, n_points: int, threads: Any, chunk: int | None
) -> tuple[int, int, int]:
    """``(threads, workers, chunk)`` for a call: validated, and sized to the work."""
    t = resolve_threads(threads)
    if _serial_after_fork or n_points * max(1, tape.n_instructions) < PARALLEL_MIN_WORK:
        t = 1  # too little work to pay for a parallel launch (or no OpenMP after fork)
    if chunk is None:
        c = chunk_size(tape, grad, n_points)
        # Too few chunks to keep every thread busy: halve them, down to CHUNK_MIN_SPLIT.
        while c > CHUNK_MIN_SPLIT and -(-n_points // c) < t:
            c //= 2
    else:
        if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        c = int(chunk)
    return t, max(1, min(t, -(-n_points // c))), c


def _no_params(tape: Any) -> None:
    """Refuse a tape with parameters: its kernels take x and p joined (``tape.value(x, p=p)``
    builds that batch and runs it on ``tape.params_as_inputs()``)."""
    if tape.n_params:
        raise TypeError(
            f"this tape has {tape.n_params} parameters: evaluate the batch with "
            "tape.value(x, p=p) / tape.value_and_grad(x, p=p), or call this function on "
            "tape.params_as_inputs() with tape.join_params(x, p)"
        )


def value(
    tape: Any, x: Any, *, out: np.ndarray | None = None, threads: Any = None,
    chunk: int | None = None, flush_subnormals: bool = False,
) -> np.ndarray:
    """The outputs at every point of a batch.

    Parameters
    ----------
    tape : Tape
    x : array_like of float, shape (B, n_inputs)
    out : ndarray of float64, shape (B,) for one output or (B, n_outputs), optional
        Written in place and returned.
    threads : int, optional
        Worker threads; default ``numba.get_num_threads()``.
    chunk : int, optional
        Points per chunk (default from :func:`chunk_size`); results do not depend on it.
    flush_subnormals : bool
        Flush subnormal numbers to zero on every worker (:mod:`fasttape.kernels.fpenv`).

    Returns
    -------
    ndarray, shape (B,) for a single-output tape, else (B, n_outputs)
    """
    _no_params(tape)
    flush = fpenv.check_flush(flush_subnormals)
    X = as_batch(x, tape.n_inputs)
    B = X.shape[0]
    m = tape.n_outputs
    if out is None:
        res = np.empty((B, m))
        ret = res[:, 0] if m == 1 else res
    else:
        ret = check_out(out, (B,) if m == 1 else (B, m), "out")
        res = ret.reshape(B, m)
    if B == 1 and chunk is None:  # one point: the single-point kernel, no [slot, point] layout
        tape.value(X[0], out=res[0], threads=threads, flush_subnormals=flush)
        return ret
    _, w, c = plan(tape, False, B, threads, chunk)
    if B == 0:
        return ret
    args, dest, outputs, rows = layout(tape, False)
    (vals,) = buffers(tape, "value", w, c, rows)
    a = (tape.ops, args, dest, tape.consts, outputs, X)
    if w == 1:  # the serial driver runs on this thread: fpenv.call sets its register
        fpenv.call(flush, _k.value_chunks, *a, 0, 1, vals[0], res)
    else:
        launch(w, _k.value_parallel, *a, vals, res, flush)
    return ret


def value_and_grad(
    tape: Any, x: Any, which: int, *, out: np.ndarray | None = None, threads: Any = None,
    chunk: int | None = None, flush_subnormals: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Value of output ``which`` and its gradient at every point of a batch.

    Parameters
    ----------
    tape : Tape
    x : array_like of float, shape (B, n_inputs)
    which : int
        The output to differentiate (already checked by the caller, ``0 <= which < m``).
    out : ndarray of float64, shape (B, n_inputs), optional
        Receives the gradients.
    threads, chunk, flush_subnormals
        As in :func:`value`.

    Returns
    -------
    values : ndarray, shape (B,)
    grads : ndarray, shape (B, n_inputs)
    """
    _no_params(tape)
    flush = fpenv.check_flush(flush_subnormals)
    X = as_batch(x, tape.n_inputs)
    B = X.shape[0]
    n = tape.n_inputs
    grad = np.empty((B, n)) if out is None else check_out(out, (B, n), "out")
    vals_out = np.empty(B)
    if B == 1 and chunk is None:  # one point: the single-point kernel, no [slot, point] layout
        vals_out[0], _ = tape.value_and_grad(X[0], output=which, out=grad[0], threads=threads,
                                             flush_subnormals=flush)
        return vals_out, grad
    _, w, c = plan(tape, True, B, threads, chunk)
    if B == 0:
        return vals_out, grad
    mode = tape.grad_mode
    args, dest, outputs, rows = layout(tape, True)
    bufs = buffers(tape, mode, w, c, rows)
    # Lean mode has no partials: parts None selects the lean drivers.
    vals, parts, adj = bufs if mode == "stored" else (bufs[0], None, bufs[1])
    a = (tape.ops, args, dest, tape.consts, outputs, which, X)
    if w == 1:  # the serial drivers run on this thread: fpenv.call sets its register
        if parts is None:
            fpenv.call(flush, _k.value_and_grad_lean_chunks, *a, 0, 1, vals[0], adj[0],
                       vals_out, grad)
        else:
            fpenv.call(flush, _k.value_and_grad_chunks, *a, 0, 1, vals[0], parts[0], adj[0],
                       vals_out, grad)
    else:
        launch(w, _k.value_and_grad_parallel, *a, vals, parts, adj, vals_out, grad, flush)
    return vals_out, grad
