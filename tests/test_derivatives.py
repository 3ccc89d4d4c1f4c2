"""JVP, VJP, Jacobians, HVPs and Hessians: vs the oracle on random graphs over every op, vs
finite differences, vs JAX / HIPS autograd, and the input validation."""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fasttape as ft
from fasttape import derivatives
from fasttape.bench.families import random_local
from fasttape.ops import OP_BY_NAME
from tests import reference, reference_derivs
from tests.test_ops import same, single_op_tape
from tests.test_random_graphs import random_tapes


def _direction(draw, n):
    return np.array(draw(st.lists(st.floats(-2.0, 2.0), min_size=n, max_size=n)))


# ---------------------------------------------------------------------- random graphs
@settings(max_examples=100, deadline=None)
@given(random_tapes(), st.data())
def test_jvp_and_forward_jacobian_match_the_tangent_oracle(case, data):
    """Any op, special values included: same rules, so the same numbers (NaN where NaN)."""
    tape, x = case
    v = _direction(data.draw, tape.n_inputs)
    vals, tans = tape.jvp(x, v)
    rvals, rtans = reference_derivs.jvp(tape, x, v)
    for a, b in zip(np.atleast_1d(vals), rvals, strict=True):
        assert same(float(a), b)
    for a, b in zip(np.atleast_1d(tans), rtans, strict=True):
        assert same(float(a), b, rtol=1e-12), (a, b, tape.listing(100))
    jac = tape.jacobian(x, mode="forward", chunk=data.draw(st.integers(1, 5), label="chunk"))
    for j in range(tape.n_inputs):
        e = np.zeros(tape.n_inputs)
        e[j] = 1.0
        _, col = reference_derivs.jvp(tape, x, e)
        for i, b in enumerate(col):
            assert same(jac[i, j], b), (i, j, jac[i, j], b, tape.listing(100))


@settings(max_examples=100, deadline=None)
@given(random_tapes(), st.data())
def test_vjp_and_reverse_jacobian_match_the_gradients(case, data):
    """Each reverse-Jacobian row is bitwise the gradient (same sweep rules, per direction)."""
    tape, x = case
    jac = tape.jacobian(x, mode="reverse", chunk=data.draw(st.integers(1, 4), label="chunk"))
    for k in range(tape.n_outputs):
        _, g = reference.value_and_grad(tape, x, output=k)
        for j, b in enumerate(g):
            assert same(jac[k, j], b), (k, j, jac[k, j], b, tape.listing(100))
        w = np.zeros(tape.n_outputs)
        w[k] = 1.0
        if list(tape.outputs).count(tape.outputs[k]) == 1:  # a repeated slot gets both seeds
            _, vj = tape.vjp(x, w)
            assert all(same(a, b) for a, b in zip(vj, g, strict=True)), (list(vj), g)


@settings(max_examples=100, deadline=None)
@given(random_tapes(), st.data())
def test_vjp_is_bitwise_the_vector_reverse_sweep(case, data):
    """``tape.vjp`` (the gradient's stored sweeps, seeded by the weights) against the vector
    reverse sweep with one direction (partials recomputed, another kernel): the same rules
    and order, so the same bits, for any weights (zeros, signed zeros, repeated outputs)."""
    from fasttape.kernels.tangent import cotangent_driver

    tape, x = case
    m = tape.n_outputs
    w = np.array(data.draw(st.lists(st.sampled_from([0.0, -0.0, 1.0, -2.5, 0.3, 1e300]),
                                    min_size=m, max_size=m)))
    if data.draw(st.booleans(), label="lean"):  # partials recomputed, none stored
        tape = ft.Tape.from_arrays(**tape.to_arrays(), grad_mode="lean")
    val, vj = tape.vjp(x, w)
    out, res = np.empty(m), np.empty((tape.n_inputs, 1))
    cotangent_driver(tape.ops, tape.args, tape.consts, tape.outputs, np.asarray(x, float),
                     w.reshape(-1, 1), False, np.empty(tape.n_slots),
                     np.zeros((tape.n_slots, 1)), out, res)
    def bits(a):  # signed zeros apart, every NaN alike
        a = np.array(np.atleast_1d(a), dtype=np.float64)
        a[np.isnan(a)] = np.nan
        return a.view(np.int64)

    assert np.array_equal(bits(vj), bits(res[:, 0])), (list(vj), res)
    assert np.array_equal(bits(val), bits(out))
    # The work arrays are clean again: a second call gives the same bits.
    assert np.array_equal(bits(tape.vjp(x, w)[1]), bits(vj))
    # A batch runs the same kernel on each row (in one loop): the same bits, row by row.
    xb = np.stack([np.asarray(x, float), np.asarray(x, float)[::-1].copy()])
    wb = np.stack([w, -w])
    vb_val, vb = tape.vjp(xb, wb)
    for i in range(2):
        val_i, vj_i = tape.vjp(xb[i], wb[i])
        assert np.array_equal(bits(vb[i]), bits(vj_i)) and np.array_equal(bits(vb_val[i]),
                                                                          bits(val_i))
        assert np.array_equal(bits(tape.jvp(xb, xb)[1][i]), bits(tape.jvp(xb[i], xb[i])[1]))
        if tape.n_outputs == 1:
            assert np.array_equal(bits(tape.hvp(xb, xb)[i]), bits(tape.hvp(xb[i], xb[i])))


_SINGLE: dict = {}


def _kernel_second(name: str, args: list[float]) -> list[list[float]]:
    """One instruction's second partials as the kernels compute them (a one-op tape's
    Hessian, which is exactly the table's second partials: seed 1, unit tangents)."""
    spec = OP_BY_NAME[name]
    n_in = spec.arity if spec.param != "const" else spec.ndiff
    params = tuple(args[n_in:])
    key = (name, params)
    if key not in _SINGLE:
        _SINGLE[key] = single_op_tape(name, params)
    h = _SINGLE[key].hessian(args[:n_in])
    return [[float(h[j, k]) for k in range(spec.ndiff)] for j in range(spec.ndiff)]


@settings(max_examples=100, deadline=None)
@given(random_tapes(), st.data())
def test_hvp_matches_the_forward_over_reverse_oracle(case, data):
    """The sweep logic (chain rule, zero rules, accumulation order) against the oracle's,
    special values included.  The per-instruction second partials are the kernels' own here;
    each op's are checked against independent formulas, differences and JAX in
    test_derivatives_ops.py, and the composition on smooth inputs below."""
    tape, x = case
    v = _direction(data.draw, tape.n_inputs)
    k = data.draw(st.integers(0, tape.n_outputs - 1), label="output")
    rv, rg, rh = reference_derivs.hvp(tape, x, v, output=k, second=_kernel_second)
    val, grad, hv = derivatives.value_grad_hvp(tape, x, v, output=k)
    assert same(val, rv)
    assert all(same(a, b) for a, b in zip(grad, rg, strict=True)), (list(grad), rg)
    for j, (a, b) in enumerate(zip(hv, rh, strict=True)):
        assert same(a, b, rtol=1e-12), (j, a, b, tape.listing(100))


@settings(max_examples=60, deadline=None)
@given(random_tapes(), st.data())
def test_hvp_matches_the_independent_second_partials_where_finite(case, data):
    """The same with the oracle's independently written second partials: equal wherever both
    are finite (the forms may differ under overflow, see reference_derivs.hvp)."""
    tape, x = case
    v = _direction(data.draw, tape.n_inputs)
    rh = reference_derivs.hvp(tape, x, v)[2]
    hv = tape.hvp(x, v, output=0)
    # An absolute floor: the two forms round differently, and a Hessian entry can be a sum of
    # terms that cancel (div(y, y): -2/y**2 + 2f/y**2 = 0 up to one ulp of the terms).
    scale = 1.0 + max([abs(t) for t in [*rh, *hv] if math.isfinite(t)], default=0.0)
    for j, (a, b) in enumerate(zip(hv, rh, strict=True)):
        if math.isfinite(a) and math.isfinite(b):
            assert abs(a - b) <= 1e-7 * scale, (j, a, b, tape.listing(100))


# ---------------------------------------------------------------------- smooth graphs
def _smooth_vector_fn(v):
    """A smooth R^4 -> R^3 function touching most smooth ops (with JAX/autograd twins)."""
    x0, x1, x2, x3 = v
    a = ft.sin(x0) * x1 + ft.exp(x2) / (1.0 + x3**2)
    b = ft.tanh(x0 * x3) + ft.sqrt(ft.hypot(x1, x2) + 1.0) * ft.log1p(ft.sigmoid(x1) + x3**2)
    c = ft.atan2(x0 + 2.0, x1 + 3.0) * ft.cosh(x2) + ft.softplus(x3 - x0) ** 1.5
    return [a, b, c]


def _smooth_scalar_fn(v):
    a, b, c = _smooth_vector_fn(v)
    return a * b + c * ft.erf(v[0] - v[3]) + ft.asinh(v[1] * v[2])


def _tape(fn, n: int) -> ft.Tape:
    return ft.compile(ft.trace(fn, n))


def _points(seed: int, *sizes: int):
    """Ten random points ``x`` in [-1, 1]^4, each with normal vectors of the given ``sizes``."""
    rng = np.random.default_rng(seed)
    for _ in range(10):
        x = rng.uniform(-1, 1, 4)
        yield (x, *(rng.normal(size=n) for n in sizes))


def test_jvp_vjp_jacobian_agree_on_a_smooth_vector_function():
    tape = _tape(_smooth_vector_fn, 4)
    for x, v, w in _points(0, 4, 3):
        jf = tape.jacobian(x, mode="forward")
        jr = tape.jacobian(x, mode="reverse")
        assert np.allclose(jf, jr, rtol=1e-13, atol=1e-14)
        assert np.array_equal(tape.jacobian(x), jr)  # auto: n = 4 > m = 3 -> reverse
        vals, t = tape.jvp(x, v)
        assert np.array_equal(vals, tape.value(x))
        assert np.allclose(t, jr @ v, rtol=1e-13, atol=1e-14)
        vals, vj = tape.vjp(x, w)
        assert np.allclose(vj, w @ jr, rtol=1e-13, atol=1e-14)
        # finite differences of the values
        fd = np.stack([(tape.value(x + 1e-6 * e) - tape.value(x - 1e-6 * e)) / 2e-6
                       for e in np.eye(4)], axis=1)
        assert np.allclose(jf, fd, rtol=1e-6, atol=1e-8)


def test_hvp_matches_finite_differences_of_gradients():
    tape = _tape(_smooth_scalar_fn, 4)
    for x, v in _points(1, 4):
        hv = tape.hvp(x, v)
        fd = (tape.grad(x + 1e-6 * v) - tape.grad(x - 1e-6 * v)) / 2e-6
        assert np.allclose(hv, fd, rtol=1e-6, atol=1e-7 * (1 + np.abs(hv).max()))
        h = tape.hessian(x)
        assert np.array_equal(h, h.T)
        assert np.allclose(h @ v, hv, rtol=1e-12, atol=1e-13)
        val, grad, hv2 = derivatives.value_grad_hvp(tape, x, v)
        assert val == tape.value(x) and np.array_equal(grad, tape.grad(x))
        assert np.array_equal(hv2, hv)


def test_hessian_chunk_sizes_agree_and_vector_mode_is_exact():
    tape = random_local(3000, n_inputs=20, seed=3)
    x = np.linspace(0.1, 0.9, 20)
    h1 = tape.hessian(x, chunk=1)
    for chunk in (3, 7, 20, 64):
        assert np.array_equal(tape.hessian(x, chunk=chunk), h1)
    cols = np.stack([tape.hvp(x, e) for e in np.eye(20)], axis=1)
    assert np.allclose(h1, cols, rtol=1e-12, atol=1e-12 * np.abs(cols).max())
    j1 = tape.jacobian(x, mode="forward", chunk=1)
    assert np.array_equal(tape.jacobian(x, mode="forward", chunk=8), j1)
    assert np.allclose(tape.jacobian(x, mode="reverse"), j1, rtol=1e-12, atol=1e-14)


def test_lean_and_stored_tapes_give_the_same_derivatives():
    tape = _tape(_smooth_scalar_fn, 4)
    lean = tape.with_grad_mode("lean")
    x = np.array([0.3, -0.2, 0.5, 0.1])
    v = np.array([1.0, 2.0, -1.0, 0.5])
    assert np.array_equal(tape.hvp(x, v), lean.hvp(x, v))
    assert np.array_equal(tape.hessian(x), lean.hessian(x))
    assert tape.jvp(x, v) == lean.jvp(x, v)


def test_multi_output_tapes_need_an_output_for_second_derivatives():
    tape = _tape(_smooth_vector_fn, 4)
    x = np.full(4, 0.2)
    with pytest.raises(ValueError, match="pass output=k"):
        tape.hvp(x, x)
    with pytest.raises(ValueError, match="pass output=k"):
        tape.hessian(x)
    for k in range(3):
        h = tape.hessian(x, output=k)
        single = ft.compile(ft.trace(lambda v, k=k: _smooth_vector_fn(v)[k], 4))
        assert np.allclose(h, single.hessian(x), rtol=1e-13, atol=1e-14)
        assert np.allclose(tape.hvp(x, x, output=k), h @ x, rtol=1e-12, atol=1e-14)


def test_outputs_that_are_inputs_or_constants():
    g = ft.Graph()
    x = g.inputs(2)
    g.output(x[1], x[0] * x[1], x[0])
    tape = ft.compile(g)
    p = np.array([2.0, 3.0])
    assert tape.jacobian(p, mode="forward").tolist() == [[0, 1], [3, 2], [1, 0]]
    assert tape.jacobian(p, mode="reverse").tolist() == [[0, 1], [3, 2], [1, 0]]
    assert tape.vjp(p, [1.0, 1.0, 1.0])[1].tolist() == [4.0, 3.0]
    assert tape.hessian(p, output=1).tolist() == [[0, 1], [1, 0]]
    assert tape.hessian(p, output=0).tolist() == [[0, 0], [0, 0]]


# ---------------------------------------------------------------------- other engines
def _jax_fn(jnp):
    def vec(v):
        x0, x1, x2, x3 = v
        sig = 1.0 / (1.0 + jnp.exp(-x1))
        a = jnp.sin(x0) * x1 + jnp.exp(x2) / (1.0 + x3**2)
        b = jnp.tanh(x0 * x3) + jnp.sqrt(jnp.hypot(x1, x2) + 1.0) * jnp.log1p(sig + x3**2)
        c = jnp.arctan2(x0 + 2.0, x1 + 3.0) * jnp.cosh(x2) + jnp.logaddexp(x3 - x0, 0.0) ** 1.5
        return a, b, c

    return vec


@pytest.mark.oracle
def test_hessian_and_jacobian_match_jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    from jax.scipy.special import erf

    vec = _jax_fn(jnp)

    def scalar(v):
        a, b, c = vec(v)
        return a * b + c * erf(v[0] - v[3]) + jnp.arcsinh(v[1] * v[2])

    tape = _tape(_smooth_scalar_fn, 4)
    vtape = _tape(_smooth_vector_fn, 4)
    rng = np.random.default_rng(2)
    jax_hessian = jax.jit(jax.hessian(scalar))
    jax_jacobian = jax.jit(jax.jacfwd(lambda v: jnp.stack(vec(v))))
    for _ in range(5):
        x = rng.uniform(-1, 1, 4)
        h = tape.hessian(x)
        hj = np.asarray(jax_hessian(jnp.asarray(x)))
        assert np.allclose(h, hj, rtol=1e-12, atol=1e-12)
        jj = np.asarray(jax_jacobian(jnp.asarray(x)))
        assert np.allclose(vtape.jacobian(x), jj, rtol=1e-12, atol=1e-13)
        v = rng.normal(size=4)
        assert np.allclose(tape.hvp(x, v), hj @ v, rtol=1e-12, atol=1e-12)


@pytest.mark.oracle
def test_hessian_matches_autograd():
    autograd = pytest.importorskip("autograd")
    anp = pytest.importorskip("autograd.numpy")

    def f_ft(v):
        return ft.sum([ft.sin(v[i]) * v[i + 1] ** 2 + ft.exp(-v[i] * v[i + 1]) for i in range(4)])

    def f_ag(v):
        return anp.sum(anp.sin(v[:-1]) * v[1:] ** 2 + anp.exp(-v[:-1] * v[1:]))

    tape = _tape(f_ft, 5)
    x = np.linspace(-0.8, 0.9, 5)
    assert np.allclose(tape.hessian(x), autograd.hessian(f_ag)(x), rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------- validation
@pytest.fixture(scope="module")
def tape2() -> ft.Tape:
    return _tape(lambda v: [v[0] * v[1], ft.sin(v[0])], 2)


@pytest.mark.parametrize("method", ["jvp", "vjp", "jacobian", "hvp", "hessian"])
def test_x_is_validated_like_value(tape2, method):
    call = {
        "jvp": lambda x: tape2.jvp(x, [1.0, 0.0]),
        "vjp": lambda x: tape2.vjp(x, [1.0, 0.0]),
        "jacobian": lambda x: tape2.jacobian(x),
        "hvp": lambda x: tape2.hvp(x, [1.0, 0.0], output=0),
        "hessian": lambda x: tape2.hessian(x, output=0),
    }[method]
    with pytest.raises(ValueError, match="x has 3 entries but this tape has 2 inputs"):
        call([1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="1-D array of real numbers"):
        call(["a", "b"])
    batch_shape = rf"{method}: a batch x must have shape \(B, 2\).*\(4, 3\)"
    with pytest.raises(ValueError, match=batch_shape):
        call(np.zeros((4, 3)))
    with pytest.raises(TypeError, match=rf"{method}: x must be an array of real numbers"):
        call(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="x must be 1-D"):
        call(np.zeros((2, 2, 2)))


def test_batches_are_the_stacked_single_point_results(tape2):
    rng = np.random.default_rng(7)
    xb = rng.uniform(-1, 1, (5, 2))
    vb = rng.normal(size=(5, 2))
    wb = rng.normal(size=(5, 2))
    vals, tans = tape2.jvp(xb, vb)
    assert vals.shape == tans.shape == (5, 2)
    for i in range(5):
        assert np.array_equal(vals[i], tape2.value(xb[i]))
        assert np.array_equal(tans[i], tape2.jvp(xb[i], vb[i])[1])
        assert np.array_equal(tape2.vjp(xb, wb)[1][i], tape2.vjp(xb[i], wb[i])[1])
        assert np.array_equal(tape2.vjp(xb, wb[0])[1][i], tape2.vjp(xb[i], wb[0])[1])
        assert np.array_equal(tape2.jacobian(xb)[i], tape2.jacobian(xb[i]))
        assert np.array_equal(tape2.hvp(xb, vb, output=1)[i], tape2.hvp(xb[i], vb[i], output=1))
        assert np.array_equal(tape2.hvp(xb, vb[2], output=0)[i], tape2.hvp(xb[i], vb[2], output=0))
        assert np.array_equal(tape2.hessian(xb, output=1)[i], tape2.hessian(xb[i], output=1))
    assert tape2.jacobian(xb).shape == (5, 2, 2)
    assert tape2.hessian(xb.tolist(), output=0).shape == (5, 2, 2)
    single = _tape(lambda v: v[0] * ft.exp(v[1]), 2)
    vals, tans = single.jvp(xb, vb[0])
    assert vals.shape == tans.shape == (5,)
    assert np.array_equal(vals, single.value(xb))
    with pytest.raises(ValueError, match=r"hvp: with a batch of 5 points, v must have shape"):
        tape2.hvp(xb, np.ones((4, 2)), output=0)
    with pytest.raises(ValueError, match=r"vjp: with a batch of 5 points, w must have shape"):
        tape2.vjp(xb, np.ones((5, 3)))
    with pytest.raises(ValueError, match="pass output=k"):
        tape2.hessian(xb)


@pytest.mark.parametrize("grad_mode", ["stored", "lean"])
def test_threaded_batches_are_bitwise_the_single_point_calls(grad_mode):
    """jvp/vjp/hvp batches on two threads (kernels/parallel_rows.py): every row bitwise the
    single-point call and the one-thread batch; a batch too small to pay for threads, a
    tape with parameters and a lean tape (vjp without stored partials) included."""
    n = 12

    def fn(x):
        return [ft.sum(ft.sin(x[i] * x[(i + 1) % n]) + ft.exp(-x[i] ** 2) for i in range(n)),
                ft.sum(x[i] * x[i] for i in range(n))]

    tape = ft.compile(ft.trace(fn, n), grad_mode=grad_mode)
    rng = np.random.default_rng(3)
    B = 2 + 100_000 // tape.n_instructions  # past the parallel threshold (batch.py)
    X, V, W = rng.normal(size=(B, n)), rng.normal(size=(B, n)), rng.normal(size=(B, 2))
    two = min(2, numba.config.NUMBA_NUM_THREADS)  # NUMBA_NUM_THREADS caps the threads
    for threads in (1, two):
        vals, tans = tape.jvp(X, V, threads=threads)
        outs, res = tape.vjp(X, W, threads=threads)
        hv = tape.hvp(X, V, output=0, threads=threads)
        for b in (0, B // 2, B - 1):
            v1, t1 = tape.jvp(X[b], V[b])
            assert vals[b].tobytes() == v1.tobytes() and tans[b].tobytes() == t1.tobytes()
            o1, r1 = tape.vjp(X[b], W[b])
            assert outs[b].tobytes() == o1.tobytes() and res[b].tobytes() == r1.tobytes()
            assert hv[b].tobytes() == tape.hvp(X[b], V[b], output=0).tobytes()
        if threads == 1:
            want = (tans, res, hv)
        else:
            assert [a.tobytes() for a in (tans, res, hv)] == [a.tobytes() for a in want]
    small = tape.hvp(X[:3], V[:3], output=1, threads=two)  # too little work: one thread
    assert small.tobytes() == tape.hvp(X[:3], V[:3], output=1, threads=1).tobytes()
    with pytest.raises(ValueError, match="threads=0 is out of range"):
        tape.jvp(X, V, threads=0)
    with pytest.raises(TypeError, match="threads must be an int or None"):
        tape.vjp(X[0], W[0], threads="2")
    with pytest.raises(ValueError, match="threads=0 is out of range"):
        tape.hvp(X[0], V[0], output=0, threads=0)
    # Parameters: the work runs on params_as_inputs(), threads passed through.
    tp = ft.compile(ft.trace(lambda x, p: ft.sum(ft.sin(x[i] * p[i]) for i in range(n)),
                             n, n_params=n), grad_mode=grad_mode)
    P = rng.normal(size=(B, n))
    for threads in (1, two):
        got = (tp.jvp(X, V, p=P, threads=threads)[1], tp.vjp(X, W[:, :1], p=P,
               threads=threads)[1], tp.hvp(X, V, p=P, threads=threads))
        if threads == 1:
            want_p = got
        else:
            assert [a.tobytes() for a in got] == [a.tobytes() for a in want_p]


def test_read_only_arrays_are_accepted_everywhere(tape2):
    # Regression: a read-only direction (a dask block, a broadcast view) typed the tangent
    # driver's directions read-only, and Numba refused to compile it (the branch that seeds
    # unit directions writes them): jvp raised a TypingError instead of answering.
    def frozen(a):
        a = np.array(a, dtype=float)
        a.flags.writeable = False
        return a

    x, v, w = frozen([0.3, -0.4]), frozen([1.0, 2.0]), frozen([1.0, -1.0])
    xb, vb, wb = frozen([[0.3, -0.4], [0.1, 0.2]]), frozen([[1.0, 2.0], [0.5, -1.0]]), \
        frozen([[1.0, -1.0], [2.0, 0.0]])
    wx, wv, ww = x.copy(), v.copy(), w.copy()
    assert np.array_equal(tape2.jvp(x, v)[1], tape2.jvp(wx, wv)[1])
    assert np.array_equal(tape2.vjp(x, w)[1], tape2.vjp(wx, ww)[1])
    assert np.array_equal(tape2.hvp(x, v, output=0), tape2.hvp(wx, wv, output=0))
    assert np.array_equal(tape2.jacobian(x), tape2.jacobian(wx))
    assert np.array_equal(tape2.hessian(x, output=1), tape2.hessian(wx, output=1))
    for i in range(2):
        assert np.array_equal(tape2.jvp(xb, vb)[1][i], tape2.jvp(xb[i].copy(), vb[i].copy())[1])
        assert np.array_equal(tape2.vjp(xb, wb)[1][i], tape2.vjp(xb[i].copy(), wb[i].copy())[1])
        assert np.array_equal(tape2.vjp(xb, w)[1][i], tape2.vjp(xb[i].copy(), ww)[1])
        assert np.array_equal(tape2.hvp(xb, v, output=1)[i],
                              tape2.hvp(xb[i].copy(), wv, output=1))


def test_directions_and_cotangents_are_validated(tape2):
    with pytest.raises(ValueError, match=r"jvp: v must have shape \(2,\).*got shape \(3,\)"):
        tape2.jvp([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"vjp: w must have shape \(2,\) \(one weight per output"):
        tape2.vjp([1.0, 2.0], [1.0])
    with pytest.raises(TypeError, match="hvp: v must be a 1-D array of real numbers"):
        tape2.hvp([1.0, 2.0], ["a", "b"], output=0)
    with pytest.raises(ValueError, match=r"hvp: v must have shape \(2,\)"):
        tape2.hvp([1.0, 2.0], np.ones((2, 2)), output=0)
    with pytest.raises(ValueError, match="out of range"):
        tape2.hvp([1.0, 2.0], [1.0, 2.0], output=5)
    with pytest.raises(TypeError, match="output must be an int"):
        tape2.hessian([1.0, 2.0], output=1.0)


def test_mode_and_chunk_are_validated(tape2):
    with pytest.raises(ValueError, match="mode must be one of"):
        tape2.jacobian([1.0, 2.0], mode="sideways")
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        tape2.jacobian([1.0, 2.0], chunk=0)
    with pytest.raises(TypeError, match="chunk must be a positive int or None"):
        tape2.hessian([1.0, 2.0], output=0, chunk=2.5)


def test_results_are_fresh_arrays_and_buffers_stay_clean(tape2):
    x = [0.5, 2.0]
    h1 = tape2.hessian(x, output=0)
    h1[:] = 99.0
    assert tape2.hessian(x, output=0).tolist() == [[0.0, 1.0], [1.0, 0.0]]
    j = tape2.jacobian(x)
    assert tape2.vjp(x, [1.0, 1.0])[1].tolist() == (j[0] + j[1]).tolist()
    assert tape2.vjp(x, [1.0, 1.0])[1].tolist() == (j[0] + j[1]).tolist()  # no leftovers
    assert tape2.grad(x, output=1).tolist() == [math.cos(0.5), 0.0]


def test_derivatives_are_thread_safe():
    tape = random_local(5000, n_inputs=16, seed=5)
    xs = [np.linspace(0.1, 0.9, 16) + 0.01 * i for i in range(4)]
    expected = [(tape.hessian(x), tape.jacobian(x), tape.hvp(x, x)) for x in xs]
    errors = []

    def work(i):
        for _ in range(5):
            h, j, hv = tape.hessian(xs[i]), tape.jacobian(xs[i]), tape.hvp(xs[i], xs[i])
            if not (np.array_equal(h, expected[i][0]) and np.array_equal(j, expected[i][1])
                    and np.array_equal(hv, expected[i][2])):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.oracle
def test_scipy_newton_methods_converge_with_hvp_and_hessian():
    optimize = pytest.importorskip("scipy.optimize")

    def rosen(v):
        return ft.sum([100.0 * (v[i + 1] - v[i] ** 2) ** 2 + (1.0 - v[i]) ** 2 for i in range(5)])

    tape = _tape(rosen, 6)
    x0 = np.full(6, -0.5)
    res = optimize.minimize(tape.value, x0, jac=tape.grad, hessp=tape.hvp, method="trust-ncg")
    assert res.success and np.allclose(res.x, 1.0, atol=1e-4)
    res = optimize.minimize(tape.value, x0, jac=tape.grad, hess=tape.hessian, method="trust-exact")
    assert res.success and np.allclose(res.x, 1.0, atol=1e-4)
    assert np.allclose(tape.hessian(x0), optimize.rosen_hess(x0), rtol=1e-14)
