"""Tensor tapes in jitted code and behind C pointers (fasttape/embed/tensor_abi.py).

The oracle is the tape's own Python call: the kernels are the same, so results are bitwise.
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
import pytest
from numba.core.errors import TypingError

import fasttape as ft


def _loss(params, X, y):
    h = np.tanh(X @ params["W"] + params["b"])
    return np.sum((h @ params["v"] - y) ** 2) + 1e-3 * np.sum(params["W"] ** 2)


SHAPES = [{"W": (3, 4), "b": (4,), "v": (4,)}]
PARAMS = [(5, 3), (5,)]


@pytest.fixture(scope="module")
def setup():
    tape = ft.compile(ft.trace(_loss, shapes=SHAPES, params=PARAMS))
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=4), "v": rng.normal(size=4)}
    X, y = rng.normal(size=(5, 3)), rng.normal(size=5)
    flat = np.concatenate([params[k].reshape(-1) for k in ("W", "b", "v")])
    return tape, params, (X, y), flat


def _flat(tree):
    return np.concatenate([tree[k].reshape(-1) for k in ("W", "b", "v")])


@numba.njit
def _descend(fn, arrays, x, grad, steps, lr):
    # An optimizer loop in user code: nothing crosses back into Python.
    v = 0.0
    for _ in range(steps):
        v = fn(*arrays, x, grad)
        for i in range(x.size):
            x[i] -= lr * grad[i]
    return v


def test_numba_kernel_value_and_grad_matches_the_tape(setup):
    tape, params, p, flat = setup
    fn, arrays = tape.numba_kernel(p=p)
    grad = np.empty_like(flat)
    v = fn(*arrays, flat, grad)
    v_ref, g_ref = tape.value_and_grad(params, p=p)
    assert v == v_ref
    np.testing.assert_array_equal(grad, _flat(g_ref))
    # inside a jitted loop: the same steps as in Python
    x = flat.copy()
    _descend(fn, arrays, x, grad, 5, 0.01)
    ref = {k: a.copy() for k, a in params.items()}
    for _ in range(5):
        g = tape.grad(ref, p=p)
        ref = {k: ref[k] - 0.01 * g[k] for k in ref}
    np.testing.assert_array_equal(x, _flat(ref))


def test_numba_kernel_value_values_and_vjp():
    f = ft.compile(ft.trace(lambda a, b: (np.sin(a) @ np.ones((3, 2))) * b + b,
                            shapes=[(4, 3), (4, 2)]))
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    x = np.concatenate([a.ravel(), b.ravel()])
    fn, arrays = f.numba_kernel("values")
    out = np.empty(8)
    fn(*arrays, x, out)
    np.testing.assert_array_equal(out, f.value(a, b).ravel())
    cot = rng.normal(size=(4, 2))
    fn, arrays = f.numba_kernel("vjp")
    grad = np.empty(x.size)
    fn(*arrays, x, cot.ravel(), grad)
    ga, gb = f.vjp((a, b), cot)
    np.testing.assert_array_equal(grad, np.concatenate([ga.ravel(), gb.ravel()]))
    s = ft.compile(ft.trace(lambda a: np.sum(a ** 2), shapes=[(3,)]))
    fn, arrays = s.numba_kernel("value")
    assert fn(*arrays, np.array([1.0, 2.0, 3.0])) == 14.0


def test_numba_kernel_refuses_bad_kinds_and_arrays(setup):
    tape, _, p, flat = setup
    with pytest.raises(ValueError, match="kind must be one of"):
        tape.numba_kernel("hessian", p=p)
    with pytest.raises(TypeError, match="takes parameters"):
        tape.numba_kernel()
    vec = ft.compile(ft.trace(lambda a: a * 2.0, shapes=[(3,)]))
    with pytest.raises(ValueError, match="needs a scalar output"):
        vec.numba_kernel()
    fn, arrays = tape.numba_kernel(p=p)
    grad = np.empty_like(flat)
    with pytest.raises(ValueError, match="x has 3 entries"):
        fn(*arrays, flat[:3], grad)
    with pytest.raises(ValueError, match="grad has"):
        fn(*arrays, flat, np.empty(2))
    foreign = list(arrays)
    foreign[3] = arrays[3].copy()  # the same fields, another array
    with pytest.raises(ValueError, match="must be the tape's own"):
        fn(*foreign, flat, grad)
    with pytest.raises(TypingError, match="x must be a 1-D float64 array"):
        fn(*arrays, flat.astype(np.float32), grad)


def test_cfunc_pointers_match_the_tape(setup):
    tape, params, p, flat = setup
    cf = tape.cfunc(p=p)
    assert cf.n_inputs == flat.size
    v_ref, g_ref = tape.value_and_grad(params, p=p)
    f, grad = np.zeros(1), np.zeros_like(flat)
    assert cf.value_and_grad_ctypes(flat.ctypes.data, f.ctypes.data, grad.ctypes.data) == 0
    assert f[0] == v_ref
    np.testing.assert_array_equal(grad, _flat(g_ref))
    proto = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p)
    shared = proto(cf.value_and_grad_user_data_address)
    grad2 = np.zeros_like(flat)
    shared(flat.ctypes.data, f.ctypes.data, grad2.ctypes.data, cf.user_data)
    np.testing.assert_array_equal(grad2, grad)
    # new parameters: the same as the tape at those parameters
    X2 = p[0] * 2.0
    cf.set_params((X2, p[1]))
    cf.value_and_grad_ctypes(flat.ctypes.data, f.ctypes.data, grad.ctypes.data)
    assert f[0] == tape.value(params, p=(X2, p[1]))
    assert "not reentrant" in repr(cf)


def test_reentrant_cfunc_from_threads(setup):
    from tests.thread_helpers import run_threads

    tape, params, p, flat = setup
    cf = tape.cfunc(p=p, reentrant=True)
    fn = cf.value_and_grad_ctypes
    want = tape.value_and_grad(params, p=p)[0]
    seen = []

    def work(k):
        f, grad = np.zeros(1), np.zeros_like(flat)
        for _ in range(50):
            fn(flat.ctypes.data, f.ctypes.data, grad.ctypes.data)
            seen.append(f[0] == want)

    run_threads(work, 4)
    assert len(seen) == 200 and all(seen)


def test_cfunc_needs_a_scalar_output_and_the_parameters():
    vec = ft.compile(ft.trace(lambda a: a * 2.0, shapes=[(3,)]))
    with pytest.raises(ValueError, match="scalar output"):
        vec.cfunc()
    tape = ft.compile(ft.trace(_loss, shapes=SHAPES, params=PARAMS))
    with pytest.raises(TypeError, match="takes parameters"):
        tape.cfunc()


def test_gather_indices_are_checked_when_the_kernel_is_made():
    def pick(w, idx):
        return np.sum(w[idx] ** 2)

    tape = ft.compile(ft.trace(pick, shapes=[(4,)], params=[(3,)]))
    with pytest.raises(IndexError, match="must be integers"):
        tape.numba_kernel(p=np.array([0.0, 9.0, 1.0]))
    fn, arrays = tape.numba_kernel(p=np.array([0.0, 3.0, 3.0]))
    grad = np.empty(4)
    assert fn(*arrays, np.array([1.0, 2.0, 3.0, 4.0]), grad) == 1.0 + 16.0 + 16.0
    np.testing.assert_array_equal(grad, [2.0, 0.0, 0.0, 16.0])
