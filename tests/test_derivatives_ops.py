"""Every op's second partials: vs finite differences of its first partials, vs the oracle, and
the conventions at non-smooth points."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fasttape as ft
from fasttape.ops import OP_BY_NAME, OPS
from tests import reference_derivs
from tests.reference import CONST_FORMS, FUSED_FORMS
from tests.test_ops import params_for, single_op_tape

IDS = [op.name for op in OPS]
N_POINTS = 12


def _points(spec, rng: np.random.Generator) -> list[np.ndarray]:
    """Points inside the op's domain for its inputs (conditions 0 or 1), away from the edges."""
    n_in = spec.arity if spec.param != "const" else spec.ndiff
    pts = []
    for _ in range(N_POINTS):
        x = []
        for j in range(n_in):
            lo, hi = spec.domain[j]
            if spec.param == "cond" and j >= spec.ndiff:
                x.append(float(rng.integers(0, 2)))
            else:
                pad = 0.02 * (hi - lo)
                x.append(rng.uniform(lo + pad, hi - pad))
        pts.append(np.array(x))
    return pts


def _fd_hessian(tape: ft.Tape, x: np.ndarray, ndiff: int) -> np.ndarray:
    """Central differences of the kernels' gradient (the first partials) over the
    differentiable inputs."""
    n = tape.n_inputs
    fd = np.zeros((n, n))
    for j in range(ndiff):
        h = 1e-6 * max(1.0, abs(x[j]))
        e = np.zeros(n)
        e[j] = h
        fd[:, j] = (tape.grad(x + e) - tape.grad(x - e)) / (2 * h)
    return fd


@pytest.mark.parametrize("spec", OPS, ids=IDS)
def test_second_partials_match_finite_differences_of_the_first(spec):
    rng = np.random.default_rng(spec.code)
    for params in params_for(spec):
        tape = single_op_tape(spec.name, params)
        for x in _points(spec, rng):
            hess = tape.hessian(x)
            fd = _fd_hessian(tape, x, spec.ndiff)
            scale = 1.0 + np.abs(hess).max()
            assert np.allclose(hess, fd, rtol=1e-5, atol=1e-6 * scale), (
                f"{spec.name}{params} at {x}: hessian\n{hess}\nvs finite differences\n{fd}"
            )
            assert np.array_equal(hess, hess.T)


@pytest.mark.parametrize("spec", OPS, ids=IDS)
def test_second_partials_match_the_independent_oracle(spec):
    """The table's formulas against the oracle's, written independently (other forms)."""
    rng = np.random.default_rng(100 + spec.code)
    for params in params_for(spec):
        tape = single_op_tape(spec.name, params)
        for x in _points(spec, rng):
            hess = tape.hessian(x)
            args = [*x.tolist(), *params]
            ref = reference_derivs.second_partials(spec.name, args)
            for j in range(spec.ndiff):
                for k in range(spec.ndiff):
                    a, b = hess[j, k], ref[j][k]
                    assert abs(a - b) <= 1e-10 * max(1.0, abs(b)), (spec.name, params, x, j, k)
            # Parameters and conditions have no second derivative.
            assert not hess[spec.ndiff :, :].any() and not hess[:, spec.ndiff :].any()


def test_second_partials_are_declared_for_every_differentiable_op():
    for spec in OPS:
        assert len(spec.second) == spec.ndiff * (spec.ndiff + 1) // 2, spec.name
        assert len(spec.hessian_entries) == len(spec.second)
    assert set(reference_derivs.SECOND) == {op.name for op in OPS}


def test_the_fd_check_can_fail():
    """A wrong second partial is caught: the test above is not vacuous."""
    tape = single_op_tape("sin")
    x = np.array([0.7])
    fd = _fd_hessian(tape, x, 1)
    hess = tape.hessian(x)
    assert np.allclose(hess, fd, rtol=1e-5)
    assert not np.allclose(-hess, fd, rtol=1e-5)  # cos'' = -cos, not cos
    assert not np.allclose(hess * (1 + 1e-4), fd, rtol=1e-5, atol=0)


# ---------------------------------------------------------------------- conventions
def _h(name: str, x: list[float], params: tuple[float, ...] = ()) -> np.ndarray:
    return single_op_tape(name, params).hessian(np.array(x))


def test_abs_min_max_where_have_zero_second_derivative_at_their_kinks():
    assert _h("abs", [0.0]).tolist() == [[0.0]]
    assert _h("minimum", [1.0, 1.0]).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert _h("maximum", [1.0, 1.0]).tolist() == [[0.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("n", [0.0, 1.0])
def test_powi_constant_and_linear_have_zero_second_derivative_at_zero(n):
    assert _h("powi", [0.0], (n,)).tolist() == [[0.0]]


def test_powi_second_derivative_at_zero():
    assert _h("powi", [0.0], (2.0,)).tolist() == [[2.0]]
    assert _h("powi", [0.0], (3.0,)).tolist() == [[0.0]]
    assert _h("powi", [0.0], (-1.0,)).tolist() == [[math.inf]]  # 2 / x ** 3 at +0


def test_powc_zero_exponent_and_pow_at_zero_base():
    assert _h("powc", [0.0], (0.0,)).tolist() == [[0.0]]
    assert _h("powc", [0.0], (1.0,)).tolist() == [[0.0]]
    h = _h("pow", [0.0, 3.0])
    assert h[0, 0] == 6.0 * 0.0 and h[0, 1] == 0.0 and h[1, 1] == 0.0  # as d/dy at x = 0
    h = _h("pow", [2.0, 0.0])
    assert h[0, 0] == 0.0  # d/dx is 0 where y = 0, so is its x-derivative
    assert h[0, 1] == pytest.approx(0.5)  # d/dy (y x^(y-1)) = 1/x at y = 0


def test_hypot_second_derivative_is_zero_at_the_origin():
    assert _h("hypot", [0.0, 0.0]).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_where_unselected_branch_cannot_poison_the_hessian():
    tape = ft.compile(ft.trace(lambda v: ft.where(v[0] > 0, ft.sqrt(v[0]) * v[0], v[0] ** 2), 1))
    assert tape.hessian([-1.0]).tolist() == [[2.0]]
    assert tape.hvp([-1.0], [1.0]).tolist() == [2.0]
    assert tape.hessian([4.0])[0, 0] == pytest.approx(0.75 / 2.0)
    _, t = tape.jvp([-1.0], [1.0])
    assert t == -2.0


def test_sqrt_at_zero_is_infinite_like_its_first_derivative():
    assert _h("sqrt", [0.0]).tolist() == [[-math.inf]]


def test_spec_lookup_is_consistent():
    assert OP_BY_NAME["mul"].hessian_entries == ((0, 0, "0.0"), (0, 1, "1.0"), (1, 1, "0.0"))


def test_derivatives_md_contains_the_second_derivative_table():
    from pathlib import Path

    from fasttape.opsdoc import second_derivatives_markdown

    text = (Path(__file__).resolve().parents[1] / "docs" / "derivatives.md").read_text("utf-8")
    assert second_derivatives_markdown().strip() in text, (
        "docs/derivatives.md's second-derivative table is stale: paste "
        "fasttape.opsdoc.second_derivatives_markdown() in"
    )


def _jax_fn(name, jnp, jax):
    """The JAX function of op ``name``: found by name in jax.numpy, jax.nn, jax.scipy.special
    or jax.lax, except the ops whose JAX spelling differs (the overrides below)."""
    import jax.scipy.special

    cmp = {"lt": jnp.less, "le": jnp.less_equal, "gt": jnp.greater, "ge": jnp.greater_equal,
           "eq": jnp.equal, "ne": jnp.not_equal}
    overrides = {
        "powi": lambda x, n: jax.lax.integer_pow(x, int(n)), "powc": jnp.power,
        "where": lambda a, b, c: jnp.where(c != 0, a, b),
        **CONST_FORMS,  # x * c, c - x, ...: plain arithmetic on jax arrays
        **FUSED_FORMS,  # x * c + y, (x - y) ** 2
        **{n: (lambda x, y, fn=fn: fn(x, y).astype(x.dtype)) for n, fn in cmp.items()},
    }
    if name in overrides:
        return overrides[name]
    for namespace in (jnp, jax.nn, jax.scipy.special, jax.lax):
        fn = getattr(namespace, name, None)
        if callable(fn):
            return fn
    raise AssertionError(f"no JAX function named {name!r}: add an override in _jax_fn")


@pytest.mark.oracle
@pytest.mark.parametrize("spec", OPS, ids=IDS)
def test_second_partials_match_jax(spec):
    """Every op's Hessian against jax.hessian (float64) at points inside its domain."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    fn = _jax_fn(spec.name, jnp, jax)
    rng = np.random.default_rng(200 + spec.code)
    nd = spec.ndiff
    for params in params_for(spec):
        tape = single_op_tape(spec.name, params)
        for x in _points(spec, rng)[:2]:

            def f(d, x=x, params=params):
                full = [*[d[j] for j in range(nd)], *x[nd:].tolist(), *params]
                return fn(*full)

            ref = np.asarray(jax.hessian(f)(jnp.asarray(x[:nd]))) if nd else np.zeros((0, 0))
            got = tape.hessian(x)[:nd, :nd]
            assert np.allclose(got, ref, rtol=1e-12, atol=1e-13), (spec.name, params, x, got, ref)
