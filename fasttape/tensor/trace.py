"""Tracing NumPy code on tensors: :func:`trace_tensors` (``ft.trace(fn, shapes=...)``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fasttape.tensor.graph import TensorGraph
from fasttape.tensor.tensor import Tensor, as_tensor, contiguous
from fasttape.tensor.tree import TreeDef, is_shape, tree_flatten

__all__ = ["trace_tensors"]


def _shape_tuple(s: Any) -> tuple[int, ...]:
    return (int(s),) if isinstance(s, int) else tuple(int(d) for d in s)


def _arguments(nest: Any, what: str) -> tuple[list[tuple[int, ...]], TreeDef]:
    if nest is None:
        return [], TreeDef("tuple")
    if not isinstance(nest, (list, tuple)):
        raise TypeError(f"{what} must be a list with one entry per argument (a shape, or a "
                        f"dict/list/tuple of shapes), got {nest!r}")
    if nest and is_shape(tuple(nest)) and isinstance(nest, tuple):
        raise TypeError(
            f"{what}={nest!r} is ambiguous: it is a list with one shape per argument, so write "
            f"{what}=[{nest!r}] for one argument of shape {nest!r}, or "
            f"{what}={[(d,) for d in nest]!r} for {len(nest)} vectors"
        )
    leaves, tree = tree_flatten(tuple(nest))
    return [_shape_tuple(s) for s in leaves], tree


def trace_tensors(fn: Callable[..., Any], shapes: Sequence[Any],
                  params: Sequence[Any] | None = None) -> TensorGraph:
    """Trace ``fn`` on traced tensors of the given shapes; return the :class:`TensorGraph`.

    ``fn`` is called as ``fn(*inputs, *params)``: ``shapes`` has one entry per differentiated
    argument, ``params`` one per parameter argument (values that every evaluation takes and
    that get no gradient: data), each entry a shape (a tuple of ints, ``()`` for a scalar) or
    a dict, list or tuple of shapes (the argument is then passed with that nesting).  ``fn``
    returns a tensor (or a number) of any shape.
    """
    in_shapes, in_tree = _arguments(shapes, "shapes")
    p_shapes, p_tree = _arguments(params, "params")
    g = TensorGraph()
    g.in_tree, g.param_tree = in_tree, p_tree
    leaves = []
    for shapes_, into in ((in_shapes, g.inputs), (p_shapes, g.params)):
        for shape, buf in zip(shapes_, g.leaves(shapes_), strict=True):
            into.append((g.buffers[buf][0], shape))
            if into is g.inputs:
                g.traced.add(buf)
            else:
                g.param_bufs[buf] = len(into) - 1
            leaves.append(Tensor(g, buf, g.buffers[buf][0], shape))
    args = in_tree.unflatten(leaves[:len(in_shapes)])
    pargs = p_tree.unflatten(leaves[len(in_shapes):])
    result = fn(*args, *pargs)
    if isinstance(result, (list, tuple, dict)):
        raise TypeError("a traced tensor function returns one tensor (or number); stack "
                        "several results with np.stack or np.concatenate")
    if not isinstance(result, Tensor):
        if not isinstance(result, (int, float, np.number, np.ndarray)):
            raise TypeError(f"the traced function returned {type(result).__name__}, expected "
                            "a traced tensor or a number")
        result = as_tensor(g, np.asarray(result, dtype=np.float64))
    out = contiguous(result)
    g.set_output(out.buf, out.off, out.shape)
    return g
