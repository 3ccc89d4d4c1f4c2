"""scipy.optimize with tapes: the plain route, Hessian-vector products, bounds, constraints."""

from __future__ import annotations

import numpy as np
import pytest

import fasttape as ft
from fasttape.embed import scipy_opt

optimize = pytest.importorskip("scipy.optimize")


def ext_rosenbrock(x):
    """Extended Rosenbrock: independent pairs, minimum 0 at all ones."""
    return ft.sum(
        100.0 * (x[2 * i + 1] - x[2 * i] ** 2) ** 2 + (1.0 - x[2 * i]) ** 2
        for i in range(len(x) // 2)
    )


def x0_for(n):
    x0 = np.empty(n)
    x0[0::2], x0[1::2] = -1.2, 1.0  # the classic start
    return x0


def test_minimize_value_and_grad_as_written():
    tape = ft.compile(ft.trace(ext_rosenbrock, n_inputs=10))
    res = optimize.minimize(tape.value_and_grad, x0_for(10), jac=True, method="BFGS")
    assert res.success
    np.testing.assert_allclose(res.x, 1.0, atol=1e-4)
    # The objective SciPy saw is the function and its exact gradient: compare with a
    # hand-written one along the way (BFGS amplifies last-digit differences, so the iterates of
    # the two runs themselves are not comparable).

    def fg(x):
        a, b = x[0::2], x[1::2]
        g = np.empty_like(x)
        g[0::2] = -400.0 * a * (b - a**2) - 2.0 * (1.0 - a)
        g[1::2] = 200.0 * (b - a**2)
        return float(np.sum(100.0 * (b - a**2) ** 2 + (1.0 - a) ** 2)), g

    for x in (x0_for(10), res.x, np.linspace(-2, 2, 10)):
        v, g = tape.value_and_grad(x)
        v_ref, g_ref = fg(x)
        assert v == pytest.approx(v_ref, rel=1e-12, abs=1e-15)
        np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [100, 10_000])
def test_trust_ncg_extended_rosenbrock_with_hvp(n):
    if not hasattr(ft.Tape, "hvp"):
        pytest.skip("Tape.hvp (issue 5, fasttape/derivatives.py) is not available")
    tape = ft.compile(ft.trace(ext_rosenbrock, n_inputs=n))
    res = optimize.minimize(
        tape.value_and_grad, x0_for(n), jac=True, method="trust-ncg", hessp=tape.hvp,
        options={"gtol": 1e-8},
    )
    assert res.success, res.message
    np.testing.assert_allclose(res.x, 1.0, atol=1e-6)
    assert res.nhev > 0
    # The helper picks hessp by itself for trust-ncg.
    res2 = scipy_opt.minimize(tape, x0_for(n), method="trust-ncg", options={"gtol": 1e-8})
    np.testing.assert_array_equal(res2.x, res.x)


def test_hessp_matches_finite_differences_of_the_gradient():
    if not hasattr(ft.Tape, "hvp"):
        pytest.skip("Tape.hvp is not available")
    tape = ft.compile(ft.trace(ext_rosenbrock, n_inputs=6))
    obj = scipy_opt.objective(tape)
    x, p = np.linspace(-1, 1, 6), np.linspace(0.3, -0.7, 6)
    h = 1e-6
    fd = (obj.jac(x + h * p) - obj.jac(x - h * p)) / (2 * h)
    np.testing.assert_allclose(obj.hessp(x, p), fd, rtol=1e-6, atol=1e-6)


def test_bounds_as_a_pair_of_arrays():
    tape = ft.compile(ft.trace(ext_rosenbrock, n_inputs=4))
    res = scipy_opt.minimize(tape, np.zeros(4), method="L-BFGS-B", bounds=(-0.5, 0.5))
    assert res.success
    assert np.all(res.x <= 0.5 + 1e-12) and np.all(res.x >= -0.5 - 1e-12)
    assert res.x[0] == pytest.approx(0.5, abs=1e-6)  # pushed against the bound
    lo, hi = np.full(4, -2.0), np.array([2.0, 2.0, 0.5, 2.0])
    res = scipy_opt.minimize(tape, np.zeros(4), method="L-BFGS-B", bounds=(lo, hi))
    assert res.x[2] == pytest.approx(0.5, abs=1e-6)
    assert res.x[0] == pytest.approx(1.0, abs=1e-4)


def test_several_outputs_objective_and_constraint():
    # Minimise output 0 = (x-2)^2 + (y-1)^2 subject to output 1 = x^2 + y^2 <= 1 and
    # output 2 = x - y == 0: the answer is x = y = 1/sqrt(2).
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output((x - 2.0) ** 2 + (y - 1.0) ** 2, x**2 + y**2, x - y)
    tape = ft.compile(g)
    with pytest.raises(ValueError, match="pass output="):
        scipy_opt.minimize(tape, [0.0, 0.0])
    cons = [scipy_opt.constraint(tape, -np.inf, 1.0, outputs=[1]),
            scipy_opt.constraint(tape, 0.0, 0.0, outputs=[2])]
    res = scipy_opt.minimize(tape, [0.1, 0.0], output=0, method="SLSQP", constraints=cons)
    assert res.success
    np.testing.assert_allclose(res.x, [2**-0.5, 2**-0.5], atol=1e-6)
    jac = scipy_opt.jacobian(tape, [0.3, -0.4])
    np.testing.assert_allclose(jac, [[2 * (0.3 - 2), 2 * (-0.4 - 1)], [0.6, -0.8], [1, -1]])
    np.testing.assert_array_equal(scipy_opt.jacobian(tape, [0.3, -0.4], outputs=[2, 1]),
                                  jac[[2, 1]])
    if hasattr(ft.Tape, "hvp"):  # exact Hessians of objective and constraint
        # On the unit circle the closest point to (2, 1) is (2, 1) / sqrt(5).
        circle = scipy_opt.constraint(tape, 1.0, 1.0, outputs=[1], hess=True)
        res = scipy_opt.minimize(tape, [0.1, 0.5], output=0, method="trust-constr",
                                 constraints=[circle], options={"gtol": 1e-12, "xtol": 1e-14})
        np.testing.assert_allclose(res.x, np.array([2.0, 1.0]) / 5**0.5, atol=1e-8)
        assert res.nhev > 0


def test_bound_pairs_on_a_two_input_tape():
    g = ft.Graph()
    p, q = g.inputs(2)
    g.output((p - 2.0) ** 2 + (q + 2.0) ** 2)
    tape = ft.compile(g)
    res = scipy_opt.minimize(tape, [0.0, 0.0], method="L-BFGS-B", bounds=(-0.5, 0.5))
    np.testing.assert_allclose(res.x, [0.5, -0.5], atol=1e-8)
    # Two pairs on two inputs: SciPy's per-variable meaning (x0 in [0, 1], x1 in [-1, 0]).
    res = scipy_opt.minimize(tape, [0.0, 0.0], method="L-BFGS-B", bounds=[(0, 1), (-1, 0)])
    np.testing.assert_allclose(res.x, [1.0, -1.0], atol=1e-8)
