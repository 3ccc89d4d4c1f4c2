"""The floating-point environment of a kernel call: IEEE subnormals, or flushed to zero.

By default every sweep runs in the IEEE environment the caller's thread has (gradual
underflow: results below 2.2e-308 are *subnormal* numbers, with fewer significant bits).
x86 CPUs compute with a subnormal operand or result through a microcode assist that costs
about 150 cycles instead of 4, so a graph whose values or adjoints decay into that range (the
autograd-west family: softmax chains whose adjoints underflow) can run several times slower
than the same graph at ordinary magnitudes.

``flush_subnormals=True`` on :meth:`fasttape.Tape.value`, :meth:`~fasttape.Tape.value_and_grad`
and :meth:`~fasttape.Tape.grad` (single points and batches) sets the x86 MXCSR register's
flush-to-zero (FTZ) and denormals-are-zero (DAZ) bits for the duration of the call, on the
calling thread and on every Numba worker thread that evaluates a chunk, and restores the
previous register afterwards.  Results then differ from the IEEE ones exactly where a
subnormal number appears: it is replaced by a zero of the same sign.  This is the trade that
``torch.set_flush_denormal(True)`` and XLA's CPU backend make; fasttape makes it only when asked.

Only x86-64 is supported (the MXCSR register); elsewhere asking for it raises ``ValueError``.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fasttape.kernels.jit import kernel

__all__ = ["FTZ_DAZ", "SUPPORTED", "call", "check_flush", "enter", "leave", "mxcsr"]

#: Whether this machine has the MXCSR register (x86-64).
SUPPORTED = platform.machine().lower() in ("x86_64", "amd64")

#: MXCSR bits: flush-to-zero (bit 15) and denormals-are-zero (bit 6).
FTZ_DAZ = 0x8040

_I32 = ir.IntType(32)
_PTR = ir.PointerType(ir.IntType(8))


@intrinsic
def _get_mxcsr(typingctx):  # type: ignore[no-untyped-def]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        if not SUPPORTED:  # never called there (check_flush refuses), but must compile
            return ir.Constant(_I32, 0)
        slot = cgutils.alloca_once(builder, _I32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_PTR]), "llvm.x86.sse.stmxcsr")
        builder.call(fn, [builder.bitcast(slot, _PTR)])
        return builder.load(slot)

    return types.uint32(), codegen


@intrinsic
def _set_mxcsr(typingctx, value):  # type: ignore[no-untyped-def]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        if SUPPORTED:
            slot = cgutils.alloca_once(builder, _I32)
            builder.store(args[0], slot)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [_PTR]), "llvm.x86.sse.ldmxcsr")
            builder.call(fn, [builder.bitcast(slot, _PTR)])
        return context.get_dummy_value()

    return types.none(types.uint32), codegen


@kernel
def mxcsr():  # pragma: no cover (jitted)
    """The calling thread's MXCSR register (0 where there is none)."""
    return _get_mxcsr()


@kernel
def enter(flush):  # pragma: no cover (jitted)
    """Set FTZ and DAZ on the calling thread when ``flush``; return the register to restore."""
    old = _get_mxcsr()
    if flush:
        _set_mxcsr(old | FTZ_DAZ)
    return old


@kernel
def leave(old):  # pragma: no cover (jitted)
    """Restore the register that :func:`enter` returned."""
    _set_mxcsr(old)


def call(flush: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on the calling thread, with FTZ/DAZ set around it when ``flush``.

    ``flush`` must already be checked (:func:`check_flush`).  Without it this is a plain call:
    the register is neither read nor written.
    """
    if not flush:
        return fn(*args)
    old = enter(True)
    try:
        return fn(*args)
    finally:
        leave(old)


def check_flush(flush_subnormals: object) -> bool:
    """``flush_subnormals`` as a bool, or a clear error.

    Raises
    ------
    TypeError
        If it is not a bool.
    ValueError
        If it is True on a machine without the x86 MXCSR register.
    """
    if not isinstance(flush_subnormals, bool):
        raise TypeError(
            f"flush_subnormals must be True or False, got {type(flush_subnormals).__name__}"
        )
    if flush_subnormals and not SUPPORTED:
        raise ValueError(
            "flush_subnormals=True needs an x86-64 CPU (it sets the MXCSR register's FTZ and "
            f"DAZ bits); this machine is {platform.machine() or 'unknown'}"
        )
    return flush_subnormals
