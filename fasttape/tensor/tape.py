"""The tensor tape: a compiled :class:`~fasttape.tensor.graph.TensorGraph`, and its sweeps.

Four integer arrays (``kinds``, ``ops``, ``at``, ``fields``; :mod:`fasttape.kernels.tensor`
documents them, docs/tape-format.md lays them out), the initial value vector (constants in
place) and where the inputs, parameters and output live.  :func:`compile_tensor_graph` drops
the instructions the output does not need, then validates the arrays, as
:meth:`TensorTape.from_arrays` does for arrays from elsewhere: every range an instruction
reads or writes lies inside the value vector, before any kernel runs.
"""

from __future__ import annotations

import copy
import math
import threading
from typing import Any

import numpy as np

from fasttape.kernels import tensor as kernels
from fasttape.kernels.tensor import (
    COPY,
    ELEMENTWISE,
    GATHER,
    MATMUL,
    MEMBER_FIELDS,
    REDUCE,
    TAKE,
)
from fasttape.ops import N_OPS, OPS
from fasttape.tensor.batch import run_batch, split_batch, stack_tree
from fasttape.tensor.graph import TensorGraph
from fasttape.tensor.lower import lower
from fasttape.tensor.tree import TreeDef, as_leaf

__all__ = ["TensorTape", "compile_tensor_graph", "reads_slots", "validate"]

_FIXED = {ELEMENTWISE: 3, COPY: 4, TAKE: 3, REDUCE: 5, MATMUL: 11, GATHER: 5}

#: Matrix products of more than this many multiply-adds run through NumPy's ``matmul`` (BLAS)
#: between kernel calls; smaller ones run in the kernel, where a call costs nothing.  Measured
#: on the MNIST-sized MLP (256 x 784 by 784 x 256): 38.7 ms per value and gradient with the
#: kernel's loops, 7.5 ms with BLAS.  Value and gradient of ``sum(tanh(a @ b))`` alone, BLAS
#: against the kernel: 24**3 29 against 20 us, 32**3 34 against 36, 40**3 45 against 63; in
#: the MLP of batch 32 (two 32 x 32 products in a chain), 62.5 against 56 us at 32**3, where
#: BLAS also splits the kernel call in three.
BLAS_MAX_KERNEL = 32**3


def compile_tensor_graph(graph: TensorGraph, tape_class: type[TensorTape] | None = None,
                         optimize: bool = True) -> TensorTape:
    """The tape of ``graph``: dead code dropped, repeated instructions merged, elementwise
    chains fused (not with ``optimize=False``), slots renumbered
    (:mod:`fasttape.tensor.lower`), then validated."""
    if not isinstance(graph, TensorGraph):
        raise TypeError(f"expected a TensorGraph, got {type(graph).__name__}")
    if graph.output_buffer < 0:
        raise ValueError("the tensor graph has no output: trace it with ft.trace(fn, shapes=)")
    low = lower(graph, optimize)
    return (tape_class or TensorTape)(low.kinds, low.ops, low.at, low.fields, low.init, low.inputs,
                      low.params, graph.in_tree, graph.param_tree, low.out_offset,
                      graph.output_shape, index_checks=sorted(graph.index_checks.items()))


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
        d, n = (f[p], f[p + 1]) if kind != ELEMENTWISE else (0, 0)
        if kind == ELEMENTWISE:
            _validate_group(f, p, i, bad, inside)
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
        elif kind == GATHER:
            npos, inner, src, k = f[p + 1], f[p + 2], f[p + 3], f[p + 4]
            if min(npos, inner, k) < 0 or p + 5 + 3 * k > len(f):
                raise bad(i, "bad gather header")
            if npos * inner:
                inside(i, d, d + npos * inner - 1, "the result")
                top = src + inner - 1
                for j in range(k):
                    c, size, stride = f[p + 5 + 3 * j:p + 8 + 3 * j]
                    if size < 1 or stride < 0:
                        raise bad(i, f"index {j}: bad axis size or stride")
                    inside(i, c, c + npos - 1, f"index {j}'s values")
                    top += (size - 1) * stride
                inside(i, src, top, "the indexed array")
        else:
            nb, m, k, n_, a, sa, b, sb, wa, wb = f[p + 1:p + 11]
            if min(nb, m, k, n_) < 0 or sa < 0 or sb < 0 or wa not in (0, 1) \
                    or wb not in (0, 1):
                raise bad(i, "bad matmul sizes")
            if nb * m * n_:
                inside(i, d, d + nb * m * n_ - 1, "the result")
                if k:
                    inside(i, a, a + (nb - 1) * sa + m * k - 1, "operand a")
                    inside(i, b, b + (nb - 1) * sb + k * n_ - 1, "operand b")


def reads_slots(arrays: dict[str, np.ndarray], lo: int, hi: int, skip: set[int]) -> bool:
    """Whether an instruction of the tape ``arrays`` (:meth:`TensorTape.to_arrays`) not in
    ``skip`` may read a slot in ``lo .. hi - 1`` (conservative: a gather may read anything).
    The read ranges of each kind, next to :func:`validate`'s checks of the same layout."""
    kinds, at, fields = arrays["kinds"], arrays["at"], arrays["fields"]
    f = fields

    def hit(a: int, b: int) -> bool:  # the slots a .. b - 1
        return a < hi and lo < b

    for i, (kind, p) in enumerate(zip(kinds.tolist(), at.tolist(), strict=True)):
        if i in skip:
            continue
        if kind == GATHER:
            return True
        if kind == ELEMENTWISE:
            n, count = int(f[p]), int(f[p + 2])
            for k in range(count):
                r = p + 3 + k * MEMBER_FIELDS
                for j in range(3):
                    a, s, ta = (int(v) for v in f[r + 3 + 3 * j: r + 6 + 3 * j])
                    if not (ta == 0 and s == 1) and hit(min(a, a + (n - 1) * s),
                                                        max(a, a + (n - 1) * s) + 1):
                        return True
        elif kind == COPY:
            n, src, nd = int(f[p + 1]), int(f[p + 2]), int(f[p + 3])
            shape, strides = f[p + 4:p + 4 + nd].tolist(), f[p + 4 + nd:p + 4 + 2 * nd].tolist()
            low = src + sum((d - 1) * s for d, s in zip(shape, strides, strict=True) if s < 0)
            high = src + sum((d - 1) * s for d, s in zip(shape, strides, strict=True) if s > 0)
            if n and hit(low, high + 1):
                return True
        elif kind == TAKE:
            n, src = int(f[p + 1]), int(f[p + 2])
            idx = f[p + 3:p + 3 + n]
            if n and hit(src + int(idx.min()), src + int(idx.max()) + 1):
                return True
        elif kind == REDUCE:
            outer, r, inner, src = (int(v) for v in f[p + 1:p + 5])
            if hit(src, src + outer * r * inner):
                return True
        elif kind == MATMUL:
            nb, m, k, n, a, sa, b, sb = (int(v) for v in f[p + 1:p + 9])
            if hit(a, a + (nb - 1) * sa + m * k) or hit(b, b + (nb - 1) * sb + k * n):
                return True
    return False


def _validate_group(f: list[int], p: int, i: int, bad: Any, inside: Any) -> None:
    # An elementwise group: every member's ranges, for every tile (kernels.tensor layout).
    n, tile, count = f[p], f[p + 1], f[p + 2]
    if n < 0 or tile < 1 or count < 1 or p + 3 + count * MEMBER_FIELDS > len(f):
        raise bad(i, "bad elementwise group header")
    last = (n - 1) // tile * tile if n else 0  # where the last tile starts
    m = min(tile, n)  # the longest tile
    for k in range(count):
        q = p + 3 + k * MEMBER_FIELDS
        op = f[q]
        if not 0 <= op < N_OPS:
            raise bad(i, f"op code {op} out of range")
        if f[q + 18] not in (0, 1):
            raise bad(i, "bad intermediate flag")
        spec = OPS[op]
        places = [(1, "the result", False)]
        places += [(3 + 3 * j, f"argument {j}", True) for j in range(spec.arity)]
        places += [(12 + 3 * j, f"argument {j}'s adjoint", True) for j in range(spec.ndiff)]
        for at_, what, strided in places:
            start = f[q + at_]
            step = f[q + at_ + 1] if strided else 1
            tile_step = f[q + at_ + 2] if strided else f[q + at_ + 1]
            if step not in (0, 1) or tile_step not in (0, 1):
                raise bad(i, f"{what}: strides must be 0 or 1")
            if n:
                inside(i, start, start + last * tile_step + (m - 1) * step, what)


class TensorTape:
    """A compiled tensor function: values and gradients of NumPy-style code, many times.

    Made by :func:`fasttape.compile` from a graph traced with ``ft.trace(fn, shapes=...)``.
    Evaluation takes the arguments as the function did (arrays of the traced shapes, nested
    as traced) and returns gradients in the same structure.  Thread-safe: each thread keeps
    its own value and adjoint vectors (made on first use, then reused).

    Attributes
    ----------
    n_instructions : int
        Kernel instructions: tensor ops, with each fused elementwise group counted once.
    n_ops : int
        Tensor ops, independent of the tensors' sizes.
    n_slots : int
        Length of the value vector (inputs, parameters, constants, results).
    input_shapes, param_shapes : list of tuple
        Shape of each input / parameter leaf, in leaf order.
    output_shape : tuple
        Shape of the output (``()``: a scalar, which ``value_and_grad`` needs).
    """

    #: The compiled loops behind the native groups (:func:`fasttape.native.tensor.native_tensor`
    #: sets it: compile time, cache use); ``None`` on a tape that runs on the kernels alone.
    native_groups: Any = None

    def __init__(self, kinds: np.ndarray, ops: np.ndarray, at: np.ndarray, fields: np.ndarray,
                 init: np.ndarray, inputs: list[tuple[int, tuple[int, ...]]],
                 params: list[tuple[int, tuple[int, ...]]], in_tree: TreeDef,
                 param_tree: TreeDef, out_offset: int, out_shape: tuple[int, ...],
                 index_checks: list[tuple[int, int]] = ()) -> None:
        init = np.ascontiguousarray(init, dtype=np.float64)
        validate(kinds, ops, at, fields, init.size)
        out_size = math.prod(out_shape)
        for what, (off, shape) in [*[("input", x) for x in inputs],
                                   *[("parameter", x) for x in params],
                                   ("output", (out_offset, out_shape))]:
            if any(d < 0 for d in shape):
                raise ValueError(f"the {what} has a negative dimension: {shape}")
            size = math.prod(shape)
            if size and (off < 0 or off + size > init.size):
                raise ValueError(f"the {what} range {off}..{off + size - 1} is outside the "
                                 f"{init.size} slots")
        if in_tree.n_leaves != len(inputs) or param_tree.n_leaves != len(params):
            raise ValueError(
                f"the argument structure does not match the leaves: {in_tree.n_leaves} input "
                f"and {param_tree.n_leaves} parameter leaves in the trees, {len(inputs)} and "
                f"{len(params)} ranges given")
        self._arrays = (kinds, ops, at, fields)
        for a in (kinds, ops, at, fields, init):
            a.flags.writeable = False
        self._init = init
        self._inputs = list(inputs)
        self._params = list(params)
        self._in_tree, self._param_tree = in_tree, param_tree
        self._out = (out_offset, tuple(out_shape), out_size)
        self._local = threading.local()
        # Parameter leaves that index (gather) and the axis length their values must fit.
        self._index_checks = [(int(leaf), int(bound)) for leaf, bound in index_checks]
        for leaf, bound in self._index_checks:
            if not 0 <= leaf < len(params) or bound < 1:
                raise ValueError(f"bad index check ({leaf}, {bound})")
        # (offset, shape, size) of each input leaf, and whether the inputs are plain
        # positional arrays (no nesting, no parameters): the evaluation fast path.
        self._in_slots = [(off, tuple(s), math.prod(s)) for off, s in self._inputs]
        self._leaf_slots = self._in_slots
        self._names = in_tree.paths("argument") + param_tree.paths("p")
        self._flat = not self._params and all(c.kind == "leaf" for c in in_tree.children)
        # Instructions that run through BLAS (large products), in order.
        big = []
        for i in np.flatnonzero(kinds == MATMUL).tolist():
            nb, m, k, n = fields[at[i] + 1:at[i] + 5].tolist()
            if nb * m * k * n > BLAS_MAX_KERNEL:
                big.append(i)
        self._blas = big
        # Elementwise groups that run as compiled loops (with_group_runners: native()):
        # first instruction -> (forward, reverse, count).
        self._groups: dict[int, tuple[Any, Any, int]] = {}
        # (first, count) of the instructions that run outside the kernels, in order.
        self._outside = [(i, 1) for i in big]

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

    def op_names(self) -> list[str]:
        """Every tensor op in order: an elementwise op by its op-table name, a reduction as
        ``"reduce:sum"`` (or prod, max, min), any other kind by its name (``"matmul"``)."""
        kinds, ops, at, fields = self._arrays
        out = []
        for k, op, p in zip(kinds.tolist(), ops.tolist(), at.tolist(), strict=True):
            if k == ELEMENTWISE:
                out += [OPS[int(fields[p + 3 + j * MEMBER_FIELDS])].name
                        for j in range(int(fields[p + 2]))]
            elif k == REDUCE:
                out.append(f"reduce:{kernels.REDUCE_NAMES[op]}")
            else:
                out.append(kernels.KIND_NAMES[k])
        return out

    def layout(self) -> dict[str, Any]:
        """Where the leaves and the output live, and the arguments' structure: with
        :meth:`to_arrays`, everything :meth:`from_arrays` needs to rebuild the tape."""
        return {"inputs": list(self._inputs), "params": list(self._params),
                "in_tree": self._in_tree, "param_tree": self._param_tree,
                "output": (self._out[0], self._out[1]),
                "index_checks": list(self._index_checks)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], layout: dict[str, Any]) -> TensorTape:
        """A tape from :meth:`to_arrays` and :meth:`layout` (of this process or from
        elsewhere), validated as a compiled one is."""
        missing = {"kinds", "ops", "at", "fields", "init"} - set(arrays)
        if missing:
            raise ValueError(f"arrays lack {sorted(missing)}")
        out_offset, out_shape = layout["output"]
        return cls(arrays["kinds"], arrays["ops"], arrays["at"], arrays["fields"],
                   arrays["init"], layout["inputs"], layout["params"], layout["in_tree"],
                   layout["param_tree"], out_offset, tuple(out_shape),
                   index_checks=layout.get("index_checks", ()))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles (for multiprocessing, Dask) carry the arrays and the layout; the per-thread
        # vectors are made again on first use.
        return (_rebuild, (type(self), {k: np.array(v) for k, v in self.to_arrays().items()},
                           self.layout()))

    def _op_counts(self) -> dict[str, int]:
        # Tensor ops by kind; an elementwise group counts its members.
        kinds, _, at, fields = self._arrays
        counts: dict[str, int] = {}
        for k, p in zip(kinds.tolist(), at.tolist(), strict=True):
            name = kernels.KIND_NAMES[k]
            counts[name] = counts.get(name, 0) + (int(fields[p + 2]) if k == ELEMENTWISE else 1)
        return counts

    @property
    def n_ops(self) -> int:
        """Tensor ops (an elementwise group counts each of its ops): what the traced code
        did, independent of the tensors' sizes and of fusion."""
        return sum(self._op_counts().values())

    def __repr__(self) -> str:
        counts = self._op_counts()
        kinds = ", ".join(f"{n} {k}" for k, n in counts.items())
        native = f", {len(self._groups)} native groups" if self._groups else ""
        return (f"<TensorTape: inputs {self.input_shapes}, output {self.output_shape}, "
                f"{self.n_ops} ops ({kinds}) in {self.n_instructions} instructions, "
                f"{self.n_slots} slots{native}>")

    # ----------------------------------------------------------------------- evaluation

    def _buffers(self) -> tuple[np.ndarray, np.ndarray]:
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = (self._init.copy(), np.empty_like(self._init))
        return bufs

    def _load_fast(self, args: tuple[Any, ...], p: Any, vals: np.ndarray) -> bool:
        # For arguments that are float64 arrays of the right shapes and a flat structure:
        # about 0.3 us a leaf.  False for anything else (nothing raised).
        if p is not None or not self._flat or len(args) != len(self._leaf_slots):
            return False
        for (_, shape, _), value in zip(self._leaf_slots, args, strict=True):
            if type(value) is not np.ndarray or value.dtype != np.float64 \
                    or value.shape != shape:
                return False
        for (off, _, size), value in zip(self._leaf_slots, args, strict=True):
            vals[off:off + size] = value.reshape(-1)
        return True

    def _point_or_batch(self, args: tuple[Any, ...], p: Any, vals: np.ndarray, method: Any,
                        threads: int | None) -> Any:
        # One point: loaded into vals, None returned.  A batch (a leading axis): ``method``
        # at every point, the results stacked and returned.
        if self._load_fast(args, p, vals):
            return None
        batch = split_batch(self, args, p)
        if batch is not None:
            return run_batch(lambda a, q: method(*a, p=q), batch, threads)
        self._load_checked(args, p, vals)
        return None

    def _load(self, args: tuple[Any, ...], p: Any, vals: np.ndarray) -> None:
        if not self._load_fast(args, p, vals):
            self._load_checked(args, p, vals)

    def _load_checked(self, args: tuple[Any, ...], p: Any, vals: np.ndarray) -> None:
        n_args = len(self._in_tree.children)
        if len(args) != n_args:
            raise TypeError(f"expected {n_args} argument(s) (the traced function's "
                            f"differentiated inputs), got {len(args)}")
        leaves = self._in_tree.flatten(tuple(args), "argument")
        names = self._names
        if self._params:
            if p is None:
                raise TypeError(f"this tape takes parameters: pass p= with "
                                f"{len(self._param_tree.children)} value(s) (the traced "
                                "function's parameter arguments, as a tuple)")
            if len(self._param_tree.children) == 1 and not isinstance(p, tuple):
                p = (p,)
            leaves += self._param_tree.flatten(tuple(p) if isinstance(p, list) else p, "p")
        elif p is not None:
            raise TypeError("this tape takes no parameters, but p= was given")
        slots = [*self._inputs, *self._params]
        for k, ((off, shape), value) in enumerate(zip(slots, leaves, strict=True)):
            arr = as_leaf(value, shape, names[k], "the shape it was traced with")
            vals[off:off + arr.size] = arr.reshape(-1)
        for leaf, bound in self._index_checks:
            off, shape = self._params[leaf]
            v = vals[off:off + math.prod(shape)]
            ok = (v == np.floor(v)) & (v >= -bound) & (v < bound)
            if not ok.all():
                bad = v[~ok][0]
                raise IndexError(f"{names[len(self._inputs) + leaf]} is used as an index into "
                                 f"an axis of length {bound}: its values must be integers in "
                                 f"-{bound}..{bound - 1}, got {float(bad)!r}")

    def initial_values(self, p: Any = None) -> np.ndarray:
        """A new value vector as a call starts it: constants in place, the parameters ``p``
        loaded (checked as a call checks them, gather indices included), inputs zero.  What
        embedding code (``numba_kernel``, ``cfunc``) evaluates in."""
        vals = self._init.copy()
        zeros = self._in_tree.unflatten([np.zeros(shape) for _, shape in self._inputs])
        self._load_checked(tuple(zeros), p, vals)
        return vals

    def _value_out(self, vals: np.ndarray) -> Any:
        off, shape, size = self._out
        if not shape:
            return float(vals[off])
        return vals[off:off + size].reshape(shape).copy()

    def _grads(self, adj: np.ndarray) -> Any:
        leaves = [adj[off:off + size].reshape(shape) for off, shape, size in self._in_slots]
        if self._flat and len(leaves) == 1:
            return leaves[0].copy()
        grads = self._in_tree.unflatten([g.copy() for g in leaves])
        return grads[0] if len(grads) == 1 else tuple(grads)

    # ----------------------------------------------------------------------- sweeps

    def with_group_runners(self, runners: dict[int, tuple[Any, ...]]) -> TensorTape:
        """A copy of this tape whose elementwise groups run through other code.

        ``runners[i] = (forward, reverse)`` or ``(forward, reverse, count)``: instructions
        ``i .. i + count - 1`` (default 1; instruction ``i`` an ``ELEMENTWISE`` group) run as
        ``forward(vals)`` and ``reverse(vals, adj)`` in place of the kernels' rules for them
        (values, gradients, vector-Jacobian products; jvp and hvp keep the kernels').  What
        :meth:`fasttape.TensorTape.native` builds; the runners must compute what the kernels
        compute (docs/tensors.md, "Native groups")."""
        kinds = self._arrays[0]
        taken = set(self._blas)
        groups = {}
        for i, runner in runners.items():
            if not (isinstance(i, int) and 0 <= i < kinds.size and kinds[i] == ELEMENTWISE):
                raise ValueError(f"runner for instruction {i!r}: not an elementwise group of "
                                 f"this tape ({kinds.size} instructions)")
            if len(runner) not in (2, 3) or not all(callable(f) for f in runner[:2]):
                raise TypeError(f"runner for instruction {i}: expected (forward, reverse) "
                                "callables and optionally a count")
            count = runner[2] if len(runner) == 3 else 1
            span = set(range(i, i + count)) if isinstance(count, int) else set()
            if not span or i + count > kinds.size or span & taken:
                raise ValueError(f"runner for instruction {i}: count {count!r} does not name "
                                 f"instructions of this tape that no other runner or BLAS "
                                 f"product takes")
            taken |= span
            groups[i] = (runner[0], runner[1], count)
        new = copy.copy(self)
        new._local = threading.local()
        new._groups = groups
        new._outside = sorted([*((i, 1) for i in self._blas),
                               *((i, g[2]) for i, g in groups.items())])
        return new

    @property
    def n_native_groups(self) -> int:
        """How many elementwise groups run as compiled loops (:meth:`with_group_runners`)."""
        return len(self._groups)

    def _forward(self, vals: np.ndarray) -> None:
        if not self._outside:
            kernels.forward(*self._arrays, vals)
            return
        kinds, ops, at, fields = self._arrays
        lo = 0
        for i, count in self._outside:
            if lo < i:
                kernels.sweep(kinds, ops, at, fields, lo, i, vals)
            group = self._groups.get(i)
            if group is None:
                _blas_forward(fields, int(at[i]), vals)
            else:
                group[0](vals)
            lo = i + count
        if lo < kinds.size:
            kernels.sweep(kinds, ops, at, fields, lo, kinds.size, vals)

    def _reverse(self, vals: np.ndarray, adj: np.ndarray) -> None:
        kinds, ops, at, fields = self._arrays
        hi = kinds.size
        for i, count in reversed(self._outside):
            if i + count < hi:
                kernels.sweep(kinds, ops, at, fields, i + count, hi, vals, adj=adj)
            group = self._groups.get(i)
            if group is None:
                _blas_reverse(fields, int(at[i]), vals, adj)
            else:
                group[1](vals, adj)
            hi = i
        if hi > 0:
            kernels.sweep(kinds, ops, at, fields, 0, hi, vals, adj=adj)

    def _sweeps(self, vals: np.ndarray, adj: np.ndarray, off: int, cot: np.ndarray | None
                ) -> None:
        # Forward, seed, reverse: one kernel call when every instruction runs in the kernels.
        if not self._outside:
            if cot is None:
                kernels.value_and_grad(*self._arrays, vals, adj, off)
            else:
                kernels.vjp(*self._arrays, vals, adj, off, cot)
            return
        self._forward(vals)
        adj.fill(0.0)
        if cot is None:
            adj[off] = 1.0
        else:
            adj[off:off + cot.size] = cot
        self._reverse(vals, adj)

    def value(self, *args: Any, p: Any = None, threads: int | None = None) -> Any:
        """The output at ``args`` (a float for a scalar output, else an array).

        Arguments with one more leading axis than traced are a batch of points
        (:mod:`fasttape.tensor.batch`), evaluated on ``threads`` threads (default: Numba's
        thread count); the values then come stacked, shape ``(B, *output_shape)``.
        """
        vals, _ = self._buffers()
        stacked = self._point_or_batch(args, p, vals, self.value, threads)
        if stacked is not None:
            return stacked
        self._forward(vals)
        return self._value_out(vals)

    def value_and_grad(self, *args: Any, p: Any = None, threads: int | None = None
                       ) -> tuple[Any, Any]:
        """``(value, gradient)``; the gradient has the arguments' structure and shapes (one
        argument: its gradient; several: a tuple).  The output must be a scalar.  A batch
        (see :meth:`value`) gives values of shape ``(B,)`` and gradients with a leading B."""
        off, shape, size = self._out
        if size != 1:
            raise ValueError(f"value_and_grad needs a scalar output, this tape's has shape "
                             f"{shape}: use vjp(args, cotangent)")
        vals, adj = self._buffers()
        stacked = self._point_or_batch(args, p, vals, self.value_and_grad, threads)
        if stacked is not None:
            return stacked
        self._sweeps(vals, adj, off, None)
        return float(vals[off]), self._grads(adj)

    def grad(self, *args: Any, p: Any = None, threads: int | None = None) -> Any:
        """The gradient alone (see :meth:`value_and_grad`)."""
        return self.value_and_grad(*args, p=p, threads=threads)[1]

    def vjp(self, args: Any, cotangent: Any, p: Any = None) -> Any:
        """``cotangent`` (the output's shape) times the Jacobian: a gradient-shaped result."""
        off, shape, _ = self._out
        cot = as_leaf(cotangent, shape, "the cotangent", "the output's shape")
        vals, adj = self._buffers()
        self._load(tuple(args) if isinstance(args, tuple) else (args,), p, vals)
        self._sweeps(vals, adj, off, np.ascontiguousarray(cot).reshape(-1))
        return self._grads(adj)

    def jvp(self, args: Any, tangents: Any, p: Any = None) -> tuple[Any, Any]:
        """``(value, J @ tangents)``: the output and its directional derivative along
        ``tangents`` (the arguments' structure and shapes), in one forward sweep that carries
        tangents (forward mode).  Several arguments go in tuples: ``jvp((a, b), (da, db))``.
        """
        args = tuple(args) if isinstance(args, tuple) else (args,)
        vals, _ = self._buffers()
        self._load(args, p, vals)
        tan = self._extra("tan")
        self._tangent_in(tangents, tan)
        self._tangent_sweep(vals, tan)
        off, shape, size = self._out
        value = self._value_out(vals)
        return value, (float(tan[off]) if not shape else
                       tan[off:off + size].reshape(shape).copy())

    def _tangent_in(self, tangents: Any, tan: np.ndarray) -> None:
        # tan: zero, then the input leaves' tangents (the same structure as the arguments).
        tangents = tuple(tangents) if isinstance(tangents, tuple) else (tangents,)
        leaves = self._in_tree.flatten(tangents, "tangent")
        tan.fill(0.0)
        for (off, shape, size), value, name in zip(self._in_slots, leaves,
                                                   self._in_tree.paths("tangent"), strict=True):
            tan[off:off + size] = as_leaf(value, shape, name, "its argument's shape").reshape(-1)

    def _extra(self, name: str) -> np.ndarray:
        # A per-thread vector of the value vector's length (tangents, adjoint tangents).
        buf = getattr(self._local, name, None)
        if buf is None:
            buf = np.empty_like(self._init)
            setattr(self._local, name, buf)
        return buf

    def _tangent_sweep(self, vals: np.ndarray, tan: np.ndarray) -> None:
        kinds, ops, at, fields = self._arrays
        lo = 0
        for i in self._blas:
            kernels.sweep(kinds, ops, at, fields, lo, i, vals, tan)
            _blas_tangent(fields, int(at[i]), vals, tan)
            lo = i + 1
        kernels.sweep(kinds, ops, at, fields, lo, kinds.size, vals, tan)

    def hvp(self, args: Any, tangents: Any, p: Any = None) -> Any:
        """Hessian of the (scalar) output times ``tangents``, by forward-over-reverse: one
        tangent sweep, then one reverse sweep that also carries the adjoints' tangents, with
        the op table's second partials.  The result has the arguments' structure."""
        off, shape, size = self._out
        if size != 1:
            raise ValueError(f"hvp needs a scalar output, this tape's has shape {shape}")
        vals, adj = self._buffers()
        self._load(tuple(args) if isinstance(args, tuple) else (args,), p, vals)
        tan, adt = self._extra("tan"), self._extra("adt")
        self._tangent_in(tangents, tan)
        self._tangent_sweep(vals, tan)
        adj.fill(0.0)
        adt.fill(0.0)
        adj[off] = 1.0
        kinds, ops, at, fields = self._arrays
        hi = kinds.size
        for i in reversed(self._blas):
            kernels.sweep(kinds, ops, at, fields, i + 1, hi, vals, tan, adj, adt)
            _blas_hvp_reverse(fields, int(at[i]), vals, tan, adj, adt)
            hi = i
        kernels.sweep(kinds, ops, at, fields, 0, hi, vals, tan, adj, adt)
        return self._grads(adt)

    def hessian(self, *args: Any, p: Any = None) -> Any:
        """The Hessian of the (scalar) output: one :meth:`hvp` per input element.  One
        argument of shape ``s``: an array of shape ``s + s``; several: a tuple of tuples,
        block ``[i][j]`` of shape ``s_i + s_j``."""
        slots = self._in_slots
        blocks: list[list[list[np.ndarray]]] = [[[] for _ in slots] for _ in slots]
        for i, (_, _, size_i) in enumerate(slots):
            for e in range(size_i):
                leaves = [np.zeros(s) for _, s, _ in slots]
                leaves[i].reshape(-1)[e] = 1.0
                col = self.hvp(args, tuple(self._in_tree.unflatten(leaves)), p=p)
                col_leaves = self._in_tree.flatten(col if isinstance(col, tuple) else (col,))
                for j, leaf in enumerate(col_leaves):
                    blocks[j][i].append(np.asarray(leaf))
        out = tuple(tuple(np.stack(blocks[j][i], axis=-1).reshape(
            slots[j][1] + slots[i][1]) for i in range(len(slots))) for j in range(len(slots)))
        return out[0][0] if len(slots) == 1 else out

    def jacobian(self, *args: Any, p: Any = None) -> Any:
        """Derivatives of every output element by every input element: one reverse sweep
        per output element.  Each gradient leaf gets shape ``output_shape + leaf_shape``
        (one argument: that array; several: a tuple)."""
        _, shape, size = self._out
        rows = []
        for k in range(size):
            cot = np.zeros(size)
            cot[k] = 1.0
            g = self.vjp(args, cot.reshape(shape), p=p)
            rows.append(g if isinstance(g, tuple) else (g,))
        parts = tuple(_reshape_tree(stack_tree([r[j] for r in rows]), shape)
                      for j in range(len(rows[0])))
        return parts[0] if len(parts) == 1 else parts





def _operands(fields: np.ndarray, p: int, vals: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, slice, slice, slice, tuple[int, ...]]:
    d, nb, m, k, n, a, sa, b, sb = fields[p:p + 9].tolist()
    sl_a = slice(a, a + (m * k if sa == 0 else nb * m * k))
    sl_b = slice(b, b + (k * n if sb == 0 else nb * k * n))
    sh_a = (m, k) if sa == 0 else (nb, m, k)
    sh_b = (k, n) if sb == 0 else (nb, k, n)
    return vals[sl_a].reshape(sh_a), vals[sl_b].reshape(sh_b), sl_a, sl_b, \
        slice(d, d + nb * m * n), (nb, m, n)


def _blas_forward(fields: np.ndarray, p: int, vals: np.ndarray) -> None:
    """A MATMUL instruction through NumPy (BLAS), on views of ``vals``."""
    a, b, _, _, sl_c, shape_c = _operands(fields, p, vals)
    np.matmul(a, b, out=vals[sl_c].reshape(shape_c))


def _blas_tangent(fields: np.ndarray, p: int, vals: np.ndarray, tan: np.ndarray) -> None:
    """A MATMUL instruction's value and tangent through NumPy: ``dC = dA B + A dB``."""
    a, b, sl_a, sl_b, sl_c, shape_c = _operands(fields, p, vals)
    np.matmul(a, b, out=vals[sl_c].reshape(shape_c))
    da, db = tan[sl_a].reshape(a.shape), tan[sl_b].reshape(b.shape)
    dc = tan[sl_c].reshape(shape_c)
    np.matmul(da, b, out=dc)
    dc += np.matmul(a, db)


def _blas_hvp_reverse(fields: np.ndarray, p: int, vals: np.ndarray, tan: np.ndarray,
                      adj: np.ndarray, adt: np.ndarray) -> None:
    """A MATMUL instruction's forward-over-reverse step through NumPy (as the kernel's)."""
    a, b, sl_a, sl_b, sl_c, shape_c = _operands(fields, p, vals)
    da, db = tan[sl_a].reshape(a.shape), tan[sl_b].reshape(b.shape)
    g, gd = adj[sl_c].reshape(shape_c), adt[sl_c].reshape(shape_c)
    if fields[p + 9]:
        ga = np.matmul(g, np.swapaxes(b, -1, -2))
        gda = np.matmul(gd, np.swapaxes(b, -1, -2)) + np.matmul(g, np.swapaxes(db, -1, -2))
        adj[sl_a] += (ga.sum(axis=0) if a.ndim == 2 else ga).reshape(-1)
        adt[sl_a] += (gda.sum(axis=0) if a.ndim == 2 else gda).reshape(-1)
    if fields[p + 10]:
        gb = np.matmul(np.swapaxes(a, -1, -2), g)
        gdb = np.matmul(np.swapaxes(a, -1, -2), gd) + np.matmul(np.swapaxes(da, -1, -2), g)
        adj[sl_b] += (gb.sum(axis=0) if b.ndim == 2 else gb).reshape(-1)
        adt[sl_b] += (gdb.sum(axis=0) if b.ndim == 2 else gdb).reshape(-1)


def _blas_reverse(fields: np.ndarray, p: int, vals: np.ndarray, adj: np.ndarray) -> None:
    """``dA += dC @ B.T`` and ``dB += A.T @ dC`` through NumPy; a matrix shared by the batch
    (stride 0) gets the sum over the batch."""
    a, b, sl_a, sl_b, sl_c, shape_c = _operands(fields, p, vals)
    dc = adj[sl_c].reshape(shape_c)
    if fields[p + 9]:
        da = np.matmul(dc, np.swapaxes(b, -1, -2))
        adj[sl_a] += (da.sum(axis=0) if a.ndim == 2 else da).reshape(-1)
    if fields[p + 10]:
        db = np.matmul(np.swapaxes(a, -1, -2), dc)
        adj[sl_b] += (db.sum(axis=0) if b.ndim == 2 else db).reshape(-1)


def _rebuild(cls: type[TensorTape], arrays: dict[str, np.ndarray], layout: dict[str, Any]
             ) -> TensorTape:
    return cls.from_arrays(arrays, layout)


def _reshape_tree(tree: Any, out_shape: tuple[int, ...]) -> Any:
    # Leading axis (one row per output element) -> the output's shape.
    if isinstance(tree, dict):
        return {k: _reshape_tree(v, out_shape) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        out = [_reshape_tree(v, out_shape) for v in tree]
        return tuple(out) if isinstance(tree, tuple) else out
    return tree.reshape(out_shape + tree.shape[1:])
