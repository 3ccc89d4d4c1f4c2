"""ft.scan: bitwise equality with the unrolled tape, for every budget; memory; errors."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fasttape as ft
from fasttape.checkpoint import CheckpointReport
from fasttape.checkpoint.scan import compile_plain
from fasttape.ops import OPS
from tests.reference import internal_form


def lorenz_rk4(s, p):
    """One RK4 step of the Lorenz system (h = 0.01), with a running cost."""
    x, y, z = s
    sigma, rho, beta = p
    h = 0.01

    def f(x, y, z):
        return (sigma * (y - x), x * (rho - z) - y, x * y - beta * z)

    k1 = f(x, y, z)
    k2 = f(x + h / 2 * k1[0], y + h / 2 * k1[1], z + h / 2 * k1[2])
    k3 = f(x + h / 2 * k2[0], y + h / 2 * k2[1], z + h / 2 * k2[2])
    k4 = f(x + h * k3[0], y + h * k3[1], z + h * k3[2])
    new = [v + h / 6 * (a + 2 * b + 2 * c + d)
           for v, a, b, c, d in zip((x, y, z), k1, k2, k3, k4, strict=True)]
    return new, 0.5 * ft.square(x - 1.0)


def lorenz_final(s, p):
    return s[0] * s[1] + ft.sin(s[2]) * p[0]


LORENZ_X0 = np.array([1.0, 1.0, 1.0])
LORENZ_P = np.array([10.0, 28.0, 8.0 / 3.0])


def unrolled(step, n_steps, n_state, n_params, final=None, running_cost=False):
    """The reference: the step traced n_steps times into one graph, cost summed as it goes."""
    g = ft.Graph()
    xs = g.inputs(n_state + n_params)
    s, p = xs[:n_state], xs[n_state:]
    acc = None
    for _ in range(n_steps):
        out = step(s, p)
        if running_cost:
            s, c = out
            acc = c if acc is None else acc + c
        else:
            s = out
    if final is not None:
        f = final(s, p)
        acc = f if acc is None else acc + f
    g.output(acc)
    return compile_plain(g)  # dead code only: CSE would merge nodes across steps


def assert_bitwise(sc, tape, x0, p):
    v, g = tape.value_and_grad(np.concatenate([x0, p]))
    v2, gx, gp = sc.value_and_grad(x0, p)
    got = np.concatenate([gx, gp])
    assert np.float64(v).tobytes() == np.float64(v2).tobytes(), (v, v2)
    assert g.tobytes() == got.tobytes(), (g, got)
    assert np.float64(sc.value(x0, p)).tobytes() == np.float64(v).tobytes()


@pytest.mark.parametrize("n_steps", [1, 2, 7, 33])
def test_lorenz_rk4_bitwise_equal_to_the_unrolled_tape_for_every_budget(n_steps):
    tape = unrolled(lorenz_rk4, n_steps, 3, 3, lorenz_final, running_cost=True)
    for s in sorted({1, 2, 3, 5, n_steps}):
        sc = ft.scan(lorenz_rk4, n_steps, n_state=3, n_params=3, final=lorenz_final,
                     running_cost=True, snapshots=s)
        assert sc.bitwise_exact
        assert_bitwise(sc, tape, LORENZ_X0, LORENZ_P)


def test_final_only_and_cost_only():
    def step(s, p):
        return [s[1] * p[0], ft.tanh(s[0]) + s[1]]

    x0, p = np.array([0.3, -0.2]), np.array([0.9])
    for kw in ({"final": lambda s, p: s[0] * s[1]}, {"running_cost": True}):
        st = step
        if kw.get("running_cost"):
            def st(s, p):
                return step(s, p), ft.sin(s[0])
        tape = unrolled(st, 20, 2, 1, kw.get("final"), kw.get("running_cost", False))
        for s in (1, 3, 20):
            assert_bitwise(ft.scan(st, 20, n_state=2, n_params=1, snapshots=s, **kw), tape, x0, p)


def test_permuted_and_passed_through_state_stay_bitwise_exact():
    def step(s, p):  # s[2] passes through, s[0] and s[1] swap with a twist
        return [s[1] + 0.5 * ft.sin(s[2]) * p[0], s[0] * p[1], s[2]]

    x0, p = np.array([0.1, 0.2, 0.3]), np.array([1.1, 0.9])
    tape = unrolled(step, 12, 3, 2, lambda s, p: s[0] * s[1] * s[2])
    for s in (1, 2, 4):
        sc = ft.scan(step, 12, n_state=3, n_params=2, final=lambda s, p: s[0] * s[1] * s[2],
                     snapshots=s)
        assert sc.bitwise_exact
        assert_bitwise(sc, tape, x0, p)


def test_repeated_outputs_are_flagged_not_exact_but_close():
    def step(s, p):
        y = ft.sin(s[0]) * p[0] + s[1]
        return [y, y]

    sc = ft.scan(step, 9, n_state=2, n_params=1, final=lambda s, p: s[0] * s[1], snapshots=2)
    assert not sc.bitwise_exact
    tape = unrolled(step, 9, 2, 1, lambda s, p: s[0] * s[1])
    v, g = tape.value_and_grad([0.4, 0.1, 0.7])
    v2, gx, gp = sc.value_and_grad([0.4, 0.1], [0.7])
    assert v == v2
    np.testing.assert_allclose(np.concatenate([gx, gp]), g, rtol=1e-13)


def _squash(v, dom):
    lo, hi = dom
    return lo + (hi - lo) * ft.sigmoid(v)


def _op_step(spec):
    def step(s, p):
        a = [_squash(v, spec.domain[min(j, len(spec.domain) - 1)])
             for j, v in enumerate((s[0], s[1] * p[0], s[2]))]
        if spec.name == "powi":
            y = a[0] ** 3
        elif spec.name == "powc":
            y = a[0] ** 1.5
        elif spec.name == "where":
            y = ft.where(s[2] > 0.0, a[0], a[1])
        elif internal_form(spec.name, a, 1.7) is not None:
            y = internal_form(spec.name, a, 1.7)
        else:
            y = getattr(ft, spec.name)(*a[: spec.arity])
        new = [s[0] + 0.1 * y * p[1], ft.sin(s[1]) + y * p[0], 0.9 * s[2] - s[0] * p[1]]
        return new, 0.5 * ft.square(y)

    return step


@pytest.mark.parametrize("spec", OPS, ids=[o.name for o in OPS])
def test_every_op_in_the_step_bitwise(spec):
    step = _op_step(spec)
    final = lambda s, p: s[0] + s[1] * s[2]  # noqa: E731
    x0, p = np.array([0.3, -0.4, 0.2]), np.array([0.8, -0.6])
    tape = unrolled(step, 6, 3, 2, final, running_cost=True)
    for s in (1, 2, 6):
        sc = ft.scan(step, 6, n_state=3, n_params=2, final=final, running_cost=True, snapshots=s)
        assert_bitwise(sc, tape, x0, p)


def test_gradient_matches_the_closed_form():
    # x_{t+1} = x_t * p: x_T = x0 p^T, dx_T/dx0 = p^T, dx_T/dp = T x0 p^(T-1).
    sc = ft.scan(lambda s, p: [s[0] * p[0]], 30, n_state=1, n_params=1,
                 final=lambda s, p: s[0], snapshots=4)
    v, gx, gp = sc.value_and_grad([1.5], [1.01])
    assert v == pytest.approx(1.5 * 1.01**30, rel=1e-14)
    assert gx[0] == pytest.approx(1.01**30, rel=1e-14)
    assert gp[0] == pytest.approx(30 * 1.5 * 1.01**29, rel=1e-14)
    np.testing.assert_allclose(sc.final_state([1.5], [1.01]), [1.5 * 1.01**30], rtol=1e-14)


def test_memory_limit_sets_snapshots_and_tracemalloc_confirms_the_peak():
    sc0 = ft.scan(lorenz_rk4, 500, n_state=3, n_params=3, final=lorenz_final,
                  running_cost=True, snapshots=1)
    per = sc0.snapshot_nbytes(1)
    limit = sc0.overhead_nbytes + 10 * per + per // 2
    sc = ft.scan(lorenz_rk4, 500, n_state=3, n_params=3, final=lorenz_final,
                 running_cost=True, memory_limit=limit)
    assert sc.snapshots == 10
    sc.value_and_grad(LORENZ_X0, LORENZ_P)  # compile and warm the dispatcher first
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        sc.value_and_grad(LORENZ_X0, LORENZ_P)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    rep = sc.report
    assert isinstance(rep, CheckpointReport) and rep.within_budget
    assert rep.peak_nbytes <= limit
    # The engine's accounting is the real thing: the measured peak is the accounted arrays
    # plus NumPy's per-array headers (about 100 B each, 20 arrays), no more.
    assert rep.peak_nbytes - 500 <= peak <= rep.peak_nbytes + 4096, (peak, rep.peak_nbytes)
    assert peak <= limit + 4096
    # The same gradient as with the same number of snapshots given directly.
    sc10 = ft.scan(lorenz_rk4, 500, n_state=3, n_params=3, final=lorenz_final,
                   running_cost=True, snapshots=10)
    a, b = sc.value_and_grad(LORENZ_X0, LORENZ_P), sc10.value_and_grad(LORENZ_X0, LORENZ_P)
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert sc.stats()["last"]["forward_evaluations"] == ft.checkpoint.revolve_cost(500, 10)


def test_errors_are_clear():
    ok = dict(n_state=1, n_params=1, final=lambda s, p: s[0])
    with pytest.raises(ValueError, match="nothing to differentiate"):
        ft.scan(lambda s, p: [s[0]], 3, n_state=1)
    with pytest.raises(ValueError, match="n_state=2"):
        ft.scan(lambda s, p: [s[0]], 3, n_state=2, final=lambda s, p: s[0])
    with pytest.raises(ValueError, match="not both"):
        ft.scan(lambda s, p: [s[0]], 3, snapshots=2, memory_limit=10**6, **ok)
    with pytest.raises(ValueError, match="too small"):
        ft.scan(lambda s, p: [s[0]], 3, memory_limit=100, **ok)
    with pytest.raises(ValueError, match="n_steps"):
        ft.scan(lambda s, p: [s[0]], 0, **ok)
    with pytest.raises(TypeError, match="snapshots"):
        ft.scan(lambda s, p: [s[0]], 3, snapshots=2.5, **ok)
    with pytest.raises(ValueError, match="running_cost=True"):
        ft.scan(lambda s, p: [s[0]], 3, n_state=1, running_cost=True)
    sc = ft.scan(lambda s, p: [s[0] * p[0]], 3, **ok)
    with pytest.raises(ValueError, match=r"x0 must have shape \(1,\)"):
        sc.value_and_grad([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="params"):
        sc.value_and_grad([1.0], [])
