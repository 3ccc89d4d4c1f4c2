"""C-callable function pointers for a tape (Numba ``cfunc``), for ctypes, cffi, C and SciPy.

A C function cannot take NumPy arrays, so the tape's arrays and work buffers reach the compiled
code through a *context*: a small int64 array of addresses and sizes (layout in ``_CTX``).
Three pointers read it:

``value_and_grad``
    ``int32_t value_and_grad(const double *x, double *f, double *grad)``: compiled per
    :class:`CFunction` (30-85 ms) with the context's address baked in as a constant.  It is a
    tiny wrapper that calls the next pointer, which holds the sweep.
``value_and_grad`` with ``user_data``
    ``int32_t f(const double *x, double *f, double *grad, void *user_data)``: one function for
    every tape, compiled once and cached on disk; the context arrives as ``user_data``.
``value``
    ``double value(int32_t n, const double *x, void *user_data)``: the signature of
    ``scipy.LowLevelCallable`` integrands (``scipy.integrate.quad`` / ``nquad``), compiled once
    for all tapes (cached on disk); the context arrives as ``user_data``.

Parameters: for a tape with ``n_params > 0`` the signatures stay the same; the parameters
live in the context, in a buffer the :class:`CFunction` owns: pass them when building it
(``tape.cfunc(p=...)``) and change them between calls with :meth:`CFunction.set_params`.  Each
call joins ``x`` and the parameters into a work vector (the kernels load both from one
vector) and copies the first ``n_inputs`` gradient entries to ``grad``.

Keep-alive: the :class:`CFunction` owns the context, the work buffers and a reference to the
tape (whose arrays are immutable), and the compiled ``cfunc`` objects.  The addresses stay
valid exactly as long as the :class:`CFunction` is alive: keep a reference to it for as long as
C code may call the pointers.

Thread safety: the work buffers are shared by every call through one :class:`CFunction`, so a
pointer is **not reentrant**; make one :class:`CFunction` per thread, or build it with
``reentrant=True`` to allocate the buffers on each call (measured cost in docs/embedding.md).
"""

from __future__ import annotations

import ctypes
import functools
import operator
from typing import Any

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fasttape.kernels import (
    forward_values,
    value_and_grad_kernel,
    value_and_grad_lean_kernel,
)
from fasttape.kernels.jit import cfunc
from fasttape.kernels.jit import kernel as _kernel

# Any tape will do: this module uses only the record's interface.
from fasttape.tape import TapeRecord as Tape

__all__ = [
    "CFunction",
    "VALUE_AND_GRAD_SIGNATURE",
    "VALUE_AND_GRAD_USER_DATA_SIGNATURE",
    "VALUE_SIGNATURE",
    "bind_context",
    "cfunction",
    "keeping",
    "void_ptr",
]

#: C signature of :attr:`CFunction.value_and_grad_address` (returns 0).
VALUE_AND_GRAD_SIGNATURE = "int32_t (const double *x, double *f, double *grad)"
#: C signature of :attr:`CFunction.value_and_grad_user_data_address` (returns 0).
VALUE_AND_GRAD_USER_DATA_SIGNATURE = (
    "int32_t (const double *x, double *f, double *grad, void *user_data)"
)
#: C signature of :attr:`CFunction.value_address`, as ``scipy.LowLevelCallable`` spells it.
VALUE_SIGNATURE = "double (int, double *, void *)"


# Context layout: one int64 per field, in this order.
_CTX = (
    "ops", "n_ops", "args", "n_args", "args_int64", "consts", "n_consts", "outputs", "n_outputs",
    "which", "n_inputs", "vals", "parts", "adj", "lean", "reentrant", "n_params", "params",
    "xp", "gp",
)
_NCTX = len(_CTX)
(_OPS, _NOPS, _ARGS, _NARGS, _ARGS64, _CONSTS, _NCONSTS, _OUTS, _NOUTS, _WHICH, _NIN, _VALS,
 _PARTS, _ADJ, _LEAN, _REENTRANT, _NPARAMS, _PARAMS, _XP, _GP) = range(len(_CTX))


@intrinsic
def void_ptr(typingctx, address):  # type: ignore[no-untyped-def]
    """An integer address as ``void *`` (for ``numba.carray``)."""
    sig = types.voidptr(address)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


@_kernel
def _vg_body(ops, args, consts, outputs, which, x, vals, parts, adj, grad, lean):
    if lean:
        return value_and_grad_lean_kernel(ops, args, consts, outputs, which, x, vals, adj, grad)
    return value_and_grad_kernel(ops, args, consts, outputs, which, x, vals, parts, adj, grad)


@_kernel
def _joined(c, x):
    """``x`` and the context's parameters in one vector (the kernels' leading slots)."""
    n_in = c[_NIN]
    n_p = c[_NPARAMS]
    if c[_REENTRANT]:
        xp = np.empty(n_in + n_p)
    else:
        xp = numba.carray(void_ptr(c[_XP]), n_in + n_p, np.float64)
    params = numba.carray(void_ptr(c[_PARAMS]), n_p, np.float64)
    for i in range(n_in):
        xp[i] = x[i]
    for i in range(n_p):
        xp[n_in + i] = params[i]
    return xp


@_kernel
def _value_and_grad_impl(user_data, xp, fp, gp):
    """Body of every ``value_and_grad`` pointer: the context's arrays, then a driver."""
    c = numba.carray(user_data, _NCTX, np.int64)
    n_in = c[_NIN]
    n_p = c[_NPARAMS]
    n_slots = n_in + n_p + c[_NCONSTS] + c[_NOPS]
    ops = numba.carray(void_ptr(c[_OPS]), c[_NOPS], np.uint8)
    consts = numba.carray(void_ptr(c[_CONSTS]), c[_NCONSTS], np.float64)
    outputs = numba.carray(void_ptr(c[_OUTS]), c[_NOUTS], np.int64)
    x = numba.carray(xp, n_in)
    grad_out = numba.carray(gp, n_in)
    grad = grad_out
    if n_p:  # parameters: x and p joined; the gradient of all leading slots, then its head
        x = _joined(c, x)
        if c[_REENTRANT]:
            grad = np.empty(n_in + n_p)
        else:
            grad = numba.carray(void_ptr(c[_GP]), n_in + n_p, np.float64)
    n_parts = 0 if c[_LEAN] else c[_NARGS]
    if c[_REENTRANT]:
        vals = np.empty(n_slots)
        parts = np.empty(n_parts)
        adj = np.zeros(n_slots)
    else:
        vals = numba.carray(void_ptr(c[_VALS]), n_slots, np.float64)
        parts = numba.carray(void_ptr(c[_PARTS]), n_parts, np.float64)
        adj = numba.carray(void_ptr(c[_ADJ]), n_slots, np.float64)
    lean = c[_LEAN] != 0
    # args is int32 or int64 (docs/tape-format.md); a runtime branch keeps one implementation.
    if c[_ARGS64]:
        args64 = numba.carray(void_ptr(c[_ARGS]), c[_NARGS], np.int64)
        fp[0] = _vg_body(ops, args64, consts, outputs, c[_WHICH], x, vals, parts, adj, grad, lean)
    else:
        args32 = numba.carray(void_ptr(c[_ARGS]), c[_NARGS], np.int32)
        fp[0] = _vg_body(ops, args32, consts, outputs, c[_WHICH], x, vals, parts, adj, grad, lean)
    if n_p:
        for i in range(n_in):
            grad_out[i] = grad[i]
    return 0


@_kernel
def _value_impl(n, xp, user_data):
    """Body of the ``value`` pointer: NaN when ``n`` is not the tape's number of inputs."""
    c = numba.carray(user_data, _NCTX, np.int64)
    n_in = c[_NIN]
    if n != n_in:
        return np.nan
    n_slots = n_in + c[_NPARAMS] + c[_NCONSTS] + c[_NOPS]
    ops = numba.carray(void_ptr(c[_OPS]), c[_NOPS], np.uint8)
    consts = numba.carray(void_ptr(c[_CONSTS]), c[_NCONSTS], np.float64)
    outputs = numba.carray(void_ptr(c[_OUTS]), c[_NOUTS], np.int64)
    x = numba.carray(xp, n_in)
    if c[_NPARAMS]:
        x = _joined(c, x)
    if c[_REENTRANT]:
        vals = np.empty(n_slots)
    else:
        vals = numba.carray(void_ptr(c[_VALS]), n_slots, np.float64)
    if c[_ARGS64]:
        forward_values(ops, numba.carray(void_ptr(c[_ARGS]), c[_NARGS], np.int64), consts, x,
                       vals)
    else:
        forward_values(ops, numba.carray(void_ptr(c[_ARGS]), c[_NARGS], np.int32), consts, x,
                       vals)
    return vals[outputs[c[_WHICH]]]


_VALUE_SIG = types.float64(types.intc, types.CPointer(types.float64), types.voidptr)
_VG_SIG = types.int32(
    types.CPointer(types.float64), types.CPointer(types.float64), types.CPointer(types.float64)
)
_VG_CTX_SIG = types.int32(
    types.CPointer(types.float64), types.CPointer(types.float64), types.CPointer(types.float64),
    types.voidptr,
)


def _value_entry(n, xp, user_data):  # pragma: no cover - runs as machine code
    return _value_impl(n, xp, user_data)


def _value_and_grad_entry(xp, fp, gp, user_data):  # pragma: no cover - runs as machine code
    return _value_and_grad_impl(user_data, xp, fp, gp)


# The two shared pointers are compiled (or loaded from the kernel cache) on first use, never
# at import: importing fasttape compiles nothing.
@functools.cache
def _value_cfunc() -> Any:
    return cfunc(_VALUE_SIG)(_value_entry)


@functools.cache
def _value_and_grad_cfunc() -> Any:
    return cfunc(_VG_CTX_SIG)(_value_and_grad_entry)


_VG_CTX_PROTO = ctypes.CFUNCTYPE(
    ctypes.c_int32, ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double),
    ctypes.POINTER(ctypes.c_double), ctypes.c_void_p,
)


def bind_context(shared_address: int, ctx_address: int) -> Any:
    """``int32_t value_and_grad(const double *x, double *f, double *grad)`` calling the shared
    pointer at ``shared_address`` (the same with ``void *user_data`` last) with the context
    at ``ctx_address``: a ``cfunc`` compiled now (a fraction of a second), not cached."""
    # The context's address becomes a compile-time constant of a tiny wrapper that calls the
    # shared, disk-cached pointer through its address.  Calling the jitted body directly
    # would make Numba link (and re-optimise) the whole sweep into every wrapper: seconds per
    # tape instead of a fraction of one.
    target = _VG_CTX_PROTO(shared_address)

    def value_and_grad(xp, fp, gp):  # type: ignore[no-untyped-def]
        return target(xp, fp, gp, void_ptr(ctx_address))

    return cfunc(_VG_SIG, cache=False)(value_and_grad)


class CFunction:
    """C function pointers evaluating one output of a tape; see the module docstring.

    Build with :func:`cfunction` or :meth:`Tape.cfunc`.

    Attributes
    ----------
    tape : Tape
        Read-only, like ``output`` and ``reentrant``: the pointers hold its arrays' addresses.
    output : int
        The output that both pointers evaluate.
    reentrant : bool
        False: the pointers share one set of work buffers (one caller at a time).  True: each
        call allocates its own (safe from any number of threads at once, slower).
    user_data : int
        Address of the context, the ``void *user_data`` of :attr:`value_address`.
    params : ndarray
        A copy of the parameters the pointers use (tapes with ``n_params > 0``); change them
        with :meth:`set_params`.
    """

    def __init__(self, tape: Tape, *, output: int | None = None, reentrant: bool = False,
                 p: Any = None):
        if not isinstance(tape, Tape):
            raise TypeError(f"cfunction() expects a fasttape.Tape, got {type(tape).__name__}")
        n_lead = tape.n_inputs + tape.n_params
        self._params = np.empty(tape.n_params)
        if p is not None or tape.n_params:
            self.set_params(p, tape)
        self._xp = np.empty(n_lead if tape.n_params else 0)
        self._gp = np.empty(n_lead if tape.n_params else 0)
        # Private, behind read-only properties: the context below holds raw addresses of this
        # tape's arrays, so rebinding ``tape`` could free them under a live pointer.
        self._tape = tape
        self._output = tape.output_index(output)
        self._reentrant = bool(reentrant)
        lean = tape.grad_mode == "lean"
        self._vals = np.empty(tape.n_slots)
        self._parts = np.empty(0 if lean else tape.n_edges)
        self._adj = np.zeros(tape.n_slots)  # zeroed once: the sweeps leave it zeroed
        fields = {
            "ops": tape.ops.ctypes.data, "n_ops": tape.n_instructions,
            "args": tape.args.ctypes.data, "n_args": tape.n_edges,
            "args_int64": int(tape.args.dtype == np.int64),
            "consts": tape.consts.ctypes.data, "n_consts": tape.n_consts,
            "outputs": tape.outputs.ctypes.data, "n_outputs": tape.n_outputs,
            "which": self._output, "n_inputs": tape.n_inputs,
            "vals": self._vals.ctypes.data, "parts": self._parts.ctypes.data,
            "adj": self._adj.ctypes.data, "lean": int(lean), "reentrant": int(self._reentrant),
            "n_params": tape.n_params, "params": self._params.ctypes.data,
            "xp": self._xp.ctypes.data, "gp": self._gp.ctypes.data,
        }
        ctx = np.array([fields[name] for name in _CTX], dtype=np.int64)
        # Over an immutable bytes object, so its writeable flag cannot be turned back on: the
        # compiled code trusts every address and size in it.
        self._ctx = np.frombuffer(ctx.tobytes(), dtype=np.int64)
        self._vg: Any = None

    # Read-only (see __init__): the context holds raw addresses of the tape's arrays.
    tape = property(operator.attrgetter("_tape"), doc="The tape the pointers evaluate.")
    output = property(operator.attrgetter("_output"),
                      doc="Index of the output that the pointers evaluate.")
    reentrant = property(operator.attrgetter("_reentrant"),
                         doc="Whether the pointers may run in several threads at once.")

    @property
    def params(self) -> np.ndarray:
        return self._params.copy()

    def set_params(self, p: Any, tape: Tape | None = None) -> None:
        """Set the parameters that the next calls of the pointers use (checked, copied).

        Not synchronised with calls running in other threads: set them between calls.
        """
        tape = self._tape if tape is None else tape
        pin = tape.check_params(p)
        if pin.ndim != 1:
            raise ValueError(
                f"a C function evaluates one parameter set: p must have shape "
                f"({tape.n_params},); got shape {pin.shape}"
            )
        self._params[:] = pin

    @property
    def user_data(self) -> int:
        return int(self._ctx.ctypes.data)

    # ------------------------------------------------------------------ value_and_grad
    @property
    def value_and_grad_address(self) -> int:
        """Address of ``int32_t value_and_grad(const double *x, double *f, double *grad)``.

        ``x`` and ``grad`` point to ``n_inputs`` doubles, ``f`` to one.  Returns 0.  The first
        access compiles the pointer (a fraction of a second).
        """
        if self._vg is None:
            self._vg = bind_context(_value_and_grad_cfunc().address, self.user_data)
        return int(self._vg.address)

    @property
    def value_and_grad_user_data_address(self) -> int:
        """Address of ``int32_t f(const double *x, double *f, double *grad, void *user_data)``.

        The same function as :attr:`value_and_grad_address` with the context passed as
        ``user_data`` (:attr:`user_data`): one pointer for every tape, compiled once and cached
        on disk, so nothing is compiled per tape.
        """
        return int(_value_and_grad_cfunc().address)

    @property
    def value_and_grad_ctypes(self) -> Any:
        """The ``value_and_grad`` pointer as a ctypes function taking three addresses.

        Arguments are ``void *`` so that integers from ``arr.ctypes.data`` pass without
        conversion (the cheapest ctypes call); the call releases the GIL.  The returned object
        keeps this :class:`CFunction` alive.
        """
        proto = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p)
        return keeping(proto(self.value_and_grad_address), self)

    # ------------------------------------------------------------------ value
    @property
    def value_address(self) -> int:
        """Address of ``double value(int n, const double *x, void *user_data)``.

        Pass :attr:`user_data` as the last argument.  Returns the output's value, or NaN when
        ``n`` differs from the tape's ``n_inputs``.
        """
        return int(_value_cfunc().address)

    @property
    def value_ctypes(self) -> Any:
        """The ``value`` pointer as a ctypes function ``(int, void *, void *) -> double``.

        Pass :attr:`user_data` as the last argument.  Keeps this :class:`CFunction` alive.
        """
        proto = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        return keeping(proto(self.value_address), self)

    def low_level_callable(self) -> Any:
        """The value as a ``scipy.LowLevelCallable`` (for ``scipy.integrate.quad``, ``nquad``).

        ``quad(llc, a, b, args=(p1, ...))`` integrates over input 0 with the other inputs set
        to ``args``; the tape must have ``1 + len(args)`` inputs (else every value is NaN).
        The returned object keeps this :class:`CFunction` alive.
        """
        from scipy import LowLevelCallable

        proto = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int,
                                 ctypes.POINTER(ctypes.c_double), ctypes.c_void_p)
        # LowLevelCallable keeps ``fn`` and ``user_data``; ``fn`` keeps us.
        fn = keeping(proto(self.value_address), self)
        return LowLevelCallable(fn, ctypes.c_void_p(self.user_data))

    def __repr__(self) -> str:
        return (
            f"<fasttape CFunction: output {self.output} of a tape with {self.tape.n_inputs} "
            f"inputs, {'reentrant' if self.reentrant else 'not reentrant (one thread)'}>"
        )


def keeping(fn: Any, owner: Any) -> Any:
    """``fn`` (a ctypes function object) with ``owner`` attached: a ctypes function only knows
    an address, so the owner of the code, the context and the buffers is tied to it and the
    pointer cannot outlive them."""
    fn._fasttape_owner = owner
    return fn


def cfunction(
    tape: Tape, *, output: int | None = None, reentrant: bool = False, p: Any = None
) -> CFunction:
    """C function pointers (value and gradient, value only) for one output of ``tape``.

    Parameters
    ----------
    tape : Tape
    output : int, optional
        Which output; required when the tape has several.
    reentrant : bool
        Allocate the work buffers on every call instead of sharing one set, so that several
        threads may call the same pointer at once.
    p : array_like of float, shape (n_params,)
        The parameters, required for a tape that has some: they stay in the context (the C
        signatures do not change) until :meth:`CFunction.set_params` replaces them.

    Returns
    -------
    CFunction
        Keep it alive while C code holds its pointers.
    """
    return CFunction(tape, output=output, reentrant=reentrant, p=p)
