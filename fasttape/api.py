"""The user-facing :class:`Tape`, assembled at the top of the pipeline, and the functions that
return one: :func:`compile` and :func:`load`.

:class:`~fasttape.tape.TapeRecord` (:mod:`fasttape.tape`) is the immutable record with its
one-point value and gradient.  Every other layer takes a record and uses only its public
interface: :mod:`fasttape.batch` (2-D ``x``), :mod:`fasttape.derivatives` (``jvp``, ``vjp``,
``jacobian``, ``hvp``, ``hessian``), :mod:`fasttape.serialize` (``save``, ``load``),
:mod:`fasttape.embed` (``numba_kernel``, ``cfunc``, ``to_dot``) and :mod:`fasttape.checkpoint`
(``memory_limit=``).  This module is the only one that imports them all: :class:`Tape` adds
their methods to the record, and the tape-making functions return it.  Nothing inside the
package imports this module except :mod:`fasttape` itself (and the benchmark families, which
build tapes for users).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fasttape import batch, derivatives, explain, serialize, sparse
from fasttape.checkpoint.segments import CheckpointedTape, checkpointed
from fasttape.compile import compile_graph
from fasttape.embed.cabi import cfunction
from fasttape.embed.dot import tape_to_dot
from fasttape.embed.numba_api import NumbaKernel, numba_kernel
from fasttape.embed.tensor_abi import TensorCFunction, tensor_cfunction, tensor_numba_kernel
from fasttape.graph import Graph
from fasttape.native.tape import NativeTape, native
from fasttape.native.tensor import native_tensor
from fasttape.native.tier import TieredTape, tiered
from fasttape.tape import TapeRecord
from fasttape.tensor.graph import TensorGraph
from fasttape.tensor.tape import TensorTape as TensorRecord
from fasttape.tensor.tape import compile_tensor_graph

__all__ = ["Tape", "TensorTape", "compile", "load"]


class Tape(TapeRecord):
    """A compiled scalar graph: evaluate values and gradients many times.

    Build one with :func:`fasttape.compile` (from a Graph), :meth:`from_arrays` (from another
    tool) or :func:`fasttape.load`.  A Tape is immutable: its arrays are read-only and it holds
    no Python objects of the graph.  Evaluation is thread-safe and releases the GIL; each thread
    keeps its own work buffers (allocated on first use and reused, so repeated calls do not
    allocate).

    The record's attributes and one-point evaluation are documented on
    :class:`~fasttape.tape.TapeRecord`; this class adds batches (a 2-D ``x`` in ``value``,
    ``value_and_grad`` and ``grad``), derivatives beyond the gradient, files and embedding.

    Attributes
    ----------
    n_inputs : int
        Length of the ``x`` that the evaluation methods take.
    n_params : int
        Length of the ``p`` that every evaluation takes when it is not 0: parameters, inputs
        that are not differentiated (``ft.trace(fn, n, n_params=k)``, docs/tape-format.md).
    n_outputs : int
        Number of outputs.
    n_instructions : int
        Number of instructions.  Inputs, parameters and constants do **not** count: they are
        loaded into the first ``n_inputs + n_params + n_consts`` slots, not computed by
        instructions.
    n_consts : int
        Number of distinct constants.
    grad_mode : str
        ``"stored"`` or ``"lean"`` (see :data:`fasttape.GRAD_MODES` and docs/tape-format.md).
    """

    __slots__ = ()

    # ------------------------------------------------------------------ batches
    # The record calls these hooks for a 2-D x; the implementation is fasttape/batch.py.
    def _value_batch(
        self, x: np.ndarray, out: np.ndarray | None, threads: int | None, flush: bool
    ) -> Any:
        return batch.value(self, x, out=out, threads=threads, flush_subnormals=flush)

    def _value_and_grad_batch(
        self, x: np.ndarray, which: int, out: np.ndarray | None, threads: int | None,
        flush: bool,
    ) -> Any:
        return batch.value_and_grad(self, x, which, out=out, threads=threads,
                                    flush_subnormals=flush)

    # ------------------------------------------------------------------ more derivatives
    # Thin wrappers: the implementations and their docs live in fasttape/derivatives.py.
    # A tape with parameters takes p in each (positionally too, as scipy's args=(p,) passes
    # it; docs/tape-format.md); no derivative is taken with respect to them.
    def jvp(self, x: Any, v: Any, p: Any = None, *, threads: Any = None) -> tuple[Any, Any]:
        """Outputs and ``J(x) @ v`` by one tangent sweep (a batch on ``threads`` threads);
        see :func:`fasttape.derivatives.jvp`."""
        return derivatives.jvp(self, x, v, p=p, threads=threads)

    def vjp(self, x: Any, w: Any, p: Any = None, *,
            threads: Any = None) -> tuple[Any, np.ndarray]:
        """Outputs and ``w @ J(x)`` by one reverse sweep (a batch on ``threads`` threads);
        see :func:`fasttape.derivatives.vjp`."""
        return derivatives.vjp(self, x, w, p=p, threads=threads)

    def jacobian(
        self, x: Any, p: Any = None, *, mode: str = "auto", chunk: int | None = None
    ) -> np.ndarray:
        """Jacobian ``(n_outputs, n_inputs)`` in vector mode; see
        :func:`fasttape.derivatives.jacobian`."""
        return derivatives.jacobian(self, x, mode=mode, chunk=chunk, p=p)

    def hvp(self, x: Any, v: Any, p: Any = None, *, output: int | None = None,
            threads: Any = None) -> np.ndarray:
        """Hessian of one output times ``v`` (forward-over-reverse), usable as scipy's
        ``hessp=tape.hvp`` (a batch on ``threads`` threads); see
        :func:`fasttape.derivatives.hvp`."""
        return derivatives.hvp(self, x, v, output=output, p=p, threads=threads)

    def hessian(
        self, x: Any, p: Any = None, *, output: int | None = None, chunk: int | None = None
    ) -> np.ndarray:
        """Symmetric Hessian of one output from vector-mode HVPs; see
        :func:`fasttape.derivatives.hessian`."""
        return derivatives.hessian(self, x, output=output, chunk=chunk, p=p)

    # ------------------------------------------------------------------ sparse derivatives
    # Thin wrappers: the implementations and their docs live in fasttape/sparse.py.
    def jacobian_sparsity(self) -> Any:
        """The Jacobian's structural pattern as a ``scipy.sparse.csr_matrix``; see
        :func:`fasttape.sparse.jacobian_sparsity` (docs/sparse.md)."""
        return sparse.jacobian_sparsity(self)

    def hessian_sparsity(self, output: int | None = None, *, w: Any = None) -> Any:
        """The Hessian's structural pattern (one output, or the outputs with nonzero weight
        ``w``) as a ``scipy.sparse.csr_matrix``; see :func:`fasttape.sparse.hessian_sparsity`."""
        return sparse.hessian_sparsity(self, output=output, w=w)

    def sparse_jacobian_plan(self, *, prune: bool = True,
                             preaccumulate: bool = True) -> sparse.SparseJacobian:
        """A reusable :class:`fasttape.sparse.SparseJacobian`: pattern, coloring, the
        point-independent rows (``prune``) and the linear region's matrix
        (``preaccumulate``) once, then ``plan(x)`` per point."""
        return sparse.SparseJacobian(self, prune=prune, preaccumulate=preaccumulate)

    def sparse_hessian_plan(
        self, output: int | None = None, *, w: Any = None, coloring: str = "star",
        prune: bool = True, preaccumulate: bool = True,
    ) -> sparse.SparseHessian:
        """A reusable :class:`fasttape.sparse.SparseHessian` of one output or of the weighted
        sum ``w @ outputs``: pattern, coloring (``"star"`` or ``"distance2"``), pruning
        (``prune``) and the linear region's matrix (``preaccumulate``) once, then
        ``plan(x)`` per point."""
        return sparse.SparseHessian(self, output=output, w=w, coloring=coloring, prune=prune,
                                    preaccumulate=preaccumulate)

    def sparse_jacobian(self, x: Any, p: Any = None) -> Any:
        """The Jacobian at ``x`` as a ``scipy.sparse.csr_matrix`` by coloring; builds a plan
        each call (keep :meth:`sparse_jacobian_plan` for repeated calls; for one call its
        linear region is swept, not preaccumulated)."""
        return sparse.SparseJacobian(self, preaccumulate=False)(x, p=p)

    def sparse_hessian(
        self, x: Any, p: Any = None, *, output: int | None = None, w: Any = None
    ) -> Any:
        """The Hessian of one output (or of ``w @ outputs``) at ``x`` as a
        ``scipy.sparse.csr_matrix`` by coloring; builds a plan each call (keep
        :meth:`sparse_hessian_plan` for repeated calls; for one call its linear region is
        swept, not preaccumulated)."""
        return sparse.SparseHessian(self, output=output, w=w, preaccumulate=False)(x, p=p)

    def explain(self, x: Any, output: int | None = None, *, p: Any = None) -> Any:
        """Where a non-finite value or gradient at ``x`` came from; see
        :func:`fasttape.explain.explain` (docs/debugging.md)."""
        return explain.explain(self, x, output, p=p)

    # ------------------------------------------------------------------ embedding
    # Thin wrappers: the implementations and their docs live in fasttape/embed/.
    def numba_kernel(self, kind: str = "value_and_grad", *, output: int | None = None) -> Any:
        """``(fn, arrays)`` for calling this tape inside ``@numba.njit`` code as
        ``fn(*arrays, x, grad)``; see :func:`fasttape.embed.numba_api.numba_kernel`."""
        return numba_kernel(self, kind, output=output)

    def cfunc(self, *, output: int | None = None, reentrant: bool = False, p: Any = None) -> Any:
        """C function pointers (ctypes, cffi, C, ``scipy.LowLevelCallable``) for one output;
        see :func:`fasttape.embed.cabi.cfunction` (``p``: the parameters, kept in the
        context)."""
        return cfunction(self, output=output, reentrant=reentrant, p=p)

    def native(self, *, tier_after: int | None = None,
               **options: Any) -> NativeTape | TieredTape:
        """This tape compiled to machine code (LLVM: loops and straight-line code): ``value``,
        ``value_and_grad`` and ``grad`` bitwise this tape's, faster once compiled; see
        :func:`fasttape.native.tape.native` (options) and docs/native.md.

        With ``tier_after=N``, a :class:`~fasttape.native.tier.TieredTape` that runs on the
        interpreter and starts compiling in the background at its ``N``-th call
        (:func:`fasttape.native.tier.tiered`)."""
        if tier_after is not None:
            return tiered(self, tier_after, **options)
        return native(self, **options)

    def to_dot(self, **kwargs: Any) -> str:
        """Graphviz DOT text of the tape (small tapes); see
        :func:`fasttape.embed.dot.tape_to_dot`."""
        return tape_to_dot(self, **kwargs)

    # ------------------------------------------------------------------ files
    def save(self, path: Any) -> None:
        """Write the tape to ``path`` as .npz (no pickle); read back with :func:`fasttape.load`."""
        serialize.save(self, path)


class TensorTape(TensorRecord):
    """A compiled tensor graph (docs/tensors.md): :class:`~fasttape.tensor.tape.TensorTape`
    with files added (``save``; ``ft.load`` reads them back)."""

    def save(self, path: Any) -> None:
        """Write the tape to ``path`` (``.npz``, no pickle, atomic; docs/tape-format.md)."""
        serialize.save(self, path)

    def numba_kernel(self, kind: str = "value_and_grad", *, p: Any = None) -> NumbaKernel:
        """``(fn, arrays)`` for calling this tape inside ``@numba.njit`` code as
        ``fn(*arrays, x, grad)`` (flat inputs); see
        :func:`fasttape.embed.tensor_abi.tensor_numba_kernel`."""
        return tensor_numba_kernel(self, kind, p=p)

    def cfunc(self, *, reentrant: bool = False, p: Any = None) -> TensorCFunction:
        """C function pointers for value and gradient (scalar output, flat inputs); see
        :func:`fasttape.embed.tensor_abi.tensor_cfunction`."""
        return tensor_cfunction(self, reentrant=reentrant, p=p)

    def native(self, *, cache_entries: bool = True) -> TensorTape:
        """A copy of this tape whose fused elementwise groups run as compiled, vectorized
        loops (LLVM); see :func:`fasttape.native.tensor.native_tensor` and docs/tensors.md."""
        return native_tensor(self, cache_entries=cache_entries)


def compile(
    graph: Graph | TensorGraph,
    *,
    grad_mode: str = "stored",
    optimize: Any = True,
    finite_math: bool = False,
    memory_limit: int | None = None,
) -> Tape | CheckpointedTape | TensorTape:
    """Flatten ``graph`` into a :class:`Tape` (``ft.compile``).

    A graph traced on tensors (``ft.trace(fn, shapes=...)``, docs/tensors.md) becomes a
    :class:`~fasttape.tensor.tape.TensorTape`; of the options below it takes ``optimize``
    (``True`` or ``False``), the others are for scalar graphs.

    Only nodes that some output depends on become instructions.  All inputs are kept (in order),
    so the tape takes the same ``x`` as the graph; unreachable inputs get gradient 0.

    Parameters
    ----------
    graph : Graph
        With at least one output marked by :meth:`Graph.output`.
    grad_mode : {"stored", "lean"}
        "stored" (default) saves each edge's partial derivative in the forward sweep, so the
        reverse sweep is a plain multiply-add per edge; "lean" recomputes partials in the
        reverse sweep and needs 16 bytes per slot of work memory instead of 16 + 8 per edge.
        See docs/tape-format.md for the measured trade-off.
    optimize : bool or list of str
        ``True`` (default) runs the default passes (dead code, constant folding, exact
        simplification, common subexpressions, slot reuse); ``False`` only drops dead code
        (the behaviour before the passes existed); a list names the passes to run, from
        ``fasttape.passes.PASS_NAMES`` (``[]``: every node becomes an instruction).  Values
        are bitwise those of the unoptimised tape; see docs/passes.md.  A tensor graph takes
        ``True`` (common subexpressions and fusion) or ``False`` (neither).
    finite_math : bool
        Opt in to simplifications that are exact only when every value is finite and the
        sign of zero does not matter (``x - x -> 0``, ``x * 0 -> 0``, ``x + 0.0 -> x``).
        Off by default.
    memory_limit : int, optional
        Bytes that one gradient may hold.  Returns a
        :class:`~fasttape.checkpoint.segments.CheckpointedTape` whose gradient stores
        checkpoints at segment boundaries and recomputes each segment in the reverse sweep
        when storing everything would not fit (docs/store-vs-recompute.md).

    Returns
    -------
    Tape
        For a scalar Graph without ``memory_limit``, always a :class:`Tape`;
        ``tape.stats()["passes"]`` reports what each pass did.  With ``memory_limit``, a
        :class:`~fasttape.checkpoint.segments.CheckpointedTape` wrapping that Tape (same
        ``value`` / ``value_and_grad`` / ``grad`` / ``stats``, plus ``report``).
    """
    if isinstance(graph, TensorGraph):
        if (grad_mode, finite_math, memory_limit) != ("stored", False, None):
            raise NotImplementedError(
                "grad_mode, finite_math and memory_limit apply to scalar graphs; a tensor "
                "graph takes optimize=True or False only (docs/tensors.md lists what tensor "
                "tapes support)")
        if not isinstance(optimize, bool):
            raise NotImplementedError(
                f"a tensor graph takes optimize=True (common subexpressions and fusion) or "
                f"False (neither); a list of passes applies to scalar graphs, got {optimize!r}")
        return compile_tensor_graph(graph, tape_class=TensorTape, optimize=optimize)
    tape = compile_graph(graph, grad_mode=grad_mode, optimize=optimize, finite_math=finite_math,
                         tape_class=Tape)
    if memory_limit is not None:
        return checkpointed(tape, memory_limit)
    return tape


def load(path: str | os.PathLike, **options: Any) -> Tape | TensorTape:
    """Read a tape written by :meth:`Tape.save` (``ft.load``), validating every array.

    Parameters
    ----------
    path : str or os.PathLike
    **options
        As :func:`fasttape.serialize.load` (``grad_mode=``: None keeps the saved mode).

    Returns
    -------
    Tape
    """
    return serialize.load(path, tape_class=Tape, tensor_class=TensorTape, **options)
