"""tape.cfunc(): C function pointers through ctypes, cffi, compiled C and scipy.integrate."""

from __future__ import annotations

import ctypes
import gc
import math
import shutil
import subprocess
import threading

import numpy as np
import pytest

import fasttape as ft
from fasttape.bench.families import random_local
from fasttape.embed.cabi import VALUE_AND_GRAD_SIGNATURE, VALUE_SIGNATURE
from fasttape.ops import OPS
from tests.reference import value_and_grad as ref_value_and_grad
from tests.test_embed_numba import op_tape

IDS = [op.name for op in OPS]


def call_vg(cf, x):
    f = np.empty(1)
    g = np.full(cf.tape.n_inputs, np.nan)
    rc = cf.value_and_grad_ctypes(x.ctypes.data, f.ctypes.data, g.ctypes.data)
    assert rc == 0
    return f[0], g


def call_vg_user_data(cf, x):
    proto = ctypes.CFUNCTYPE(ctypes.c_int32, *[ctypes.c_void_p] * 4)
    fn = proto(cf.value_and_grad_user_data_address)
    f = np.empty(1)
    g = np.full(cf.tape.n_inputs, np.nan)
    assert fn(x.ctypes.data, f.ctypes.data, g.ctypes.data, cf.user_data) == 0
    return f[0], g


@pytest.mark.parametrize("spec", OPS, ids=IDS)
@pytest.mark.parametrize("mode", ["stored", "lean"])
def test_every_op_through_the_pointers(spec, mode):
    tape, x = op_tape(spec)
    tape = tape.with_grad_mode(mode)
    for j in (0, 1):
        v_ref, g_ref = ref_value_and_grad(tape, x, output=j)
        cf = tape.cfunc(output=j)
        # The baked pointer compiles a small wrapper per CFunction (~40 ms): once per op.
        calls = [call_vg_user_data] + ([call_vg] if (mode, j) == ("stored", 1) else [])
        for call in calls:
            v, g = call(cf, x)
            assert v == pytest.approx(v_ref, rel=1e-13)
            np.testing.assert_allclose(g, g_ref, rtol=1e-13, atol=1e-300)
        v = cf.value_ctypes(tape.n_inputs, x.ctypes.data, cf.user_data)
        assert v == pytest.approx(v_ref, rel=1e-13)


def test_int64_args_and_reentrant_variant():
    # A tape whose args are int64 (docs/tape-format.md: more than 2**31 - 1 slots) takes the
    # other branch of the implementation; built directly so the test stays small.
    base = random_local(400, window=30)
    wide = ft.Tape.from_trusted_arrays(base.ops, base.args.astype(np.int64), base.consts,
                                       base.outputs, base.n_inputs)
    x = np.linspace(-0.4, 0.6, base.n_inputs)
    v_ref, g_ref = base.value_and_grad(x)
    for tape in (wide, wide.with_grad_mode("lean")):
        for reentrant in (False, True):
            cf = tape.cfunc(reentrant=reentrant)
            v, g = call_vg(cf, x)
            assert v == v_ref
            np.testing.assert_array_equal(g, g_ref)
            assert cf.value_ctypes(tape.n_inputs, x.ctypes.data, cf.user_data) == v_ref


def test_value_pointer_returns_nan_for_a_wrong_n():
    tape = ft.compile(ft.trace(lambda x: x[0] * x[1], n_inputs=2))
    cf = tape.cfunc()
    x = np.array([2.0, 3.0])
    assert cf.value_ctypes(2, x.ctypes.data, cf.user_data) == 6.0
    assert math.isnan(cf.value_ctypes(3, x.ctypes.data, cf.user_data))


def test_pointer_outlives_every_other_reference():
    def make():
        tape = ft.compile(ft.trace(lambda x: ft.sin(x[0]) * x[1], n_inputs=2))
        return tape.cfunc()

    cf = make()
    addr = cf.value_and_grad_address
    gc.collect()
    proto = ctypes.CFUNCTYPE(ctypes.c_int32, *[ctypes.c_void_p] * 3)
    x, f, g = np.array([0.5, 2.0]), np.empty(1), np.empty(2)
    assert proto(addr)(x.ctypes.data, f.ctypes.data, g.ctypes.data) == 0
    assert f[0] == pytest.approx(math.sin(0.5) * 2.0, rel=1e-15)
    np.testing.assert_allclose(g, [2.0 * math.cos(0.5), math.sin(0.5)], rtol=1e-15)


def test_the_tape_under_a_pointer_cannot_be_swapped_or_its_context_rewritten():
    """The context holds raw addresses of the tape's arrays: rebinding ``cf.tape`` used to
    drop the last reference to them (the pointer then read freed memory), and the context's
    writeable flag could be turned back on."""
    cf = ft.compile(ft.trace(lambda x: ft.sin(x[0]) * x[1], n_inputs=2)).cfunc()
    other = ft.compile(ft.trace(lambda x: x[0] + x[1] + x[2], n_inputs=3))
    for name, value in (("tape", other), ("output", 1), ("reentrant", True)):
        with pytest.raises(AttributeError):
            setattr(cf, name, value)
    with pytest.raises(ValueError):
        cf._ctx.flags.writeable = True
    for arr in (cf.tape.ops, cf.tape.args, cf.tape.consts, cf.tape.outputs):
        with pytest.raises(ValueError):
            arr.flags.writeable = True
    gc.collect()
    v, g = call_vg(cf, np.array([0.5, 2.0]))
    assert v == pytest.approx(math.sin(0.5) * 2.0, rel=1e-15)
    assert g[1] == pytest.approx(math.sin(0.5), rel=1e-15)
    assert (cf.output, cf.reentrant, cf.tape.n_inputs) == (0, False, 2)


def test_ctypes_objects_keep_the_cfunction_alive():
    vg = ft.compile(ft.trace(lambda x: x[0] * x[1], n_inputs=2)).cfunc().value_and_grad_ctypes
    gc.collect()
    x, f, g = np.array([2.0, 5.0]), np.empty(1), np.empty(2)
    assert vg(x.ctypes.data, f.ctypes.data, g.ctypes.data) == 0
    assert (f[0], *g) == (10.0, 5.0, 2.0)


def test_reentrant_pointer_from_many_threads():
    tape = random_local(3000, window=50)
    cf = tape.cfunc(reentrant=True)
    fn = cf.value_and_grad_ctypes  # ctypes releases the GIL during the call
    points = [np.linspace(-0.5, 0.5, tape.n_inputs) * (1 + k / 10) for k in range(8)]
    want = [tape.value_and_grad(p) for p in points]
    errors = []

    def work(k):
        f, g = np.empty(1), np.empty(tape.n_inputs)
        for _ in range(30):
            fn(points[k].ctypes.data, f.ctypes.data, g.ctypes.data)
            if f[0] != want[k][0] or not np.array_equal(g, want[k][1]):
                errors.append(k)
                return

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_cffi():
    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    tape = ft.compile(ft.trace(lambda x: x[0] ** 2 * x[1], n_inputs=2))
    cf = tape.cfunc()
    fn = ffi.cast("int32_t (*)(const double *, double *, double *)", cf.value_and_grad_address)
    x, f, g = ffi.new("double[2]", [3.0, 2.0]), ffi.new("double[1]"), ffi.new("double[2]")
    assert fn(x, f, g) == 0
    assert (f[0], g[0], g[1]) == (18.0, 12.0, 9.0)


C_SOURCE = r"""
#include <stdint.h>
typedef int32_t (*vg_t)(const double *x, double *f, double *grad);
/* Gradient descent driven from C through the fasttape pointer. */
double descend(void *fp, double *x, int n, int steps, double lr) {
    vg_t vg = (vg_t)fp;
    double f = 0.0, g[64];
    for (int s = 0; s < steps; ++s) {
        vg(x, &f, g);
        for (int i = 0; i < n; ++i) x[i] -= lr * g[i];
    }
    return f;
}
"""


def test_called_from_compiled_c(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    (tmp_path / "drive.c").write_text(C_SOURCE)
    lib = tmp_path / "libdrive.so"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", str(tmp_path / "drive.c"), "-o", str(lib)],
                   check=True)
    drive = ctypes.CDLL(str(lib))
    drive.descend.restype = ctypes.c_double
    drive.descend.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                              ctypes.c_double]
    tape = ft.compile(ft.trace(lambda x: ft.sum((x[i] - i) ** 2 for i in range(5)), 5))
    cf = tape.cfunc()
    x_c = np.zeros(5)
    f_c = drive.descend(cf.value_and_grad_address, x_c.ctypes.data, 5, 50, 0.1)
    x_py = np.zeros(5)
    for _ in range(50):
        f_py, g = tape.value_and_grad(x_py)
        x_py -= 0.1 * g
    np.testing.assert_array_equal(x_c, x_py)
    assert f_c == f_py


@pytest.mark.oracle
def test_scipy_quad_and_nquad():
    integrate = pytest.importorskip("scipy.integrate")
    # f(t, a) = exp(-a t^2) cos(t): integrate over t for a fixed a (an extra argument).
    tape = ft.compile(ft.trace(lambda v: ft.exp(-v[1] * v[0] ** 2) * ft.cos(v[0]), 2))
    llc = tape.cfunc().low_level_callable()
    assert llc.signature == VALUE_SIGNATURE
    got, _ = integrate.quad(llc, -2.0, 3.0, args=(0.7,))
    want, _ = integrate.quad(lambda t, a: math.exp(-a * t * t) * math.cos(t), -2.0, 3.0,
                             args=(0.7,))
    assert got == pytest.approx(want, rel=1e-12)
    # Over both variables; the LowLevelCallable alone keeps the tape and buffers alive.
    llc2 = ft.compile(ft.trace(lambda v: ft.exp(-v[1] * v[0] ** 2) * ft.cos(v[0]), 2)).cfunc()
    llc2 = llc2.low_level_callable()
    gc.collect()
    got2, _ = integrate.nquad(llc2, [[-1.0, 1.0], [0.5, 1.5]])
    want2, _ = integrate.nquad(lambda t, a: math.exp(-a * t * t) * math.cos(t),
                               [[-1.0, 1.0], [0.5, 1.5]])
    assert got2 == pytest.approx(want2, rel=1e-10)


def test_documented_signatures_and_errors():
    assert VALUE_AND_GRAD_SIGNATURE == "int32_t (const double *x, double *f, double *grad)"
    g = ft.Graph()
    x = g.inputs(1)
    g.output(x[0], 2 * x[0])
    tape = ft.compile(g)
    with pytest.raises(ValueError, match="pass output="):
        tape.cfunc()
    assert tape.cfunc(output=-1).output == 1
    with pytest.raises(TypeError, match=r"expects a fasttape\.Tape"):
        from fasttape.embed.cabi import cfunction

        cfunction(g)
