"""Tapes on Dask: lazy values and derivatives over row-chunked batches, and summed gradients.

A batch that one machine cannot evaluate in time is a ``dask.array`` of points, shape
``(B, n_inputs)``, chunked along its rows only.  The functions here take a tape and such an
array and return lazy dask arrays (the same shapes as :meth:`fasttape.Tape.value` and
friends on a NumPy batch, one output chunk per input chunk); :func:`sum_value_and_grad`
reduces in the workers to one value and one gradient (a loss summed over data), without ever
holding the per-point gradients of more than a bounded block of rows.  Nothing runs until
``.compute()``, on whichever scheduler is active (threads, processes, ``distributed``).

How a computation runs (docs/distributed.md):

- **Validation first.**  Every argument is checked when the graph is built (shape, columns in
  one chunk, float dtype, matching row chunks, parameters, ``output=``), so a mistake fails
  before anything is scheduled.
- **The tape travels once per worker.**  The tape is one key of the graph (a
  :class:`ShippedTape`), and every chunk task depends on it.  ``distributed`` copies a
  dependency to a worker once and keeps it while tasks need it, so each worker process
  receives the tape once per computation, whatever its number of tasks.  A worker process
  also keeps the last :data:`KEEP_TAPES` tapes it received, by content digest, so a tape that
  arrives again (the next iteration of an optimiser) is not validated or planned again.
  :func:`shipped_tape_stats` counts both on a worker.
- **Kernels come from the disk cache.**  Worker processes load the compiled kernels from the
  per-user disk cache (``$FASTTAPE_CACHE_DIR`` or ``~/.cache/fasttape``,
  :func:`fasttape.kernels.jit.cache_dir`), as any fresh process does; where that folder is
  empty, a worker compiles the kernels it needs (seconds) and writes them for the next ones.
- **One thread per task.**  Tasks run the batch kernels with ``threads=1`` by default: Dask
  already runs one task per worker thread, and Numba threads inside each task would
  oversubscribe the cores.  Pass ``threads=`` to give each task more (one worker per machine).
- **Faults.**  Every task is a pure function of its inputs, so when a worker dies Dask reruns
  its tasks elsewhere and the result is bitwise the one of an undisturbed run.

Dask is imported by this module, and ``import fasttape`` never imports this module.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Any

import dask
import dask.array as da
import numpy as np

from fasttape.tape import TapeRecord, tape_from_state
from fasttape.validate import real_array

__all__ = [
    "KEEP_TAPES",
    "SUM_ROWS",
    "ShippedTape",
    "grad",
    "hvp",
    "jvp",
    "point_seconds",
    "rows_per_task",
    "shipped_tape_stats",
    "sum_value_and_grad",
    "value",
    "value_and_grad",
]

#: Tapes a worker process keeps after receiving them, by content digest (least recently used
#: dropped first): a tape that arrives again reuses the kept one, with its work buffers.  A
#: kept tape holds its buffers (at most ``fasttape.batch.CHUNK_BYTES`` per worker thread).
KEEP_TAPES = 2

#: Rows per kernel call inside one :func:`sum_value_and_grad` task: a task never holds more
#: than this many points' gradients, however large its chunk.
SUM_ROWS = 4096


# ------------------------------------------------------------------ the tape in the graph
_KEPT: OrderedDict[str, TapeRecord] = OrderedDict()
_KEPT_LOCK = threading.Lock()
_STATS = {"received": 0, "built": 0}


def _digest(tape: TapeRecord) -> str:
    """A content digest of the tape: class, gradient mode, counts and arrays."""
    h = hashlib.sha256()
    cls = type(tape)
    h.update(f"{cls.__module__}.{cls.__qualname__}|{tape.grad_mode}".encode())
    for name, value in tape.to_arrays().items():
        if isinstance(value, np.ndarray):
            h.update(f"|{name}:{value.dtype.str}:{value.shape}|".encode())
            h.update(np.ascontiguousarray(value).data)
        else:
            h.update(f"|{name}={value}".encode())
    return h.hexdigest()


class ShippedTape:
    """A tape as it travels in a Dask graph: pickled as its arrays and a content digest.

    A worker process that unpickles one looks the digest up among the tapes it kept
    (:data:`KEEP_TAPES`) and validates and builds the tape only when it is new there.

    Attributes
    ----------
    tape : Tape
    digest : str
        SHA-256 of the tape's class, gradient mode and arrays.
    """

    __slots__ = ("digest", "tape")

    def __init__(self, tape: TapeRecord, digest: str | None = None) -> None:
        self.tape = tape
        self.digest = _digest(tape) if digest is None else digest

    def __reduce__(self) -> tuple[Any, ...]:
        return (_arrive, (self.digest, type(self.tape), self.tape.to_arrays(),
                          self.tape.grad_mode))

    def __dask_tokenize__(self) -> str:
        return self.digest

    def __repr__(self) -> str:
        return f"<ShippedTape {self.digest[:12]}: {self.tape!r:.60}>"


def _arrive(digest: str, cls: type, arrays: dict[str, Any], grad_mode: str) -> ShippedTape:
    """Unpickle a :class:`ShippedTape`: the kept tape of that digest, else a validated one."""
    with _KEPT_LOCK:
        _STATS["received"] += 1
        tape = _KEPT.get(digest)
        if tape is not None:
            _KEPT.move_to_end(digest)
            return ShippedTape(tape, digest)
    tape = tape_from_state(cls, arrays, grad_mode)  # validated, as any unpickled tape
    with _KEPT_LOCK:
        _STATS["built"] += 1
        _KEPT[digest] = tape
        while len(_KEPT) > KEEP_TAPES:
            _KEPT.popitem(last=False)
    return ShippedTape(tape, digest)


def shipped_tape_stats() -> dict[str, int]:
    """How many tapes this process received in Dask graphs, and how many it had to build.

    Run it on the workers, ``client.run(fasttape.dask.shipped_tape_stats)``: ``received``
    grows by one per worker and computation (not per task); ``built`` only when the tape is
    not among the :data:`KEEP_TAPES` the worker kept.

    Returns
    -------
    dict
        ``{"received": int, "built": int}`` since the process started.
    """
    with _KEPT_LOCK:
        return dict(_STATS)


# ------------------------------------------------------------------ validation
def _check_tape(tape: Any) -> TapeRecord:
    if not isinstance(tape, TapeRecord):
        raise TypeError(
            f"tape must be a fasttape Tape (from ft.compile without memory_limit=, or "
            f"ft.load); got {type(tape).__name__}"
        )
    return tape


def _check_threads(threads: Any) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int (Numba threads per task); got "
                         f"{threads!r}")
    return int(threads)


def _dask_rows(arr: da.Array, name: str, width: int, what: str) -> da.Array:
    """Check a dask batch: 2-D, ``width`` columns in one chunk, a float dtype."""
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D dask array of shape (B, {width}), one row per point; got "
            f"shape {arr.shape} (a single point needs no Dask: compute it and call the tape)"
        )
    if arr.shape[1] != width:
        raise ValueError(
            f"{name} must have {width} columns ({what}); got shape {arr.shape}"
        )
    if arr.dtype.kind != "f" or arr.dtype.itemsize > 8:  # the kernels compute in float64
        raise TypeError(
            f"{name} must hold floating-point numbers of at most 64 bits; got dtype "
            f"{arr.dtype}: convert it first, {name}.astype('float64')"
        )
    if len(arr.chunks[1]) != 1:
        raise ValueError(
            f"{name} is chunked across its columns (chunks {arr.chunks[1]}); every task needs "
            f"whole rows: rechunk with {name}.rechunk({{1: -1}})"
        )
    return arr


def _operand(a: Any, name: str, width: int, what: str) -> tuple[str, Any]:
    """``("batch", dask array)`` for a dask batch, ``("one", vector)`` for one row for all."""
    if isinstance(a, da.Array):
        return "batch", _dask_rows(a, name, width, what)
    if dask.is_dask_collection(a):
        raise TypeError(f"{name} must be a dask array or a NumPy vector; got "
                        f"{type(a).__name__} (use .to_dask_array(lengths=True) for dataframes)")
    arr = real_array(a, name)
    if arr.ndim == 2:
        raise TypeError(
            f"{name} is a 2-D {type(a).__name__}, not a dask array: evaluate it with the tape "
            f"directly, or wrap it, dask.array.from_array({name}, chunks=(rows, -1))"
        )
    if arr.shape != (width,):
        raise ValueError(f"{name} must have shape ({width},) ({what}), the same for every "
                         f"point, or be a dask array of shape (B, {width}); got shape "
                         f"{arr.shape}")
    return "one", np.ascontiguousarray(arr, dtype=np.float64)


def _check_rows(parts: list[tuple[str, str, Any]]) -> None:
    """At least one dask batch among ``parts``, and all with the same row chunks."""
    batches = [(name, a) for name, kind, a in parts if kind == "batch"]
    if not batches:
        names = " or ".join(name for name, _, _ in parts)
        raise TypeError(
            f"no dask array among {names}: pass the batch as a dask array of shape (B, n), "
            "chunked along its rows (for NumPy arrays, call the tape directly)"
        )
    first_name, first = batches[0]
    for name, a in batches[1:]:
        if a.chunks[0] != first.chunks[0]:
            raise ValueError(
                f"{name} and {first_name} must have the same row chunks, one task per chunk "
                f"of points; got {a.chunks[0]} and {first.chunks[0]}: rechunk with "
                f"{name}.rechunk({{0: {first_name}.chunks[0]}})"
            )


def _graph_args(parts: list[tuple[str, str, Any]]) -> tuple[list[Any], str]:
    """Blockwise (argument, index) pairs, and the output index.

    Batches share the row index ``i``; each has its own column index.  The output is indexed
    by the rows and the first batch's columns: that batch is not contracted, so Dask fuses
    the task that makes its chunk (a generator, a reader) with ours, one task per chunk.
    Vectors shared by every point are one graph key each (they too travel once per worker).
    """
    out: list[Any] = []
    out_ind = ""
    for column, (_, kind, a) in zip("abc", parts, strict=False):
        if kind == "batch":
            out += [a, "i" + column]
            out_ind = out_ind or "i" + column
        else:
            out += [dask.delayed(a, pure=True), None]
    return out, out_ind


def _prepare(
    tape: Any, x: Any, p: Any, extra: tuple[tuple[str, Any, int, str], ...] = (),
) -> tuple[TapeRecord, list[tuple[str, str, Any]]]:
    """Check everything a computation takes; ``(tape, parts)``."""
    tape = _check_tape(tape)
    parts = [("x", *_operand(x, "x", tape.n_inputs, "one per input"))]
    if tape.n_params:
        if p is None:
            raise TypeError(
                f"this tape has {tape.n_params} parameters: pass p=, a vector of "
                f"{tape.n_params} (the same for every point) or a dask array of shape "
                f"(B, {tape.n_params})"
            )
        parts.append(("p", *_operand(p, "p", tape.n_params, "one per parameter")))
    elif p is not None:
        raise TypeError("this tape has no parameters; p must be None")
    for name, a, width, what in extra:
        parts.append((name, *_operand(a, name, width, what)))
    _check_rows(parts)
    return tape, parts


def _ship(tape: TapeRecord) -> Any:
    """The tape as one graph key, named by its digest."""
    shipped = ShippedTape(tape)
    return dask.delayed(shipped, name=f"fasttape-tape-{shipped.digest[:16]}")


def _unpack(blocks: tuple[Any, ...], has_p: bool, n_extra: int
            ) -> tuple[Any, Any, tuple[Any, ...]]:
    x = blocks[0]
    p = blocks[1] if has_p else None
    return x, p, blocks[len(blocks) - n_extra:]


# ------------------------------------------------------------------ chunk tasks
# Module functions, so a task pickles them by name; each gets the shipped tape, the threads,
# whether p is present, then its blocks (x, [p], extras) in order.
def _task_value(shipped: ShippedTape, threads: int, has_p: bool, *blocks: Any) -> np.ndarray:
    x, p, _ = _unpack(blocks, has_p, 0)
    v = np.asarray(shipped.tape.value(x, p, threads=threads))
    return v.reshape(len(v), shipped.tape.n_outputs)  # 2-D: see _blockwise


def _task_value_and_grad(shipped: ShippedTape, threads: int, has_p: bool, which: int,
                         *blocks: Any) -> tuple[np.ndarray, np.ndarray]:
    x, p, _ = _unpack(blocks, has_p, 0)
    v, g = shipped.tape.value_and_grad(x, p, output=which, threads=threads)
    return np.asarray(v), g


def _task_jvp(shipped: ShippedTape, threads: int, has_p: bool, *blocks: Any) -> tuple[Any, Any]:
    x, p, (v,) = _unpack(blocks, has_p, 1)
    val, tan = shipped.tape.jvp(x, v, p)
    return np.asarray(val), np.asarray(tan)


def _task_hvp(shipped: ShippedTape, threads: int, has_p: bool, which: int,
              *blocks: Any) -> np.ndarray:
    x, p, (v,) = _unpack(blocks, has_p, 1)
    return np.asarray(shipped.tape.hvp(x, v, p, output=which))


def _task_sums(shipped: ShippedTape, threads: int, has_p: bool, which: int,
               *blocks: Any) -> np.ndarray:
    """``[[sum of values, *sum of gradients]]`` over one chunk, :data:`SUM_ROWS` at a time."""
    x, p, _ = _unpack(blocks, has_p, 0)
    tape = shipped.tape
    rows = (x if x.ndim == 2 else p).shape[0]
    total = np.zeros(1 + tape.n_inputs)
    g = np.empty((min(rows, SUM_ROWS), tape.n_inputs))
    for lo in range(0, rows, SUM_ROWS):
        hi = min(rows, lo + SUM_ROWS)
        xs = x[lo:hi] if x.ndim == 2 else x
        ps = p[lo:hi] if p is not None and p.ndim == 2 else p
        v, gs = tape.value_and_grad(xs, ps, output=which, out=g[: hi - lo], threads=threads)
        # In a fixed order (block by block, NumPy's pairwise sum inside), so a rerun of the
        # task (another worker, after a failure) gives the same bits.
        total[0] += np.sum(v)
        total[1:] += np.sum(gs, axis=0)
    return total.reshape(1, -1)


def _pick(pair: Any, i: int) -> Any:
    if isinstance(pair, list):  # dropping the (single-chunk) columns: a list of one pair
        (pair,) = pair
    return pair[i]


def _column(block: np.ndarray) -> np.ndarray:
    return block[:, 0]


# ------------------------------------------------------------------ graph building
def _blockwise(func: Any, tape: TapeRecord, parts: list[tuple[str, str, Any]], threads: int,
               *lead: Any, width: int, dtype: Any, rows: int | None = None) -> da.Array:
    """One task per row chunk, ``func(shipped, threads, has_p, *lead, *blocks)``, as a 2-D
    array of ``width`` columns (``rows`` rows per chunk when given).

    Always 2-D and indexed like the first batch (:func:`_graph_args`): an output that drops
    an axis makes Dask add an alias task per chunk, which costs as much as a real one.
    """
    has_p = any(name == "p" for name, _, _ in parts)
    lead_args: list[Any] = []
    for a in (threads, has_p, *lead):
        lead_args += [a, None]
    args, out_ind = _graph_args(parts)
    adjust: dict[str, Any] = {out_ind[1]: width}
    if rows is not None:
        adjust["i"] = rows
    return da.blockwise(func, out_ind, _ship(tape), None, *lead_args, *args,
                        concatenate=True, adjust_chunks=adjust, dtype=dtype,
                        meta=np.empty((0, 0), dtype=dtype))


def _flat(arr: da.Array) -> da.Array:
    """A one-column array as 1-D (one alias task per chunk: only where the shape says so)."""
    return arr.map_blocks(_column, drop_axis=1, dtype=arr.dtype, meta=np.empty((0,)))


def _pair(tmp: da.Array, first: int | None, second: int | None) -> tuple[da.Array, da.Array]:
    """Split a blockwise array of ``(a, b)`` pairs into two arrays (``None``: shape (B,),
    else (B, width))."""
    out = []
    rows = tmp.chunks[0]
    for i, width in enumerate((first, second)):
        if width is None:
            # Not concatenated: the blocks are pairs, which NumPy cannot concatenate.
            out.append(da.blockwise(_pick, "i", tmp, "ia", i, None, concatenate=False,
                                    dtype=np.float64, meta=np.empty((0,))))
        else:
            out.append(tmp.map_blocks(_pick, i, dtype=np.float64, meta=np.empty((0, 0)),
                                      chunks=(rows, (width,))))
    return out[0], out[1]


def _one_or_many(tape: TapeRecord) -> int | None:
    return None if tape.n_outputs == 1 else tape.n_outputs


def value(tape: Any, x: Any, p: Any = None, *, threads: int = 1) -> da.Array:
    """The outputs at every point of a dask batch, lazily.

    Parameters
    ----------
    tape : Tape
    x : dask.array.Array of float, shape (B, n_inputs), or array_like of shape (n_inputs,)
        The points, chunked along rows only (one task per chunk); or one point for every row
        of a batch ``p``.
    p : dask.array.Array of shape (B, n_params), or array_like of shape (n_params,), optional
        The parameters, required when the tape has some (as in :meth:`fasttape.Tape.value`);
        a dask ``p`` with a dask ``x`` must have the same row chunks.
    threads : int
        Numba threads per task (default 1: Dask runs the tasks in parallel).

    Returns
    -------
    dask.array.Array
        Shape (B,) for a single-output tape, else (B, n_outputs), chunked as the rows of the
        batch; bitwise the NumPy batch's rows.
    """
    tape, parts = _prepare(tape, x, p)
    m = _one_or_many(tape)
    threads = _check_threads(threads)
    out = _blockwise(_task_value, tape, parts, threads, width=tape.n_outputs, dtype=np.float64)
    return _flat(out) if m is None else out


def value_and_grad(tape: Any, x: Any, p: Any = None, *, output: int | None = None,
                   threads: int = 1) -> tuple[da.Array, da.Array]:
    """Value of one output and its gradient at every point of a dask batch, lazily.

    Parameters
    ----------
    tape : Tape
    x, p, threads
        As in :func:`value`.
    output : int, optional
        Which output; required when the tape has several.

    Returns
    -------
    values : dask.array.Array, shape (B,)
    grads : dask.array.Array, shape (B, n_inputs)
        Both from the same tasks (one sweep pair per point), chunked as the rows of the batch.
    """
    tape, parts = _prepare(tape, x, p)
    which = tape.output_index(output)
    threads = _check_threads(threads)
    tmp = _blockwise(_task_value_and_grad, tape, parts, threads, which, width=tape.n_inputs,
                     dtype=object)
    return _pair(tmp, None, tape.n_inputs)


def grad(tape: Any, x: Any, p: Any = None, *, output: int | None = None,
         threads: int = 1) -> da.Array:
    """Gradient of one output at every point of a dask batch; see :func:`value_and_grad`.

    Returns
    -------
    dask.array.Array, shape (B, n_inputs)
    """
    return value_and_grad(tape, x, p, output=output, threads=threads)[1]


def jvp(tape: Any, x: Any, v: Any, p: Any = None) -> tuple[da.Array, da.Array]:
    """Outputs and ``J(x) @ v`` at every point of a dask batch (:func:`fasttape.derivatives.jvp`).

    Parameters
    ----------
    tape : Tape
    x, p
        As in :func:`value`.  (Each point is one tangent sweep on the task's thread, as
        :meth:`fasttape.Tape.jvp` does for a NumPy batch: there is no ``threads=``.)
    v : array_like of shape (n_inputs,), or dask.array.Array of shape (B, n_inputs)
        One direction for every point, or one per point (same row chunks as the batch).

    Returns
    -------
    values, tangents : dask.array.Array
        Shape (B,) each for a single-output tape, else (B, n_outputs).
    """
    tape = _check_tape(tape)
    tape, parts = _prepare(tape, x, p, (("v", v, tape.n_inputs, "one per input"),))
    m = _one_or_many(tape)
    tmp = _blockwise(_task_jvp, tape, parts, 1, width=tape.n_outputs, dtype=object)
    return _pair(tmp, m, m)


def hvp(tape: Any, x: Any, v: Any, p: Any = None, *, output: int | None = None
        ) -> da.Array:
    """Hessian of one output times ``v`` at every point of a dask batch
    (:func:`fasttape.derivatives.hvp`).

    Parameters
    ----------
    tape : Tape
    x, p
        As in :func:`value` (one sweep pair per point on the task's thread, as in :func:`jvp`).
    v : array_like of shape (n_inputs,), or dask.array.Array of shape (B, n_inputs)
        As in :func:`jvp`.
    output : int, optional
        Which output; required when the tape has several.

    Returns
    -------
    dask.array.Array, shape (B, n_inputs)
    """
    tape = _check_tape(tape)
    tape, parts = _prepare(tape, x, p, (("v", v, tape.n_inputs, "one per input"),))
    which = tape.output_index(output)
    return _blockwise(_task_hvp, tape, parts, 1, which, width=tape.n_inputs, dtype=np.float64)


def sum_value_and_grad(tape: Any, x: Any, p: Any = None, *, output: int | None = None,
                       threads: int = 1, split_every: int | None = None
                       ) -> tuple[da.Array, da.Array]:
    """The sum over all points of one output and of its gradient, reduced in the workers.

    Each chunk task evaluates its rows :data:`SUM_ROWS` at a time and returns one row, the
    chunk's value sum and gradient sum; those rows are added by a tree reduction
    (``split_every`` rows per node, Dask's default when None).  A worker never holds more
    than ``SUM_ROWS`` points' gradients per task, nor more than ``split_every`` partial sums
    per reduction task: memory does not grow with the number of points.

    For a loss summed over data, ``x`` is the model's inputs (one vector) and ``p`` the data
    (a dask array, one row per sample); the result is the loss and its gradient.

    Parameters
    ----------
    tape, x, p, threads, output
        As in :func:`value_and_grad`.
    split_every : int, optional
        Fan-in of the reduction tree.

    Returns
    -------
    value : dask.array.Array, shape ()
    grad : dask.array.Array, shape (n_inputs,)
        Deterministic for given chunks and ``split_every`` (any scheduler, worker count or
        rerun after a failure gives the same bits); it differs from ``np.sum`` over the NumPy
        batch by rounding only.
    """
    tape, parts = _prepare(tape, x, p)
    which = tape.output_index(output)
    threads = _check_threads(threads)
    partial = _blockwise(_task_sums, tape, parts, threads, which, width=1 + tape.n_inputs,
                         dtype=np.float64, rows=1)
    total = partial.sum(axis=0, split_every=split_every)
    return total[0], total[1:]


# ------------------------------------------------------------------ sizing tasks
def point_seconds(tape: Any, sample: Any, p: Any = None, *, grad: bool = True,
                  repeat: int = 3) -> float:
    """Seconds per point of a batch on one thread, measured on ``sample`` (best of ``repeat``).

    Parameters
    ----------
    tape : Tape
    sample : array_like, shape (S, n_inputs)
        Representative points (a few hundred: ``X[:256].compute()``).
    p : array_like, optional
        The parameters, as in :meth:`fasttape.Tape.value`.
    grad : bool
        Time ``value_and_grad`` (default) or ``value``.
    repeat : int
        Timed runs after one untimed run (which compiles or loads the kernels).

    Returns
    -------
    float
    """
    tape = _check_tape(tape)
    xs = np.asarray(sample, dtype=np.float64)
    if xs.ndim != 2 or xs.shape[0] < 1:
        raise ValueError(f"sample must have shape (S, {tape.n_inputs}) with S >= 1; got "
                         f"shape {xs.shape}")
    run = ((lambda: tape.value_and_grad(xs, p, output=0, threads=1)) if grad
           else (lambda: tape.value(xs, p, threads=1)))
    run()
    best = float("inf")
    for _ in range(max(1, int(repeat))):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best / xs.shape[0]


def rows_per_task(tape: Any, sample: Any, p: Any = None, *, seconds: float = 0.25,
                  grad: bool = True) -> int:
    """Points per task (row chunk) for tasks of about ``seconds`` each on one thread.

    With a per-task overhead ``o`` (a few milliseconds on a ``distributed`` cluster, measured
    in docs/distributed.md) a task of ``seconds`` spends about ``o / seconds`` on overhead:
    4% for ``o`` = 10 ms and the default 0.25 s.  Rechunk the batch with
    ``X.rechunk({0: rows})``.

    Parameters
    ----------
    tape, sample, p, grad
        As in :func:`point_seconds`.
    seconds : float
        Target compute time per task.

    Returns
    -------
    int
        At least 1.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be positive; got {seconds!r}")
    return max(1, int(seconds / point_seconds(tape, sample, p, grad=grad)))
