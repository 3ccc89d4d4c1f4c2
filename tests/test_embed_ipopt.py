"""The IPOPT bridge (fasttape.embed.ipopt): callbacks against dense derivatives, HS071 solved."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

import fasttape as ft
from fasttape.embed import ipopt

pytest.importorskip("scipy.sparse")

HAS_CYIPOPT = importlib.util.find_spec("cyipopt") is not None


def hs071():
    """The IPOPT tutorial problem (Hock and Schittkowski no. 71)."""
    f = ft.compile(ft.trace(lambda x: x[0] * x[3] * (x[0] + x[1] + x[2]) + x[2], 4))
    c = ft.compile(ft.trace(lambda x: [x[0] * x[1] * x[2] * x[3],
                                       ft.sum(v * v for v in x)], 4))
    return f, c


def test_callbacks_match_dense_derivatives():
    f, c = hs071()
    cb = ipopt.Callbacks(f, c)
    x = np.array([1.0, 5.0, 5.0, 1.0])
    assert cb.objective(x) == f.value(x)
    np.testing.assert_array_equal(cb.gradient(x), f.grad(x))
    np.testing.assert_array_equal(cb.constraints(x), c.value(x))
    rows, cols = cb.jacobianstructure()
    jac = np.zeros((2, 4))
    jac[rows, cols] = cb.jacobian(x)
    np.testing.assert_allclose(jac, c.jacobian(x), rtol=1e-15)
    lam = np.array([0.7, -1.3])
    want = 2.0 * f.hessian(x) + lam[0] * c.hessian(x, output=0) + lam[1] * c.hessian(x, output=1)
    rows, cols = cb.hessianstructure()
    assert (rows >= cols).all()
    got = np.zeros((4, 4))
    got[rows, cols] = cb.hessian(x, lam, 2.0)
    low = np.tril(np.ones((4, 4), bool))
    np.testing.assert_allclose(got[low], want[low], rtol=1e-14, atol=1e-14)
    # Structure: the Lagrangian couples every pair here, lower triangle only.
    assert cb.hessian_nnz == 10


def test_unconstrained_and_bad_tapes():
    f = ft.compile(ft.trace(lambda x: ft.sum((x[i + 1] - x[i] ** 2) ** 2 for i in range(3)), 4))
    cb = ipopt.Callbacks(f)
    assert cb.m == 0 and cb.constraints(np.ones(4)).shape == (0,)
    assert cb.jacobian(np.ones(4)).shape == (0,)
    two = ft.compile(ft.trace(lambda x: [x[0], x[1]], 2))
    with pytest.raises(ValueError, match="one output"):
        ipopt.Callbacks(two)
    with pytest.raises(ValueError, match="same x"):
        ipopt.Callbacks(f, two)


def test_warm_up_calls_every_callback_once_at_zero():
    """Building calls each callback once at x = 0 (work arrays allocated before IPOPT's
    first request); warm_up=False calls none."""

    def recorded(name: str, tag: str):
        """The callback ``name`` of ipopt.Callbacks, recording ``(tag, x)`` first."""
        def method(self, x, *rest):
            self.seen.append((tag, x.tolist()))
            return getattr(ipopt.Callbacks, name)(self, x, *rest)
        return method

    class Counting(ipopt.Callbacks):
        def __init__(self, *args, **kwargs):
            self.seen = []
            super().__init__(*args, **kwargs)

        objective = recorded("objective", "f")
        gradient = recorded("gradient", "grad")
        constraints = recorded("constraints", "g")
        jacobian = recorded("jacobian", "jac")
        hessian = recorded("hessian", "hess")

    f, c = hs071()
    cb = Counting(f, c)
    assert sorted(cb.seen) == sorted((k, [0.0] * 4) for k in ("f", "grad", "g", "jac", "hess"))
    assert Counting(f, c, warm_up=False).seen == []
    # Warm or not, the callbacks give the same values.
    x, lam = np.array([1.0, 5.0, 5.0, 1.0]), np.array([0.7, -1.3])
    cold = ipopt.Callbacks(f, c, warm_up=False)
    np.testing.assert_array_equal(cb.hessian(x, lam, 2.0), cold.hessian(x, lam, 2.0))
    np.testing.assert_array_equal(cb.jacobian(x), cold.jacobian(x))


@pytest.mark.oracle
@pytest.mark.skipif(not HAS_CYIPOPT, reason="No module named 'cyipopt' (it needs the IPOPT "
                    "library installed first)")
def test_hs071_solves():
    f, c = hs071()
    x, info = ipopt.solve(f, [1.0, 5.0, 5.0, 1.0], c, lb=[1.0] * 4, ub=[5.0] * 4,
                          cl=[25.0, 40.0], cu=[2e19, 40.0],
                          options={"print_level": 0, "tol": 1e-10})
    assert info["status"] == 0, info["status_msg"]
    np.testing.assert_allclose(x, [1.0, 4.74299964, 3.82114998, 1.37940829], rtol=1e-6)
    assert abs(info["obj_val"] - 17.014017145179164) < 1e-8


def test_missing_cyipopt_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cyipopt", None)  # as if not installed
    f, c = hs071()
    with pytest.raises(ImportError, match="pip install cyipopt"):
        ipopt.problem(f, c)


@pytest.mark.skipif(not HAS_CYIPOPT, reason="No module named 'cyipopt'")
def test_bench_ipopt_smoke(capsys):
    import runpy
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ipopt.py"
    bench = runpy.run_path(str(path))
    assert bench["main"](["--N", "20"]) == 0
    out = capsys.readouterr().out
    assert "63 variables, 44 constraints" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("fasttape"))
    assert "(0)" in row  # IPOPT's status 0: solved
