"""Tensor tapes in your own ``@numba.njit`` code and behind C function pointers.

The tensor counterparts of :mod:`fasttape.embed.numba_api` and :mod:`fasttape.embed.cabi`
(docs/embedding.md, "Tensor tapes").  Inputs and gradients are flat: every input leaf in leaf
order, each in C order, ``n_inputs`` doubles in all (``tape.input_shapes`` gives the leaves).
Parameters are loaded, and checked as a call checks them (gather indices included), when the
kernel or the pointers are made (``p=``), and stay in their value vector; a new set needs
:meth:`TensorCFunction.set_params` or a new ``numba_kernel``.

Everything runs in the tensor kernels (:mod:`fasttape.kernels.tensor`), products included
(no BLAS call from machine code) and fused groups interpreted (no native groups).

The jitted functions check every array before a sweep, as the scalar ones do: the tape's four
arrays and its leaf table by length and address against ``meta`` (a read-only record made
with them), the work vectors and the arguments by length (and by type when Numba compiles the
call), so a wrong array raises ``ValueError`` naming it instead of reading out of bounds.
"""

from __future__ import annotations

import ctypes
import functools
import math
import operator
from typing import Any

import numba
import numpy as np
from numba import types

from fasttape.embed.cabi import bind_context, keeping, void_ptr
from fasttape.embed.numba_api import NumbaKernel, check_buffer, check_vector
from fasttape.kernels import tensor
from fasttape.kernels.jit import cfunc
from fasttape.kernels.jit import kernel as _kernel
from fasttape.tensor.tape import TensorTape

__all__ = ["TENSOR_KINDS", "TensorCFunction", "tensor_cfunction", "tensor_numba_kernel"]

#: The kinds of function :func:`tensor_numba_kernel` returns.
TENSOR_KINDS = ("value_and_grad", "value", "values", "vjp")

# meta: one int64 per field.  The context of the C pointers: the same fields, then the work.
_META = ("n_slots", "n_inputs", "out", "out_size", "n_instructions", "n_fields", "n_leaves",
         "kinds", "ops", "at", "fields", "leaves")
_CTX = (*_META, "vals", "adj", "reentrant")
(_NSLOTS, _NIN, _OUT, _OUTSIZE, _NINSTR, _NFIELDS, _NLEAVES, _AKINDS, _AOPS, _AAT, _AFIELDS,
 _ALEAVES, _VALS, _ADJ, _REENTRANT) = range(len(_CTX))


@_kernel
def _check_tape(kinds, ops, at, fields, meta, leaves):
    if meta.shape[0] != len(_META):
        raise ValueError("fasttape numba_kernel: meta (arrays[4]) is not the record of "
                         "tape.numba_kernel(); pass its arrays unchanged")
    for arr_len, n, address, expected in (
            (kinds.shape[0], meta[_NINSTR], kinds.ctypes.data, meta[_AKINDS]),
            (ops.shape[0], meta[_NINSTR], ops.ctypes.data, meta[_AOPS]),
            (at.shape[0], meta[_NINSTR], at.ctypes.data, meta[_AAT]),
            (fields.shape[0], meta[_NFIELDS], fields.ctypes.data, meta[_AFIELDS]),
            (leaves.shape[0], meta[_NLEAVES], leaves.ctypes.data, meta[_ALEAVES])):
        if arr_len != n or (n != 0 and address != expected):
            raise ValueError("fasttape numba_kernel: kinds, ops, at, fields and leaves "
                             "(arrays[0:4] and arrays[5]) must be the tape's own; pass the "
                             "arrays of tape.numba_kernel() unchanged")


@_kernel
def _move(leaves, flat, vec, out):
    # Every input leaf between the flat vector (x, grad) and its slots of vals or adj: into
    # the slots (out False), or out of them.
    pos = 0
    for j in range(0, leaves.shape[0], 2):
        off, size = leaves[j], leaves[j + 1]
        for t in range(size):
            if out:
                flat[pos + t] = vec[off + t]
            else:
                vec[off + t] = flat[pos + t]
        pos += size


@_kernel
def _checked(kinds, ops, at, fields, meta, leaves, vals, x):
    _check_tape(kinds, ops, at, fields, meta, leaves)
    check_buffer(vals, "vals", meta[_NSLOTS], "the tape's n_slots")
    check_vector(x, "x", meta[_NIN], "the inputs' total size")


@_kernel
def _value_and_grad(kinds, ops, at, fields, meta, leaves, vals, adj, x, grad):
    _checked(kinds, ops, at, fields, meta, leaves, vals, x)
    check_buffer(adj, "adj", meta[_NSLOTS], "the tape's n_slots")
    check_buffer(grad, "grad", meta[_NIN], "the inputs' total size")
    if meta[_OUTSIZE] != 1:
        raise ValueError("fasttape numba_kernel: value_and_grad needs a scalar output")
    _move(leaves, x, vals, False)
    tensor.value_and_grad(kinds, ops, at, fields, vals, adj, meta[_OUT])
    _move(leaves, grad, adj, True)
    return vals[meta[_OUT]]


@_kernel
def _value(kinds, ops, at, fields, meta, leaves, vals, x):
    _checked(kinds, ops, at, fields, meta, leaves, vals, x)
    _move(leaves, x, vals, False)
    tensor.forward(kinds, ops, at, fields, vals)
    return vals[meta[_OUT]]


@_kernel
def _values(kinds, ops, at, fields, meta, leaves, vals, x, out):
    _checked(kinds, ops, at, fields, meta, leaves, vals, x)
    check_buffer(out, "out", meta[_OUTSIZE], "the output's size")
    _move(leaves, x, vals, False)
    tensor.forward(kinds, ops, at, fields, vals)
    for i in range(meta[_OUTSIZE]):
        out[i] = vals[meta[_OUT] + i]


@_kernel
def _vjp(kinds, ops, at, fields, meta, leaves, vals, adj, x, cot, grad):
    _checked(kinds, ops, at, fields, meta, leaves, vals, x)
    check_buffer(adj, "adj", meta[_NSLOTS], "the tape's n_slots")
    check_vector(cot, "cot", meta[_OUTSIZE], "the output's size")
    check_buffer(grad, "grad", meta[_NIN], "the inputs' total size")
    _move(leaves, x, vals, False)
    tensor.vjp(kinds, ops, at, fields, vals, adj, meta[_OUT], cot)
    _move(leaves, grad, adj, True)


_FNS = {"value_and_grad": _value_and_grad, "value": _value, "values": _values, "vjp": _vjp}


def _parts(tape: TensorTape, p: Any) -> tuple[tuple[np.ndarray, ...], list[int], np.ndarray]:
    """The tape's arrays (kinds, ops, at, fields, leaves), the meta fields and the value
    vector with ``p`` loaded."""
    if not isinstance(tape, TensorTape):
        raise TypeError(f"expected a TensorTape, got {type(tape).__name__}")
    arrays = tape.to_arrays()
    layout = tape.layout()
    leaves = np.array([v for off, shape in layout["inputs"] for v in (off, math.prod(shape))],
                      dtype=np.int64)
    leaves.flags.writeable = False
    own = (arrays["kinds"], arrays["ops"], arrays["at"], arrays["fields"], leaves)
    out, out_shape = layout["output"]
    meta = [tape.n_slots, int(leaves[1::2].sum()), out, math.prod(out_shape),
            own[0].size, own[3].size, leaves.size, *(a.ctypes.data for a in own)]
    return own, meta, tape.initial_values(p)


def tensor_numba_kernel(tape: TensorTape, kind: str = "value_and_grad", *, p: Any = None
                        ) -> NumbaKernel:
    """A jitted function and the arrays to call it with, for ``@numba.njit`` code.

    ``arrays`` is ``(kinds, ops, at, fields, meta, leaves, vals[, adj])``; the calls are

    ============== ============================================ ==========================
    kind           call                                         result
    ============== ============================================ ==========================
    value_and_grad ``fn(*arrays, x, grad)``                     the value; ``grad`` filled
    value          ``fn(*arrays, x)``                           the value (scalar output)
    values         ``fn(*arrays, x, out)``                      ``out`` filled (the output)
    vjp            ``fn(*arrays, x, cot, grad)``                ``grad`` filled
    ============== ============================================ ==========================

    ``x`` and ``grad`` are flat (every input leaf in order, ``n_inputs`` doubles), ``out``
    and ``cot`` the output's size.  The work vectors make a call non-reentrant: give each
    thread its own ``numba_kernel()``.
    """
    if not isinstance(kind, str) or kind not in _FNS:
        raise ValueError(f"kind must be one of {', '.join(TENSOR_KINDS)}; got {kind!r}")
    own, meta_fields, vals = _parts(tape, p)
    if kind in ("value", "value_and_grad") and meta_fields[_OUTSIZE] != 1:
        raise ValueError(f"kind={kind!r} needs a scalar output; this tape's has shape "
                         f"{tape.output_shape}: use kind='values' or 'vjp'")
    meta = np.array(meta_fields, dtype=np.int64)
    meta.flags.writeable = False
    work = (vals,) if kind in ("value", "values") else (vals, np.zeros(tape.n_slots))
    return NumbaKernel(_FNS[kind], (*own[:4], meta, own[4], *work))


# ---------------------------------------------------------------------------- C pointers


@_kernel
def _vg_impl(user_data, xp, fp, gp):
    c = numba.carray(user_data, len(_CTX), np.int64)
    kinds = numba.carray(void_ptr(c[_AKINDS]), c[_NINSTR], np.int64)
    ops = numba.carray(void_ptr(c[_AOPS]), c[_NINSTR], np.int64)
    at = numba.carray(void_ptr(c[_AAT]), c[_NINSTR], np.int64)
    fields = numba.carray(void_ptr(c[_AFIELDS]), c[_NFIELDS], np.int64)
    leaves = numba.carray(void_ptr(c[_ALEAVES]), c[_NLEAVES], np.int64)
    vals = numba.carray(void_ptr(c[_VALS]), c[_NSLOTS], np.float64)
    adj = numba.carray(void_ptr(c[_ADJ]), c[_NSLOTS], np.float64)
    if c[_REENTRANT]:  # vals is then the template (parameters, constants): a private copy
        vals = vals.copy()
        adj = np.empty(c[_NSLOTS])
    x = numba.carray(xp, c[_NIN])
    grad = numba.carray(gp, c[_NIN])
    _move(leaves, x, vals, False)
    tensor.value_and_grad(kinds, ops, at, fields, vals, adj, c[_OUT])
    _move(leaves, grad, adj, True)
    fp[0] = vals[c[_OUT]]
    return 0


_VG_CTX_SIG = types.int32(types.CPointer(types.float64), types.CPointer(types.float64),
                          types.CPointer(types.float64), types.voidptr)


def _vg_entry(xp, fp, gp, user_data):  # pragma: no cover - runs as machine code
    return _vg_impl(user_data, xp, fp, gp)


@functools.cache
def _vg_cfunc() -> Any:
    # Compiled (or loaded from the kernel cache) on first use, never at import.
    return cfunc(_VG_CTX_SIG)(_vg_entry)


class TensorCFunction:
    """C function pointers for a tensor tape with a scalar output (:func:`tensor_cfunction`).

    ``int32_t value_and_grad(const double *x, double *f, double *grad)`` at
    :attr:`value_and_grad_address`, and the same with ``void *user_data`` last at
    :attr:`value_and_grad_user_data_address` (pass :attr:`user_data`).  ``x`` and ``grad``
    hold ``n_inputs`` doubles (the input leaves, flat, in order).  Keep this object alive
    while C code holds the pointers; without ``reentrant=True`` one thread at a time.
    """

    def __init__(self, tape: TensorTape, *, reentrant: bool = False, p: Any = None) -> None:
        own, meta, vals = _parts(tape, p)
        if meta[_OUTSIZE] != 1:
            raise ValueError(f"a C function needs a scalar output; this tape's has shape "
                             f"{tape.output_shape}")
        self._tape, self._own = tape, own
        self._vals, self._adj = vals, np.zeros(tape.n_slots)
        self._reentrant = bool(reentrant)
        ctx = np.array([*meta, self._vals.ctypes.data, self._adj.ctypes.data,
                        int(self._reentrant)], dtype=np.int64)
        # Over immutable bytes: the compiled code trusts every address and size in it.
        self._ctx = np.frombuffer(ctx.tobytes(), dtype=np.int64)
        self._vg: Any = None

    tape = property(operator.attrgetter("_tape"), doc="The tape the pointers evaluate.")
    reentrant = property(operator.attrgetter("_reentrant"),
                         doc="Whether the pointers may run in several threads at once.")
    n_inputs = property(lambda self: int(self._ctx[_NIN]),
                        doc="Doubles in ``x`` and ``grad`` (every input leaf, flat).")

    @property
    def user_data(self) -> int:
        """Address of the context, the ``void *user_data`` of the shared pointer."""
        return int(self._ctx.ctypes.data)

    def set_params(self, p: Any) -> None:
        """Load new parameters (checked as a call checks them) for the next calls; not
        synchronised with calls running in other threads."""
        self._vals[:] = self._tape.initial_values(p)

    @property
    def value_and_grad_address(self) -> int:
        """Address of ``int32_t value_and_grad(const double *x, double *f, double *grad)``
        (compiled on first access, a fraction of a second)."""
        if self._vg is None:
            self._vg = bind_context(_vg_cfunc().address, self.user_data)
        return int(self._vg.address)

    @property
    def value_and_grad_user_data_address(self) -> int:
        """Address of ``int32_t f(const double *x, double *f, double *grad, void *user_data)``:
        one pointer for every tensor tape, compiled once and cached on disk."""
        return int(_vg_cfunc().address)

    @property
    def value_and_grad_ctypes(self) -> Any:
        """The ``value_and_grad`` pointer as a ctypes function of three addresses (keeps this
        object alive; the call releases the GIL)."""
        proto = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p)
        return keeping(proto(self.value_and_grad_address), self)

    def __repr__(self) -> str:
        return (f"<fasttape TensorCFunction: {self.n_inputs} inputs, "
                f"{'reentrant' if self.reentrant else 'not reentrant (one thread)'}>")


def tensor_cfunction(tape: TensorTape, *, reentrant: bool = False, p: Any = None
                     ) -> TensorCFunction:
    """C function pointers evaluating value and gradient of ``tape`` (scalar output).

    Parameters
    ----------
    tape : TensorTape
    reentrant : bool
        Allocate the work vectors on every call, so that several threads may call at once.
    p : parameters, optional
        Required for a tape with parameters (their traced structure); replace them with
        :meth:`TensorCFunction.set_params`.
    """
    return TensorCFunction(tape, reentrant=reentrant, p=p)
