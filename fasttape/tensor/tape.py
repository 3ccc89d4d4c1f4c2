"""The tensor tape: a compiled :class:`~fasttape.tensor.graph.TensorGraph`, and its sweeps.

Four integer arrays (``kinds``, ``ops``, ``at``, ``fields``; :mod:`fasttape.kernels.tensor`
documents them, docs/tape-format.md lays them out), the initial value vector (constants in
place) and where the inputs, parameters and output live.  :func:`compile_tensor_graph` drops
the instructions the output does not need, then validates the arrays, as
:meth:`TensorTape.from_arrays` does for arrays from elsewhere: every range an instruction
reads or writes lies inside the value vector, before any kernel runs.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from fasttape.kernels import tensor as kernels
from fasttape.kernels.tensor import COPY, ELEMENTWISE, MATMUL, REDUCE, TAKE
from fasttape.ops import N_OPS, OPS
from fasttape.tensor.graph import TensorGraph
from fasttape.tensor.tree import TreeDef

__all__ = ["TensorTape", "compile_tensor_graph"]

_FIXED = {ELEMENTWISE: 8, COPY: 4, TAKE: 3, REDUCE: 5, MATMUL: 9}


def compile_tensor_graph(graph: TensorGraph) -> TensorTape:
    """The tape of ``graph``: instructions the output needs, in order, as arrays."""
    if not isinstance(graph, TensorGraph):
        raise TypeError(f"expected a TensorGraph, got {type(graph).__name__}")
    if graph.output_buffer < 0:
        raise ValueError("the tensor graph has no output: trace it with ft.trace(fn, shapes=)")
    live = {graph.output_buffer}
    keep = []
    for i in range(graph.n_instructions - 1, -1, -1):
        if graph.writes[i] in live:
            keep.append(i)
            live.update(graph.reads[i])
    keep.reverse()
    kinds = np.array([graph.kinds[i] for i in keep], dtype=np.int64)
    ops = np.array([graph.ops[i] for i in keep], dtype=np.int64)
    lengths = [len(graph.fields[i]) for i in keep]
    at = np.zeros(len(keep), dtype=np.int64)
    if keep:
        at[1:] = np.cumsum(lengths)[:-1]
    fields = np.array([f for i in keep for f in graph.fields[i]], dtype=np.int64)
    init = np.zeros(graph.n_slots, dtype=np.float64)
    for buf, values in graph.constants:
        off = graph.buffers[buf][0]
        init[off:off + values.size] = values
    return TensorTape(kinds, ops, at, fields, init, graph.inputs, graph.params, graph.in_tree,
                      graph.param_tree, graph.output_offset, graph.output_shape)


def _extent(start: int, shape: list[int], strides: list[int]) -> tuple[int, int]:
    # Lowest and highest slot a strided view touches (for a non-empty view).
    lo = hi = start
    for d, s in zip(shape, strides, strict=True):
        if s > 0:
            hi += (d - 1) * s
        else:
            lo += (d - 1) * s
    return lo, hi


def validate(kinds: np.ndarray, ops: np.ndarray, at: np.ndarray, fields: np.ndarray,
             n_slots: int) -> None:
    """Raise ValueError unless every instruction addresses only slots ``0 .. n_slots - 1``."""
    for name, a in (("kinds", kinds), ("ops", ops), ("at", at), ("fields", fields)):
        if a.dtype != np.int64 or a.ndim != 1:
            raise ValueError(f"{name} must be a 1-D int64 array, got {a.dtype} {a.shape}")
    if not (kinds.size == ops.size == at.size):
        raise ValueError("kinds, ops and at must have one entry per instruction")
    f = fields.tolist()

    def bad(i: int, what: str) -> ValueError:
        return ValueError(f"instruction {i} ({kernels.KIND_NAMES[kinds[i]]}): {what} "
                          f"(the value vector has {n_slots} slots)")

    def inside(i: int, lo: int, hi: int, what: str) -> None:
        if lo < 0 or hi >= n_slots:
            raise bad(i, f"{what} reaches slots {lo}..{hi}")

    for i, (kind, op, p) in enumerate(zip(kinds.tolist(), ops.tolist(), at.tolist(),
                                          strict=True)):
        if kind not in _FIXED:
            raise ValueError(f"instruction {i}: unknown kind {kind}")
        if p < 0 or p + _FIXED[kind] > len(f):
            raise bad(i, "fields out of range")
        d, n = f[p], f[p + 1]
        if kind == ELEMENTWISE:
            if not 0 <= op < N_OPS:
                raise bad(i, f"op code {op} out of range")
            if n < 0:
                raise bad(i, "negative size")
            if n:
                inside(i, d, d + n - 1, "the result")
                for j in range(OPS[op].arity):
                    a, s = f[p + 2 + 2 * j], f[p + 3 + 2 * j]
                    if s not in (0, 1):
                        raise bad(i, f"argument stride {s} (0 or 1)")
                    inside(i, a, a + (n - 1) * s, f"argument {j}")
        elif kind == COPY:
            nd = f[p + 3]
            if nd < 1 or p + 4 + 2 * nd > len(f):
                raise bad(i, "bad number of dimensions")
            shape, strides = f[p + 4:p + 4 + nd], f[p + 4 + nd:p + 4 + 2 * nd]
            if n != math.prod(shape) or min(shape) < 0:
                raise bad(i, f"shape {shape} does not hold {n} elements")
            if n:
                inside(i, d, d + n - 1, "the result")
                inside(i, *_extent(f[p + 2], shape, strides), "the source view")
        elif kind == TAKE:
            if n < 0 or p + 3 + n > len(f):
                raise bad(i, "index list out of range")
            if n:
                inside(i, d, d + n - 1, "the result")
                idx = fields[p + 3:p + 3 + n] + f[p + 2]
                inside(i, int(idx.min()), int(idx.max()), "an index")
        elif kind == REDUCE:
            outer, r, inner, src = f[p + 1], f[p + 2], f[p + 3], f[p + 4]
            if not 0 <= op <= 3 or min(outer, r, inner) < 0:
                raise bad(i, "bad reduction")
            if op >= 2 and r == 0:
                raise bad(i, "max/min over zero elements")
            if outer * inner:
                inside(i, d, d + outer * inner - 1, "the result")
                if r:
                    inside(i, src, src + outer * r * inner - 1, "the source")
        else:
            nb, m, k, n_, a, sa, b, sb = f[p + 1:p + 9]
            if min(nb, m, k, n_) < 0 or sa < 0 or sb < 0:
                raise bad(i, "bad matmul sizes")
            if nb * m * n_:
                inside(i, d, d + nb * m * n_ - 1, "the result")
                if k:
                    inside(i, a, a + (nb - 1) * sa + m * k - 1, "operand a")
                    inside(i, b, b + (nb - 1) * sb + k * n_ - 1, "operand b")


class TensorTape:
    """A compiled tensor function: values and gradients of NumPy-style code, many times.

    Made by :func:`fasttape.compile` from a graph traced with ``ft.trace(fn, shapes=...)``.
    Evaluation takes the arguments as the function did (arrays of the traced shapes, nested
    as traced) and returns gradients in the same structure.  Thread-safe: each thread keeps
    its own value and adjoint vectors (made on first use, then reused).

    Attributes
    ----------
    n_instructions : int
        Tensor instructions (independent of the tensors' sizes).
    n_slots : int
        Length of the value vector (inputs, parameters, constants, results).
    input_shapes, param_shapes : list of tuple
        Shape of each input / parameter leaf, in leaf order.
    output_shape : tuple
        Shape of the output (``()``: a scalar, which ``value_and_grad`` needs).
    """

    def __init__(self, kinds: np.ndarray, ops: np.ndarray, at: np.ndarray, fields: np.ndarray,
                 init: np.ndarray, inputs: list[tuple[int, tuple[int, ...]]],
                 params: list[tuple[int, tuple[int, ...]]], in_tree: TreeDef,
                 param_tree: TreeDef, out_offset: int, out_shape: tuple[int, ...]) -> None:
        init = np.ascontiguousarray(init, dtype=np.float64)
        validate(kinds, ops, at, fields, init.size)
        out_size = math.prod(out_shape)
        for what, (off, shape) in [*[("input", x) for x in inputs],
                                   *[("parameter", x) for x in params],
                                   ("output", (out_offset, out_shape))]:
            size = math.prod(shape)
            if size and (off < 0 or off + size > init.size):
                raise ValueError(f"the {what} range {off}..{off + size - 1} is outside the "
                                 f"{init.size} slots")
        self._arrays = (kinds, ops, at, fields)
        for a in (kinds, ops, at, fields, init):
            a.flags.writeable = False
        self._init = init
        self._inputs = list(inputs)
        self._params = list(params)
        self._in_tree, self._param_tree = in_tree, param_tree
        self._out = (out_offset, tuple(out_shape), out_size)
        self._local = threading.local()

    # ----------------------------------------------------------------------- description

    @property
    def n_instructions(self) -> int:
        """Tensor instructions."""
        return int(self._arrays[0].size)

    @property
    def n_slots(self) -> int:
        """Length of the value vector."""
        return int(self._init.size)

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the differentiated inputs' leaves."""
        return [s for _, s in self._inputs]

    @property
    def param_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the parameters' leaves."""
        return [s for _, s in self._params]

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the output."""
        return self._out[1]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The tape's arrays (read-only views): ``kinds``, ``ops``, ``at``, ``fields``, and
        ``init`` (the value vector before a call: constants in place, zeros elsewhere)."""
        kinds, ops, at, fields = self._arrays
        return {"kinds": kinds, "ops": ops, "at": at, "fields": fields, "init": self._init}

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for k in self._arrays[0].tolist():
            name = kernels.KIND_NAMES[k]
            counts[name] = counts.get(name, 0) + 1
        kinds = ", ".join(f"{n} {k}" for k, n in counts.items())
        return (f"<TensorTape: inputs {self.input_shapes}, output {self.output_shape}, "
                f"{self.n_instructions} instructions ({kinds}), {self.n_slots} slots>")

    # ----------------------------------------------------------------------- evaluation

    def _buffers(self) -> tuple[np.ndarray, np.ndarray]:
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = (self._init.copy(), np.empty_like(self._init))
        return bufs

    def _load(self, args: tuple[Any, ...], p: Any, vals: np.ndarray) -> None:
        n_args = len(self._in_tree.children)
        if len(args) != n_args:
            raise TypeError(f"expected {n_args} argument(s) (the traced function's "
                            f"differentiated inputs), got {len(args)}")
        leaves = self._in_tree.flatten(tuple(args), "argument")
        names = self._in_tree.paths("argument")
        if self._params:
            if p is None:
                raise TypeError(f"this tape takes parameters: pass p= with "
                                f"{len(self._param_tree.children)} value(s) (the traced "
                                "function's parameter arguments, as a tuple)")
            if len(self._param_tree.children) == 1 and not isinstance(p, tuple):
                p = (p,)
            leaves += self._param_tree.flatten(tuple(p) if isinstance(p, list) else p, "p")
            names += self._param_tree.paths("p")
        elif p is not None:
            raise TypeError("this tape takes no parameters, but p= was given")
        for (off, shape), value, name in zip([*self._inputs, *self._params], leaves, names,
                                             strict=True):
            try:
                arr = np.asarray(value)
                # Complex values would lose their imaginary part in the cast (a warning only).
                if arr.dtype.kind not in "biuf":
                    raise TypeError
                arr = arr.astype(np.float64, copy=False)
            except (TypeError, ValueError):
                raise TypeError(f"{name} must be an array of real numbers with shape {shape}, "
                                f"got {type(value).__name__}"
                                + (f" of dtype {arr.dtype}" if isinstance(value, np.ndarray)
                                   else "")) from None
            if arr.shape != shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected {shape} (the shape "
                                 "it was traced with)")
            vals[off:off + arr.size] = arr.reshape(-1)

    def _value_out(self, vals: np.ndarray) -> Any:
        off, shape, size = self._out
        if not shape:
            return float(vals[off])
        return vals[off:off + size].reshape(shape).copy()

    def _grads(self, adj: np.ndarray) -> Any:
        leaves = [adj[off:off + math.prod(s)].reshape(s).copy() for off, s in self._inputs]
        grads = self._in_tree.unflatten(leaves)
        return grads[0] if len(grads) == 1 else tuple(grads)

    def value(self, *args: Any, p: Any = None) -> Any:
        """The output at ``args`` (a float for a scalar output, else an array)."""
        vals, _ = self._buffers()
        self._load(args, p, vals)
        kernels.forward(*self._arrays, vals)
        return self._value_out(vals)

    def value_and_grad(self, *args: Any, p: Any = None) -> tuple[float, Any]:
        """``(value, gradient)``; the gradient has the arguments' structure and shapes (one
        argument: its gradient; several: a tuple).  The output must be a scalar."""
        off, shape, size = self._out
        if size != 1:
            raise ValueError(f"value_and_grad needs a scalar output, this tape's has shape "
                             f"{shape}: use vjp(args, cotangent)")
        vals, adj = self._buffers()
        self._load(args, p, vals)
        kernels.value_and_grad(*self._arrays, vals, adj, off)
        return float(vals[off]), self._grads(adj)

    def grad(self, *args: Any, p: Any = None) -> Any:
        """The gradient alone (see :meth:`value_and_grad`)."""
        return self.value_and_grad(*args, p=p)[1]

    def vjp(self, args: Any, cotangent: Any, p: Any = None) -> Any:
        """``cotangent`` (the output's shape) times the Jacobian: a gradient-shaped result."""
        off, shape, _ = self._out
        cot = np.asarray(cotangent, dtype=np.float64)
        if cot.shape != shape:
            raise ValueError(f"the cotangent has shape {cot.shape}, expected the output's "
                             f"shape {shape}")
        vals, adj = self._buffers()
        self._load(tuple(args) if isinstance(args, tuple) else (args,), p, vals)
        kernels.vjp(*self._arrays, vals, adj, off, np.ascontiguousarray(cot).reshape(-1))
        return self._grads(adj)

    def _unsupported(self, what: str) -> Any:
        raise NotImplementedError(
            f"{what} is not available on tensor tapes yet (value, value_and_grad, grad and vjp "
            "are); for now trace the function on scalars (ft.trace(fn, n_inputs)) to use it"
        )

    def jvp(self, *args: Any, **kwargs: Any) -> Any:
        """Not yet on tensor tapes (NotImplementedError)."""
        return self._unsupported("jvp")

    def hvp(self, *args: Any, **kwargs: Any) -> Any:
        """Not yet on tensor tapes (NotImplementedError)."""
        return self._unsupported("hvp")

    def hessian(self, *args: Any, **kwargs: Any) -> Any:
        """Not yet on tensor tapes (NotImplementedError)."""
        return self._unsupported("hessian")

    def jacobian(self, *args: Any, **kwargs: Any) -> Any:
        """Not yet on tensor tapes (NotImplementedError)."""
        return self._unsupported("jacobian")

    def numba_kernel(self, *args: Any, **kwargs: Any) -> Any:
        """Not yet on tensor tapes (NotImplementedError)."""
        return self._unsupported("numba_kernel")

    def cfunc(self, *args: Any, **kwargs: Any) -> Any:
        """Not yet on tensor tapes (NotImplementedError)."""
        return self._unsupported("cfunc")

    def save(self, *args: Any, **kwargs: Any) -> Any:
        """Not yet on tensor tapes (NotImplementedError)."""
        return self._unsupported("save")
