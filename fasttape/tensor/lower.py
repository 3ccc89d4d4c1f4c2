"""Lowering a tensor graph to tape arrays: dead code, fusion of elementwise chains, slot layout.

Four steps, each linear in the number of instructions:

1. **Dead code.** Only instructions whose result the output needs are kept.
2. **Common subexpressions.** An instruction that repeats an earlier one (same kind, op and
   fields over the same slots) is dropped and its readers read the earlier result
   (:mod:`fasttape.tensor.cse`).
3. **Fusion.** A run of consecutive elementwise instructions over the same number of elements,
   each reading the earlier ones' results element for element, becomes one *group* that the
   kernels run tile by tile (:data:`TILE` elements at a time): a tile passes through every
   member while it sits in the L1 cache, which is how XLA beats running one op at a time over
   whole arrays.  A member whose result only later members of its group read is an
   *intermediate*: it gets no slots of its own, only a tile of scratch, and the reverse sweep
   recomputes it tile by tile instead of reading it back (one more evaluation of the cheap
   elementwise chain, in exchange for never writing or reading its values or adjoints in
   memory).  Every other elementwise instruction is a group of one.
4. **Layout.** The buffers that remain are renumbered into consecutive slots (inputs,
   parameters, constants, results), then the scratch tiles, and every offset field rewritten.

The arrays follow docs/tape-format.md ("Tensor tapes").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fasttape.kernels.tensor import COPY, ELEMENTWISE, GATHER, MEMBER_FIELDS, REDUCE, TAKE
from fasttape.ops import OPS
from fasttape.tensor.cse import duplicates
from fasttape.tensor.graph import SCRATCH, TensorGraph

__all__ = ["FUSE_MIN", "TILE", "Lowered", "lower"]

#: Elements per tile of a fused group: with a few members, their tiles of values and adjoints
#: stay in L1/L2 (4 KB per member and vector).
TILE = 256
#: Groups are fused only over at least this many elements: below it every array already sits
#: in cache, and recomputing the intermediates in the reverse sweep would only cost time.
FUSE_MIN = 4096


@dataclass
class Lowered:
    """The tape arrays of a graph, and where its leaves and output ended up."""

    kinds: np.ndarray
    ops: np.ndarray
    at: np.ndarray
    fields: np.ndarray
    init: np.ndarray
    inputs: list[tuple[int, tuple[int, ...]]]
    params: list[tuple[int, tuple[int, ...]]]
    out_offset: int


def _live(graph: TensorGraph, reads: list[tuple[int, ...]], output: int) -> list[int]:
    live = {output}
    keep = []
    for i in range(graph.n_instructions - 1, -1, -1):
        if graph.writes[i] in live:
            keep.append(i)
            live.update(reads[i])
    keep.reverse()
    return keep


def _groups(graph: TensorGraph, keep: list[int], reads: list[tuple[int, ...]], fuse: bool
            ) -> list[list[int]]:
    """Consecutive instructions in runs: fusable elementwise runs, everything else alone."""
    groups: list[list[int]] = []
    members: dict[int, int] = {}  # buffer -> offset of the member that writes it
    current: list[int] = []
    n_current = -1
    for i in keep:
        f = graph.fields[i]
        if graph.kinds[i] != ELEMENTWISE:
            if current:
                groups.append(current)
            groups.append([i])
            current, members, n_current = [], {}, -1
            continue
        n = f[1]
        arity = OPS[graph.ops[i]].arity
        joins = fuse and bool(current) and n == n_current and n >= FUSE_MIN
        if joins:
            for j in range(arity):
                # Offsets relative to their buffers: a merged repeat's field still names the
                # repeat's slots, read from the first one's.
                buf = reads[i][j]
                rel = f[2 + 2 * j] - graph.buffers[graph.reads[i][j]][0]
                if buf in members and (rel != members[buf] or f[3 + 2 * j] != 1):
                    joins = False  # a member's result read shifted: not element for element
        if not joins:
            if current:
                groups.append(current)
            current, members, n_current = [], {}, n
        current.append(i)
        members[graph.writes[i]] = f[0] - graph.buffers[graph.writes[i]][0]
    if current:
        groups.append(current)
    return groups


def lower(graph: TensorGraph, optimize: bool = True) -> Lowered:
    """Dead code, common subexpressions, fusion and layout (module docstring): the arrays of
    the tape.  ``optimize=False``: dead code and layout only (one instruction per traced op,
    nothing merged or fused), as ``ft.compile(graph, optimize=False)`` asks."""
    # Common subexpressions: a repeated instruction's readers read the first one's buffer,
    # and the repeat is dead code.
    same = duplicates(graph, _live(graph, graph.reads, graph.output_buffer)) if optimize else {}
    reads = [tuple(same.get(b, b) for b in r) for r in graph.reads]
    output = same.get(graph.output_buffer, graph.output_buffer)
    keep = _live(graph, reads, output)
    groups = _groups(graph, keep, reads, optimize)
    # Intermediates: results read only by later members of their own group.
    readers: dict[int, set[int]] = {}
    group_of = {}
    for g, members in enumerate(groups):
        for i in members:
            group_of[i] = g
            for buf in reads[i]:
                readers.setdefault(buf, set()).add(g)
    intermediate = set()
    for g, members in enumerate(groups):
        if len(members) > 1:
            for i in members:
                buf = graph.writes[i]
                if buf != output and readers.get(buf, set()) <= {g}:
                    intermediate.add(buf)
    # Layout: every buffer still used, in order, then scratch tiles.
    used = set()
    for i in keep:
        used.add(graph.writes[i])
        used.update(reads[i])
    used.add(output)
    starts = np.array([b[0] for b in graph.buffers] or [0], dtype=np.int64)
    new_start = np.full(len(graph.buffers), -1, dtype=np.int64)
    leaf_bufs = {_buffer(starts, off) for off, _ in [*graph.inputs, *graph.params]}
    pos = 0
    for buf, (_, size) in enumerate(graph.buffers):
        if (buf in used or buf in leaf_bufs) and buf not in intermediate:
            new_start[buf] = pos
            pos += size

    for buf, first in same.items():  # a repeat's slots are the first one's
        new_start[buf] = new_start[first]

    def where(off: int) -> int:
        buf = _buffer(starts, off)
        return int(new_start[buf] + off - starts[buf])

    scratch_of: dict[int, int] = {}
    discard_size = 0
    kinds, ops, at, fields = [], [], [], []
    for members in groups:
        first = members[0]
        kind = graph.kinds[first]
        at.append(len(fields))
        ops.append(graph.ops[first] if kind != ELEMENTWISE else 0)
        kinds.append(kind)
        f = graph.fields[first]
        if kind == ELEMENTWISE:
            n = f[1]
            tile = TILE if len(members) > 1 else max(n, 1)
            fields += [n, tile, len(members)]
            for i in members:
                buf_i = graph.writes[i]
                if buf_i in intermediate:
                    scratch_of[buf_i] = pos
                    pos += tile
                fields += _member(graph, i, reads[i], where, scratch_of, intermediate)
                if SCRATCH in graph.fields[i][8:]:
                    discard_size = max(discard_size, tile)
        elif kind == COPY:
            fields += [where(f[0]), f[1], where(f[2]), *f[3:]]
        elif kind == TAKE:
            idx = np.asarray(f[3:], dtype=np.int64)
            if idx.size:
                bufs = np.searchsorted(starts, idx, side="right") - 1
                idx = new_start[bufs] + idx - starts[bufs]
            fields += [where(f[0]), f[1], 0, *idx.tolist()]
        elif kind == REDUCE:
            fields += [where(f[0]), f[1], f[2], f[3], where(f[4])]
        elif kind == GATHER:
            comps = [x for j in range(f[4])
                     for x in (where(f[5 + 3 * j]), f[6 + 3 * j], f[7 + 3 * j])]
            fields += [where(f[0]), f[1], f[2], where(f[3]), f[4], *comps]
        else:
            fields += [where(f[0]), *f[1:5], where(f[5]), f[6], where(f[7]), *f[8:]]
    discard = pos
    fields_arr = np.array(fields, dtype=np.int64)
    fields_arr[fields_arr == _DISCARD] = discard  # placeholder from _member
    init = np.zeros(discard + discard_size, dtype=np.float64)
    for buf, values in graph.constants:
        if new_start[buf] >= 0:
            init[new_start[buf]:new_start[buf] + values.size] = values
    return Lowered(
        kinds=np.array(kinds, dtype=np.int64), ops=np.array(ops, dtype=np.int64),
        at=np.array(at, dtype=np.int64), fields=fields_arr, init=init,
        inputs=[(where(off), s) for off, s in graph.inputs],
        params=[(where(off), s) for off, s in graph.params],
        out_offset=where(graph.output_offset),  # the output is never an intermediate
    )


# A value no real field takes (offsets and sizes are non-negative): marks the discard range.
_DISCARD = -(2**62)


def _buffer(starts: np.ndarray, off: int) -> int:
    return int(np.searchsorted(starts, off, side="right") - 1)


def _member(graph: TensorGraph, i: int, reads: tuple[int, ...], where: Callable[[int], int],
            scratch_of: dict[int, int], intermediate: set[int]) -> list[int]:
    """The member record of elementwise instruction ``i`` (kernels.tensor.MEMBER_FIELDS)."""
    f = graph.fields[i]
    spec = OPS[graph.ops[i]]
    buf_i = graph.writes[i]
    rec = [graph.ops[i]]
    if buf_i in intermediate:
        rec += [scratch_of[buf_i], 0]
    else:
        rec += [where(f[0]), 1]
    for j in range(3):
        if j >= spec.arity:
            rec += [0, 0, 0]
            continue
        a, s, buf = f[2 + 2 * j], f[3 + 2 * j], reads[j]
        if buf in intermediate:
            rec += [scratch_of[buf], 1, 0]
        else:
            rec += [where(a), s, s]
    for j in range(2):
        if j >= spec.ndiff:
            rec += [0, 0, 0]
            continue
        b, u, buf = f[8 + 2 * j], f[9 + 2 * j], reads[j]
        if b == SCRATCH:
            rec += [_DISCARD, 1, 0]
        elif buf in intermediate:
            rec += [scratch_of[buf], 1, 0]
        else:
            rec += [where(b), u, u]
    rec.append(int(buf_i in intermediate))
    assert len(rec) == MEMBER_FIELDS
    return rec
