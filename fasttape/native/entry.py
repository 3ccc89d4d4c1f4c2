"""A native tape's machine code for embedding: in your ``@numba.njit`` code and as C pointers.

:meth:`NativeTape.numba_kernel` and :meth:`NativeTape.cfunc` hand out the compiled entry
points of :mod:`fasttape.native.emit` (``value(x, w, out)``, ``vg(x, w, grad, which)``) in the
shapes of the interpreter's (:mod:`fasttape.embed.numba_api`, :mod:`fasttape.embed.cabi`):

- ``fn, arrays = native.numba_kernel()``, then ``fn(*arrays, x, grad)`` in a jitted loop.
  ``arrays`` carries the entry point (a ctypes function: Numba calls its address), the work
  array and a read-only record of the counts; ``fn`` checks every array's length (and the
  work array's address) before the call, so a wrong one raises ``ValueError`` instead of
  writing out of bounds.
- ``cf = native.cfunc()``: ``int32_t value_and_grad(const double *x, double *f, double
  *grad)`` at ``cf.value_and_grad_address``, a tiny Numba ``cfunc`` with the entry point, the
  work array and the output baked in (compiled per call of ``cfunc()``, about 0.1 s).

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

from fasttape.embed.cabi import keeping, void_ptr
from fasttape.embed.numba_api import NumbaKernel, check_buffer, check_vector
from fasttape.kernels.jit import cfunc
from fasttape.kernels.jit import kernel as _kernel

__all__ = ["NATIVE_KINDS", "NativeCFunction", "native_cfunction", "native_numba_kernel"]

#: The kinds of :func:`native_numba_kernel`.
NATIVE_KINDS = ("value_and_grad", "value", "values")

_META = ("n_inputs", "n_params", "n_outputs", "which", "n_work", "work_address")
_NIN, _NP, _NOUT, _WHICH, _NWORK, _AWORK = range(len(_META))


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
        return x
    check_buffer(xp, "xp", meta[_NIN] + meta[_NP], "n_inputs + n_params")
    for i in range(meta[_NIN]):
        xp[i] = x[i]
    return xp


@_kernel
def _value_and_grad(fn, meta, w, xp, x, grad):
    point = _checked(meta, w, xp, x)
    check_buffer(grad, "grad", meta[_NIN], "the tape's n_inputs")
    return fn(point.ctypes.data, w.ctypes.data, grad.ctypes.data, meta[_WHICH])


@_kernel
def _values(fn, meta, w, xp, x, out):
    point = _checked(meta, w, xp, x)
    check_buffer(out, "out", meta[_NOUT], "the tape's n_outputs")
    fn(point.ctypes.data, w.ctypes.data, out.ctypes.data)


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
    meta = np.array([tape.n_inputs, tape.n_params, tape.n_outputs, which, code.n_work,
                     w.ctypes.data], dtype=np.int64)
    meta.flags.writeable = False
    if kind == "value_and_grad":
        return NumbaKernel(_value_and_grad, (code.vg, meta, w, xp))
    if kind == "values":
        return NumbaKernel(_values, (code.value, meta, w, xp))
    return NumbaKernel(_value, (code.value, meta, w, xp, np.empty(tape.n_outputs)))


# ---------------------------------------------------------------------------- C pointer

_VG_SIG = types.int32(types.CPointer(types.float64), types.CPointer(types.float64),
                      types.CPointer(types.float64))


def _compile(vg: Any, n_in: int, n_p: int, n_work: int, which: int, work: int, xp: int,
             reentrant: bool) -> Any:
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
        self._fn = _compile(code.vg, tape.n_inputs, tape.n_params, code.n_work, self._output,
                            self._w.ctypes.data, self._xp.ctypes.data, self._reentrant)

    native = property(operator.attrgetter("_native"), doc="The native tape it runs.")
    output = property(operator.attrgetter("_output"), doc="The output it evaluates.")
    reentrant = property(operator.attrgetter("_reentrant"),
                         doc="Whether several threads may call the pointer at once.")

    def set_params(self, p: Any) -> None:
        """New parameters for the next calls (checked); not synchronised with running calls."""
        self._xp[:] = _point_buffer(self._native, p)

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
