"""The Tape: a compiled graph as immutable struct-of-arrays, and its evaluation methods.

The array layout is documented once, in docs/tape-format.md; :mod:`fasttape.validate` enforces
it and this module evaluates it with the kernels of :mod:`fasttape.kernels`.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from fasttape import kernels
from fasttape.kernels import fpenv
from fasttape.ops import OPS
from fasttape.passes import planned as passes_planned
from fasttape.validate import validate_arrays

__all__ = ["Tape", "GRAD_MODES"]

#: Gradient strategies: "stored" keeps one partial derivative per edge from the forward sweep
#: (faster reverse sweep, 8 more bytes per edge); "lean" recomputes partials from the values.
GRAD_MODES = ("stored", "lean")



class Tape:
    """A compiled scalar graph: evaluate values and gradients many times.

    Build one with :func:`fasttape.compile` (from a Graph), :meth:`from_arrays` (from another
    tool) or :func:`fasttape.load`.  A Tape is immutable: its arrays are read-only and it holds
    no Python objects of the graph.  Evaluation is thread-safe and releases the GIL; each thread
    keeps its own work buffers (allocated on first use and reused, so repeated calls do not
    allocate).

    Attributes
    ----------
    n_inputs : int
        Length of the ``x`` that the evaluation methods take.
    n_outputs : int
        Number of outputs.
    n_nodes : int
        Number of instructions in the tape.  Inputs and constants do **not** count: they are
        loaded into the first ``n_inputs + n_consts`` slots, not computed by instructions.
    n_consts : int
        Number of distinct constants.
    grad_mode : str
        ``"stored"`` or ``"lean"`` (see :data:`GRAD_MODES` and docs/tape-format.md).
    """

    __slots__ = (
        "_local", "_passes", "_plan", "args", "consts", "grad_mode", "n_inputs", "ops", "outputs"
    )

    ops: np.ndarray
    args: np.ndarray
    consts: np.ndarray
    outputs: np.ndarray
    n_inputs: int
    grad_mode: str

    # ------------------------------------------------------------------ construction
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "create a Tape with fasttape.compile(graph), Tape.from_arrays(...) or fasttape.load"
        )

    @classmethod
    def _trusted(
        cls,
        ops: np.ndarray,
        args: np.ndarray,
        consts: np.ndarray,
        outputs: np.ndarray,
        n_inputs: int,
        grad_mode: str = "stored",
        plan: Any = None,
        passes: Any = None,
    ) -> Tape:
        """Wrap arrays that are already valid (from compile or validate_arrays).

        ``plan`` (a :class:`fasttape.passes.reuse.ReusePlan` derived from these arrays) and
        ``passes`` (pass records) come from the optimisation pipeline; see docs/passes.md.
        """
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        self = object.__new__(cls)
        for name, arr in (("ops", ops), ("args", args), ("consts", consts), ("outputs", outputs)):
            object.__setattr__(self, name, _frozen(arr))
        object.__setattr__(self, "n_inputs", int(n_inputs))
        object.__setattr__(self, "grad_mode", grad_mode)
        object.__setattr__(self, "_local", threading.local())
        object.__setattr__(self, "_plan", plan)
        object.__setattr__(self, "_passes", passes)
        return self

    @classmethod
    def from_arrays(
        cls,
        ops: Any,
        args: Any,
        consts: Any,
        outputs: Any,
        n_inputs: int,
        *,
        grad_mode: str = "stored",
    ) -> Tape:
        """Build a Tape from plain arrays, validating them first (see docs/tape-format.md).

        Parameters
        ----------
        ops : array of int, shape (n_nodes,)
            Op codes (row numbers of :data:`fasttape.ops.OPS`), stored as uint8.
        args : array of int, shape (sum of the ops' arities,)
            Argument slots of every instruction, concatenated; stored as int32 when every slot
            fits, else int64.
        consts : array of float, shape (n_consts,)
            Constant values, loaded into slots ``n_inputs .. n_inputs + n_consts - 1``.
        outputs : array of int, shape (n_outputs,)
            Slots whose values are the outputs.
        n_inputs : int
            Number of inputs (slots ``0 .. n_inputs - 1``).
        grad_mode : {"stored", "lean"}
            Gradient strategy.

        Raises
        ------
        ValueError
            Naming the first offending entry if the arrays break the format.
        """
        # Copy first: the tape must own its arrays, or a write through the caller's view could
        # change a validated tape under kernels that run without bounds checks.
        ops, args, consts, outputs = (np.array(a, copy=True) for a in (ops, args, consts, outputs))
        ops, args, consts, outputs, n_inputs = validate_arrays(ops, args, consts, outputs, n_inputs)
        return cls._trusted(ops, args, consts, outputs, n_inputs, grad_mode)

    def to_arrays(self) -> dict[str, Any]:
        """The tape's arrays and ``n_inputs``: the inverse of :meth:`from_arrays`.

        The arrays are the tape's own, without a copy, and permanently read-only: their memory
        is an immutable ``bytes`` object, so ``a.flags.writeable = True`` raises ``ValueError``
        (kernels run without bounds checks on these arrays; a write could crash them).  Take
        ``np.array(a)`` for a writeable copy.
        """
        return {
            "ops": self.ops,
            "args": self.args,
            "consts": self.consts,
            "outputs": self.outputs,
            "n_inputs": self.n_inputs,
        }

    def with_grad_mode(self, grad_mode: str) -> Tape:
        """The same tape (arrays shared) with another gradient strategy."""
        return Tape._trusted(
            self.ops, self.args, self.consts, self.outputs, self.n_inputs, grad_mode,
            plan=self._plan, passes=self._passes,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Tape is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a Tape is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle as arrays, re-validated on the way in (so a pickled tape can't smuggle bad
        # indices into the kernels); the per-thread buffers are not part of the state.
        return (_tape_from_state, (self.to_arrays(), self.grad_mode))

    # ------------------------------------------------------------------ sizes
    @property
    def n_outputs(self) -> int:
        return int(self.outputs.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.ops.shape[0])

    @property
    def n_consts(self) -> int:
        return int(self.consts.shape[0])

    @property
    def n_slots(self) -> int:
        """Length of the value vector: inputs + constants + instructions."""
        return self.n_inputs + self.n_consts + self.n_nodes

    @property
    def n_edges(self) -> int:
        """Number of instruction arguments (``len(args)``)."""
        return int(self.args.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the tape's own arrays (ops, args, consts, outputs); see :meth:`work_nbytes`."""
        return int(self.ops.nbytes + self.args.nbytes + self.consts.nbytes + self.outputs.nbytes)

    def work_nbytes(self, grad: bool = True) -> int:
        """Bytes of the per-thread work buffers for ``value`` (grad=False) or gradients."""
        if self._plan is not None:  # slot reuse (fasttape.passes.reuse)
            return passes_planned.work_nbytes(self, grad)
        n = 8 * self.n_slots
        if not grad:
            return n
        n += 8 * self.n_slots  # adjoints
        if self.grad_mode == "stored":
            n += 8 * self.n_edges
        return n

    def stats(self) -> dict[str, Any]:
        """Sizes and memory of the tape, as a dict (also shown by ``print(tape)``)."""
        return {
            "n_inputs": self.n_inputs,
            "n_consts": self.n_consts,
            "n_nodes": self.n_nodes,
            "n_edges": self.n_edges,
            "n_outputs": self.n_outputs,
            "n_slots": self.n_slots,
            "index_dtype": str(self.args.dtype),
            "tape_nbytes": self.nbytes,
            "value_work_nbytes": self.work_nbytes(grad=False),
            "grad_work_nbytes": self.work_nbytes(grad=True),
            "grad_mode": self.grad_mode,
            **passes_planned.stats(self),
        }

    # ------------------------------------------------------------------ evaluation
    def _x(self, x: Any) -> np.ndarray:
        if type(x) is np.ndarray and x.dtype == np.float64 and x.ndim == 1 and x.flags.c_contiguous:
            arr = x
        else:
            arr = _as_float_vector(x)
        if arr.shape[0] != self.n_inputs:
            raise ValueError(
                f"x has {arr.shape[0]} entries but this tape has {self.n_inputs} inputs"
            )
        return arr

    def _which(self, output: int | None) -> int:
        m = self.n_outputs
        if output is None:
            if m == 1:
                return 0
            raise ValueError(
                f"this tape has {m} outputs: pass output=k (0 <= k < {m}) to choose which one "
                "to differentiate"
            )
        if isinstance(output, bool) or not isinstance(output, (int, np.integer)):
            raise TypeError(f"output must be an int, got {type(output).__name__}")
        if not -m <= output < m:
            raise ValueError(f"output={output} is out of range for a tape with {m} outputs")
        return int(output) % m

    def _buffers(self) -> Any:
        local = self._local
        if not hasattr(local, "vals"):
            local.vals = np.empty(self.n_slots)
            local.res = np.empty(self.n_outputs)
        return local

    def _grad_buffers(self) -> Any:
        local = self._buffers()
        if not hasattr(local, "adj"):
            # Zeros once: the reverse sweep leaves the adjoints zeroed (read-then-zero).
            local.adj = np.zeros(self.n_slots)
            local.parts = np.empty(self.n_edges if self.grad_mode == "stored" else 0)
        return local

    def value(
        self, x: Any, *, out: np.ndarray | None = None, threads: int | None = None,
        flush_subnormals: bool = False,
    ) -> Any:
        """Evaluate the outputs at ``x``, or at every row of a batch ``x``.

        Parameters
        ----------
        x : array_like of float, shape (n_inputs,) or (B, n_inputs)
            One point, or a batch of ``B`` points (docs/batch.md).
        out : ndarray of float64, shape (n_outputs,), optional
            Written in place and returned (no allocation).  For a batch: shape (B,) for a
            single-output tape, else (B, n_outputs).
        threads : int, optional
            Batches only: worker threads (default ``numba.get_num_threads()``).
        flush_subnormals : bool
            Run the sweep with subnormal numbers flushed to zero (x86 FTZ/DAZ): faster where
            values underflow, and different from IEEE exactly there.  See
            :mod:`fasttape.kernels.fpenv`.

        Returns
        -------
        float or ndarray
            A float for a single-output tape, an array of shape (n_outputs,) otherwise (or
            ``out`` when given).  For a batch, shape (B,) or (B, n_outputs), bitwise the
            single-point results row by row.
        """
        try:
            xin = self._x(x)
        except _BatchInput as b:  # a 2-D x: hand over to fasttape.batch (zero cost otherwise)
            from fasttape import batch

            return batch.value(self, b.x, out=out, threads=threads,
                               flush_subnormals=flush_subnormals)
        if threads is not None:
            _check_threads(threads)
        if flush_subnormals is False:  # the default: no wrapper on the per-call path
            res = self._value_single(xin, out)
        else:
            res = fpenv.call(fpenv.check_flush(flush_subnormals), self._value_single, xin, out)
        if out is not None:
            return out
        if self.n_outputs == 1:
            return float(res[0])
        return res.copy()

    __call__ = value

    def _value_single(self, xin: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        if self._plan is not None:  # slot reuse: a work vector of the plan's size
            return passes_planned.value(
                self, xin, None if out is None else _check_out(out, self.n_outputs, "out")
            )
        buf = self._buffers()
        res = buf.res if out is None else _check_out(out, self.n_outputs, "out")
        kernels.value_kernel(self.ops, self.args, self.consts, self.outputs, xin, buf.vals, res)
        return res

    def value_and_grad(
        self,
        x: Any,
        *,
        output: int | None = None,
        out: np.ndarray | None = None,
        threads: int | None = None,
        flush_subnormals: bool = False,
    ) -> tuple[Any, np.ndarray]:
        """Value of one output and its gradient with respect to all inputs.

        Parameters
        ----------
        x : array_like of float, shape (n_inputs,) or (B, n_inputs)
            One point, or a batch of ``B`` points (docs/batch.md).
        output : int, optional
            Which output to differentiate; required when the tape has several.
        out : ndarray of float64, shape (n_inputs,) or (B, n_inputs), optional
            Receives the gradient (no allocation); it is also returned.
        threads : int, optional
            Batches only: worker threads (default ``numba.get_num_threads()``).
        flush_subnormals : bool
            Both sweeps with subnormal numbers flushed to zero (x86 FTZ/DAZ), as in
            :meth:`value`.

        Returns
        -------
        value : float, or ndarray of shape (B,) for a batch
        grad : ndarray, shape (n_inputs,) or (B, n_inputs)
            Inputs that the output does not depend on get 0.

        Examples
        --------
        >>> import fasttape as ft
        >>> tape = ft.compile(ft.trace(lambda v: [v[0] * v[1], v[0] + v[1]], n_inputs=2))
        >>> tape.value_and_grad([2.0, 3.0], output=0)
        (6.0, array([3., 2.]))
        >>> tape.value_and_grad([[2.0, 3.0], [1.0, 1.0]], output=0)  # a batch of two points
        (array([6., 1.]), array([[3., 2.],
               [1., 1.]]))
        """
        try:
            xin = self._x(x)
        except _BatchInput as b:
            from fasttape import batch

            return batch.value_and_grad(self, b.x, self._which(output), out=out, threads=threads,
                                        flush_subnormals=flush_subnormals)
        if threads is not None:
            _check_threads(threads)
        which = self._which(output)
        grad = np.empty(self.n_inputs) if out is None else _check_out(out, self.n_inputs, "out")
        if flush_subnormals is False:  # the default: no wrapper on the per-call path
            return self._value_and_grad_single(xin, which, grad), grad
        flush = fpenv.check_flush(flush_subnormals)
        return fpenv.call(flush, self._value_and_grad_single, xin, which, grad), grad

    def _value_and_grad_single(self, xin: np.ndarray, which: int, grad: np.ndarray) -> float:
        if self._plan is not None and self.grad_mode == "stored":  # slot reuse
            return float(passes_planned.value_and_grad(self, which, xin, grad))
        buf = self._grad_buffers()
        if self.grad_mode == "stored":
            v = kernels.value_and_grad_kernel(
                self.ops, self.args, self.consts, self.outputs, which, xin,
                buf.vals, buf.parts, buf.adj, grad,
            )
        else:
            v = kernels.value_and_grad_lean_kernel(
                self.ops, self.args, self.consts, self.outputs, which, xin,
                buf.vals, buf.adj, grad,
            )
        return float(v)

    def grad(
        self,
        x: Any,
        *,
        output: int | None = None,
        out: np.ndarray | None = None,
        threads: int | None = None,
        flush_subnormals: bool = False,
    ) -> np.ndarray:
        """Gradient of one output at ``x`` (or at every row of a batch); see
        :meth:`value_and_grad`."""
        return self.value_and_grad(x, output=output, out=out, threads=threads,
                                   flush_subnormals=flush_subnormals)[1]

    # ------------------------------------------------------------------ more derivatives
    # Thin wrappers: the implementations and their docs live in fasttape/derivatives.py.
    def jvp(self, x: Any, v: Any) -> tuple[Any, Any]:
        """Outputs and ``J(x) @ v`` by one tangent sweep; see :func:`fasttape.derivatives.jvp`."""
        from fasttape import derivatives

        return derivatives.jvp(self, x, v)

    def vjp(self, x: Any, w: Any) -> tuple[Any, np.ndarray]:
        """Outputs and ``w @ J(x)`` by one reverse sweep; see :func:`fasttape.derivatives.vjp`."""
        from fasttape import derivatives

        return derivatives.vjp(self, x, w)

    def jacobian(self, x: Any, *, mode: str = "auto", chunk: int | None = None) -> np.ndarray:
        """Jacobian ``(n_outputs, n_inputs)`` in vector mode; see
        :func:`fasttape.derivatives.jacobian`."""
        from fasttape import derivatives

        return derivatives.jacobian(self, x, mode=mode, chunk=chunk)

    def hvp(self, x: Any, v: Any, *, output: int | None = None) -> np.ndarray:
        """Hessian of one output times ``v`` (forward-over-reverse), usable as scipy's
        ``hessp=tape.hvp``; see :func:`fasttape.derivatives.hvp`."""
        from fasttape import derivatives

        return derivatives.hvp(self, x, v, output=output)

    def hessian(
        self, x: Any, *, output: int | None = None, chunk: int | None = None
    ) -> np.ndarray:
        """Symmetric Hessian of one output from vector-mode HVPs; see
        :func:`fasttape.derivatives.hessian`."""
        from fasttape import derivatives

        return derivatives.hessian(self, x, output=output, chunk=chunk)

    def explain(self, x: Any, output: int | None = None) -> Any:
        """Where a non-finite value or gradient at ``x`` came from; see
        :func:`fasttape.explain.explain` (docs/debugging.md)."""
        from fasttape.explain import explain

        return explain(self, x, output)

    # ------------------------------------------------------------------ embedding
    # Thin wrappers: the implementations and their docs live in fasttape/embed/.
    def numba_kernel(self, kind: str = "value_and_grad", *, output: int | None = None) -> Any:
        """``(fn, arrays)`` for calling this tape inside ``@numba.njit`` code as
        ``fn(*arrays, x, grad)``; see :func:`fasttape.embed.numba_api.numba_kernel`."""
        from fasttape.embed.numba_api import numba_kernel

        return numba_kernel(self, kind, output=output)

    def cfunc(self, *, output: int | None = None, reentrant: bool = False) -> Any:
        """C function pointers (ctypes, cffi, C, ``scipy.LowLevelCallable``) for one output;
        see :func:`fasttape.embed.cabi.cfunction`."""
        from fasttape.embed.cabi import cfunction

        return cfunction(self, output=output, reentrant=reentrant)

    def to_dot(self, **kwargs: Any) -> str:
        """Graphviz DOT text of the tape (small tapes); see
        :func:`fasttape.embed.dot.tape_to_dot`."""
        from fasttape.embed.dot import tape_to_dot

        return tape_to_dot(self, **kwargs)

    # ------------------------------------------------------------------ io and display
    def save(self, path: Any) -> None:
        """Write the tape to ``path`` as .npz (no pickle); read back with :func:`fasttape.load`."""
        from fasttape.serialize import save

        save(self, path)

    def __repr__(self) -> str:
        return self.listing(max_lines=12)

    def listing(self, max_lines: int = 40) -> str:
        """A readable listing of the first ``max_lines`` instructions and the sizes."""
        s = self.stats()
        head = (
            f"<fasttape.Tape: {_count(s['n_inputs'], 'input')}, "
            f"{_count(s['n_consts'], 'constant')}, "
            f"{_count(s['n_nodes'], 'instruction')}, {_count(s['n_outputs'], 'output')}; "
            f"tape {s['tape_nbytes']:,} B, "
            f"grad work {s['grad_work_nbytes']:,} B ({self.grad_mode} partials)>"
        )
        lines = [head, *passes_planned.listing_lines(self)]
        n_pre = self.n_inputs + self.n_consts
        shown = 0
        for j in range(min(self.n_consts, max_lines)):
            lines.append(f"  %{self.n_inputs + j} = const {float(self.consts[j])!r}")
            shown += 1
        k = 0
        for i in range(self.n_nodes):
            if shown >= max_lines:
                break
            op = OPS[int(self.ops[i])]
            a = ", ".join(f"%{int(v)}" for v in self.args[k : k + op.arity])
            lines.append(f"  %{n_pre + i} = {op.name}({a})")
            k += op.arity
            shown += 1
        hidden = self.n_consts + self.n_nodes - shown
        if hidden > 0:
            lines.append(f"  ... {hidden} more")
        outs = ", ".join(f"%{int(o)}" for o in self.outputs[:8])
        more = " ..." if self.n_outputs > 8 else ""
        lines.append(f"  outputs: {outs}{more}")
        return "\n".join(lines)


def _frozen(arr: np.ndarray) -> np.ndarray:
    """``arr`` as a contiguous array that nothing can write to, ever.

    ``flags.writeable = False`` alone is not enough: an array that owns its data (or whose base
    is writeable) can have the flag set back to True.  An array over the buffer of a ``bytes``
    object cannot (NumPy refuses, the buffer is immutable), so the tape's arrays are views of a
    private ``bytes`` copy.  Already-frozen arrays (``with_grad_mode``) are shared, not copied.
    """
    if isinstance(arr.base, bytes) and arr.flags.c_contiguous and not arr.flags.writeable:
        return arr
    arr = np.ascontiguousarray(arr)
    out = np.frombuffer(arr.tobytes(), dtype=arr.dtype)
    return out if arr.ndim == 1 else out.reshape(arr.shape)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _tape_from_state(arrays: dict[str, Any], grad_mode: str) -> Tape:
    return Tape.from_arrays(**arrays, grad_mode=grad_mode)


class _BatchInput(ValueError):
    """Raised by :func:`_as_float_vector` for a 2-D ``x``.

    The evaluation methods catch it and evaluate a batch; any other caller sees the ValueError
    of a non-1-D ``x``.
    """

    def __init__(self, x: np.ndarray) -> None:
        super().__init__()
        self.x = x

    def __str__(self) -> str:  # formatted only if someone reads it (not on the batch path)
        return f"x must be 1-D (one value per input); got shape {self.x.shape}"


def _check_threads(threads: Any) -> None:
    # threads= only matters for batches; still refuse a bad value for a single point.
    from fasttape import batch

    batch.resolve_threads(threads)


def _as_float_vector(x: Any) -> np.ndarray:
    """``x`` as a contiguous 1-D float64 array, with errors that say what was expected.

    A 2-D ``x`` raises :class:`_BatchInput` (a ValueError) carrying the array.
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"x must be a 1-D array of real numbers; got {type(x).__name__}") from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"x must be a 1-D array of real numbers; got an array of dtype {arr.dtype}"
            + (" (traced Vars cannot be evaluated; pass numbers)" if arr.dtype.kind == "O" else "")
        )
    if arr.ndim == 2:
        raise _BatchInput(arr)
    if arr.ndim != 1:
        raise ValueError(
            f"x must be 1-D (one value per input) or 2-D (one row per point); got shape "
            f"{arr.shape}"
        )
    return np.ascontiguousarray(arr, dtype=np.float64)


def _check_out(out: Any, shape: int | tuple[int, ...], name: str) -> np.ndarray:
    """``out`` if it is a writeable C-contiguous float64 array of ``shape``, else a ValueError.

    The one check of caller-supplied output arrays (single points, batches, embedding).
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not (
        type(out) is np.ndarray
        and out.dtype == np.float64
        and out.shape == shape
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        got = (
            f"{type(out).__name__}"
            if not isinstance(out, np.ndarray)
            else f"array of dtype {out.dtype}, shape {out.shape}"
        )
        raise ValueError(
            f"{name} must be a writeable C-contiguous float64 array of shape {shape}; got {got}"
        )
    return out
