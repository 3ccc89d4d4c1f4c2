"""Batches on tensor tapes: arguments with one more leading axis evaluate many points.

A tensor tape traced for an input of shape ``(n,)`` evaluates a batch when called with shape
``(B, n)`` (every differentiated argument with the same leading ``B``; each parameter either
with its traced shape, shared by all points, or with a leading ``B`` too).  The points run on
a pool of threads, each with the tape's own per-thread vectors (the kernels release the GIL),
and the results come back stacked along a new first axis: values ``(B, *output_shape)``,
gradients with the arguments' structure and a leading ``B`` in every leaf.  Each point's
result is bitwise what a call on that point alone returns.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from fasttape.tape import resolve_threads

__all__ = ["Batch", "run_batch", "split_batch", "stack_tree"]


class Batch:
    """The points of a batched call: ``size`` points, each ``(args, p)``."""

    def __init__(self, size: int, points: list[tuple[tuple[Any, ...], Any]]) -> None:
        self.size = size
        self.points = points


def _leading(value: Any, shape: tuple[int, ...]) -> int | None:
    # B if value is an array of shape (B, *shape), else None.
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        return None
    if arr.dtype.kind not in "biuf":
        return None  # the single-point path refuses it with the leaf's name
    if arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
        return int(arr.shape[0])
    return None


def split_batch(tape: Any, args: tuple[Any, ...], p: Any) -> Batch | None:
    """The points of ``args`` / ``p`` if they carry one more leading axis than ``tape`` was
    traced with (module docstring), else None (the call is then checked as a single point,
    which names what does not fit)."""
    layout = tape.layout()
    in_tree, p_tree = layout["in_tree"], layout["param_tree"]
    leaves = in_tree.leaves_if_matches(tuple(args))
    if leaves is None or not leaves:
        return None
    size = None
    for (_, shape), value in zip(layout["inputs"], leaves, strict=True):
        b = _leading(value, shape)
        if b is None or (size is not None and b != size):
            return None
        size = b
    p_leaves: list[Any] = []
    p_batched: list[bool] = []
    if layout["params"]:
        if p is None:
            return None
        p_nest = (p,) if len(p_tree.children) == 1 and not isinstance(p, tuple) else p
        p_leaves = p_tree.leaves_if_matches(tuple(p_nest) if isinstance(p_nest, list)
                                            else p_nest)
        if p_leaves is None:
            return None
        for (_, shape), value in zip(layout["params"], p_leaves, strict=True):
            batched = _leading(value, shape) == size
            if not batched and np.shape(value) != shape:
                return None
            p_batched.append(batched)
    arrays = [np.asarray(v, dtype=np.float64) for v in leaves]
    p_arrays = [np.asarray(v, dtype=np.float64) for v in p_leaves]
    points = []
    for b in range(size or 0):
        point_args = tuple(in_tree.unflatten([a[b] for a in arrays]))
        point_p = None
        if layout["params"]:
            point_p = tuple(p_tree.unflatten([a[b] if batched else a for a, batched
                                              in zip(p_arrays, p_batched, strict=True)]))
        points.append((point_args, point_p))
    return Batch(size or 0, points)


def stack_tree(results: list[Any]) -> Any:
    """Equally structured results (floats, arrays, and dicts, lists, tuples of them) stacked
    leaf by leaf along a new first axis."""
    first = results[0]
    if isinstance(first, dict):
        return {k: stack_tree([r[k] for r in results]) for k in first}
    if isinstance(first, (tuple, list)):
        stacked = [stack_tree([r[j] for r in results]) for j in range(len(first))]
        return tuple(stacked) if isinstance(first, tuple) else stacked
    return np.stack([np.asarray(r, dtype=np.float64) for r in results])


def run_batch(call: Any, batch: Batch, threads: int | None) -> Any:
    """``call(args, p)`` at every point of ``batch`` on ``threads`` threads, stacked."""
    n_threads = min(resolve_threads(threads), max(batch.size, 1))
    if batch.size == 0:
        raise ValueError("a batch of 0 points: pass at least one point")
    if n_threads == 1:
        results = [call(a, p) for a, p in batch.points]
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            results = list(pool.map(lambda point: call(*point), batch.points))
    return stack_tree(results)
