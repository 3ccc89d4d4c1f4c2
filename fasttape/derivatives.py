"""Derivatives beyond the gradient: JVP, VJP, Jacobians, Hessian-vector products, Hessians.

The :class:`fasttape.Tape` methods ``jvp``, ``vjp``, ``jacobian``, ``hvp`` and
``hessian`` are thin wrappers around the functions here, which validate their inputs in Python
(clear errors before any kernel runs: the kernels have no bounds checks) and call the kernels
of :mod:`fasttape.kernels.tangent`:

- forward mode carries ``K`` tangent directions per sweep in a ``[slot, direction]`` buffer
  (vector mode), so a Jacobian with ``n`` columns reads the tape ``ceil(n / K)`` times;
- reverse mode likewise carries ``K`` cotangents per sweep;
- Hessian-vector products are forward-over-reverse: one tangent sweep, then one reverse sweep
  that propagates the adjoints and their tangents with the op table's second partials
  (:attr:`fasttape.ops.OpSpec.second`); no finite differences.  The Hessian is ``n`` HVPs with
  unit vectors, ``K`` per sweep pair, then symmetrized (``hessian`` documents how).

The zero rules of the gradient hold for every product these sweeps form (docs/derivatives.md),
so for example the unselected branch of a ``where`` cannot poison a Jacobian or a Hessian.

Batched points: every function also takes a batch ``x`` of shape ``(B, n_inputs)`` (as
``Tape.value`` does) and then returns the single-point results stacked along a new first
axis; the per-point direction or cotangent may be given once (shape ``(n,)``) or per row
(shape ``(B, n)``).  ``jvp``, ``vjp`` and ``hvp`` loop over the rows inside one kernel, on
``threads`` threads (:mod:`fasttape.kernels.parallel_rows`; default all of Numba's, one
when the batch is small), each row bitwise the single-point call; ``jacobian`` and
``hessian`` call the single-point kernels per row.

Parameters: on a tape with ``n_params > 0`` every function takes ``p=`` (as ``Tape.value``
does; ``x`` and ``p`` may each be one row or a batch).  The work runs on
``tape.params_as_inputs()`` with ``x`` and ``p`` joined: directions get zero parameter entries,
and only the first ``n_inputs`` entries (rows, columns) of a result are returned.  Forward
Jacobians and Hessians seed unit directions for the inputs only, so their cost does not grow
with ``n_params`` beyond the shared sweeps.

Work buffers are this module's own, per thread (in ``tape.work_buffers()``), sized ``n_slots``: they
do not depend on how ``Tape.value`` sizes its buffers (slot reuse, batches).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fasttape.batch import as_batch, launch, plan
from fasttape.kernels import parallel_rows as _kp
from fasttape.kernels import tangent as _k
from fasttape.tape import TapeRecord, resolve_threads
from fasttape.validate import real_array

__all__ = ["jvp", "vjp", "jacobian", "hvp", "hessian", "JACOBIAN_MODES", "MAX_CHUNK"]

#: Jacobian strategies: "forward" sweeps K input directions at a time, "reverse" K outputs at
#: a time, "auto" picks forward when n_inputs <= n_outputs (fewer sweeps), else reverse.
JACOBIAN_MODES = ("auto", "forward", "reverse")

#: Default (and largest automatic) number of directions per sweep.  Larger K amortizes the op
#: dispatch and the partials over more directions; past about 32 the [slot, direction] rows
#: stop fitting in cache with the values (benchmarks/bench_derivatives.py measures this).
MAX_CHUNK = 32

#: Upper bound on one direction buffer (n_slots * K * 8 bytes) when K is chosen automatically,
#: so a Hessian of a huge tape does not allocate gigabytes.
_BUFFER_BYTES = 64 * 2**20


# ------------------------------------------------------------------ validation
def _point(tape: TapeRecord, x: Any) -> np.ndarray:
    """``x`` as one point (validated by the tape, same errors as ``Tape.value``), writable
    (see :func:`_vector`)."""
    return _writable(tape.as_input(x))


def _batch(tape: TapeRecord, x: Any, what: str) -> np.ndarray | None:
    """``x`` as a validated ``(B, n_inputs)`` float64 batch, or None if it is not 2-D.

    Validation is :func:`fasttape.batch.as_batch` (the one batch check); its message gets the
    method's name in front.
    """
    if np.ndim(x) != 2:
        return None
    try:
        return as_batch(x, tape.n_inputs)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{what}: {exc}") from None


def _row_block(v: Any, b: int, n: int, name: str, what: str, size_of: str) -> np.ndarray:
    """Per-point vectors for a batch of ``b`` points, ``v`` of shape (n,) or (b, n), as a new
    C-contiguous float64 array of shape (b, n), checked as a whole.

    Always a writable copy: the row kernels are compiled for writable arrays (a read-only
    one, a dask block say, would be another compilation, or refused where a driver's other
    branch writes its directions)."""
    if np.ndim(v) == 2:
        arr = np.asarray(v)
        if arr.shape != (b, n):
            raise ValueError(
                f"{what}: with a batch of {b} points, {name} must have shape ({n},) or "
                f"({b}, {n}); got shape {arr.shape}"
            )
        return np.array(real_array(arr, f"{what}: {name}", traced_hint=False),
                        dtype=np.float64, order="C")
    return np.tile(_vector(v, n, name, what, size_of), (b, 1))


def _writable(xb: np.ndarray) -> np.ndarray:
    """A batch the row kernels take: ``xb`` itself, or a copy if it is read-only."""
    return xb if xb.flags.writeable else xb.copy()


def _stack(results: list[Any], b: int, shape: tuple[int, ...]) -> np.ndarray:
    """Stack per-point results (floats or arrays of ``shape``) into shape (b, *shape)."""
    out = np.empty((b, *shape))
    for i, r in enumerate(results):
        out[i] = r
    return out


def _vector(v: Any, n: int, name: str, what: str, size_of: str) -> np.ndarray:
    """``v`` as a contiguous float64 vector of length ``n``, or a clear error."""
    arr = real_array(v, f"{what}: {name}", traced_hint=False)
    if arr.shape != (n,):
        raise ValueError(
            f"{what}: {name} must have shape ({n},) ({size_of}); got shape {arr.shape}"
        )
    # Writable, like the kernels' other arrays: a read-only one (a dask block, a broadcast)
    # would type the drivers' direction arguments read-only, which their other branches write.
    return _writable(np.ascontiguousarray(arr, dtype=np.float64))


def _chunk(chunk: Any, n_dirs: int, n_slots: int, buffers: int) -> int:
    """Directions per sweep: ``chunk`` if given (validated), else automatic."""
    if chunk is None:
        fit = max(1, _BUFFER_BYTES // (8 * max(n_slots, 1) * buffers))
        kk = max(1, min(n_dirs, MAX_CHUNK, fit))
        # Balance the blocks: 100 directions by 32 would leave a last sweep of 4; 4 sweeps of
        # 25 cost the same number of tape reads with narrower rows.
        sweeps = max(1, -(-n_dirs // kk))
        return max(1, -(-n_dirs // sweeps))
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)):
        raise TypeError(f"chunk must be a positive int or None, got {type(chunk).__name__}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 (directions per sweep), got {chunk}")
    return int(min(chunk, max(n_dirs, 1)))


# ------------------------------------------------------------------ per-thread buffers
def _buf(tape: TapeRecord, name: str, shape: tuple[int, ...], zero: bool = False) -> np.ndarray:
    """This module's per-thread work array ``name`` (:meth:`TapeRecord.work_array`)."""
    return tape.work_array("deriv", name, shape, zero)


def _vals(tape: TapeRecord) -> np.ndarray:
    return _buf(tape, "vals", (tape.n_slots,))


def _row_threads(tape: TapeRecord, n_rows: int, threads: Any) -> tuple[int, int]:
    """``(threads, block)`` for a batch of ``n_rows`` derivative rows: ``threads`` checked
    and sized to the work as for batch values (:func:`fasttape.batch.plan`: one thread for
    a small batch), and blocks of about a quarter of a thread's share, handed out
    dynamically so that a slow row does not hold up the others."""
    t, _, _ = plan(tape, True, n_rows, threads, 1)
    t = max(1, min(t, n_rows))
    return t, max(1, n_rows // (4 * t))


def _thread_bufs(tape: TapeRecord, t: int, shapes: dict[str, tuple[int, ...]],
                 zero: tuple[str, ...] = ()) -> list[np.ndarray]:
    """One work array per name with a leading axis of ``t`` (one set per worker thread)."""
    return [_buf(tape, f"rows_{name}", (t, *shape), zero=name in zero)
            for name, shape in shapes.items()]


def _result(arr: np.ndarray, m: int) -> Any:
    return float(arr[0]) if m == 1 else arr.copy()


# ------------------------------------------------------------------ forward mode
def _params_call(tape: TapeRecord, x: Any, p: Any) -> tuple[TapeRecord, np.ndarray] | None:
    """``(tape.params_as_inputs(), x and p joined)`` when there are parameters (or ``p`` was
    given, which then raises the tape's error), else None."""
    if p is None and not tape.n_params:
        return None
    return tape.params_as_inputs(), tape.join_params(x, p)


def _pad(v: Any, xp: np.ndarray, n: int, k: int, name: str, what: str) -> np.ndarray:
    """A direction ``v`` over the inputs, checked, with ``k`` zero parameter entries added."""
    if xp.ndim == 2:
        out = np.zeros((xp.shape[0], n + k))
        out[:, :n] = _row_block(v, xp.shape[0], n, name, what, "one entry per input")
        return out
    out = np.zeros(n + k)
    out[:n] = _vector(v, n, name, what, "one entry per input")
    return out


def jvp(tape: TapeRecord, x: Any, v: Any, *, p: Any = None,
        threads: Any = None) -> tuple[Any, Any]:
    """Outputs at ``x`` and their directional derivatives along ``v`` (one tangent sweep).

    Parameters
    ----------
    tape : Tape
    x : array_like of float, shape (n_inputs,) or (B, n_inputs)
        One point or a batch (see the module docstring).
    v : array_like of float, shape (n_inputs,) or, for a batch, (B, n_inputs)
        The input direction.
    threads : int, optional
        Threads for a batch (default: Numba's thread count, one for a small batch); the
        results do not depend on it.

    Returns
    -------
    value : float or ndarray of shape (n_outputs,)
        As :meth:`Tape.value`: a float for a single-output tape.  For a batch, shape (B,) or
        (B, n_outputs).
    tangent : float or ndarray of shape (n_outputs,)
        ``J(x) @ v``, with the same shape convention.
    """
    joined = _params_call(tape, x, p)
    if joined is not None:
        full, xp = joined
        return jvp(full, xp, _pad(v, xp, tape.n_inputs, tape.n_params, "v", "jvp"),
                   threads=threads)
    m = tape.n_outputs
    xb = _batch(tape, x, "jvp")
    if xb is not None:
        vb = _row_block(v, len(xb), tape.n_inputs, "v", "jvp", "one entry per input")
        out, outdot = np.empty((len(xb), m)), np.empty((len(xb), m))
        t, block = _row_threads(tape, len(xb), threads)
        a = (tape.ops, tape.args, tape.consts, tape.outputs, _writable(xb), vb)
        if t == 1:
            _k.jvp_rows(*a, _vals(tape), _buf(tape, "tan", (tape.n_slots, 1)), out, outdot)
        else:
            vals, tan = _thread_bufs(tape, t, {"vals": (tape.n_slots,),
                                               "tan": (tape.n_slots, 1)})
            launch(t, _kp.jvp_rows_parallel, *a, vals, tan, out, outdot, block)
        return (out[:, 0].copy(), outdot[:, 0].copy()) if m == 1 else (out, outdot)
    resolve_threads(threads)  # a bad ``threads`` is an error for one point too
    xin = _point(tape, x)
    vin = _vector(v, tape.n_inputs, "v", "jvp", "one entry per input")
    tan = _buf(tape, "tan", (tape.n_slots, 1))
    out = np.empty(m)
    outdot = np.empty((m, 1))
    _k.tangent_driver(
        tape.ops, tape.args, tape.consts, tape.outputs, xin, vin.reshape(-1, 1), False,
        _vals(tape), tan, out, outdot,
    )
    return _result(out, m), _result(outdot[:, 0], m)


# ------------------------------------------------------------------ reverse mode
def _vjp_buffers(tape: TapeRecord, lean: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """``parts`` (None for a lean tape) and ``adj`` (zero) of the single-thread VJP."""
    parts = None if lean else _buf(tape, "vjp_parts", (len(tape.args),))
    return parts, _buf(tape, "vjp_adj", (tape.n_slots,), zero=True)


def vjp(tape: TapeRecord, x: Any, w: Any, *, p: Any = None,
        threads: Any = None) -> tuple[Any, np.ndarray]:
    """Outputs at ``x`` and ``w @ J(x)``: reverse mode with a cotangent over the outputs.

    Parameters
    ----------
    tape : Tape
    x : array_like of float, shape (n_inputs,) or (B, n_inputs)
    w : array_like of float, shape (n_outputs,) or, for a batch, (B, n_outputs)
        The cotangent: one weight per output (outputs may repeat; their weights add).
    threads : int, optional
        Threads for a batch, as for :func:`jvp`.

    Returns
    -------
    value : float or ndarray of shape (n_outputs,)
        As :meth:`Tape.value` (for a batch, shape (B,) or (B, n_outputs)).
    vjp : ndarray, shape (n_inputs,) (for a batch, (B, n_inputs))
        ``sum_j w[j] * grad(output j)``.
    """
    joined = _params_call(tape, x, p)
    if joined is not None:
        full, xp = joined
        val, g = vjp(full, xp, w, threads=threads)
        return val, g[..., : tape.n_inputs].copy()
    m = tape.n_outputs
    # A lean tape's vjp stores no partials either (its memory is what lean mode is for).
    lean = tape.grad_mode == "lean"
    xb = _batch(tape, x, "vjp")
    if xb is not None:
        wb = _row_block(w, len(xb), m, "w", "vjp", "one weight per output")
        out, res = np.empty((len(xb), m)), np.empty((len(xb), tape.n_inputs))
        t, block = _row_threads(tape, len(xb), threads)
        a = (tape.ops, tape.args, tape.consts, tape.outputs, _writable(xb), wb)
        if t == 1:
            _k.vjp_rows(*a, _vals(tape), *_vjp_buffers(tape, lean), out, res)
        else:
            shapes = {"vals": (tape.n_slots,), "adj": (tape.n_slots,)}
            if not lean:
                shapes["parts"] = (len(tape.args),)
            vals, tadj, *tparts = _thread_bufs(tape, t, shapes, zero=("adj",))
            launch(t, _kp.vjp_rows_parallel, *a, vals, tparts[0] if tparts else None, tadj,
                   out, res, block)
        return (out[:, 0].copy() if m == 1 else out), res
    resolve_threads(threads)  # a bad ``threads`` is an error for one point too
    xin = _point(tape, x)
    win = _vector(w, m, "w", "vjp", "one weight per output")
    out = np.empty(m)
    res = np.empty(tape.n_inputs)
    _k.vjp_driver(tape.ops, tape.args, tape.consts, tape.outputs, xin, win, _vals(tape),
                  *_vjp_buffers(tape, lean), out, res)
    return _result(out, m), res


def jacobian(
    tape: TapeRecord, x: Any, *, mode: str = "auto", chunk: int | None = None, p: Any = None
) -> np.ndarray:
    """The Jacobian of all outputs with respect to all inputs, in vector mode.

    Parameters
    ----------
    tape : Tape
    x : array_like of float, shape (n_inputs,) or (B, n_inputs)
    mode : {"auto", "forward", "reverse"}
        "forward" sweeps ``chunk`` input directions at a time (``ceil(n / chunk)`` tangent
        sweeps), "reverse" ``chunk`` outputs at a time (one value sweep and
        ``ceil(m / chunk)`` reverse sweeps); "auto" uses forward when
        ``n_inputs <= n_outputs``, else reverse.  Both give the same matrix up to rounding.
    chunk : int, optional
        Directions per sweep; by default at most :data:`MAX_CHUNK`, balanced so that the
        sweeps carry equal numbers of directions, and smaller for huge tapes (one direction
        buffer stays under 64 MiB).  ``chunk=1`` is one sweep per direction.

    Returns
    -------
    ndarray, shape (n_outputs, n_inputs) (for a batch, (B, n_outputs, n_inputs))
        Row ``j`` is the gradient of output ``j``.
    """
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"mode must be one of {JACOBIAN_MODES}, got {mode!r}")
    n, m = tape.n_inputs, tape.n_outputs
    joined = _params_call(tape, x, p)
    if joined is not None:
        full, xp = joined
        if mode == "auto":
            mode = "forward" if n <= m else "reverse"
        if mode == "reverse":  # one row per output: parameter columns come with the sweep
            return jacobian(full, xp, mode="reverse", chunk=chunk)[..., :n].copy()
        if xp.ndim == 2:
            return _stack([_forward_jacobian(full, row, n, chunk) for row in xp], len(xp), (m, n))
        return _forward_jacobian(full, xp, n, chunk)
    xb = _batch(tape, x, "jacobian")
    if xb is not None:
        return _stack([jacobian(tape, xi, mode=mode, chunk=chunk) for xi in xb], len(xb), (m, n))
    xin = _point(tape, x)
    if mode == "auto":
        mode = "forward" if n <= m else "reverse"
    jac = np.zeros((m, n))
    out = np.empty(m)
    if mode == "forward":
        kk = _chunk(chunk, n, tape.n_slots, 1)
        tan = _buf(tape, "tan", (tape.n_slots, kk))
        xdot = np.empty((n, kk))
        _k.tangent_driver(
            tape.ops, tape.args, tape.consts, tape.outputs, xin, xdot, True, _vals(tape), tan,
            out, jac,
        )
    else:
        kk = _chunk(chunk, m, tape.n_slots, 1)
        adj = _buf(tape, "adj", (tape.n_slots, kk), zero=True)
        _k.cotangent_driver(
            tape.ops, tape.args, tape.consts, tape.outputs, xin, np.empty((m, kk)), True,
            _vals(tape), adj, out, jac,
        )
    return jac


def _unit_blocks(n: int, n_full: int, kk: int) -> Any:
    """``(j0, nb, xdot)``: blocks of ``kk`` unit directions over the first ``n`` of ``n_full``
    entries (the inputs, not the parameters)."""
    for j0 in range(0, n, kk):
        nb = min(kk, n - j0)
        xdot = np.zeros((n_full, kk))
        xdot[np.arange(j0, j0 + nb), np.arange(nb)] = 1.0
        yield j0, nb, xdot


def _forward_jacobian(full: TapeRecord, xin: np.ndarray, n: int, chunk: Any) -> np.ndarray:
    """Forward-mode Jacobian columns for the first ``n`` inputs of ``full`` (the rest are
    parameters): ``ceil(n / K)`` tangent sweeps, none for the parameters."""
    m = full.n_outputs
    kk = _chunk(chunk, n, full.n_slots, 1)
    jac = np.zeros((m, n))
    out = np.empty(m)
    res = np.empty((m, kk))
    tan = _buf(full, "tan", (full.n_slots, kk))
    for j0, nb, xdot in _unit_blocks(n, full.n_inputs, kk):
        _k.tangent_driver(
            full.ops, full.args, full.consts, full.outputs, xin, xdot, False, _vals(full), tan,
            out, res,
        )
        jac[:, j0 : j0 + nb] = res[:, :nb]
    return jac


# ------------------------------------------------------------------ second order
def _hvp_buffers(tape: TapeRecord, kk: int) -> tuple[np.ndarray, ...]:
    tan = _buf(tape, "tan", (tape.n_slots, kk))
    adj = _buf(tape, "adj1", (tape.n_slots,), zero=True)
    adjdot = _buf(tape, "adjdot", (tape.n_slots, kk), zero=True)
    return tan, adj, adjdot


def hvp(
    tape: TapeRecord, x: Any, v: Any, *, output: int | None = None, p: Any = None,
    threads: Any = None
) -> np.ndarray:
    """Hessian of one output at ``x`` times ``v``, by forward-over-reverse (no differences).

    Costs one tangent sweep and one reverse sweep that also carries the adjoints' tangents,
    using the op table's second partials.  Suitable as ``scipy.optimize.minimize``'s
    ``hessp=tape.hvp``.

    Parameters
    ----------
    tape : Tape
    x : array_like of float, shape (n_inputs,) or (B, n_inputs)
    v : array_like of float, shape (n_inputs,) or, for a batch, (B, n_inputs)
    output : int, optional
        Which output; required when the tape has several (as for :meth:`Tape.grad`).
    threads : int, optional
        Threads for a batch, as for :func:`jvp`.

    Returns
    -------
    ndarray, shape (n_inputs,) (for a batch, (B, n_inputs))
        ``H(x) @ v``.
    """
    joined = _params_call(tape, x, p)
    if joined is not None:
        full, xp = joined
        vp = _pad(v, xp, tape.n_inputs, tape.n_params, "v", "hvp")
        return hvp(full, xp, vp, output=output, threads=threads)[..., : tape.n_inputs].copy()
    xb = _batch(tape, x, "hvp")
    if xb is not None:
        which = tape.output_index(output)
        vb = _row_block(v, len(xb), tape.n_inputs, "v", "hvp", "one entry per input")
        out = np.empty((len(xb), tape.n_inputs))
        t, block = _row_threads(tape, len(xb), threads)
        a = (tape.ops, tape.args, tape.consts, tape.outputs, which, _writable(xb), vb)
        if t == 1:
            tan, adj, adjdot = _hvp_buffers(tape, 1)
            _k.hvp_rows(*a, _vals(tape), tan, adj, adjdot, np.empty(tape.n_inputs), out)
        else:
            n_slots = tape.n_slots
            bufs = _thread_bufs(tape, t, {"vals": (n_slots,), "tan": (n_slots, 1),
                                          "adj": (n_slots,), "adjdot": (n_slots, 1),
                                          "grad": (tape.n_inputs,)}, zero=("adj", "adjdot"))
            launch(t, _kp.hvp_rows_parallel, *a, *bufs, out, block)
        return out
    resolve_threads(threads)  # a bad ``threads`` is an error for one point too
    return value_grad_hvp(tape, x, v, output=output)[2]


def value_grad_hvp(
    tape: TapeRecord, x: Any, v: Any, *, output: int | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Value, gradient and Hessian-vector product of one output at one point, from one sweep
    pair.

    See :func:`hvp`; the value and gradient come for free with the HVP.
    """
    xin = _point(tape, x)
    vin = _vector(v, tape.n_inputs, "v", "hvp", "one entry per input")
    which = tape.output_index(output)
    tan, adj, adjdot = _hvp_buffers(tape, 1)
    grad = np.empty(tape.n_inputs)
    hv = np.empty((tape.n_inputs, 1))
    val = _k.hvp_driver(
        tape.ops, tape.args, tape.consts, tape.outputs, which, xin, vin.reshape(-1, 1), False,
        _vals(tape), tan, adj, adjdot, grad, hv,
    )
    return float(val), grad, hv[:, 0].copy()


def hessian(
    tape: TapeRecord, x: Any, *, output: int | None = None, chunk: int | None = None,
    p: Any = None,
) -> np.ndarray:
    """Hessian of one output at ``x`` from vector-mode Hessian-vector products.

    Column block ``j .. j + chunk - 1`` is ``H @ [e_j ... e_{j+chunk-1}]``, computed by one
    forward-tangent sweep and one forward-over-reverse sweep carrying ``chunk`` directions.

    Symmetry: forward-over-reverse computes ``H[i, j]`` and ``H[j, i]`` along different
    paths, which agree mathematically but can differ in the last bits; the result is
    symmetrized (where the two differ, both become ``0.5 * a + 0.5 * b``), so it is exactly
    symmetric.

    Parameters
    ----------
    tape : Tape
    x : array_like of float, shape (n_inputs,) or (B, n_inputs)
    output : int, optional
        Which output; required when the tape has several.
    chunk : int, optional
        Directions per sweep pair; by default at most :data:`MAX_CHUNK`, balanced (see
        :func:`jacobian`).

    Returns
    -------
    ndarray, shape (n_inputs, n_inputs) (for a batch, (B, n_inputs, n_inputs))
    """
    n = tape.n_inputs
    joined = _params_call(tape, x, p)
    if joined is not None:
        full, xp = joined
        which = tape.output_index(output)
        if xp.ndim == 2:
            return _stack([_params_hessian(full, row, n, which, chunk) for row in xp], len(xp),
                          (n, n))
        return _params_hessian(full, xp, n, which, chunk)
    xb = _batch(tape, x, "hessian")
    if xb is not None:
        which = tape.output_index(output)
        return _stack([hessian(tape, xi, output=which, chunk=chunk) for xi in xb], len(xb),
                      (n, n))
    xin = _point(tape, x)
    which = tape.output_index(output)
    kk = _chunk(chunk, n, tape.n_slots, 2)
    tan, adj, adjdot = _hvp_buffers(tape, kk)
    hess = np.empty((n, n))
    grad = np.empty(n)
    _k.hvp_driver(
        tape.ops, tape.args, tape.consts, tape.outputs, which, xin, np.empty((n, kk)), True,
        _vals(tape), tan, adj, adjdot, grad, hess,
    )
    return hess


def _params_hessian(
    full: TapeRecord, xin: np.ndarray, n: int, which: int, chunk: Any
) -> np.ndarray:
    """The Hessian block of the first ``n`` inputs of ``full`` (the rest are parameters).

    Unit directions for the inputs only (``ceil(n / K)`` sweep pairs, none for the
    parameters), then the same symmetrization as :func:`hessian`'s kernel: where ``H[i, j]``
    and ``H[j, i]`` differ, both become ``0.5 * a + 0.5 * b``.
    """
    kk = _chunk(chunk, n, full.n_slots, 2)
    tan, adj, adjdot = _hvp_buffers(full, kk)
    hess = np.empty((n, n))
    grad = np.empty(full.n_inputs)
    res = np.empty((full.n_inputs, kk))
    for j0, nb, xdot in _unit_blocks(n, full.n_inputs, kk):
        _k.hvp_driver(
            full.ops, full.args, full.consts, full.outputs, which, xin, xdot, False,
            _vals(full), tan, adj, adjdot, grad, res,
        )
        hess[:, j0 : j0 + nb] = res[:n, :nb]
    t = hess.T
    differ = hess != t
    return np.where(differ, 0.5 * hess + 0.5 * t, hess)
