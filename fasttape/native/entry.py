"""A native tape's machine code for embedding: in your ``@numba.njit`` code and as C pointers.

:meth:`NativeTape.numba_kernel` and :meth:`NativeTape.cfunc` hand out the compiled entry
points of :mod:`fasttape.native.emit` (``value(x, w, out)``, ``vg(x, w, grad, which)``) in the
shapes of the interpreter's (:mod:`fasttape.embed.numba_api`, :mod:`fasttape.embed.cabi`):

- ``fn, arrays = native.numba_kernel()``, then ``fn(*arrays, x, grad)`` in a jitted loop.
  ``arrays`` carries the entry point (a ctypes function: Numba calls its address), the work
  array, a read-only record of the counts and, for ``value_and_grad``, the fallback below
  and its one-value buffer; ``fn`` checks every array's length (and the work array's
  address) before the call, so a wrong one raises ``ValueError`` instead of writing out of
  bounds.  A strided ``x``, ``grad`` or ``out`` is copied to or from a contiguous buffer (the
  machine code reads and writes consecutive doubles).
- ``cf = native.cfunc()``: ``int32_t value_and_grad(const double *x, double *f, double
  *grad)`` at ``cf.value_and_grad_address``, a tiny Numba ``cfunc`` with the entry point, the
  work array and the output baked in (compiled per call of ``cfunc()``, 0.1 to 0.2 s).

Where the machine code's check fails (a NaN gradient entry, which a ``0 * inf`` in the
reverse sweep gives: :func:`fasttape.native.irtext.accumulate`), both evaluate that point
again on the interpreter, through its C pointer (:mod:`fasttape.embed.cabi`, a context this
module owns), so every result is the interpreter's.  That pointer is compiled once per
process, or loaded from Numba's cache (about 20 ms), by the first ``numba_kernel()`` or
``cfunc()``.

Parameters are joined to ``x`` in a buffer these objects own (``p=`` when they are made;
``set_params`` on the C one).  Both share one work array per object: one thread at a time,
unless the C function is built with ``reentrant=True`` (work allocated per call).  Keep the
returned objects alive while they are used: they hold the machine code.
"""

from __future__ import annotations

import ctypes
import operator
from typing import Any

import numba
import numpy as np
from numba import types

from fasttape.embed.cabi import CFunction, cfunction, keeping, void_ptr
from fasttape.embed.numba_api import NumbaKernel, check_buffer, check_vector
from fasttape.kernels.jit import cfunc
from fasttape.kernels.jit import kernel as _kernel

__all__ = ["NATIVE_KINDS", "NativeCFunction", "native_cfunction", "native_numba_kernel"]

#: The kinds of :func:`native_numba_kernel`.
NATIVE_KINDS = ("value_and_grad", "value", "values")

_META = ("n_inputs", "n_params", "n_outputs", "which", "n_work", "work_address", "check_at",
         "fallback_context")
_NIN, _NP, _NOUT, _WHICH, _NWORK, _AWORK, _CHECK, _FBCTX = range(len(_META))

#: ``int32_t f(const double *x, double *f, double *grad, void *user_data)``: the
#: interpreter's shared C pointer (:attr:`fasttape.embed.cabi.CFunction.
#: value_and_grad_user_data_address`), as the fallback of a failed check.
_FALLBACK = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p)


def _fallback(interpreted: CFunction) -> Any:
    """The interpreter's shared ``value_and_grad`` pointer as a ctypes function, keeping
    ``interpreted`` (whose context it is called with) alive."""
    return keeping(_FALLBACK(interpreted.value_and_grad_user_data_address), interpreted)


@_kernel
def _checked(meta, w, xp, x):
    # The point the machine code reads: x itself, or x joined to the parameters in xp.
    if meta.shape[0] != len(_META):
        raise ValueError("fasttape numba_kernel: meta is not the record of "
                         "native.numba_kernel(); pass its arrays unchanged")
    check_buffer(w, "w", meta[_NWORK], "the native tape's work size")
    if w.ctypes.data != meta[_AWORK]:
        raise ValueError("fasttape numba_kernel: w is not the work array of this "
                         "native.numba_kernel(); pass its arrays unchanged")
    check_vector(x, "x", meta[_NIN], "the tape's n_inputs")
    if meta[_NP] == 0:
        return x if x.strides[0] == 8 else np.ascontiguousarray(x)
    check_buffer(xp, "xp", meta[_NIN] + meta[_NP], "n_inputs + n_params")
    for i in range(meta[_NIN]):
        xp[i] = x[i]
    return xp


@_kernel
def _contiguous(a):
    # ``a`` itself, or a new buffer of its length where its entries are not consecutive.
    return a if a.strides[0] == 8 else np.empty(a.shape[0])


@_kernel
def _value_and_grad(fn, meta, w, xp, fallback, f, x, grad):
    point = _checked(meta, w, xp, x)
    check_buffer(grad, "grad", meta[_NIN], "the tape's n_inputs")
    check_buffer(f, "f", 1, "one value")
    g = _contiguous(grad)
    v = fn(point.ctypes.data, w.ctypes.data, g.ctypes.data, meta[_WHICH])
    if np.isnan(w[meta[_CHECK]]):  # on the interpreter (the module docstring)
        # point: x first (its parameters, if any, the fallback joins itself).
        fallback(point.ctypes.data, f.ctypes.data, g.ctypes.data, meta[_FBCTX])
        v = f[0]
    if grad.strides[0] != 8:
        grad[:] = g
    return v


@_kernel
def _values(fn, meta, w, xp, x, out):
    point = _checked(meta, w, xp, x)
    check_buffer(out, "out", meta[_NOUT], "the tape's n_outputs")
    o = _contiguous(out)
    fn(point.ctypes.data, w.ctypes.data, o.ctypes.data)
    if out.strides[0] != 8:
        out[:] = o


@_kernel
def _value(fn, meta, w, xp, out, x):
    # One output: the value returned (``out`` is this kernel's own buffer of n_outputs).
    _values(fn, meta, w, xp, x, out)
    return out[meta[_WHICH]]


def _point_buffer(native: Any, p: Any) -> np.ndarray:
    tape = native.tape
    if not tape.n_params and p is None:
        return np.empty(0)
    xp = tape.join_params(np.zeros(tape.n_inputs), p)
    if xp.ndim != 1:
        raise ValueError(f"one parameter set: p must have shape ({tape.n_params},); got a "
                         "batch")
    return xp


def native_numba_kernel(native: Any, kind: str = "value_and_grad", *,
                        output: int | None = None, p: Any = None) -> NumbaKernel:
    """``(fn, arrays)`` calling ``native``'s machine code from ``@numba.njit`` code.

    ============== ============================== ======================================
    kind           call                           result
    ============== ============================== ======================================
    value_and_grad ``fn(*arrays, x, grad)``       value of ``output``; ``grad`` filled
    value          ``fn(*arrays, x)``             value of ``output``
    values         ``fn(*arrays, x, out)``        ``out`` (``n_outputs``) filled
    ============== ============================== ======================================

    Bitwise the native tape's (and so the interpreter's) results.  ``p``: the parameters of
    a tape that has some, fixed for this kernel.  One thread at a time per kernel.
    """
    if not isinstance(kind, str) or kind not in NATIVE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(NATIVE_KINDS)}; got {kind!r}")
    code = native.machine_code
    tape = native.tape
    which = 0 if kind == "values" and output is None else tape.output_index(output)
    w = np.zeros(code.n_work)
    xp = _point_buffer(native, p)
    interpreted = cfunction(tape, output=which, p=p) if kind == "value_and_grad" else None
    meta = np.array([tape.n_inputs, tape.n_params, tape.n_outputs, which, code.n_work,
                     w.ctypes.data, code.check_at,
                     0 if interpreted is None else interpreted.user_data], dtype=np.int64)
    meta.flags.writeable = False
    if interpreted is not None:
        return NumbaKernel(_value_and_grad, (code.vg, meta, w, xp, _fallback(interpreted),
                                             np.empty(1)))
    if kind == "values":
        return NumbaKernel(_values, (code.value, meta, w, xp))
    return NumbaKernel(_value, (code.value, meta, w, xp, np.empty(tape.n_outputs)))


# ---------------------------------------------------------------------------- C pointer

_VG_SIG = types.int32(types.CPointer(types.float64), types.CPointer(types.float64),
                      types.CPointer(types.float64))


def _compile(vg: Any, n_in: int, n_p: int, n_work: int, which: int, work: int, xp: int,
             reentrant: bool, check_at: int, fallback: Any, context: int) -> Any:
    # Everything but the three pointers is a compile-time constant of this wrapper.
    n_lead = n_in + n_p

    def value_and_grad(xptr, fptr, gptr):  # type: ignore[no-untyped-def]
        x = numba.carray(xptr, n_in)
        if reentrant:
            w = np.empty(n_work)  # the work array never needs clearing (native/emit.py)
        else:
            w = numba.carray(void_ptr(work), n_work, np.float64)
        if n_p:
            joined = numba.carray(void_ptr(xp), n_lead, np.float64)
            if reentrant:
                joined = joined.copy()
            for i in range(n_in):
                joined[i] = x[i]
            x = joined
        grad = numba.carray(gptr, n_in)
        fptr[0] = vg(x.ctypes.data, w.ctypes.data, grad.ctypes.data, which)
        if np.isnan(w[check_at]):  # on the interpreter (the module docstring)
            return fallback(numba.carray(xptr, n_in).ctypes.data,
                            numba.carray(fptr, 1).ctypes.data, grad.ctypes.data, context)
        return 0

    return cfunc(_VG_SIG, cache=False)(value_and_grad)


class NativeCFunction:
    """``int32_t value_and_grad(const double *x, double *f, double *grad)`` running a native
    tape's machine code for one output (:func:`native_cfunction`).

    ``x`` and ``grad`` hold ``n_inputs`` doubles, ``f`` one; returns 0.  Keep this object
    alive while C code holds the pointer; without ``reentrant=True`` one caller at a time.
    """

    def __init__(self, native: Any, *, output: int | None = None, reentrant: bool = False,
                 p: Any = None) -> None:
        self._native = native
        code = native.machine_code
        tape = native.tape
        self._output = tape.output_index(output)
        self._reentrant = bool(reentrant)
        self._w = np.zeros(code.n_work)
        self._xp = _point_buffer(native, p)
        self._interpreted = cfunction(tape, output=self._output, reentrant=self._reentrant,
                                      p=p)
        self._fallback = _fallback(self._interpreted)
        self._fn = _compile(code.vg, tape.n_inputs, tape.n_params, code.n_work, self._output,
                            self._w.ctypes.data, self._xp.ctypes.data, self._reentrant,
                            code.check_at, self._fallback, self._interpreted.user_data)

    native = property(operator.attrgetter("_native"), doc="The native tape it runs.")
    output = property(operator.attrgetter("_output"), doc="The output it evaluates.")
    reentrant = property(operator.attrgetter("_reentrant"),
                         doc="Whether several threads may call the pointer at once.")

    def set_params(self, p: Any) -> None:
        """New parameters for the next calls (checked); not synchronised with running calls."""
        self._xp[:] = _point_buffer(self._native, p)
        self._interpreted.set_params(p)

    @property
    def value_and_grad_address(self) -> int:
        """Address of ``int32_t value_and_grad(const double *x, double *f, double *grad)``."""
        return int(self._fn.address)

    @property
    def value_and_grad_ctypes(self) -> Any:
        """The pointer as a ctypes function of three addresses (keeps this object alive)."""
        proto = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p)
        return keeping(proto(self.value_and_grad_address), self)

    def __repr__(self) -> str:
        return (f"<fasttape NativeCFunction: output {self.output} of a native tape with "
                f"{self._native.tape.n_inputs} inputs, "
                f"{'reentrant' if self.reentrant else 'not reentrant (one thread)'}>")


def native_cfunction(native: Any, *, output: int | None = None, reentrant: bool = False,
                     p: Any = None) -> NativeCFunction:
    """The C pointer of a native tape (see :class:`NativeCFunction`), with the options of the
    interpreter's :func:`fasttape.embed.cabi.cfunction` (``output``, ``reentrant``, ``p``)."""
    return NativeCFunction(native, output=output, reentrant=reentrant, p=p)
