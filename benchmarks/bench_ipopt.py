"""A direct-collocation optimal control problem through IPOPT: fasttape vs CasADi.

Run from the repository root (needs cyipopt; CasADi is compared when installed)::

    python benchmarks/bench_ipopt.py              # N = 5000 intervals: 15,003 variables
    python benchmarks/bench_ipopt.py --N 20000

The problem: swing a pendulum with quadratic drag from rest at the bottom (angle 0) to rest
at the top (angle pi) in unit time with least control energy: states ``pos``, ``vel`` and
control ``u`` on ``N + 1`` grid points, trapezoidal collocation of ``pos' = vel``,
``vel' = u - 10 sin(pos) - 0.5 * vel**2`` (``2N + 4`` equality constraints), objective the
trapezoidal integral of ``u**2``.  Both
systems solve the same NLP with IPOPT from the same start; the script prints the build time
(trace + compile + patterns + coloring for fasttape, SX graph + ``nlpsol`` for CasADi), the
iterations, the time spent in derivative and function evaluations and the total.  CasADi
bundles its own IPOPT build, so iteration counts may differ slightly.  No thresholds are
asserted.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import fasttape as ft  # noqa: E402
from fasttape.embed import ipopt  # noqa: E402


def problem(m: Any, n_intervals: int) -> tuple[Any, Any]:
    """Objective and constraint functions over the math namespace ``m`` (``sum`` and
    arithmetic), for ``x = [pos, vel, u]``."""
    big_n = n_intervals
    h = 1.0 / big_n

    def split(x: Any) -> tuple[Any, Any, Any]:
        return x[: big_n + 1], x[big_n + 1 : 2 * big_n + 2], x[2 * big_n + 2 :]

    def objective(x: Any) -> Any:
        _, _, u = split(x)
        return m.sum([0.5 * h * (u[k] * u[k] + u[k + 1] * u[k + 1]) for k in range(big_n)])

    def constraints(x: Any) -> list[Any]:
        pos, vel, u = split(x)
        acc = [u[k] - 10.0 * m.sin(pos[k]) - 0.5 * vel[k] * vel[k] for k in range(big_n + 1)]
        c = []
        for k in range(big_n):
            c.append(pos[k + 1] - pos[k] - 0.5 * h * (vel[k] + vel[k + 1]))
            c.append(vel[k + 1] - vel[k] - 0.5 * h * (acc[k] + acc[k + 1]))
        return [*c, pos[0], vel[0], pos[big_n] - math.pi, vel[big_n]]

    return objective, constraints


class _Timed(ipopt.Callbacks):
    """The bridge's callbacks with the time spent in each kind, and the iteration count."""

    def __init__(self, *args: Any) -> None:
        self.times = {"f": 0.0, "g": 0.0, "grad_f": 0.0, "jac_g": 0.0, "hess_l": 0.0}
        self.calls = {}
        super().__init__(*args)  # its warm-up calls count as build time, not evaluations
        self.times = dict.fromkeys(self.times, 0.0)
        self.calls: dict[str, int] = {}
        self.iterations = 0

    def _time(self, key: str, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        res = fn(*args)
        self.times[key] += time.perf_counter() - t0
        self.calls[key] = self.calls.get(key, 0) + 1
        return res

    def objective(self, x: np.ndarray) -> float:
        return self._time("f", super().objective, x)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self._time("grad_f", super().gradient, x)

    def constraints(self, x: np.ndarray) -> np.ndarray:
        return self._time("g", super().constraints, x)

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        return self._time("jac_g", super().jacobian, x)

    def hessian(self, x: np.ndarray, lagrange: np.ndarray, obj_factor: float) -> np.ndarray:
        return self._time("hess_l", super().hessian, x, lagrange, obj_factor)

    def intermediate(self, *args: Any) -> bool:
        self.iterations = int(args[1])
        return True


# The derivative callbacks, as CasADi's stats name them (without the "nlp_" prefix).
_DERIVS = ("grad_f", "jac_g", "hess_l")


def run_fasttape(n_intervals: int) -> dict[str, Any]:
    import cyipopt

    t0 = time.perf_counter()
    obj, con = problem(ft, n_intervals)
    n = 3 * (n_intervals + 1)
    f = ft.compile(ft.trace(obj, n))
    c = ft.compile(ft.trace(con, n))
    cb = _Timed(f, c)
    build = time.perf_counter() - t0
    m = c.n_outputs
    prob = cyipopt.Problem(n=n, m=m, problem_obj=cb, lb=np.full(n, -np.inf),
                           ub=np.full(n, np.inf), cl=np.zeros(m), cu=np.zeros(m))
    prob.add_option("print_level", 0)
    t0 = time.perf_counter()
    _, info = prob.solve(np.zeros(n))
    total = time.perf_counter() - t0
    return {"build": build, "iterations": cb.iterations, "evals": sum(cb.times.values()),
            "derivs": cb.times["grad_f"] + cb.times["jac_g"] + cb.times["hess_l"],
            "total": total, "obj": info["obj_val"], "status": info["status"],
            "per_call": {k: (cb.calls.get(k, 0), cb.times[k]) for k in _DERIVS}}


def run_casadi(n_intervals: int) -> dict[str, Any] | None:
    try:
        import casadi
    except ImportError:
        return None

    class _M:
        sin = casadi.sin

        @staticmethod
        def sum(terms: list[Any]) -> Any:
            return casadi.sum1(casadi.vertcat(*terms))

    t0 = time.perf_counter()
    n = 3 * (n_intervals + 1)
    x = casadi.SX.sym("x", n)
    xs = casadi.vertsplit(x)
    obj, con = problem(_M, n_intervals)
    nlp = {"x": x, "f": obj(xs), "g": casadi.vertcat(*con(xs))}
    solver = casadi.nlpsol("s", "ipopt", nlp, {"ipopt.print_level": 0, "print_time": False})
    build = time.perf_counter() - t0
    m = 2 * n_intervals + 4
    t0 = time.perf_counter()
    sol = solver(x0=np.zeros(n), lbg=np.zeros(m), ubg=np.zeros(m))
    total = time.perf_counter() - t0
    st = solver.stats()
    ev = {k: st.get(f"t_wall_{k}", 0.0) for k in ("nlp_f", "nlp_g", "nlp_grad_f", "nlp_jac_g",
                                                  "nlp_hess_l")}
    return {"build": build, "iterations": st["iter_count"], "evals": sum(ev.values()),
            "derivs": ev["nlp_grad_f"] + ev["nlp_jac_g"] + ev["nlp_hess_l"], "total": total,
            "obj": float(sol["f"]), "status": st["return_status"],
            "per_call": {k: (int(st.get(f"n_call_nlp_{k}", 0)), ev[f"nlp_{k}"])
                         for k in _DERIVS}}


def ab_pruning(n_intervals: int, repeat: int = 15) -> None:
    """Per-call time of the sparse plans: full sweeps (``prune=False``), pruned sweeps
    (``preaccumulate=False``) and the default (pruned, linear region preaccumulated),
    alternating in one process at one point: the A/B behind docs/sparse.md's figures."""
    from fasttape.sparse import SparseHessian, SparseJacobian

    obj, con = problem(ft, n_intervals)
    n = 3 * (n_intervals + 1)
    f = ft.compile(ft.trace(obj, n))
    c = ft.compile(ft.trace(con, n))
    rng = np.random.default_rng(0)
    x = rng.normal(size=n)
    lam = rng.normal(size=c.n_outputs)
    modes = ({"prune": False}, {"preaccumulate": False}, {})
    cases = {
        "constraint Jacobian": lambda kw: (SparseJacobian(c, **kw), {}),
        "constraint Hessian (w @ c)": lambda kw: (
            SparseHessian(c, w=np.ones(c.n_outputs), **kw), {"w": lam}),
        "objective Hessian": lambda kw: (SparseHessian(f, **kw), {}),
    }
    print(f"  isolated per call, ms (median of {repeat}, alternating): full sweeps / pruned "
          "/ preaccumulated (speed-up over full)")
    for name, make in cases.items():
        plans = [make(kw) for kw in modes]
        times: list[list[float]] = [[] for _ in plans]
        for _ in range(repeat):
            for j, (plan, kw) in enumerate(plans):
                t0 = time.perf_counter()
                plan(x, values_only=True, **kw)
                times[j].append(time.perf_counter() - t0)
        full, pruned, pre = (1e3 * float(np.median(t)) for t in times)
        print(f"  {name:<27} {full:7.3f} / {pruned:7.3f} / {pre:7.3f}  "
              f"({full / pruned:.2f}x, {full / pre:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--N", type=int, default=5000, help="collocation intervals")
    args = p.parse_args(argv)
    if args.N < 2:
        p.error("--N must be at least 2")
    run_fasttape(4)  # compile the kernels first: the figures are run times, not JIT
    rows = {"fasttape": run_fasttape(args.N), "casadi": run_casadi(args.N)}
    n = 3 * (args.N + 1)
    print(f"collocation, N = {args.N:,}: {n:,} variables, {2 * args.N + 4:,} constraints")
    print(f"  {'system':<9} {'build s':>8} {'iters':>6} {'evals s':>8} {'derivs s':>9} "
          f"{'total s':>8}  objective")
    for name, r in rows.items():
        if r is None:
            print(f"  {name:<9} not installed")
            continue
        print(f"  {name:<9} {r['build']:8.3f} {r['iterations']:6d} {r['evals']:8.3f} "
              f"{r['derivs']:9.3f} {r['total']:8.3f}  {r['obj']:.8f} ({r['status']})")
    # CasADi's jac_g and grad_f also return g and f; fasttape's callbacks return only the
    # derivatives (IPOPT asks for g and f separately).
    print("  per call, ms (calls):  " + "  ".join(f"{k:>14}" for k in _DERIVS))
    for name, r in rows.items():
        if r is not None:
            cells = [f"{1e3 * t / max(c, 1):8.3f} ({c:2d})" for c, t in r["per_call"].values()]
            print(f"  {name:<21} " + "  ".join(f"{c:>14}" for c in cells))
    ab_pruning(args.N)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
