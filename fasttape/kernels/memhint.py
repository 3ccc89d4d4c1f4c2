"""Memory hints for the kernels: software prefetch.

Two sweeps read memory in an order the hardware prefetchers cannot guess:

* the single-point sweeps (``sweep.py``) read ``vals[args[k]]`` and update
  ``adj[args[k]]``: on a tape whose parents lie anywhere earlier (``random-uniform``) each
  is a cache miss at the full latency of L3 or memory;
* the batch reverse sweep (``batch.py``) walks the stored partials from the end
  of a buffer far larger than L2 (autograd-west, 10k ops: 25 MB per worker at ``C = 32``),
  skipping the rows of unit partials, which are not stored.

Both know the addresses some instructions ahead (the argument slots are in the tape), so they
ask for those lines early with :func:`prefetch` or :func:`prefetch_write`, which emit LLVM's
``llvm.prefetch`` (``prefetcht0`` / ``prefetchw`` on x86-64, ``prfm`` on AArch64, nothing on
targets without one).  A prefetch is a hint: it never faults, even for an address outside the
array, and changes no result, so the sweeps stay bitwise what they were without it.  The
figures that chose the distances are in docs/batch.md and docs/tape-format.md.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["LINE_DOUBLES", "prefetch", "prefetch_write"]

#: float64 values per 64-byte cache line (the line size of x86-64 and most AArch64 cores).
LINE_DOUBLES = 8

_I32 = ir.IntType(32)
_PTR = ir.PointerType(ir.IntType(8))


def _typer(rw: int, a, idx):  # type: ignore[no-untyped-def]
    """Signature and codegen of a prefetch of ``a[idx]`` (``rw``: 0 read, 1 write)."""
    if not (isinstance(a, types.Array) and len(idx) == a.ndim
            and all(isinstance(t, types.Integer) for t in idx)):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        packed = cgutils.unpack_tuple(builder, args[1])  # the *idx arguments, as a tuple
        index = [context.cast(builder, v, t, types.intp)
                 for v, t in zip(packed, signature.args[1], strict=True)]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, index)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_PTR, _I32, _I32, _I32]),
            "llvm.prefetch.p0")
        # (address, read or write, 3 = keep in every cache level, 1 = data cache)
        builder.call(fn, [builder.bitcast(ptr, _PTR), ir.Constant(_I32, rw),
                          ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.none(a, types.StarArgTuple.from_types(idx)), codegen


@intrinsic
def prefetch(typingctx, a, *idx):  # type: ignore[no-untyped-def]
    """Start loading, for reading, the cache line that holds ``a[idx]``.

    Callable from Numba code only, with one integer index per dimension of ``a``.  No bounds
    check, and none is needed: a prefetch of any address is harmless.
    """
    return _typer(0, a, idx)


@intrinsic
def prefetch_write(typingctx, a, *idx):  # type: ignore[no-untyped-def]
    """As :func:`prefetch`, for a line that is about to be written."""
    return _typer(1, a, idx)
