"""Calls from Python into a native tape's machine code, through one cached Numba trampoline.

A ctypes call from Python pays about a microsecond for each array's address
(``a.ctypes.data``), and a Numba function that takes the ctypes function itself as an
argument about as much again to type it at every call.  These trampolines take the entry
point's address as a plain integer and call it through an intrinsic that casts the integer
to the entry point's C type: 0.34 us a call against 1.4 us (the interpreter's whole
``value_and_grad`` of a 1,000-instruction tape is 6 us).  One compiled trampoline serves
every tape.  The address must be a live entry point of that type: :class:`NativeTape` reads
it from the engine it keeps alive, never from a user.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from fasttape.kernels.jit import kernel

__all__ = ["call_value", "call_vg"]

_I8P = ir.IntType(8).as_pointer()


def _data(context: Any, builder: Any, ty: Any, value: Any) -> Any:
    """An array argument's data pointer, as ``i8*``."""
    return builder.bitcast(context.make_array(ty)(context, builder, value).data, _I8P)


@intrinsic
def _value_at(typingctx, address, x, w, out):  # type: ignore[no-untyped-def]
    """``value(x, w, out)`` (void) at machine address ``address``."""
    sig = types.void(address, x, w, out)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ptrs = [_data(context, builder, t, v) for t, v in zip(signature.args[1:], args[1:],
                                                               strict=True)]
        fnty = ir.FunctionType(ir.VoidType(), [_I8P, _I8P, _I8P])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), ptrs)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _vg_at(typingctx, address, x, w, grad, which):  # type: ignore[no-untyped-def]
    """``vg(x, w, grad, which) -> double`` at machine address ``address``."""
    sig = types.float64(address, x, w, grad, which)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ptrs = [_data(context, builder, t, v) for t, v in zip(signature.args[1:4], args[1:4],
                                                               strict=True)]
        fnty = ir.FunctionType(ir.DoubleType(), [_I8P, _I8P, _I8P, ir.IntType(64)])
        which = context.cast(builder, args[4], signature.args[4], types.int64)
        return builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [*ptrs, which])

    return sig, codegen


@kernel
def call_value(address: int, x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """Run the entry point ``value`` at ``address`` (C-contiguous float64 arrays)."""
    _value_at(address, x, w, out)


@kernel
def call_vg(address: int, x: np.ndarray, w: np.ndarray, grad: np.ndarray, which: int) -> float:
    """Run the entry point ``vg`` at ``address`` (C-contiguous float64 arrays); its value
    (NaN where its check failed: :mod:`fasttape.native.emit`)."""
    return _vg_at(address, x, w, grad, which)
