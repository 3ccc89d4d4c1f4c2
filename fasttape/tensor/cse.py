"""Common subexpressions of a tensor graph: an instruction that repeats an earlier one.

Two instructions compute the same values when they have the same kind, op and fields, and
read the same slots, which after earlier merges means the same buffers at the same relative
offsets.  :func:`duplicates` finds them in one pass over the live instructions (a dict keyed
by that description) and maps each repeated result's buffer to the first one; the lowering
(:mod:`fasttape.tensor.lower`) then reads the first buffer wherever the repeat was read, and
the repeat becomes dead code.  ``np.tanh(x)`` written three times is computed once.
"""

from __future__ import annotations

import numpy as np

from fasttape.kernels.tensor import COPY, ELEMENTWISE, GATHER, MATMUL, REDUCE, TAKE
from fasttape.ops import OPS
from fasttape.tensor.graph import SCRATCH, TensorGraph

__all__ = ["duplicates", "offset_fields"]


def offset_fields(kind: int, op: int, fields: list[int]) -> list[int]:
    """Positions of the slot offsets an instruction's fields read (its graph form,
    :mod:`fasttape.tensor.graph`); the destination, position 0, is not among them."""
    if kind == ELEMENTWISE:
        spec = OPS[op]
        return [2 + 2 * j for j in range(spec.arity)] + \
            [8 + 2 * j for j in range(spec.ndiff) if fields[8 + 2 * j] != SCRATCH]
    if kind == COPY:
        return [2]
    if kind == TAKE:
        return list(range(3, len(fields)))
    if kind == REDUCE:
        return [4]
    if kind == MATMUL:
        return [5, 7]
    if kind == GATHER:
        return [3, *(5 + 3 * j for j in range(fields[4]))]
    raise ValueError(f"unknown kind {kind}")


def duplicates(graph: TensorGraph, keep: list[int]) -> dict[int, int]:
    """``{buffer: earlier buffer}`` for every live instruction that repeats an earlier one.

    Only buffers written whole by one instruction take part (a concatenation writes its
    buffer in pieces); the earlier buffer is never itself a repeat.
    """
    starts = np.array([b[0] for b in graph.buffers] or [0], dtype=np.int64)
    writers: dict[int, int] = {}
    for i in keep:
        writers[graph.writes[i]] = writers.get(graph.writes[i], 0) + 1
    same: dict[int, int] = {}
    seen: dict[tuple, int] = {}
    for i in keep:
        buf = graph.writes[i]
        kind, op, f = graph.kinds[i], graph.ops[i], graph.fields[i]
        if writers[buf] != 1 or f[0] != graph.buffers[buf][0]:
            continue
        desc = list(f)
        desc[0] = -1
        for k in offset_fields(kind, op, f):
            b = int(np.searchsorted(starts, f[k], side="right") - 1)
            desc[k] = (same.get(b, b), f[k] - int(starts[b]))
        key = (kind, op, graph.buffers[buf][1], tuple(desc))
        first = seen.setdefault(key, buf)
        if first != buf:
            same[buf] = first
    return same
