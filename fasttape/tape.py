"""The tape record: a compiled graph as immutable struct-of-arrays, evaluated at one point.

:class:`TapeRecord` holds the arrays and their metadata (gradient mode, slot-reuse plan, pass
records), validates ``x``, keeps the per-thread work buffers and evaluates the value and the
gradient at one point.  Everything else a tape does -- batches, derivatives beyond the
gradient, checkpointing, files, embedding -- sits above this module and uses only its public
interface (:meth:`TapeRecord.as_input`, :meth:`~TapeRecord.output_index`,
:meth:`~TapeRecord.work_buffers`, :meth:`~TapeRecord.point_buffers`, :func:`check_out`,
:func:`resolve_threads`, :attr:`~TapeRecord.reuse_plan`, :attr:`~TapeRecord.pass_records`,
:meth:`~TapeRecord.from_trusted_arrays`).  The user-facing :class:`fasttape.Tape` is assembled
from those layers in :mod:`fasttape.api`; this module imports none of them.

The array layout is documented once, in docs/tape-format.md; :mod:`fasttape.validate` enforces
it and this module evaluates it with the kernels of :mod:`fasttape.kernels`.
"""

from __future__ import annotations

import operator
import threading
import warnings
from typing import Any, TypeVar

import numba
import numpy as np

from fasttape import kernels
from fasttape.kernels import fpenv
from fasttape.ops import OPS
from fasttape.passes import planned as passes_planned
from fasttape.signature import same_arguments
from fasttape.validate import check_count, real_array, validate_arrays

__all__ = ["TapeRecord", "GRAD_MODES", "check_out", "resolve_threads", "tape_from_state"]

#: Gradient strategies: "stored" keeps one partial derivative per edge from the forward sweep
#: (faster reverse sweep, 8 more bytes per edge); "lean" recomputes partials from the values.
GRAD_MODES = ("stored", "lean")

#: A tape class: :class:`TapeRecord` or a subclass (the constructors return ``cls``).
TapeT = TypeVar("TapeT", bound="TapeRecord")



def _length(array: str, doc: str) -> property:
    """A read-only count of :class:`TapeRecord`: the length of its array ``array``."""
    get = operator.attrgetter(array)
    return property(lambda self: int(get(self).shape[0]), doc=doc)


class TapeRecord:
    """A compiled scalar graph as an immutable record: arrays, metadata, one-point evaluation.

    Users get the subclass :class:`fasttape.Tape` (from :func:`fasttape.compile`,
    :meth:`from_arrays` or :func:`fasttape.load`), which adds batches, derivatives beyond the
    gradient, files and embedding.  A tape is immutable: its arrays are read-only and it holds
    no Python objects of the graph.  Evaluation is thread-safe and releases the GIL; each thread
    keeps its own work buffers (allocated on first use and reused, so repeated calls do not
    allocate).

    Attributes
    ----------
    n_inputs : int
        Length of the ``x`` that the evaluation methods take (the differentiated inputs).
    n_params : int
        Length of the ``p`` that the evaluation methods take when it is not 0: parameters,
        inputs that are set at every call but not differentiated (docs/tape-format.md).
    n_outputs : int
        Number of outputs.
    n_instructions : int
        Number of instructions (computed slots).  Inputs and constants do **not** count: they
        are loaded into the first ``n_inputs + n_params + n_consts`` slots, not computed by
        instructions.
    n_consts : int
        Number of distinct constants.
    grad_mode : str
        ``"stored"`` or ``"lean"`` (see :data:`GRAD_MODES` and docs/tape-format.md).
    """

    __slots__ = (
        "_full", "_local", "_n_point", "_passes", "_plan", "_source", "args", "consts",
        "grad_mode", "n_inputs", "n_params", "ops", "outputs",
    )

    ops: np.ndarray
    args: np.ndarray
    consts: np.ndarray
    outputs: np.ndarray
    n_inputs: int
    n_params: int
    grad_mode: str

    # ------------------------------------------------------------------ construction
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "create a Tape with fasttape.compile(graph), Tape.from_arrays(...) or fasttape.load"
        )

    @classmethod
    def from_trusted_arrays(
        cls: type[TapeT],
        ops: np.ndarray,
        args: np.ndarray,
        consts: np.ndarray,
        outputs: np.ndarray,
        n_inputs: int,
        grad_mode: str = "stored",
        *,
        n_params: int = 0,
        reuse_plan: Any = None,
        pass_records: Any = None,
        source_graph: Any = None,
    ) -> TapeT:
        """Wrap arrays that are already valid, **without** validating them (package use).

        Only for arrays made by fasttape itself: :func:`fasttape.compile`, the passes and
        :func:`fasttape.validate.validate_arrays` produce valid arrays by construction.  The
        kernels run without bounds checks, so arrays from anywhere else must go through
        :meth:`from_arrays`.

        Parameters
        ----------
        ops, args, consts, outputs : ndarray
            The tape format of docs/tape-format.md.
        n_inputs : int
        grad_mode : {"stored", "lean"}
        n_params : int
            Parameter slots after the inputs (docs/tape-format.md).
        reuse_plan : fasttape.passes.reuse.ReusePlan, optional
            A slot-reuse plan derived from these arrays (docs/passes.md).
        pass_records : sequence of fasttape.passes.pipeline.PassRecord, optional
            What each optimisation pass did.
        source_graph : fasttape.Graph, optional
            A private copy of the graph, traced with source recording on, that the tape was
            compiled from (for :meth:`fasttape.Tape.explain`).

        Returns
        -------
        TapeRecord
            An instance of ``cls`` (``fasttape.Tape`` when called on it).
        """
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        self = object.__new__(cls)
        for name, arr in (("ops", ops), ("args", args), ("consts", consts), ("outputs", outputs)):
            object.__setattr__(self, name, _frozen(arr))
        object.__setattr__(self, "n_inputs", int(n_inputs))
        object.__setattr__(self, "n_params", int(n_params))
        # The length of x that the single-point fast path accepts; -1 (never) for a tape with
        # parameters, whose calls take the checked path that joins x and p.
        object.__setattr__(self, "_n_point", int(n_inputs) if not n_params else -1)
        object.__setattr__(self, "_full", None)
        object.__setattr__(self, "grad_mode", grad_mode)
        object.__setattr__(self, "_local", threading.local())
        object.__setattr__(self, "_plan", reuse_plan)
        object.__setattr__(self, "_passes", None if pass_records is None else tuple(pass_records))
        object.__setattr__(self, "_source", source_graph)
        return self

    @classmethod
    def from_arrays(
        cls: type[TapeT],
        ops: Any,
        args: Any,
        consts: Any,
        outputs: Any,
        n_inputs: int,
        *,
        n_params: int = 0,
        grad_mode: str = "stored",
    ) -> TapeT:
        """Build a Tape from plain arrays, validating them first (see docs/tape-format.md).

        Parameters
        ----------
        ops : array of int, shape (n_instructions,)
            Op codes (row numbers of :data:`fasttape.ops.OPS`), stored as uint8.
        args : array of int, shape (sum of the ops' arities,)
            Argument slots of every instruction, concatenated; stored as int32 when every slot
            fits, else int64.
        consts : array of float, shape (n_consts,)
            Constant values, loaded into the slots after the inputs and parameters
            (``n_inputs + n_params ..``).
        outputs : array of int, shape (n_outputs,)
            Slots whose values are the outputs.
        n_inputs : int
            Number of inputs (slots ``0 .. n_inputs - 1``).
        n_params : int
            Number of parameters, non-differentiated inputs (slots ``n_inputs .. n_inputs +
            n_params - 1``); evaluations then take ``p=``.
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
        ops, args, consts, outputs, n_inputs = validate_arrays(
            ops, args, consts, outputs, n_inputs, n_params=n_params
        )
        return cls.from_trusted_arrays(ops, args, consts, outputs, n_inputs, grad_mode,
                                       n_params=check_count(n_params, "n_params"))

    def to_arrays(self) -> dict[str, Any]:
        """The tape's arrays, ``n_inputs`` and ``n_params``: the inverse of :meth:`from_arrays`.

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
            "n_params": self.n_params,
        }

    def with_grad_mode(self: TapeT, grad_mode: str) -> TapeT:
        """The same tape (arrays shared) with another gradient strategy."""
        return type(self).from_trusted_arrays(
            self.ops, self.args, self.consts, self.outputs, self.n_inputs, grad_mode,
            n_params=self.n_params, reuse_plan=self._plan, pass_records=self._passes,
            source_graph=self._source,
        )

    def params_as_inputs(self: TapeT) -> TapeT:
        """The same tape (arrays shared) with its parameters as trailing, differentiated inputs.

        Its ``x`` is ``x`` and ``p`` joined (:meth:`join_params`) and its gradient has
        ``n_inputs + n_params`` entries.  The slots are the same, so the kernels see no
        difference: every evaluation with ``p=`` runs on this tape and keeps the first
        ``n_inputs`` entries of the gradient.  A tape without parameters returns itself.
        """
        if not self.n_params:
            return self
        full = self._full
        if full is None:
            full = type(self).from_trusted_arrays(
                self.ops, self.args, self.consts, self.outputs, self.n_inputs + self.n_params,
                self.grad_mode, reuse_plan=self._plan, pass_records=self._passes,
            )
            object.__setattr__(self, "_full", full)
        return full

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Tape is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a Tape is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle as arrays, re-validated on the way in (so a pickled tape can't smuggle bad
        # indices into the kernels); the per-thread buffers are not part of the state.
        return (tape_from_state, (type(self), self.to_arrays(), self.grad_mode))

    # ------------------------------------------------------------------ what the passes made
    @property
    def reuse_plan(self) -> Any:
        """The slot-reuse plan (:class:`fasttape.passes.reuse.ReusePlan`) or None (read-only).

        ``value`` and the ``"stored"`` gradient run on it when present (docs/passes.md).
        """
        return self._plan

    @property
    def pass_records(self) -> tuple[Any, ...]:
        """What each optimisation pass did (:class:`fasttape.passes.pipeline.PassRecord`s, in
        order; empty for a tape that was not optimised)."""
        return self._passes or ()

    @property
    def source_graph(self) -> Any:
        """The graph (with recorded source lines) this tape was compiled from, or None.

        Only tapes compiled from a graph traced with ``record_source=True`` keep one (a private
        copy); ``explain`` uses it to name the user's line.  Saved, loaded, pickled and
        ``from_arrays`` tapes have none.
        """
        return self._source

    # ------------------------------------------------------------------ sizes
    n_outputs = _length("outputs", "Number of outputs.")
    n_instructions = _length("ops", "Number of instructions: computed slots (not inputs, not "
                                    "constants).")
    n_consts = _length("consts", "Number of distinct constants.")
    n_edges = _length("args", "Number of instruction arguments (``len(args)``).")

    @property
    def n_nodes(self) -> int:
        """Deprecated: the number of instructions; use :attr:`n_instructions`.

        ``Graph.n_nodes`` counts every node (inputs and constants too); on a tape the same
        count is :attr:`n_slots`.
        """
        warnings.warn(
            "Tape.n_nodes is deprecated: it counts instructions only, unlike Graph.n_nodes; "
            "use Tape.n_instructions (or Tape.n_slots for inputs + constants + instructions)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.n_instructions

    @property
    def n_slots(self) -> int:
        """Length of the value vector: inputs + parameters + constants + instructions."""
        return self.n_inputs + self.n_params + self.n_consts + self.n_instructions

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
            "n_params": self.n_params,
            "n_consts": self.n_consts,
            "n_instructions": self.n_instructions,
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

    # ------------------------------------------------------------------ the interface above
    def as_input(self, x: Any) -> np.ndarray:
        """``x`` as one point: a C-contiguous float64 array of shape ``(n_inputs,)``.

        The one check of a single point (the same errors as :meth:`value`); a 2-D ``x`` is a
        ``ValueError`` here (batches go through :mod:`fasttape.batch`).  A tape with parameters
        refuses (``TypeError``): its kernels take ``x`` and ``p`` joined, see
        :meth:`join_params` and :meth:`params_as_inputs`.
        """
        if (type(x) is np.ndarray and x.dtype == np.float64 and x.ndim == 1
                and x.flags.c_contiguous and x.shape[0] == self._n_point):
            return x
        if self.n_params:
            raise TypeError(
                f"this tape has {_count(self.n_params, 'parameter')}: this operation does not "
                "take p= (evaluate with value/value_and_grad/... and p=, or use "
                "tape.params_as_inputs() with tape.join_params(x, p))"
            )
        xin = self._point_or_batch(x)
        if xin.ndim != 1:
            raise ValueError(f"x must be 1-D (one value per input); got shape {xin.shape}")
        return xin

    def output_index(self, output: int | None) -> int:
        """The output to differentiate, as an index in ``0 .. n_outputs - 1``.

        ``None`` means the only output (an error for a tape with several); negative indices
        count from the end.  Raises ``TypeError`` / ``ValueError`` with what to pass.
        """
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

    def check_params(self, p: Any) -> np.ndarray:
        """``p`` checked: float64 of shape ``(n_params,)`` or a batch ``(B, n_params)``.

        Raises ``TypeError`` when ``p`` is missing on a tape with parameters or given to one
        without, ``ValueError`` when its shape is wrong, each saying what to pass.
        """
        k = self.n_params
        if not k:
            raise TypeError(
                "this tape has no parameters (n_params=0) but p= was given: trace with "
                "ft.trace(fn, n_inputs, n_params=k) (or Graph.params) to make a tape that takes p"
            )
        if p is None:
            raise TypeError(
                f"this tape has {_count(k, 'parameter')}: pass p= (an array of "
                f"{_count(k, 'value')}, or of shape (B, {k}) for a batch of parameter sets)"
            )
        arr = _as_float_array(p, "p", "parameter")
        if arr.shape[-1] != k:
            raise ValueError(
                f"p has shape {arr.shape} but this tape has {_count(k, 'parameter')}: pass "
                f"{_count(k, 'value')} (shape ({k},)), or shape (B, {k}) for a batch"
            )
        return arr

    def join_params(self, x: Any, p: Any) -> np.ndarray:
        """``x`` and ``p`` checked and joined: the input of :meth:`params_as_inputs`.

        One point ``(n_inputs + n_params,)`` when both are 1-D; otherwise a batch
        ``(B, n_inputs + n_params)``: a 2-D ``x`` with a 1-D ``p`` (the same parameters for
        every row), a 1-D ``x`` with a 2-D ``p`` (the same point for every parameter set), or
        both 2-D with the same number of rows.
        """
        n, k = self.n_inputs, self.n_params
        if (type(x) is np.ndarray and type(p) is np.ndarray and x.ndim == 1 and p.ndim == 1
                and x.dtype == np.float64 and p.dtype == np.float64 and x.shape[0] == n
                and p.shape[0] == k and k):
            return np.concatenate((x, p))  # the common case: one point, nothing to convert
        pin = self.check_params(p)
        xin = _as_float_array(x)
        if xin.shape[-1] != n:
            raise ValueError(
                f"x has shape {xin.shape} but this tape has {n} inputs: pass ({n},) for one "
                f"point or (B, {n}) for a batch"
            )
        if xin.ndim == 1 and pin.ndim == 1:
            out = np.empty(n + k)
        else:
            rows = {a.shape[0] for a in (xin, pin) if a.ndim == 2}
            if len(rows) > 1:
                raise ValueError(
                    f"x has {xin.shape[0]} rows but p has {pin.shape[0]}: a batch varies x, p "
                    "or both, with one row per point (pass a 1-D x or p to keep it fixed)"
                )
            out = np.empty((rows.pop(), n + k))
        out[..., :n] = xin
        out[..., n:] = pin
        return out

    def work_buffers(self) -> Any:
        """The calling thread's store of work buffers for this tape (a ``threading.local``).

        Each layer keeps its buffers there under its own attribute names (the single point:
        ``vals``, ``res``, ``adj``, ``parts``; the reuse plan: ``plan_*``; batches: ``batch*``;
        derivatives: ``deriv``), allocated on a thread's first use and reused.
        """
        return self._local

    def work_array(
        self, layer: str, name: str, shape: tuple[int, ...], zero: bool = False
    ) -> np.ndarray:
        """A work array of ``shape`` in the calling thread's store, kept under ``layer`` (the
        calling module's own name, e.g. ``"deriv"``), allocated on first use and reused.

        One size per ``(layer, name)``: asking for another shape drops the old array, so memory
        does not grow with every direction count.  ``zero=True`` arrays start as zeros, for
        buffers the kernels keep clean (read-then-zero adjoints).
        """
        local = self._local
        store = getattr(local, layer, None)
        if store is None:
            store = {}
            setattr(local, layer, store)
        key = (name, shape)
        arr = store.get(key)
        if arr is None:
            for old in [k for k in store if k[0] == name]:
                del store[old]
            arr = store[key] = np.zeros(shape) if zero else np.empty(shape)
        return arr

    def point_buffers(self, grad: bool = False) -> Any:
        """:meth:`work_buffers` with the single-point buffers allocated.

        ``vals`` (``n_slots``) and ``res`` (``n_outputs``); with ``grad`` also ``adj``
        (``n_slots``, zero: the reverse sweeps leave it zeroed) and ``parts`` (``n_edges`` in
        ``"stored"`` mode, else empty).
        """
        local = self._local
        if not hasattr(local, "vals"):
            local.vals = np.empty(self.n_slots)
            local.res = np.empty(self.n_outputs)
        if grad and not hasattr(local, "adj"):
            # Zeros once: the reverse sweep leaves the adjoints zeroed (read-then-zero).
            local.adj = np.zeros(self.n_slots)
            local.parts = np.empty(self.n_edges if self.grad_mode == "stored" else 0)
        return local

    # ------------------------------------------------------------------ evaluation
    def _point_or_batch(self, x: Any) -> np.ndarray:
        """``x`` as float64: 1-D of length ``n_inputs`` (checked), or 2-D (a batch, unchecked).

        The slow path: callers first try ``x`` as it is (a C-contiguous float64 vector of the
        right length, the common case, costs no call).
        """
        arr = _as_float_array(x)
        if arr.ndim == 2:
            return arr
        if arr.shape[0] != self.n_inputs:
            raise ValueError(
                f"x has {arr.shape[0]} entries but this tape has {self.n_inputs} inputs"
            )
        return arr

    def _value_batch(
        self, x: np.ndarray, out: np.ndarray | None, threads: int | None, flush: bool
    ) -> Any:
        # Batches are a layer above the record: fasttape.Tape overrides this hook.
        raise ValueError(f"x must be 1-D (one value per input); got shape {x.shape}")

    def _value_and_grad_batch(
        self, x: np.ndarray, which: int, out: np.ndarray | None, threads: int | None,
        flush: bool,
    ) -> Any:
        # Batches are a layer above the record: fasttape.Tape overrides this hook.
        raise ValueError(f"x must be 1-D (one value per input); got shape {x.shape}")

    def value(
        self, x: Any, p: Any = None, *, out: np.ndarray | None = None,
        threads: int | None = None, flush_subnormals: bool = False,
    ) -> Any:
        """Evaluate the outputs at ``x``, or at every row of a batch ``x``.

        Parameters
        ----------
        x : array_like of float, shape (n_inputs,) or (B, n_inputs)
            One point, or a batch of ``B`` points (docs/batch.md).
        p : array_like of float, shape (n_params,) or (B, n_params)
            The parameters: required when the tape has some, refused otherwise.  A 2-D ``p``
            makes a batch (with a 1-D ``x``, the same point for every parameter set).  May be
            passed positionally, so ``scipy.optimize.minimize(tape.value_and_grad, x0,
            jac=True, args=(p,))`` works as written.
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
        xin = x
        if not (p is None and type(x) is np.ndarray and x.dtype == np.float64 and x.ndim == 1
                and x.flags.c_contiguous and x.shape[0] == self._n_point):
            if p is not None or self.n_params:  # parameters: x and p joined, on params_as_inputs
                return self._value_params(x, p, out, threads, flush_subnormals)
            xin = self._point_or_batch(x)  # converted and checked; 2-D if a batch
            if xin.ndim == 2:  # a batch: an explicit shape check, no exception on the way
                return self._value_batch(xin, out, threads, flush_subnormals)
        if threads is not None:
            # threads= only matters for batches; still refuse a bad value for a single point.
            resolve_threads(threads)
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
                self, xin, None if out is None else check_out(out, self.n_outputs, "out")
            )
        buf = self.point_buffers()
        res = buf.res if out is None else check_out(out, self.n_outputs, "out")
        kernels.value_kernel(self.ops, self.args, self.consts, self.outputs, xin, buf.vals, res)
        return res

    def value_and_grad(
        self,
        x: Any,
        p: Any = None,
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
        p : array_like of float, shape (n_params,) or (B, n_params)
            The parameters, as in :meth:`value`; they get no gradient.
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
        xin = x
        if not (p is None and type(x) is np.ndarray and x.dtype == np.float64 and x.ndim == 1
                and x.flags.c_contiguous and x.shape[0] == self._n_point):
            if p is not None or self.n_params:
                return self._value_and_grad_params(x, p, output, out, threads, flush_subnormals)
            xin = self._point_or_batch(x)  # converted and checked; 2-D if a batch
            if xin.ndim == 2:  # a batch: an explicit shape check, no exception on the way
                return self._value_and_grad_batch(xin, self.output_index(output), out,
                                                  threads, flush_subnormals)
        if threads is not None:
            resolve_threads(threads)
        which = self.output_index(output)
        grad = np.empty(self.n_inputs) if out is None else check_out(out, self.n_inputs, "out")
        if flush_subnormals is False:  # the default: no wrapper on the per-call path
            return self._value_and_grad_single(xin, which, grad), grad
        flush = fpenv.check_flush(flush_subnormals)
        return fpenv.call(flush, self._value_and_grad_single, xin, which, grad), grad

    def _value_params(
        self, x: Any, p: Any, out: np.ndarray | None, threads: int | None, flush: bool
    ) -> Any:
        """value with parameters: :meth:`params_as_inputs` at ``x`` and ``p`` joined."""
        xp = self.join_params(x, p)
        full = self.params_as_inputs()
        if xp.ndim == 2 or threads is not None or flush is not False:
            return full.value(xp, out=out, threads=threads, flush_subnormals=flush)
        res = full._value_single(xp, out)  # one point, the defaults: no second dispatch
        if out is not None:
            return out
        if self.n_outputs == 1:
            return float(res[0])
        return res.copy()

    def _value_and_grad_params(
        self, x: Any, p: Any, output: int | None, out: np.ndarray | None,
        threads: int | None, flush: bool,
    ) -> tuple[Any, np.ndarray]:
        """value_and_grad with parameters: one sweep of :meth:`params_as_inputs` on ``x`` and
        ``p`` joined, keeping the first ``n_inputs`` gradient entries.

        The reverse sweep adds adjoints into parameter slots as it does into constant slots
        (the shared sweep); nothing else is done for them but copying the kept entries out.
        """
        xp = self.join_params(x, p)
        n = self.n_inputs
        if out is not None:
            check_out(out, n if xp.ndim == 1 else (xp.shape[0], n), "out")
        full = self.params_as_inputs()
        if xp.ndim == 1 and threads is None and flush is False:
            g = np.empty(full.n_inputs)  # one point, the defaults: no second dispatch
            v = full._value_and_grad_single(xp, self.output_index(output), g)
        else:
            v, g = full.value_and_grad(xp, output=output, threads=threads,
                                       flush_subnormals=flush)
        if out is None:
            return v, g[..., :n].copy()
        out[...] = g[..., :n]
        return v, out

    def _value_and_grad_single(self, xin: np.ndarray, which: int, grad: np.ndarray) -> float:
        if self._plan is not None and self.grad_mode == "stored":  # slot reuse
            return float(passes_planned.value_and_grad(self, which, xin, grad))
        buf = self.point_buffers(grad=True)
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

    @same_arguments(value_and_grad)
    def grad(self, *args: Any, **kwargs: Any) -> np.ndarray:
        """Gradient of one output at ``x`` (or at every row of a batch); takes the arguments
        of :meth:`value_and_grad`."""
        return self.value_and_grad(*args, **kwargs)[1]

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        return self.listing(max_lines=12)

    def listing(self, max_lines: int = 40) -> str:
        """A readable listing of the first ``max_lines`` instructions and the sizes."""
        s = self.stats()
        head = (
            f"<fasttape.Tape: {_count(s['n_inputs'], 'input')}, "
            + (f"{_count(s['n_params'], 'param')}, " if s["n_params"] else "")
            + f"{_count(s['n_consts'], 'constant')}, "
            f"{_count(s['n_instructions'], 'instruction')}, {_count(s['n_outputs'], 'output')}; "
            f"tape {s['tape_nbytes']:,} B, "
            f"grad work {s['grad_work_nbytes']:,} B ({self.grad_mode} partials)>"
        )
        lines = [head, *passes_planned.listing_lines(self)]
        n_lead = self.n_inputs + self.n_params
        n_pre = n_lead + self.n_consts
        shown = 0
        for j in range(min(self.n_consts, max_lines)):
            lines.append(f"  %{n_lead + j} = const {float(self.consts[j])!r}")
            shown += 1
        k = 0
        for i in range(self.n_instructions):
            if shown >= max_lines:
                break
            op = OPS[int(self.ops[i])]
            a = ", ".join(f"%{int(v)}" for v in self.args[k : k + op.arity])
            lines.append(f"  %{n_pre + i} = {op.name}({a})")
            k += op.arity
            shown += 1
        hidden = self.n_consts + self.n_instructions - shown
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


def tape_from_state(cls: type[TapeT], arrays: dict[str, Any], grad_mode: str) -> TapeT:
    """Unpickle a tape: ``cls.from_arrays(**arrays)``, validated again."""
    return cls.from_arrays(**arrays, grad_mode=grad_mode)


def resolve_threads(threads: Any) -> int:
    """The worker count for a call: ``threads``, or Numba's current setting when None.

    Raises
    ------
    TypeError, ValueError
        If ``threads`` is not an int between 1 and ``numba.config.NUMBA_NUM_THREADS``.
    """
    if threads is None:
        return numba.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= limit:
        raise ValueError(
            f"threads={threads} is out of range: Numba was started with "
            f"NUMBA_NUM_THREADS={limit}, so pass 1 <= threads <= {limit} (or None to use "
            "numba.get_num_threads())"
        )
    return int(threads)


def _as_float_array(x: Any, name: str = "x", what: str = "input") -> np.ndarray:
    """``x`` as a contiguous float64 array of 1 or 2 dimensions, with errors that say what was
    expected (the caller checks the length of a point; :mod:`fasttape.batch` that of a batch).
    ``name`` and ``what`` name the argument in the messages (``p``, ``parameter``).
    """
    arr = real_array(x, name)
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D (one value per {what}) or 2-D (one row per point); got shape "
            f"{arr.shape}"
        )
    return np.ascontiguousarray(arr, dtype=np.float64)


def check_out(out: Any, shape: int | tuple[int, ...], name: str) -> np.ndarray:
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
