"""The traced tensor: NumPy code on :class:`Tensor` records tensor instructions.

A :class:`Tensor` is a strided view of the graph's flat slot vector, ``(buffer, offset, shape,
strides)``, the way a NumPy array is a view of its memory.  Views cost nothing: slicing,
transposing, broadcasting and reshaping a contiguous tensor record no instruction.  An op
whose kernel needs a contiguous argument (elementwise ops, reductions, matmul) first records a
``COPY`` of a view that is not; a broadcast scalar is read with stride 0 instead.

Shapes are static: every shape is known while tracing and checked there, with NumPy's own
error messages wherever NumPy computes them (broadcasting, indexing, axes).  The view geometry
of basic indexing, ``transpose``, ``broadcast_to`` and friends is computed by NumPy itself, on a
dummy int8 view whose strides are the tensor's strides in slots (those functions only compute
views, they never read the memory).
"""

from __future__ import annotations

import builtins
import math
import string
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np
from numpy.exceptions import AxisError

from fasttape.kernels.tensor import (
    COPY,
    ELEMENTWISE,
    GATHER,
    MATMUL,
    MAX,
    MIN,
    PROD,
    REDUCE,
    SUM,
    TAKE,
)
from fasttape.ops import OP_BY_NAME
from fasttape.tensor.graph import SCRATCH, TensorGraph
from fasttape.var import UFUNC_OPS, Var, is_integral_number

__all__ = [
    "Tensor",
    "as_tensor",
    "concatenate",
    "einsum",
    "elementwise",
    "logsumexp",
    "matmul",
    "mean",
    "reduce",
    "softmax",
    "stack",
    "where",
]

def _prod(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def _c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, step = [], 1
    for d in reversed(shape):
        out.append(step)
        step *= d
    return tuple(reversed(out))


class Tensor:
    """A traced tensor of float64 (a strided view of the graph's slots; see the module doc).

    Supports NumPy's operators, ufuncs and the functions listed in docs/tensors.md, through
    ``__array_ufunc__`` and ``__array_function__``, so NumPy code traces unchanged.
    """

    __slots__ = ("buf", "g", "off", "shape", "strides")
    __array_priority__ = 1000.0

    def __init__(self, g: TensorGraph, buf: int, off: int, shape: tuple[int, ...],
                 strides: tuple[int, ...] | None = None) -> None:
        self.g = g
        self.buf = buf
        self.off = off
        self.shape = tuple(int(d) for d in shape)
        self.strides = _c_strides(self.shape) if strides is None else tuple(strides)

    # ----------------------------------------------------------------------- attributes

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return _prod(self.shape)

    @property
    def dtype(self) -> np.dtype:
        """Always float64: every traced value is a double."""
        return np.dtype(np.float64)

    @property
    def T(self) -> Tensor:  # NumPy's spelling
        """The transpose (axes reversed), a view."""
        return transpose(self)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of unsized object (a 0-d traced tensor)")
        return self.shape[0]

    def __iter__(self) -> Any:
        if not self.shape:
            raise TypeError("iteration over a 0-d traced tensor")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, slots={self.off}..)"

    __hash__ = object.__hash__

    # ----------------------------------------------------------------------- no values

    def __bool__(self) -> NoReturn:
        raise TypeError(
            "a traced tensor has no value while tracing, so it cannot decide an `if`, `while` "
            "or `and`/`or`: the tape records one fixed sequence of operations. Use "
            "ft.where(cond, a, b) (or np.where) to select values, np.maximum/np.minimum, or "
            "np.clip."
        )

    def __float__(self) -> NoReturn:
        raise TypeError("a traced tensor has no value while tracing: float() needs one; keep "
                        "it a tensor (np.sin(t), not math.sin(t))")

    __int__ = __index__ = __complex__ = __float__

    def __array__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            "a traced tensor cannot become a NumPy array while tracing (it has no value yet): "
            "use NumPy functions on it (they are traced), or ft.stop_gradient for a value "
            "that must not be differentiated"
        )

    def __setitem__(self, key: Any, value: Any) -> NoReturn:
        raise TypeError(
            "traced tensors are immutable: build the result with np.where, np.concatenate or "
            "np.stack instead of assigning into a slice"
        )

    # ----------------------------------------------------------------------- operators
    # The arithmetic and comparison operators are made from _OPERATORS after the class.

    def __pos__(self) -> Tensor:
        return self

    def __neg__(self) -> Tensor:
        return elementwise("neg", self)

    def __abs__(self) -> Tensor:
        return elementwise("abs", self)

    def __getitem__(self, key: Any) -> Tensor:
        return getitem(self, key)

    # ----------------------------------------------------------------------- methods

    def sum(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        """Sum over ``axis`` (all axes by default), as ``np.sum``."""
        return reduce(self, SUM, axis, keepdims)

    def prod(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        """Product over ``axis``, as ``np.prod``."""
        return reduce(self, PROD, axis, keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        """Maximum over ``axis``, as ``np.max`` (the gradient goes to the first maximum)."""
        return reduce(self, MAX, axis, keepdims)

    def min(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        """Minimum over ``axis``, as ``np.min`` (the gradient goes to the first minimum)."""
        return reduce(self, MIN, axis, keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        """Mean over ``axis``, as ``np.mean``."""
        return mean(self, axis, keepdims)

    def reshape(self, *shape: Any) -> Tensor:
        """The same elements in another shape (C order), as ``np.reshape``."""
        return reshape(self, shape[0] if len(shape) == 1 else shape)

    def transpose(self, *axes: Any) -> Tensor:
        """Axes permuted (reversed by default), a view."""
        return transpose(self, (axes[0] if len(axes) == 1 else axes) if axes else None)

    def swapaxes(self, a: int, b: int) -> Tensor:
        """Two axes exchanged, a view."""
        return _view(self, np.swapaxes, a, b)

    def ravel(self) -> Tensor:
        """The elements as a 1-D tensor (C order)."""
        return reshape(self, (-1,))

    flatten = ravel

    def squeeze(self, axis: Any = None) -> Tensor:
        """Axes of length 1 removed, a view."""
        return _view(self, np.squeeze, axis)

    def dot(self, o: Any) -> Tensor:
        """``np.dot(self, o)``."""
        return dot(self, o)

    def clip(self, lo: Any = None, hi: Any = None) -> Tensor:
        """``np.clip(self, lo, hi)``."""
        return clip(self, lo, hi)

    def astype(self, dtype: Any) -> Tensor:
        """Only float64 is traced: ``astype(float)`` returns the tensor itself."""
        if np.dtype(dtype) != np.float64:
            raise TypeError(f"traced tensors are float64 only, cannot cast to {np.dtype(dtype)}")
        return self

    # ----------------------------------------------------------------------- NumPy protocol

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        # np.matmul is a (generalized) ufunc, so np.matmul(t, u) and ndarray @ t arrive here,
        # not at __array_function__.
        if ufunc is np.matmul and method == "__call__" and not kwargs:
            return matmul(*inputs)
        name = UFUNC_OPS.get(ufunc.__name__)
        if method != "__call__" or name is None or kwargs:
            what = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
            extra = f" with {sorted(kwargs)}" if kwargs and name is not None else ""
            raise TypeError(
                f"{what}{extra} is not supported on traced fasttape tensors: see "
                "docs/tensors.md for the ufuncs and functions that trace"
            )
        if name == "positive":
            return inputs[0]
        if name == "pow":
            return power(*inputs)
        return elementwise(name, *inputs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        impl = ARRAY_FUNCTIONS.get(func)
        if impl is None:
            module = getattr(func, "__module__", None) or "numpy"
            raise TypeError(
                f"{module}.{func.__name__} is not supported on traced fasttape tensors: see "
                "docs/tensors.md for the functions that trace (or write it with those)"
            )
        return impl(*args, **kwargs)


#: Operator -> what it records: an op of the table (applied elementwise) or a function.
_OPERATORS: dict[str, Any] = {
    "add": "add", "sub": "sub", "mul": "mul", "truediv": "div",
    "lt": "lt", "le": "le", "gt": "gt", "ge": "ge", "eq": "eq", "ne": "ne",
    "pow": lambda x, y: power(x, y), "matmul": lambda x, y: matmul(x, y),
}
_COMPARISONS = {"lt", "le", "gt", "ge", "eq", "ne"}  # no reflected form (Python swaps them)


def _operator(what: Any, reflected: bool) -> Any:
    fn = (lambda *xs: elementwise(what, *xs)) if isinstance(what, str) else what
    if reflected:
        return lambda self, other: fn(other, self)
    return lambda self, other: fn(self, other)


for _name, _what in _OPERATORS.items():
    setattr(Tensor, f"__{_name}__", _operator(_what, reflected=False))
    if _name not in _COMPARISONS:
        setattr(Tensor, f"__r{_name}__", _operator(_what, reflected=True))


# --------------------------------------------------------------------------- conversion


def _graph(*values: Any) -> TensorGraph:
    g = None
    for v in values:
        if isinstance(v, Tensor):
            if g is None:
                g = v.g
            elif v.g is not g:
                raise ValueError("tensors of two different traces cannot be combined")
        elif isinstance(v, (list, tuple)):
            for w in v:
                if isinstance(w, Tensor):
                    return _graph(w, *values)
    if g is None:
        raise TypeError("expected at least one traced tensor")
    return g


def as_tensor(g: TensorGraph, value: Any) -> Tensor:
    """``value`` as a tensor of ``g``: tensors pass, numbers and arrays become constants."""
    if isinstance(value, Tensor):
        if value.g is not g:
            raise ValueError("tensors of two different traces cannot be combined")
        return value
    if isinstance(value, Var):
        raise TypeError(
            "a scalar fasttape.Var cannot be mixed into a tensor trace: inside a function traced "
            "with shapes=, scalars are 0-d tensors (shape ())"
        )
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or arr.dtype == np.bool_):
        raise TypeError(f"expected a number, an array or a traced tensor, got {value!r}")
    if np.iscomplexobj(arr):
        raise TypeError("complex values are not supported: traced tensors are float64")
    buf = g.constant_buffer(arr)
    # One value (a scalar, or an array of one element) is read with stride 0 wherever used.
    return Tensor(g, buf, g.buffers[buf][0], arr.shape, (0,) * arr.ndim if arr.size == 1
                  else None)


def _is_contiguous(t: Tensor) -> bool:
    step = 1
    for d, s in zip(reversed(t.shape), reversed(t.strides), strict=True):
        if d != 1 and s != step:
            return False
        step *= d
    return True


def _collapsed(shape: tuple[int, ...], strides: tuple[int, ...]
               ) -> tuple[list[int], list[int]]:
    # Dimensions of length 1 dropped and neighbours that step evenly merged: fewer, longer
    # rows for the COPY kernel.  At least one dimension.
    dims = [(d, s) for d, s in zip(shape, strides, strict=True) if d != 1]
    out: list[list[int]] = []
    for d, s in dims:
        if out and out[-1][1] == s * d:
            out[-1] = [out[-1][0] * d, s]
        else:
            out.append([d, s])
    if not out:
        out = [[1, 0]]
    return [d for d, _ in out], [s for _, s in out]


def contiguous(t: Tensor) -> Tensor:
    """``t`` itself if C-contiguous, else a contiguous copy (one COPY instruction)."""
    if _is_contiguous(t):
        return t
    g = t.g
    n = t.size
    buf = g.buffer(n)
    d = g.buffers[buf][0]
    shape, strides = _collapsed(t.shape, t.strides)
    g.emit(COPY, 0, [d, n, t.off, len(shape), *shape, *strides], buf, (t.buf,))
    return Tensor(g, buf, d, t.shape)


# --------------------------------------------------------------------------- views


def _dummy(t: Tensor) -> tuple[np.ndarray, int]:
    # An int8 view with the tensor's shape and strides (in slots, so in bytes here), over one
    # byte: NumPy computes views of it without reading it.
    base = np.zeros(1, dtype=np.int8)
    view = np.lib.stride_tricks.as_strided(base, shape=t.shape, strides=t.strides)
    return view, base.ctypes.data


def _from_dummy(t: Tensor, view: np.ndarray, base: int) -> Tensor:
    return Tensor(t.g, t.buf, t.off + (view.ctypes.data - base), view.shape, view.strides)


def _view(t: Tensor, fn: Callable[..., np.ndarray], *args: Any, **kwargs: Any) -> Tensor:
    view, base = _dummy(t)
    return _from_dummy(t, fn(view, *args, **kwargs), base)


def transpose(t: Any, axes: Any = None) -> Tensor:
    """Axes permuted, a view (``np.transpose``)."""
    t = _tensor_arg(t)
    return _view(t, np.transpose, axes)


def broadcast_to(t: Any, shape: Any) -> Tensor:
    """A read-only broadcast view (``np.broadcast_to``): stride 0 along new axes."""
    t = _tensor_arg(t)
    return _view(t, np.broadcast_to, shape)


def _is_basic_key(key: Any) -> bool:
    items = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, slice) or is_integral_number(k)
               for k in items)


def getitem(t: Tensor, key: Any) -> Tensor:
    """``t[key]``: basic indexing is a view; integer arrays and boolean masks gather (TAKE)."""
    items = key if isinstance(key, tuple) else (key,)
    if any(isinstance(k, Tensor) for k in items):
        return _gather(t, items)
    if _is_basic_key(key):
        # A trailing Ellipsis keeps a fully indexed element a 0-d view (never a scalar read).
        view, base = _dummy(t)
        return _from_dummy(t, view[(*items, Ellipsis)] if Ellipsis not in items
                           else view[key], base)
    # Advanced indexing: NumPy applies the key to the array of the elements' slot offsets.
    offs = np.full(t.shape, t.off, dtype=np.int64)
    for axis, (d, s) in enumerate(zip(t.shape, t.strides, strict=True)):
        shape = [1] * t.ndim
        shape[axis] = d
        offs += (np.arange(d, dtype=np.int64) * s).reshape(shape)
    picked = offs[key]
    g = t.g
    n = picked.size
    buf = g.buffer(n)
    d = g.buffers[buf][0]
    g.emit(TAKE, 0, [d, n, 0, *picked.reshape(-1).tolist()], buf, (t.buf,))
    return Tensor(g, buf, d, picked.shape)


def _gather(t: Tensor, items: tuple[Any, ...]) -> Tensor:
    # t[i0, i1, ...] with integer arrays, some of them parameters (values known at call
    # time): a GATHER over the first len(items) axes, the others kept whole.
    g = t.g
    comps = []
    for k in items:
        if isinstance(k, Tensor):
            leaf = g.param_bufs.get(k.buf)
            whole = leaf is not None and k.off == g.params[leaf][0] \
                and k.shape == g.params[leaf][1] and _is_contiguous(k)
            if not whole:
                raise TypeError(
                    "a traced tensor used as an index must be a parameter argument itself "
                    "(traced with params=, passed as p=), whole and unchanged: indices that "
                    "depend on differentiated inputs have no derivative, and computed ones are "
                    "not supported; index with a NumPy integer array otherwise")
            comps.append(k)
        else:
            arr = np.asarray(k)
            if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
                raise TypeError("indexing with a parameter tensor combines only with integer "
                                f"arrays (one per leading axis), got {k!r}")
            comps.append(arr)
    if len(items) > t.ndim:
        raise IndexError(f"too many indices for array: array is {t.ndim}-dimensional, but "
                         f"{len(items)} were indexed")
    shape = np.broadcast_shapes(*(c.shape for c in comps))
    src = contiguous(t)
    trailing = src.shape[len(comps):]
    inner = _prod(trailing)
    fields_c: list[int] = []
    reads = [src.buf]
    for axis, c in enumerate(comps):
        size = src.shape[axis]
        stride = _prod(src.shape[axis + 1:])
        if isinstance(c, Tensor):
            leaf = g.param_bufs[c.buf]
            g.index_checks[leaf] = min(g.index_checks.get(leaf, size), size)
            ct = contiguous(broadcast_to(c, shape)) if c.shape != shape else c
        else:
            if c.size and (c.min() < -size or c.max() >= size):
                bad = c.max() if c.max() >= size else c.min()
                raise IndexError(f"index {bad} is out of bounds for axis {axis} with size "
                                 f"{size}")
            ct = as_tensor(g, np.broadcast_to(c, shape).astype(np.float64))
            ct = contiguous(broadcast_to(ct, shape))
        fields_c += [ct.off, size, stride]
        reads.append(ct.buf)
    npos = _prod(shape)
    buf = g.buffer(npos * inner)
    d = g.buffers[buf][0]
    g.emit(GATHER, 0, [d, npos, inner, src.off, len(comps), *fields_c], buf, tuple(reads))
    return Tensor(g, buf, d, (*shape, *trailing))


def reshape(t: Any, shape: Any) -> Tensor:
    """The same elements in another shape, C order (``np.reshape``; a view when contiguous)."""
    t = _tensor_arg(t)
    if is_integral_number(shape):
        shape = (int(shape),)
    shape = tuple(int(d) for d in shape)
    unknown = [i for i, d in enumerate(shape) if d == -1]
    known = _prod([d for d in shape if d != -1])
    if len(unknown) > 1:
        raise ValueError("can only specify one unknown dimension")
    if unknown and known and t.size % known == 0:
        shape = tuple(t.size // known if d == -1 else d for d in shape)
    if any(d < 0 for d in shape) or _prod(shape) != t.size:
        raise ValueError(f"cannot reshape array of size {t.size} into shape {shape}")
    c = contiguous(t)
    return Tensor(c.g, c.buf, c.off, shape)


def _tensor_arg(t: Any) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"expected a traced tensor, got {type(t).__name__}")
    return t


# --------------------------------------------------------------------------- elementwise


def elementwise(name: str, *args: Any) -> Tensor:
    """Op ``name`` of the op table applied elementwise, with NumPy broadcasting."""
    g = _graph(*args)
    ts = [as_tensor(g, a) for a in args]
    if name in _WITH_CONSTANT:
        name, ts = _canonical(g, name, ts)
    spec = OP_BY_NAME[name]
    shape = np.broadcast_shapes(*(t.shape for t in ts))
    n = _prod(shape)
    fields: list[int] = []
    adjoints: list[int] = []
    reads = []
    for j, t in enumerate(ts):
        if t.size == 1:
            a, s = t.off, 0  # one value, read for every element
        elif t.shape == shape and _is_contiguous(t):
            a, s = t.off, 1
        else:
            t = contiguous(broadcast_to(t, shape))
            a, s = t.off, 1
        fields += [a, s]
        reads.append(t.buf)
        if j < spec.ndiff:
            adjoints += [a, s] if t.buf in g.traced else [SCRATCH, 1]
    fields += [0, 0] * (3 - len(ts))
    adjoints += [0, 0] * (2 - len(adjoints) // 2)
    buf = g.buffer(n)
    d = g.buffers[buf][0]
    g.emit(ELEMENTWISE, spec.code, [d, n, *fields, *adjoints], buf, tuple(reads))
    return Tensor(g, buf, d, shape)


# Arithmetic with an argument that needs no adjoint (a constant or a parameter) uses the
# table's constant-argument forms, bitwise the same: one partial and one adjoint update per
# element instead of two.  (first constant, second constant) -> op, with the traced
# argument always stored first.
_WITH_CONSTANT = {"add": ("addc", "addc"), "mul": ("mulc", "mulc"), "sub": ("rsubc", "subc"),
                  "div": ("rdivc", "divc")}


def _canonical(g: TensorGraph, name: str, ts: list[Tensor]) -> tuple[str, list[Tensor]]:
    a, b = ts
    if name == "mul" and _same_view(a, b):
        return "square", [a]  # x * x: one partial (2x), bitwise the same
    traced_a, traced_b = a.buf in g.traced, b.buf in g.traced
    if traced_a and not traced_b:
        return _WITH_CONSTANT[name][1], [a, b]
    if traced_b and not traced_a:
        return _WITH_CONSTANT[name][0], [b, a]
    if name in ("add", "mul") and a.size == 1 and b.size > 1:
        return name, [b, a]  # the broadcast value second: the kernels hoist it (commutative)
    return name, ts


def _same_view(a: Tensor, b: Tensor) -> bool:
    return a.g is b.g and a.off == b.off and a.shape == b.shape and a.strides == b.strides


def power(x: Any, y: Any) -> Tensor:
    """``x ** y``: a constant integer exponent records ``powi``, another constant ``powc``, a
    traced exponent ``pow`` (the scalar tracer's rule)."""
    if isinstance(y, Tensor):
        return elementwise("pow", x, y)
    if is_integral_number(y) or (isinstance(y, np.ndarray) and np.issubdtype(y.dtype,
                                                                              np.integer)):
        if np.any(np.abs(np.asarray(y, dtype=np.int64)) >= 2**31):
            raise ValueError("integer exponent out of range (|n| < 2**31)")
        if is_integral_number(y) and int(y) == 2:
            return elementwise("square", x)  # powi(x, 2) is x * x: bitwise the same
        return elementwise("powi", x, np.asarray(y, dtype=np.float64))
    return elementwise("powc", x, y)


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """``a`` where ``cond != 0``, else ``b``, elementwise with broadcasting (``np.where``)."""
    return elementwise("where", a, b, cond)


def clip(a: Any, lo: Any = None, hi: Any = None) -> Tensor:
    """``np.clip``: ``minimum(maximum(a, lo), hi)``."""
    out = a
    if lo is not None:
        out = elementwise("maximum", out, lo)
    if hi is not None:
        out = elementwise("minimum", out, hi)
    return out


# --------------------------------------------------------------------------- reductions

_REDUCE_NAME = {SUM: "add", PROD: "multiply", MAX: "maximum", MIN: "minimum"}


def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    items = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in items:
        if not is_integral_number(a):
            raise TypeError(f"axis must be an integer or a tuple of integers, got {a!r}")
        if not -ndim <= a < ndim:
            raise AxisError(int(a), ndim)
        out.append(int(a) % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError("duplicate value in 'axis'")
    return tuple(sorted(out))


def reduce(t: Any, red: int, axis: Any = None, keepdims: bool = False) -> Tensor:
    """Sum, product, maximum or minimum (``red``) over ``axis``, as NumPy's reductions."""
    t = _tensor_arg(t)
    axes = _axes(axis, t.ndim)
    kept = [i for i in range(t.ndim) if i not in axes]
    r = _prod([t.shape[a] for a in axes])
    if r == 0 and red in (MAX, MIN):
        raise ValueError(f"zero-size array to reduction operation {_REDUCE_NAME[red]} which "
                         "has no identity")
    out_shape = tuple(1 if i in axes else t.shape[i] for i in range(t.ndim)) if keepdims \
        else tuple(t.shape[i] for i in kept)
    if not axes:
        return t
    g = t.g
    if axes == tuple(range(axes[0], axes[-1] + 1)) and _is_contiguous(t):
        src = t
        outer, inner = _prod(t.shape[:axes[0]]), _prod(t.shape[axes[-1] + 1:])
    else:  # the reduced axes moved last: rows of r contiguous elements
        src = contiguous(transpose(t, (*kept, *axes)))
        outer, inner = _prod([t.shape[i] for i in kept]), 1
    buf = g.buffer(outer * inner)
    d = g.buffers[buf][0]
    g.emit(REDUCE, red, [d, outer, r, inner, src.off], buf, (src.buf,))
    return Tensor(g, buf, d, out_shape)


def mean(t: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis`` (``np.mean``): the sum divided by the count."""
    t = _tensor_arg(t)
    count = _prod([t.shape[a] for a in _axes(axis, t.ndim)])
    return elementwise("div", reduce(t, SUM, axis, keepdims), float(count))


def logsumexp(t: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    """``log(sum(exp(t), axis))`` without overflow (``scipy.special.logsumexp``).

    The maximum is subtracted first and held constant for differentiation (it cancels), so
    the gradient is exactly ``softmax(t)`` along the axis.
    """
    t = _tensor_arg(t)
    m = _shift(t, axis)
    out = elementwise("log", reduce(elementwise("exp", t - m), SUM, axis, keepdims=True)) + m
    if keepdims:
        return out
    return reshape(out, tuple(d for i, d in enumerate(t.shape)
                              if i not in _axes(axis, t.ndim)))


def _shift(t: Tensor, axis: Any) -> Tensor:
    # The maximum along ``axis`` (kept), held constant for differentiation; an infinite
    # maximum (all -inf, or +inf present) is replaced by 0, as SciPy does.
    m = reduce(t, MAX, axis, keepdims=True)
    return elementwise("stop_gradient", where(elementwise("lt", abs(m), np.inf), m, 0.0))


def softmax(t: Any, axis: Any = -1) -> Tensor:
    """``exp(t) / sum(exp(t), axis)``, computed as ``e / sum(e, axis)`` with ``e = exp(t - m)``
    and ``m`` the maximum (held constant for differentiation), as SciPy and JAX do: not as
    ``exp(t - logsumexp(t))``, whose rounding of ``m + log(sum)`` costs ``|m|`` ulps."""
    t = _tensor_arg(t)
    e = elementwise("exp", t - _shift(t, axis))
    return e / reduce(e, SUM, axis, keepdims=True)


# --------------------------------------------------------------------------- products


def _matmul_error(a: tuple[int, ...], b: tuple[int, ...], i: int) -> ValueError:
    return ValueError(
        f"matmul: Input operand 1 has a mismatch in its core dimension 0, with gufunc "
        f"signature (n?,k),(k,m?)->(n?,m?) (size {b[i]} is different from {a[-1]})"
    )


def matmul(a: Any, b: Any) -> Tensor:
    """``a @ b`` with NumPy's rules: 1-D operands promoted, batch dimensions broadcast."""
    g = _graph(a, b)
    a, b = as_tensor(g, a), as_tensor(g, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: Input operand does not have enough dimensions (a 0-d "
                         "tensor); use * for a product with a scalar")
    a2 = reshape(a, (1, a.shape[0])) if a.ndim == 1 else a
    b2 = reshape(b, (b.shape[0], 1)) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise _matmul_error(a2.shape, b2.shape, -2)
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    nb = _prod(batch)
    m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]

    def operand(t: Tensor) -> tuple[Tensor, int]:
        # A matrix shared by the whole batch is read with batch stride 0, not copied.
        if t.ndim == 2 and nb != 1:
            return contiguous(t), 0
        full = contiguous(broadcast_to(t, (*batch, *t.shape[-2:])))
        return full, t.shape[-2] * t.shape[-1]

    (ta, sa), (tb, sb) = operand(a2), operand(b2)
    buf = g.buffer(nb * m * n)
    d = g.buffers[buf][0]
    g.emit(MATMUL, 0, [d, nb, m, k, n, ta.off, sa, tb.off, sb, int(ta.buf in g.traced),
                       int(tb.buf in g.traced)], buf, (ta.buf, tb.buf))
    shape = (*batch, m, n)
    if a.ndim == 1:
        shape = (*shape[:-2], shape[-1])
    if b.ndim == 1:
        shape = shape[:-1]
    return Tensor(g, buf, d, shape)


def dot(a: Any, b: Any) -> Tensor:
    """``np.dot`` for operands of at most 2 dimensions (a scalar operand multiplies)."""
    g = _graph(a, b)
    a, b = as_tensor(g, a), as_tensor(g, b)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    if a.ndim > 2 or b.ndim > 2:
        raise TypeError("np.dot of traced tensors with more than 2 dimensions is not "
                        "supported: use np.matmul (@) or np.einsum")
    if a.shape[-1] != b.shape[0]:
        raise ValueError(f"shapes {a.shape} and {b.shape} not aligned: {a.shape[-1]} (dim "
                         f"{a.ndim - 1}) != {b.shape[0]} (dim 0)")
    return matmul(a, b)


def outer(a: Any, b: Any) -> Tensor:
    """``np.outer``: the flattened operands' products, shape ``(a.size, b.size)``."""
    g = _graph(a, b)
    a, b = as_tensor(g, a), as_tensor(g, b)
    return reshape(a, (-1, 1)) * reshape(b, (1, -1))


def einsum(subscripts: str, *operands: Any) -> Tensor:
    """``np.einsum`` with explicit or implicit output, on one or more operands.

    Operands are contracted left to right, two at a time, each pair as one batched matmul
    (labels in both and kept: batch; in both and not kept: contracted).  Repeated labels
    within one operand (diagonals) and ``...`` are not supported.
    """
    if not isinstance(subscripts, str):
        raise TypeError("einsum: the first argument must be a subscripts string")
    spec = subscripts.replace(" ", "")
    if "." in spec:
        raise TypeError("einsum: '...' is not supported for traced tensors: spell the axes")
    inputs, _, output = spec.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(operands):
        raise ValueError(f"einsum: {len(terms)} operand subscripts for {len(operands)} operands")
    if "->" not in spec:
        letters = "".join(terms)
        output = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    for term in [*terms, output]:
        if any(c not in string.ascii_letters for c in term):
            raise ValueError(f"einsum: invalid subscript in {term!r} (letters only)")
        if len(set(term)) != len(term):
            raise TypeError(f"einsum: repeated subscript in {term!r} (a diagonal) is not "
                            "supported for traced tensors")
    g = _graph(*operands)
    ts = [as_tensor(g, o) for o in operands]
    sizes: dict[str, int] = {}
    for term, t in zip(terms, ts, strict=True):
        if len(term) != t.ndim:
            raise ValueError(f"einsum: operand with shape {t.shape} has {t.ndim} dimensions "
                             f"but subscripts {term!r} name {len(term)}")
        for c, dim in zip(term, t.shape, strict=True):
            if sizes.setdefault(c, dim) != dim:
                raise ValueError(f"einsum: size of label '{c}' is {dim} for one operand and "
                                 f"{sizes[c]} for another")
    missing = set(output) - set(sizes)
    if missing:
        raise ValueError(f"einsum: output label(s) {sorted(missing)} not in any input")
    acc, acc_term = ts[0], terms[0]
    for i in range(1, len(ts)):
        later = set(output).union(*terms[i + 1:])
        acc, acc_term = _contract(acc, acc_term, ts[i], terms[i], later)
    # Labels that only the last result still has and the output does not: summed.
    extra = [acc_term.index(c) for c in acc_term if c not in output]
    if extra:
        acc = reduce(acc, SUM, tuple(extra))
        acc_term = "".join(c for c in acc_term if c in output)
    return transpose(acc, tuple(acc_term.index(c) for c in output))


def _sum_unneeded(t: Tensor, term: str, other: str, keep: set[str]) -> tuple[Tensor, str]:
    # Labels of ``t`` that neither the other operand nor anything later needs: summed first.
    alone = tuple(term.index(c) for c in term if c not in other and c not in keep)
    if not alone:
        return t, term
    return reduce(t, SUM, alone), "".join(c for c in term if c in other or c in keep)


def _contract(a: Tensor, ta: str, b: Tensor, tb: str, keep: set[str]) -> tuple[Tensor, str]:
    # Two operands as one batched matmul: (batch, left, summed) @ (batch, summed, right).
    a, ta = _sum_unneeded(a, ta, tb, keep)
    b, tb = _sum_unneeded(b, tb, ta, keep)
    batch = [c for c in ta if c in tb and c in keep]
    summed = [c for c in ta if c in tb and c not in keep]
    left = [c for c in ta if c not in tb]
    right = [c for c in tb if c not in ta]
    size = dict(zip(ta, a.shape, strict=True)) | dict(zip(tb, b.shape, strict=True))

    def arrange(t: Tensor, term: str, first: list[str], second: list[str]) -> Tensor:
        order = [term.index(c) for c in (*batch, *first, *second)]
        return reshape(transpose(t, order), (_prod([size[c] for c in batch]),
                                             _prod([size[c] for c in first]),
                                             _prod([size[c] for c in second])))

    out = matmul(arrange(a, ta, left, summed), arrange(b, tb, summed, right))
    term = "".join([*batch, *left, *right])
    return reshape(out, tuple(size[c] for c in term)), term


# --------------------------------------------------------------------------- joining


def concatenate(arrays: Sequence[Any], axis: int | None = 0) -> Tensor:
    """``np.concatenate``: one buffer, each piece copied into its part of it."""
    if not isinstance(arrays, (list, tuple)) or not arrays:
        raise ValueError("need at least one array to concatenate")
    g = _graph(*arrays)
    ts = [as_tensor(g, a) for a in arrays]
    if axis is None:
        ts = [reshape(t, (-1,)) for t in ts]
        axis = 0
    first = ts[0]
    if first.ndim == 0:
        raise ValueError("zero-dimensional arrays cannot be concatenated")
    ax = _axes(axis, first.ndim)[0]
    for i, t in enumerate(ts[1:], 1):
        if t.ndim != first.ndim:
            raise ValueError(
                "all the input array dimensions except for the concatenation axis must match "
                f"exactly, but the array at index 0 has {first.ndim} dimension(s) and the "
                f"array at index {i} has {t.ndim} dimension(s)")
        for j in range(first.ndim):
            if j != ax and t.shape[j] != first.shape[j]:
                raise ValueError(
                    "all the input array dimensions except for the concatenation axis must "
                    f"match exactly, but along dimension {j}, the array at index 0 has size "
                    f"{first.shape[j]} and the array at index {i} has size {t.shape[j]}")
    # Along axis 0 every piece is one contiguous range of the result: move the axis first.
    moved = [_view(t, np.moveaxis, ax, 0) for t in ts]
    total = builtins.sum(t.shape[0] for t in moved)
    rest = moved[0].shape[1:]
    buf = g.buffer(total * _prod(rest))
    d = g.buffers[buf][0]
    pos = d
    for t in moved:
        n = t.size
        shape, strides = _collapsed(t.shape, t.strides)
        if n:
            g.emit(COPY, 0, [pos, n, t.off, len(shape), *shape, *strides], buf, (t.buf,))
        pos += n
    out = Tensor(g, buf, d, (total, *rest))
    return _view(out, np.moveaxis, 0, ax)


def stack(arrays: Sequence[Any], axis: int = 0) -> Tensor:
    """``np.stack``: the arrays joined along a new axis."""
    if not isinstance(arrays, (list, tuple)) or not arrays:
        raise ValueError("need at least one array to stack")
    g = _graph(*arrays)
    ts = [as_tensor(g, a) for a in arrays]
    if any(t.shape != ts[0].shape for t in ts):
        raise ValueError("all input arrays must have the same shape")
    ax = _axes(axis, ts[0].ndim + 1)[0]
    return concatenate([_view(t, np.expand_dims, ax) for t in ts], axis=ax)


# --------------------------------------------------------------------------- NumPy's names


def _only_axis_keepdims(name: str, kw: dict[str, Any]) -> None:
    # NumPy passes on only what the caller gave: out=, where=, initial=, dtype= are refused.
    dtype = kw.pop("dtype", None)
    if kw or (dtype is not None and np.dtype(dtype) != np.float64):
        raise TypeError(f"numpy.{name} on traced tensors takes axis and keepdims only (got "
                        f"{sorted(kw) or ['dtype']})")


def _reduction(red: int, name: str) -> Callable[..., Tensor]:
    def fn(a: Any, axis: Any = None, keepdims: bool = False, **kw: Any) -> Tensor:
        _only_axis_keepdims(name, kw)
        return reduce(_tensor_arg(a), red, axis, keepdims)

    fn.__name__ = name
    return fn


def _mean(a: Any, axis: Any = None, keepdims: bool = False, **kw: Any) -> Tensor:
    _only_axis_keepdims("mean", kw)
    return mean(a, axis, keepdims)


def _plain(name: str, order: str = "C", **kw: Any) -> None:
    # Refused rather than ignored: order="F" would silently reorder, out= never be written.
    given = [f"{k}=" for k, v in sorted(kw.items()) if v is not None]
    if order != "C":
        given.insert(0, f"order={order!r}")
    if given:
        raise TypeError(f"numpy.{name} on traced tensors does not take {', '.join(given)} "
                        "(traced tensors are C-ordered and immutable)")


def _where(cond: Any, a: Any = None, b: Any = None) -> Tensor:
    if a is None or b is None:
        raise TypeError("np.where(cond) with one argument (the indices) is not supported on "
                        "traced tensors: use np.where(cond, a, b)")
    return where(cond, a, b)


#: NumPy function -> its traced implementation (``Tensor.__array_function__``).
ARRAY_FUNCTIONS: dict[Any, Callable[..., Any]] = {
    np.sum: _reduction(SUM, "sum"),
    np.prod: _reduction(PROD, "prod"),
    np.max: _reduction(MAX, "max"),
    np.amax: _reduction(MAX, "amax"),
    np.min: _reduction(MIN, "min"),
    np.amin: _reduction(MIN, "amin"),
    np.mean: _mean,
    np.matmul: matmul,
    np.dot: dot,
    np.outer: outer,
    np.einsum: einsum,
    np.reshape: lambda a, shape=None, order="C", **kw: _plain("reshape", order, **{
        k: v for k, v in kw.items() if k != "newshape"}) or reshape(a, kw.get("newshape", shape)),
    np.transpose: transpose,
    np.swapaxes: lambda a, x, y: _view(_tensor_arg(a), np.swapaxes, x, y),
    np.moveaxis: lambda a, s, d: _view(_tensor_arg(a), np.moveaxis, s, d),
    np.expand_dims: lambda a, axis: _view(_tensor_arg(a), np.expand_dims, axis),
    np.squeeze: lambda a, axis=None: _view(_tensor_arg(a), np.squeeze, axis),
    np.broadcast_to: lambda a, shape, subok=False: broadcast_to(a, shape),
    np.ravel: lambda a, order="C": _plain("ravel", order) or reshape(a, (-1,)),
    np.concatenate: lambda arrays, axis=0, **kw: _plain("concatenate", **kw)
    or concatenate(arrays, axis),
    np.stack: lambda arrays, axis=0, **kw: _plain("stack", **kw) or stack(arrays, axis),
    np.where: _where,
    np.clip: lambda a, a_min=None, a_max=None, **kw: _plain("clip", **kw)
    or clip(a, a_min, a_max),
    np.shape: lambda a: a.shape,
    np.ndim: lambda a: a.ndim,
    np.size: lambda a, axis=None: a.size if axis is None else a.shape[axis],
}
