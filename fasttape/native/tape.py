"""``NativeTape``: a tape compiled to straight-line machine code, and :func:`native`.

Built on the tape record's public interface only (its arrays and its input checks), so it
sits above :mod:`fasttape.tape` like the other layers; :meth:`fasttape.Tape.native` calls
:func:`native`.  docs/native.md describes the design and when it pays.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numba
import numpy as np

from fasttape.kernels import scalar
from fasttape.native import cache, emit, irtext, machine, translate, workers
from fasttape.native import loops as loop_pieces
from fasttape.native.call import call_value, call_vg
from fasttape.native.entry import native_cfunction, native_numba_kernel
from fasttape.ops import table_hash
from fasttape.tape import TapeRecord, check_out, resolve_threads

__all__ = ["DEFAULT_PIECE_SIZE", "PARALLEL_MIN_WORK", "PARALLEL_PIECES", "MachineCode",
           "NativeTape",
           "check_options", "interpreted", "native", "opt_level", "piece_levels"]

#: Instructions per piece.  Compile time per instruction is flat from a few hundred to a few
#: thousand (docs/native.md), and a piece's stack frame stays small (a few KiB).
DEFAULT_PIECE_SIZE = 2000

_VALUE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
_VG = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_int64)
_VALUEB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_int64)
_VGB = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                        ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64)

_FLOAT64 = np.dtype(np.float64)
_ONE_STRIDE = (8,)


def _plain_point(x: Any, n: int) -> bool:
    """Whether ``x`` is one point the machine code can read as it is: a C-contiguous float64
    vector of length ``n``."""
    return (type(x) is np.ndarray and x.dtype == np.float64 and x.ndim == 1
            and x.flags.c_contiguous and x.shape[0] == n)


class MachineCode(NamedTuple):
    """A native tape's entry points: ``value(x, w, out)``, ``vg(x, w, grad, which) ->
    value`` (ctypes functions taking addresses), the work array's length ``n_work``, and
    ``check_at``: after ``vg``, ``w[check_at]`` is NaN where the machine code's gradient may
    not be the interpreter's (an entry is NaN, :func:`fasttape.native.irtext.accumulate`),
    and ``vg`` then returns NaN; evaluate that point on the interpreter instead, as
    :class:`NativeTape` and :mod:`fasttape.native.entry` do."""

    value: Any
    vg: Any
    n_work: int
    check_at: int


def interpreted(name: str, doc: str) -> property:
    """A read-only property that reads attribute ``name`` of the wrapped (interpreted) tape
    ``self.tape``: the native tape and its tiered wrapper describe the tape they run."""
    return property(lambda self: getattr(self.tape, name), doc=doc)


#: A batch is split over threads only when rows x instructions reach this much per thread
#: (below, starting the threads costs more than it saves).
PARALLEL_MIN_WORK = 200_000

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    """The worker threads of native batches, started on first use, shared by all tapes."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                       thread_name_prefix="fasttape-native")
        return _pool


def opt_level(n_instr: int) -> int:
    """LLVM optimization level of the straight-line pieces of a tape of ``n_instr``
    straight-line instructions (:func:`piece_levels`).

    Every level gives bitwise the same results (no fast-math, no contraction): the level only
    trades compile time for run time (:func:`fasttape.native.machine.compile_module`).  Up
    to 20,000 instructions, ``1`` (LLVM's optimizing code generator: about 0.07 to 0.1 ms of
    compiling per instruction, 0.5 to 0.7 on long runs of arithmetic, for code 1 to 40%
    faster than level 0's); above, ``0`` (its fast instruction selector and register
    allocator, about 0.04 to 0.08 ms per instruction).
    docs/native.md has the measurements.
    """
    return 1 if n_instr <= 20_000 else 0


def _piece_size(piece_size: Any) -> int:
    """``piece_size`` checked (a positive int), as an int."""
    if isinstance(piece_size, bool) or not isinstance(piece_size, (int, np.integer)) \
            or piece_size < 1:
        raise ValueError(f"piece_size must be a positive int, got {piece_size!r}")
    return int(piece_size)


#: LLVM optimization level of the driver module (the entry points: calls to the pieces and
#: the loops that copy and check the gradient, :func:`fasttape.native.emit.driver_module`):
#: at level 0 those loops keep their counters on the stack, at 2 they are vectorized.
#: Rosenbrock at 10,000 instructions (3,334 inputs): ``value_and_grad`` 13.8, 10.5 and
#: 9.9 us with the driver at levels 0, 1 and 2 (a ``/tmp`` script, one process).
DRIVER_LEVEL = 2

#: LLVM optimization level of a loop piece (:mod:`fasttape.native.loops`): its body is
#: at most :data:`fasttape.native.loops.MAX_PERIOD` instructions, which compile in
#: milliseconds at any level.
LOOP_LEVEL = 1

def piece_levels(ops: np.ndarray, piece_size: int = DEFAULT_PIECE_SIZE,
                 pieces: tuple[emit.Piece, ...] | None = None) -> tuple[int, ...]:
    """The default LLVM optimization level of each piece of a tape with op codes ``ops``.

    ``pieces`` is the tape cut into pieces (:func:`fasttape.native.emit.cut`; default: cut
    into straight-line pieces of ``piece_size`` only).  A loop piece gets
    :data:`LOOP_LEVEL`, the straight-line pieces :func:`opt_level` by how many instructions
    they hold together.  Pieces of libm calls gain from level 1 too (random graphs, 35% libm
    calls: 8% at 10,000 instructions; a chain of ``sin``: 1%), now that level 1 schedules
    for a generic x86-64 (:mod:`fasttape.native.machine`) at half the compile time of the
    host's own model.  docs/native.md has the measurements.
    """
    size = _piece_size(piece_size)
    n = len(ops)
    if pieces is None:
        pieces = tuple(emit.Piece(k, min(k + size, n)) for k in range(0, n, size))
    level = opt_level(sum(p.hi - p.lo for p in pieces if not p.period))
    return tuple(LOOP_LEVEL if p.period else level for p in pieces)


#: Modules (a forward and a reverse one per piece) from which a tape is compiled in worker
#: processes by default, by the highest level of its straight-line pieces (0, 1, 2, 3):
#: about two seconds of compiling in this process (starting the workers costs about one).
PARALLEL_PIECES = (64, 32, 6, 6)


def _compile_all(jobs: Iterator[tuple[str, int]], processes: int) -> Iterator[bytes]:
    """Object code of each ``(module text, level)``, in order: here, or with
    ``processes > 1`` in worker processes (:mod:`fasttape.native.workers`)."""
    if processes > 1:
        yield from workers.compile_in_workers(jobs, processes)
        return
    for text, level in jobs:
        yield machine.compile_module(text, level)


def _source_digest() -> str:
    """Digest of everything besides the tape that decides the generated code."""
    h = hashlib.sha256(table_hash().encode())
    for module in (scalar, emit, irtext, loop_pieces, translate, machine,
                   sys.modules[__name__]):
        h.update(Path(module.__file__ or "").read_bytes())
    return h.hexdigest()


def _key(arrays: dict[str, Any], pieces: tuple[emit.Piece, ...],
         levels: tuple[int, ...]) -> str:
    h = hashlib.sha256()
    for name in ("ops", "args", "consts", "outputs"):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    h.update(f"n:{arrays['n_inputs']}:{arrays['n_params']}:{levels}".encode())
    h.update(np.array([(p.lo, p.hi, p.period) for p in pieces], dtype=np.int64).tobytes())
    h.update(_source_digest().encode())
    h.update(machine.machine_key().encode())
    return h.hexdigest()[:40]


class NativeTape:
    """A tape as machine code: ``value``, ``value_and_grad`` and ``grad`` at one point (or
    row by row over a batch), bitwise the results of the tape they came from.

    Made by :func:`native` (``tape.native()``).  The work array (16 B per slot) is per thread,
    so threads may call one native tape at once.

    Attributes
    ----------
    tape : TapeRecord
        The tape it was compiled from (for everything else: derivatives, sparsity, saving).
    compile_seconds : float
        Time spent compiling (0 when loaded from the cache).
    load_seconds : float
        Time spent loading the object code.
    from_cache : bool
        Whether the object code came from the disk cache.
    n_pieces : int
        Pieces the tape was cut into (each compiled twice: forward and reverse).
    pieces : tuple of fasttape.native.emit.Piece
        The pieces, in order: ``(lo, hi, period)``, ``period`` 0 for straight-line code;
        instruction indices of the tape without its dead code
        (:func:`fasttape.native.emit.without_dead_code`).
    n_loops : int
        How many of the pieces are loops (:mod:`fasttape.native.loops`).
    levels : tuple of int
        The LLVM optimization level of each piece (:func:`piece_levels` by default).
    """

    def __init__(self, tape: TapeRecord, lay: emit.Layout, objects: list[bytes],
                 compile_seconds: float, from_cache: bool, levels: tuple[int, ...]) -> None:
        t = time.perf_counter()
        self._engine = machine.Engine(objects)
        self._value_address = self._engine.address(f"ft.value.{lay.tag}")
        self._vg_address = self._engine.address(f"ft.vg.{lay.tag}")
        self._value = _VALUE(self._value_address)
        self._vg = _VG(self._vg_address)
        self._valueb = _VALUEB(self._engine.address(f"ft.valueb.{lay.tag}"))
        self._vgb = _VGB(self._engine.address(f"ft.vgb.{lay.tag}"))
        self.load_seconds = time.perf_counter() - t
        self.tape = tape
        self.compile_seconds = compile_seconds
        self.from_cache = from_cache
        self.n_pieces = lay.n_pieces
        self.pieces = lay.pieces
        self.n_loops = sum(1 for piece in lay.pieces if piece.period)
        self.levels = levels
        self._n_work = emit.work_size(lay)
        self._check_at = lay.check_at
        self._n_inputs = tape.n_inputs
        self._n_outputs = tape.n_outputs
        self._has_params = tape.n_params > 0
        self._one_output = tape.n_outputs == 1
        # value_and_grad's shortest path: x a point as it is, no parameters, one output
        self._plain_shape = (tape.n_inputs,) if self._one_output and not self._has_params \
            else None
        self._local = threading.local()

    @property
    def machine_code(self) -> MachineCode:
        """The compiled entry points (ctypes functions) and the work array's length, for
        embedding (:mod:`fasttape.native.entry`); valid while this tape is alive."""
        return MachineCode(self._value, self._vg, self._n_work, self._check_at)

    def numba_kernel(self, kind: str = "value_and_grad", *, output: int | None = None,
                     p: Any = None) -> Any:
        """``(fn, arrays)`` calling this machine code inside ``@numba.njit`` code as
        ``fn(*arrays, x, grad)``; see :func:`fasttape.native.entry.native_numba_kernel`."""
        return native_numba_kernel(self, kind, output=output, p=p)

    def cfunc(self, *, output: int | None = None, reentrant: bool = False,
              p: Any = None) -> Any:
        """A C pointer ``int32_t value_and_grad(const double *x, double *f, double *grad)``
        to this machine code; see :func:`fasttape.native.entry.native_cfunction`."""
        return native_cfunction(self, output=output, reentrant=reentrant, p=p)

    # ------------------------------------------------------------------ shape
    n_inputs = interpreted("n_inputs", "Number of inputs (the gradient's length).")
    n_outputs = interpreted("n_outputs", "Number of outputs.")

    def __repr__(self) -> str:
        how = "loaded from the cache" if self.from_cache else \
            f"compiled in {self.compile_seconds:.2f} s"
        loops = f" ({self.n_loops} loops)" if self.n_loops else ""
        return (f"<fasttape.NativeTape: {self.tape.n_inputs} inputs, "
                f"{len(self.tape.ops)} instructions in {self.n_pieces} pieces{loops}, {how}>")

    # ------------------------------------------------------------------ calls
    def _work(self) -> np.ndarray:
        w = getattr(self._local, "w", None)
        if w is None:
            w = np.zeros(self._n_work)
            self._local.w = w
        return w

    def _point(self, x: Any, p: Any) -> np.ndarray:
        tape = self.tape
        if p is not None or self._has_params:
            return tape.join_params(x, p)
        if _plain_point(x, self._n_inputs):
            return x
        xin = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
        if xin.ndim not in (1, 2) or xin.shape[-1] != tape.n_inputs:
            raise ValueError(
                f"x has shape {xin.shape} but this tape has {tape.n_inputs} inputs: pass "
                f"({tape.n_inputs},) for one point or (B, {tape.n_inputs}) for a batch"
            )
        return xin

    def _chunks(self, n_rows: int, threads: Any, run: Any) -> None:
        """``run(lo, hi)`` over the rows ``0 .. n_rows`` cut into one contiguous chunk per
        worker: the calling thread runs the first, the shared pool the others.  A chunk is
        one call into machine code, which holds no Python lock, so chunks run in parallel;
        each thread has its own work array, and every row gives the bits of a single call."""
        t = resolve_threads(threads)
        work = n_rows * max(1, len(self.tape.ops))
        workers = max(1, min(t, n_rows, work // PARALLEL_MIN_WORK))
        bounds = [n_rows * k // workers for k in range(workers + 1)]
        if workers == 1:
            run(0, n_rows)
            return
        pool = _executor()
        futures = [pool.submit(run, bounds[k], bounds[k + 1]) for k in range(1, workers)]
        run(bounds[0], bounds[1])
        for f in futures:
            f.result()

    def value(self, x: Any, p: Any = None, *, out: np.ndarray | None = None,
              threads: int | None = None) -> Any:
        """The outputs at ``x``: a float for a single-output tape, else an array (or ``out``).

        ``x`` may be a batch ``(B, n_inputs)``, giving shape ``(B,)`` or ``(B, n_outputs)``:
        its rows are split over ``threads`` threads (default ``numba.get_num_threads()``;
        fewer for a small batch), bitwise the results of single calls.  ``p``: the
        parameters, as for :meth:`fasttape.Tape.value`.
        """
        xin = self._point(x, p)
        m = self._n_outputs
        if xin.ndim == 2:
            xin = np.ascontiguousarray(xin)
            res = np.empty((xin.shape[0], m))
            xs, rs = xin.strides[0], 8 * m

            def run(lo: int, hi: int) -> None:
                self._valueb(xin.ctypes.data + lo * xs, self._work().ctypes.data,
                             res.ctypes.data + lo * rs, hi - lo)

            self._chunks(xin.shape[0], threads, run)
            res = res[:, 0] if m == 1 else res
            if out is not None:
                check_out(out, res.shape, "out")[...] = res
                return out
            return res
        if threads is not None:
            resolve_threads(threads)  # only batches use it; still refuse a bad value
        res = self._value_one(xin, None if out is None else check_out(out, m, "out"))
        if out is not None:
            return out
        return float(res[0]) if m == 1 else res

    def _value_one(self, xin: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        res = np.empty(self._n_outputs) if out is None else out
        call_value(self._value_address, xin, self._work(), res)  # check_out: C-contiguous float64
        return res

    def value_and_grad(self, x: Any, p: Any = None, *, output: int | None = None,
                       out: np.ndarray | None = None,
                       threads: int | None = None) -> tuple[Any, np.ndarray]:
        """Value of one output and its gradient, as :meth:`fasttape.Tape.value_and_grad`
        (bitwise the same); a batch ``x`` is split over ``threads`` as in :meth:`value`."""
        if (type(x) is np.ndarray and x.dtype is _FLOAT64 and x.shape == self._plain_shape
                and x.strides == _ONE_STRIDE and p is None and output is None and out is None
                and threads is None):
            # The common call, checked in a fraction of the time of the general path
            # (0.97 against 1.54 us a call on a tiny tape): a C-contiguous float64 point.
            xin, which, grad = x, 0, np.empty(self._n_inputs)
        else:
            xin = self._point(x, p)
            which = 0 if output is None and self._one_output else \
                self.tape.output_index(output)
            if xin.ndim == 2:
                return self._vg_batch(xin, which, out, threads)
            if threads is not None:
                resolve_threads(threads)
            n = self._n_inputs
            grad = np.empty(n) if out is None else check_out(out, n, "out")
        # xin: a C-contiguous float64 point (_point); grad: the same (check_out or new).
        try:
            w = self._local.w
        except AttributeError:
            w = self._work()
        v = call_vg(self._vg_address, xin, w, grad, which)
        if v != v and w[self._check_at] != w[self._check_at]:  # NaN: maybe a failed check
            v = self._interpreted(xin, which, grad)
        return v, grad

    def _vg_batch(self, xin: np.ndarray, which: int, out: np.ndarray | None,
                  threads: Any) -> tuple[np.ndarray, np.ndarray]:
        xin = np.ascontiguousarray(xin)
        b, n = xin.shape[0], self._n_inputs
        # check_out accepts only C-contiguous float64 arrays.
        g = np.empty((b, n)) if out is None else check_out(out, (b, n), "out")
        vals = np.empty(b)
        xs, gs = xin.strides[0], 8 * n

        def run(lo: int, hi: int) -> None:
            w = self._work()
            while lo < hi:
                lo += self._vgb(xin.ctypes.data + lo * xs, w.ctypes.data,
                                g.ctypes.data + lo * gs, which, vals.ctypes.data + 8 * lo,
                                hi - lo)
                if lo < hi:  # row lo's check failed (emit._batch_loops)
                    vals[lo] = self._interpreted(xin[lo], which, g[lo])
                    lo += 1

        self._chunks(b, threads, run)
        return vals, g

    def _interpreted(self, xin: np.ndarray, which: int, grad: np.ndarray) -> float:
        """``value_and_grad`` of the point ``xin`` (inputs and parameters joined) on the
        interpreter, into ``grad``: for a point where the machine code's check failed (a NaN
        gradient entry: :func:`fasttape.native.irtext.accumulate`), rare enough that the
        interpreter's speed does not matter, and bitwise what the machine code would give
        where it passes."""
        n = self._n_inputs
        p = xin[n:] if self._has_params else None
        return self.tape.value_and_grad(xin[:n], p, output=which, out=grad)[0]

    def grad(self, x: Any, p: Any = None, *, output: int | None = None,
             out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
        """The gradient of one output at ``x``; see :meth:`value_and_grad`."""
        return self.value_and_grad(x, p, output=output, out=out, threads=threads)[1]

    __call__ = value


def check_options(*, piece_size: Any = DEFAULT_PIECE_SIZE, opt: Any = None,
                  loops: Any = True) -> None:
    """Raise ``ValueError`` / ``TypeError`` for a bad option of :func:`native` (the one check,
    also run by :func:`fasttape.native.tier.tiered` before its compile starts)."""
    _piece_size(piece_size)
    if opt is not None and (isinstance(opt, bool) or opt not in (0, 1, 2, 3)):
        raise ValueError(f"opt must be 0, 1, 2 or 3 (or None for the default), got {opt!r}")
    if not isinstance(loops, (bool, np.bool_)):
        raise TypeError(f"loops must be True or False, got {loops!r}")


def native(tape: TapeRecord, *, piece_size: int = DEFAULT_PIECE_SIZE,
           opt: int | None = None, loops: bool = True, cache_entries: bool = True,
           progress: bool = False, processes: int | None = None) -> NativeTape:
    """Compile ``tape`` to machine code (LLVM through llvmlite); see docs/native.md.

    Parameters
    ----------
    tape : TapeRecord
        Any validated scalar tape (``ft.compile`` or ``Tape.from_arrays``).
    piece_size : int
        Instructions per compiled piece (bounds the compile time and stack of each).
    opt : int, optional
        LLVM optimization level 0-3 of every piece; default by piece,
        :func:`piece_levels` (by the tape's size).
    loops : bool
        Compile the tape's periodic runs as loops (:mod:`fasttape.native.loops`); false:
        straight-line code throughout.
    cache_entries : bool
        Load the object code from the disk cache when an entry matches (tape content, build
        options and machine), and save it there after compiling.
    progress : bool
        Print the compiled pieces as they go (to stderr), for large tapes.
    processes : int, optional
        Worker processes that compile pieces side by side (llvmlite runs one LLVM call at a
        time per process).  Default: one per CPU when the tape has at least
        :data:`PARALLEL_PIECES` modules (by level), else none (starting a worker costs about
        a second).
        ``1``: compile in this process.  Every process produces the same object code.

    Returns
    -------
    NativeTape
    """
    check_options(piece_size=piece_size, opt=opt, loops=loops)
    piece_size = int(piece_size)
    arrays = emit.without_dead_code(tape.to_arrays())
    n_lead = int(arrays["n_inputs"] + arrays["n_params"])
    pieces = emit.cut(arrays["ops"], arrays["args"], n_lead, n_lead + len(arrays["consts"]),
                      piece_size, bool(loops))
    levels = (piece_levels(arrays["ops"], piece_size, pieces) if opt is None
              else (int(opt),) * len(pieces))
    key = _key(arrays, pieces, (*levels, 1))
    lay = emit.Layout(arrays["ops"], arrays["args"], arrays["consts"], arrays["outputs"],
                      int(arrays["n_inputs"]), n_lead, pieces, key[:16])
    objects = cache.load(key) if cache_entries else None
    if objects is not None:
        return NativeTape(tape, lay, objects, 0.0, True, levels)
    t = time.perf_counter()
    header = machine.header()
    total = emit.n_modules(lay)
    if processes is None:
        # Level 1 and above compile slowly enough (0.1 to 2 ms an instruction) that a few
        # pieces already pay for starting the workers; level 0 needs many.  Loop pieces
        # compile in milliseconds: only the straight-line code counts, in full pieces.
        straight = [(p.hi - p.lo, v) for p, v in zip(pieces, levels, strict=True)
                    if not p.period]
        enough = PARALLEL_PIECES[max((v for _, v in straight), default=0)]
        work = 2 * sum(m for m, _ in straight) / piece_size
        processes = (os.cpu_count() or 1) if work >= enough else 1
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive int (or None), got {processes!r}")
    jobs = emit.piece_modules(lay, header, levels)
    objects = []
    for n, obj in enumerate(_compile_all(jobs, min(processes, total))):
        objects.append(obj)
        if progress and (n % 50 == 49 or n == total - 1):
            print(f"\rnative: {n + 1}/{total} pieces compiled", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    objects.append(machine.compile_module(emit.driver_module(lay, header), DRIVER_LEVEL, False))
    seconds = time.perf_counter() - t
    if cache_entries:
        cache.save(key, objects)
    return NativeTape(tape, lay, objects, seconds, False, levels)
