"""The tensor graph: tensor instructions recorded while tracing, as flat columns.

Each traced tensor operation appends one instruction (sometimes two: a copy that makes an
argument contiguous, then the op).  An instruction writes a fresh *buffer* (a range of slots,
allocated here) and reads ranges of earlier buffers; its integer fields follow
:mod:`fasttape.kernels.tensor`.  Recording is O(1) Python work per instruction whatever the
tensors' sizes, except for the constants' and index arrays' own elements.

Slot layout of the flat value vector: the inputs' leaves first (in leaf order), then the
parameters' leaves, then buffers and constants in order of creation.
"""

from __future__ import annotations

import struct
import threading

import numpy as np

from fasttape.kernels.tensor import KIND_NAMES
from fasttape.tensor.tree import TreeDef

__all__ = ["SCRATCH", "TensorGraph"]

#: Placeholder for "the scratch range" in an elementwise instruction's adjoint target
#: (an argument that needs no adjoint); the compiler puts the scratch range after every slot.
SCRATCH = -1


class TensorGraph:
    """Instructions over slot ranges, recorded by tracing tensor code (:func:`fasttape.trace`
    with ``shapes=``); :func:`fasttape.compile` turns it into a :class:`fasttape.TensorTape`.

    Attributes
    ----------
    n_slots : int
        Slots allocated so far (inputs, parameters, constants, results).
    inputs, params : list of (int, tuple)
        ``(offset, shape)`` of each input / parameter leaf, in leaf order.
    in_tree, param_tree : TreeDef
        The nesting of the traced function's differentiated and parameter arguments.
    """

    def __init__(self) -> None:
        self.n_slots = 0
        self.kinds: list[int] = []
        self.ops: list[int] = []
        self.fields: list[list[int]] = []
        self.writes: list[int] = []  # buffer written by each instruction
        self.reads: list[tuple[int, ...]] = []  # buffers read
        self.buffers: list[tuple[int, int]] = []  # (offset, size) of each buffer
        self.constants: list[tuple[int, np.ndarray]] = []  # (buffer, flat float64 values)
        self._scalars: dict[bytes, int] = {}  # float bits -> buffer of that constant
        self.inputs: list[tuple[int, tuple[int, ...]]] = []
        self.params: list[tuple[int, tuple[int, ...]]] = []
        self.in_tree = TreeDef("tuple")
        self.param_tree = TreeDef("tuple")
        self.traced: set[int] = set()  # buffers that depend on an input (need adjoints)
        self.param_bufs: dict[int, int] = {}  # buffer of each parameter leaf -> leaf number
        # Parameter leaves used as gather indices -> the smallest axis length they index:
        # the tape checks their values before each call.
        self.index_checks: dict[int, int] = {}
        self.output_buffer = -1
        self.output_offset = -1
        self.output_shape: tuple[int, ...] = ()
        self.owner = threading.get_ident()

    # ----------------------------------------------------------------------- recording

    def buffer(self, size: int) -> int:
        """A fresh buffer of ``size`` slots; returns its id (its offset: ``buffers[id][0]``)."""
        self._check_thread()
        self.buffers.append((self.n_slots, size))
        self.n_slots += size
        return len(self.buffers) - 1

    def emit(self, kind: int, op: int, fields: list[int], writes: int,
             reads: tuple[int, ...]) -> None:
        """Append one instruction (fields as :mod:`fasttape.kernels.tensor` documents)."""
        self.kinds.append(kind)
        self.ops.append(op)
        self.fields.append(fields)
        self.writes.append(writes)
        self.reads.append(reads)
        if any(b in self.traced for b in reads):
            self.traced.add(writes)

    def constant_buffer(self, values: np.ndarray) -> int:
        """A buffer holding ``values`` (float64, C order) from the start of every sweep."""
        flat = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        if flat.size == 1:
            key = struct.pack("<d", float(flat[0]))
            buf = self._scalars.get(key)
            if buf is None:
                buf = self._scalars[key] = self.buffer(1)
                self.constants.append((buf, flat.copy()))
            return buf
        buf = self.buffer(flat.size)
        self.constants.append((buf, flat.copy()))
        return buf

    def leaves(self, shapes: list[tuple[int, ...]]) -> list[int]:
        """Buffers for input or parameter leaves of these shapes."""
        return [self.buffer(int(np.prod(s, dtype=np.int64))) for s in shapes]

    def set_output(self, buf: int, offset: int, shape: tuple[int, ...]) -> None:
        """Make the C-contiguous range at ``offset`` (in buffer ``buf``) the output."""
        self.output_buffer, self.output_offset, self.output_shape = buf, offset, shape

    def _check_thread(self) -> None:
        if threading.get_ident() != self.owner:
            raise RuntimeError(
                "a tensor graph is being extended from a thread other than the one that "
                "traces it: trace each function in one thread (tapes, once compiled, can be "
                "evaluated from any number of threads)"
            )

    # ----------------------------------------------------------------------- reading

    @property
    def n_instructions(self) -> int:
        """Instructions recorded."""
        return len(self.kinds)

    def __len__(self) -> int:
        return len(self.kinds)

    def __repr__(self) -> str:
        kinds = {}
        for k in self.kinds:
            kinds[KIND_NAMES[k]] = kinds.get(KIND_NAMES[k], 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in kinds.items())
        return (f"<TensorGraph: {len(self.inputs)} input leaves, {len(self.params)} parameter "
                f"leaves, {self.n_instructions} instructions ({parts}), {self.n_slots} slots>")
