"""``TensorTape.native()``: a tensor tape whose fused elementwise groups run as compiled loops.

Each group of two or more members (:mod:`fasttape.tensor.lower` fuses them over at least
``FUSE_MIN`` elements) becomes a forward and a reverse loop (:mod:`fasttape.native.group`);
all of a tape's groups are one LLVM module, compiled at level 3 (LLVM's full pipeline: its
loop vectorizer is the point) and cached on disk like the scalar tier's code
(:mod:`fasttape.native.cache`, keyed by the module's text, the op table, these sources and
the machine).  Everything else (reductions, products, copies, jvp, hvp) stays on the
interpreter's kernels.  docs/tensors.md ("Native groups") has the measurements.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from fasttape.kernels import scalar
from fasttape.kernels import tensor as kt
from fasttape.kernels.jit import kernel
from fasttape.native import cache, group, machine, translate
from fasttape.ops import table_hash
from fasttape.tensor.tape import TensorTape, reads_slots

__all__ = ["NativeGroups", "native_tensor"]

_FWD = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_REV = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


@kernel
def _call_fwd(fn: Any, vals: np.ndarray) -> None:
    # Through Numba: a third of a ctypes call's cost from Python (as fasttape.native.tape).
    fn(vals.ctypes.data)


@kernel
def _call_rev(fn: Any, vals: np.ndarray, adj: np.ndarray) -> None:
    fn(vals.ctypes.data, adj.ctypes.data)


class NativeGroups:
    """The compiled loops of one tape's groups; keeps their machine code alive.

    Attributes
    ----------
    seconds : float
        Compile time (0.0 when loaded from the disk cache).
    from_cache : bool
        Whether the object code came from the disk cache.
    instructions : list of int
        The group instructions that run natively.
    """

    def __init__(self, objects: list[bytes], names: dict[int, tuple[str, int]],
                 seconds: float, from_cache: bool) -> None:
        self._engine = machine.Engine(objects)
        self.seconds, self.from_cache = seconds, from_cache
        self.instructions = sorted(names)
        #: Groups whose loop also computes the sum that follows them (two instructions).
        self.with_sum = sorted(i for i, (_, count) in names.items() if count == 2)
        self.runners: dict[int, tuple[Any, Any, int]] = {}
        for i, (name, count) in names.items():
            fwd = _FWD(self._engine.address(f"{name}.fwd"))
            rev = _REV(self._engine.address(f"{name}.rev"))
            # Bound through default arguments: each lambda keeps its own pair (and self,
            # the engine that owns the code, stays alive as long as a runner does).
            self.runners[i] = (lambda vals, f=fwd, keep=self: _call_fwd(f, vals),
                               lambda vals, adj, r=rev, keep=self: _call_rev(r, vals, adj),
                               count)


def _summed_by_next(tape: TensorTape, arrays: dict[str, np.ndarray], i: int) -> int | None:
    """The slot of the total when instruction ``i + 1`` sums all of group ``i``'s last result
    and nothing else reads that result (so it need never be stored); else ``None``."""
    kinds, ops, at, fields = arrays["kinds"], arrays["ops"], arrays["at"], arrays["fields"]
    if i + 1 >= kinds.size or kinds[i + 1] != kt.REDUCE or ops[i + 1] != kt.SUM:
        return None
    p, q = int(at[i]), int(at[i + 1])
    n, count = int(fields[p]), int(fields[p + 2])
    last = p + 3 + (count - 1) * kt.MEMBER_FIELDS
    d, inter = int(fields[last + 1]), int(fields[last + 18])
    total, outer, r, inner, src = (int(v) for v in fields[q:q + 5])
    if inter or (outer, r, inner, src) != (1, n, 1, d):
        return None
    out_off, out_shape = tape.layout()["output"]
    if out_off < d + n and d < out_off + max(math.prod(out_shape), 1):
        return None
    return None if reads_slots(arrays, d, d + n, {i, i + 1}) else total


def _digest() -> str:
    h = hashlib.sha256(table_hash().encode())
    for module in (scalar, translate, machine, group):
        h.update(Path(module.__file__ or "").read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


def native_tensor(tape: TensorTape, *, cache_entries: bool = True) -> TensorTape:
    """A copy of ``tape`` whose fused elementwise groups run as compiled loops.

    Values are bitwise the interpreter's; gradients too, except where one slot collects
    contributions from several elements of a group (shifted views such as ``x[1:]`` and
    ``x[:-1]``, a broadcast argument), which are summed in another order and agree to
    rounding (:mod:`fasttape.native.group`).  A tape without such groups comes back as an
    unchanged copy (``n_native_groups == 0``).

    Parameters
    ----------
    tape : TensorTape
        A compiled tensor tape.
    cache_entries : bool
        Load the object code from the disk cache when an entry matches, and save it there
        after compiling.

    Returns
    -------
    TensorTape
        The same class as ``tape``; its ``native_groups`` attribute is the
        :class:`NativeGroups` (compile time, whether it came from the cache).
    """
    if not isinstance(tape, TensorTape):
        raise TypeError(f"native_tensor expects a TensorTape, got {type(tape).__name__}")
    arrays = tape.to_arrays()
    kinds, at, fields = arrays["kinds"], arrays["at"], arrays["fields"]
    header = machine.header()
    texts, names = [], {}
    for i in np.flatnonzero(kinds == kt.ELEMENTWISE).tolist():
        p = int(at[i])
        if fields[p + 2] < 2:
            continue  # a single op: the interpreter's loop is already this loop
        total = _summed_by_next(tape, arrays, i)
        text = group.group_module(fields, p, f"g{i}", "", total)
        if text is None and total is not None:
            text, total = group.group_module(fields, p, f"g{i}", ""), None
        if text is not None:
            texts.append(text)
            names[i] = (f"g{i}", 1 if total is None else 2)
    if not names:
        return tape.with_group_runners({})
    module = header + "\n".join(texts)
    key = hashlib.sha256((module + _digest() + machine.machine_key()).encode()).hexdigest()[:40]
    objects = cache.load(key) if cache_entries else None
    seconds, from_cache = 0.0, objects is not None
    if objects is None:
        t = time.perf_counter()
        objects = [machine.compile_module(module, 3)]
        seconds = time.perf_counter() - t
        if cache_entries:
            cache.save(key, objects)
    compiled = NativeGroups(objects, names, seconds, from_cache)
    new = tape.with_group_runners(compiled.runners)
    new.native_groups = compiled
    return new
