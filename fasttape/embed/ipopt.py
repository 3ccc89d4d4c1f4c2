"""IPOPT (through cyipopt) with tapes: sparse constraint Jacobian and Lagrangian Hessian.

An objective tape (one output) and a constraint tape (``m`` outputs, the same ``n`` inputs)
become the callbacks IPOPT asks for: objective, gradient, constraints, the constraint
Jacobian and the Hessian of the Lagrangian ``obj_factor * f + lambda @ c``, the last two
sparse with structures computed once (:mod:`fasttape.sparse`: patterns, coloring, compressed
evaluation).  :class:`Callbacks` needs neither IPOPT nor cyipopt; :func:`problem` and
:func:`solve` import cyipopt when called (``pip install cyipopt`` over an installed IPOPT,
e.g. Debian's ``coinor-libipopt-dev``; docs/sparse.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fasttape.kernels import sparsity as _ks
from fasttape.sparse import SparseHessian, SparseJacobian
from fasttape.tape import TapeRecord

__all__ = ["Callbacks", "problem", "solve"]


def _cyipopt() -> Any:
    try:
        import cyipopt
    except ImportError:
        raise ImportError(
            "the IPOPT bridge needs cyipopt and the IPOPT library: install IPOPT (Debian: "
            "apt-get install coinor-libipopt-dev pkg-config), then pip install cyipopt"
        ) from None
    return cyipopt


class Callbacks:
    """The callback object cyipopt's ``Problem(problem_obj=...)`` takes.

    Parameters
    ----------
    objective : Tape
        One output, ``n`` inputs.
    constraints : Tape, optional
        ``m`` outputs over the same ``n`` inputs (``None``: unconstrained).
    p : array_like, optional
        Parameters, when the tapes have them (the same ``p`` for both).
    warm_up : bool, optional
        Call every callback once at ``x = 0`` while building (default), so that the work
        arrays are allocated before IPOPT's first request, in the calling thread (solve in
        the thread that builds).

    Attributes
    ----------
    jacobian_plan : fasttape.sparse.SparseJacobian or None
    hessian_nnz : int
        Entries of the Lagrangian Hessian's lower triangle (what IPOPT stores).
    """

    def __init__(self, objective: TapeRecord, constraints: TapeRecord | None = None, *,
                 p: Any = None, warm_up: bool = True) -> None:
        if objective.n_outputs != 1:
            raise ValueError(
                f"the objective tape must have one output, got {objective.n_outputs}: pass "
                "the constraints as a second tape")
        n = objective.n_inputs
        if constraints is not None and constraints.n_inputs != n:
            raise ValueError(
                f"the constraint tape has {constraints.n_inputs} inputs but the objective has "
                f"{n}: both take the same x")
        self.objective_tape = objective
        self.constraint_tape = constraints
        self.p = p
        self.n = n
        self.m = 0 if constraints is None else constraints.n_outputs
        self._hobj = SparseHessian(objective)
        self.jacobian_plan = None if constraints is None else SparseJacobian(constraints)
        self._hcon = (None if constraints is None
                      else SparseHessian(constraints, w=np.ones(self.m)))
        # The Lagrangian's lower triangle: the union of the two patterns, and where each
        # plan's lower-triangle entries land in it.
        parts = [self._hobj] + ([self._hcon] if self._hcon is not None else [])
        keys = []
        self._masks = []
        for plan in parts:
            coo = plan.pattern.tocoo()
            low = np.flatnonzero(coo.row >= coo.col)  # indices: cheaper to gather than a mask
            self._masks.append(low)
            keys.append(coo.row[low].astype(np.int64) * max(n, 1) + coo.col[low])
        union = np.unique(np.concatenate(keys)) if keys else np.empty(0, np.int64)
        self._hrows, self._hcols = np.divmod(union, max(n, 1))
        self._pos = [np.searchsorted(union, k) for k in keys]
        self.hessian_nnz = len(union)
        if self.jacobian_plan is not None:
            jc = self.jacobian_plan.pattern.tocoo()
            self._jrows, self._jcols = jc.row.astype(np.int64), jc.col.astype(np.int64)
        else:
            self._jrows = self._jcols = np.empty(0, np.int64)
        # The plans' values, reused at every call (the result is assembled from them).
        self._hf_data = np.empty(self._hobj.nnz)
        self._hc_data = np.empty(0 if self._hcon is None else self._hcon.nnz)
        if warm_up:
            self._warm_up()

    def _args(self) -> dict[str, Any]:
        return {} if self.p is None else {"p": self.p}

    def objective(self, x: np.ndarray) -> float:
        """f(x)."""
        return float(self.objective_tape.value(x, **self._args()))

    def gradient(self, x: np.ndarray) -> np.ndarray:
        """The gradient of f (one reverse sweep)."""
        return self.objective_tape.value_and_grad(x, **self._args())[1]

    def constraints(self, x: np.ndarray) -> np.ndarray:
        """c(x), shape (m,)."""
        if self.constraint_tape is None:
            return np.empty(0)
        return np.atleast_1d(self.constraint_tape.value(x, **self._args()))

    def jacobianstructure(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the constraint Jacobian's entries."""
        return self._jrows, self._jcols

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """The constraint Jacobian's values, in :meth:`jacobianstructure`'s order."""
        if self.jacobian_plan is None:
            return np.empty(0)
        return self.jacobian_plan(x, p=self.p, values_only=True)

    def hessianstructure(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the Lagrangian Hessian's lower triangle."""
        return self._hrows, self._hcols

    def hessian(self, x: np.ndarray, lagrange: np.ndarray, obj_factor: float) -> np.ndarray:
        """``obj_factor * H_f + sum_j lagrange[j] * H_cj``, lower triangle values."""
        out = np.zeros(self.hessian_nnz)
        hf = self._hobj(x, p=self.p, out=self._hf_data, values_only=True)
        # One kernel pass per plan: NumPy's fancy-indexed += made five temporaries of up to
        # the Hessian's size per call, whose page faults doubled the callback's time inside
        # a solve (measured at N = 20000, benchmarks/bench_ipopt.py).
        _ks.scatter_add(out, self._pos[0], hf, self._masks[0], float(obj_factor))
        if self._hcon is not None:
            hc = self._hcon(x, w=np.asarray(lagrange, dtype=np.float64), p=self.p,
                            out=self._hc_data, values_only=True)
            _ks.scatter_add(out, self._pos[1], hc, self._masks[1], 1.0)
        return out

    def _warm_up(self) -> None:
        """Call every callback once at ``x = 0``: the per-thread work arrays of the tapes
        and plans are then allocated and paged in, so IPOPT's first requests do not pay for
        that (measured: the first call of each kind cost 2-10x the later ones)."""
        x = np.zeros(self.n)
        self.objective(x)
        self.gradient(x)
        self.constraints(x)
        self.jacobian(x)
        self.hessian(x, np.ones(self.m), 1.0)


def problem(objective: TapeRecord, constraints: TapeRecord | None = None, *,
            lb: Any = None, ub: Any = None, cl: Any = None, cu: Any = None,
            p: Any = None) -> Any:
    """A ``cyipopt.Problem`` for ``min f(x)`` s.t. ``cl <= c(x) <= cu``, ``lb <= x <= ub``.

    Bounds default to unbounded (``-inf`` / ``inf``; IPOPT treats ``+-1e19`` and beyond as
    infinite).  Set options with ``prob.add_option(...)`` and solve with ``prob.solve(x0)``.
    """
    cyipopt = _cyipopt()
    cb = Callbacks(objective, constraints, p=p)
    n, m = cb.n, cb.m

    def bound(v: Any, size: int, default: float, name: str) -> np.ndarray:
        arr = np.full(size, default) if v is None else np.asarray(v, dtype=np.float64)
        if arr.shape != (size,):
            raise ValueError(f"{name} must have shape ({size},), got {arr.shape}")
        return arr

    return cyipopt.Problem(
        n=n, m=m, problem_obj=cb,
        lb=bound(lb, n, -np.inf, "lb"), ub=bound(ub, n, np.inf, "ub"),
        cl=bound(cl, m, -np.inf, "cl"), cu=bound(cu, m, np.inf, "cu"),
    )


def solve(objective: TapeRecord, x0: Any, constraints: TapeRecord | None = None, *,
          lb: Any = None, ub: Any = None, cl: Any = None, cu: Any = None, p: Any = None,
          options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Build :func:`problem`, set ``options`` (e.g. ``{"print_level": 0}``), solve from
    ``x0``; returns cyipopt's ``(x, info)``."""
    prob = problem(objective, constraints, lb=lb, ub=ub, cl=cl, cu=cu, p=p)
    for key, value in (options or {}).items():
        prob.add_option(key, value)
    return prob.solve(np.asarray(x0, dtype=np.float64))
