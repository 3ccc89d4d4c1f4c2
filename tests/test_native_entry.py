"""A native tape's machine code in jitted code and behind a C pointer (fasttape/native/entry.py).

The oracle: the native tape's own calls, which are bitwise the interpreter's (tests/test_native.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import fasttape as ft
from tests.test_embed_tensor import _descend
from tests.thread_helpers import run_threads


@pytest.fixture(scope="module")
def two_outputs():
    tape = ft.compile(ft.trace(lambda v: [ft.sin(v[0]) * v[1] + ft.exp(v[2]) / 2,
                                          v[0] * v[1] * v[2] - ft.log(v[1])], 3))
    return tape.native()


@pytest.fixture(scope="module")
def with_params():
    return ft.compile(ft.trace(lambda v, q: ft.tanh(v[0] * q[0]) + v[1] ** 2 * q[1], 2,
                               n_params=2)).native()


@pytest.mark.parametrize("output", [0, 1])
def test_numba_kernel_is_the_native_tape(two_outputs, output):
    fn, arrays = two_outputs.numba_kernel(output=output)
    x = np.array([0.3, 1.7, -0.4])
    grad = np.empty(3)
    v = fn(*arrays, x, grad)
    v_ref, g_ref = two_outputs.value_and_grad(x, output=output)
    assert v == v_ref
    np.testing.assert_array_equal(grad, g_ref)
    # in a jitted loop, the steps of the Python loop, bit for bit
    x1, x2 = x.copy(), x.copy()
    _descend(fn, arrays, x1, grad, 10, 0.01)
    for _ in range(10):
        x2 -= 0.01 * two_outputs.grad(x2, output=output)
    np.testing.assert_array_equal(x1, x2)


def test_numba_kernel_values_and_value(two_outputs):
    x = np.array([0.3, 1.7, -0.4])
    fn, arrays = two_outputs.numba_kernel("values")
    out = np.empty(2)
    fn(*arrays, x, out)
    np.testing.assert_array_equal(out, two_outputs.value(x))
    fn, arrays = two_outputs.numba_kernel("value", output=1)
    assert fn(*arrays, x) == two_outputs.value(x)[1]


def test_numba_kernel_with_parameters(with_params):
    p = np.array([0.5, -2.0])
    fn, arrays = with_params.numba_kernel(p=p)
    x, grad = np.array([0.2, 0.9]), np.empty(2)
    v = fn(*arrays, x, grad)
    v_ref, g_ref = with_params.value_and_grad(x, p)
    assert v == v_ref
    np.testing.assert_array_equal(grad, g_ref)
    with pytest.raises(TypeError, match="p"):
        with_params.numba_kernel()


def test_numba_kernel_refuses_wrong_arrays(two_outputs):
    with pytest.raises(ValueError, match="kind must be one of"):
        two_outputs.numba_kernel("vjp")
    with pytest.raises(ValueError, match="pass output=k"):
        two_outputs.numba_kernel()
    fn, arrays = two_outputs.numba_kernel(output=0)
    x, grad = np.array([0.3, 1.7, -0.4]), np.empty(3)
    with pytest.raises(ValueError, match="x has 2 entries"):
        fn(*arrays, x[:2], grad)
    with pytest.raises(ValueError, match="grad has 4 entries"):
        fn(*arrays, x, np.empty(4))
    foreign = list(arrays)
    foreign[2] = arrays[2].copy()  # a work array of the right size that is not this one
    with pytest.raises(ValueError, match="w is not the work array"):
        fn(*foreign, x, grad)


def test_cfunc_pointer(two_outputs, with_params):
    cf = two_outputs.cfunc(output=1)
    x, f, grad = np.array([0.3, 1.7, -0.4]), np.zeros(1), np.zeros(3)
    assert cf.value_and_grad_ctypes(x.ctypes.data, f.ctypes.data, grad.ctypes.data) == 0
    v_ref, g_ref = two_outputs.value_and_grad(x, output=1)
    assert f[0] == v_ref
    np.testing.assert_array_equal(grad, g_ref)
    assert "output 1" in repr(cf) and "not reentrant" in repr(cf)
    cp = with_params.cfunc(p=np.array([0.5, -2.0]))
    x2, g2 = np.array([0.2, 0.9]), np.zeros(2)
    cp.value_and_grad_ctypes(x2.ctypes.data, f.ctypes.data, g2.ctypes.data)
    assert f[0] == with_params.value(x2, np.array([0.5, -2.0]))
    cp.set_params(np.array([1.5, 3.0]))
    cp.value_and_grad_ctypes(x2.ctypes.data, f.ctypes.data, g2.ctypes.data)
    assert f[0] == with_params.value(x2, np.array([1.5, 3.0]))
    np.testing.assert_array_equal(g2, with_params.grad(x2, np.array([1.5, 3.0])))
    with pytest.raises(ValueError, match="shape"):
        cp.set_params(np.ones(3))


def test_reentrant_cfunc_from_threads(with_params):
    p = np.array([0.5, -2.0])
    fn = with_params.cfunc(p=p, reentrant=True).value_and_grad_ctypes
    points = [np.array([0.1 * k, 1.0 - 0.2 * k]) for k in range(4)]
    want = [with_params.value_and_grad(x, p) for x in points]
    ok = []

    def work(k):
        f, g = np.zeros(1), np.zeros(2)
        for _ in range(200):
            fn(points[k].ctypes.data, f.ctypes.data, g.ctypes.data)
            ok.append(f[0] == want[k][0] and np.array_equal(g, want[k][1]))

    run_threads(work, 4)
    assert len(ok) == 800 and all(ok)


def test_embedding_a_tape_compiled_to_loops():
    # Rosenbrock is nearly all loops (fasttape/native/loops.py): the embedding routes call
    # the same entry points, so they give the native tape's bits.
    from fasttape.bench import families

    tape = families.rosenbrock(300)
    nt = tape.native()
    assert nt.n_loops > 0
    x = families.rosenbrock_point(300)
    v_ref, g_ref = tape.value_and_grad(x)
    fn, arrays = nt.numba_kernel()
    grad = np.empty(300)
    assert fn(*arrays, x, grad) == v_ref
    np.testing.assert_array_equal(grad, g_ref)
    cf = nt.cfunc()
    f, g = np.zeros(1), np.zeros(300)
    assert cf.value_and_grad_ctypes(x.ctypes.data, f.ctypes.data, g.ctypes.data) == 0
    assert f[0] == v_ref
    np.testing.assert_array_equal(g, g_ref)
