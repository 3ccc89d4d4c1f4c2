"""``scipy.optimize`` with a tape: objective, Hessian-vector products, bounds, constraints.

A single-output tape already works as written::

    scipy.optimize.minimize(tape.value_and_grad, x0, jac=True)
    scipy.optimize.minimize(tape.value_and_grad, x0, jac=True, method="trust-ncg",
                            hessp=tape.hvp)

A tape with parameters (``n_params > 0``) takes them positionally after ``x``, so SciPy's
``args=(p,)`` passes them: ``minimize(tape.value_and_grad, x0, jac=True, args=(p,))``, and the
:class:`Objective` methods and :func:`minimize` (``p=``) do the same.

This module adds what a multi-output tape or a constrained problem needs: :func:`objective`
picks one output, :func:`constraint` turns outputs into a ``NonlinearConstraint`` with an exact
Jacobian, :func:`jacobian` computes that Jacobian (one reverse sweep per output), and
:func:`minimize` wires them together (``jac=True``, ``hessp`` for the methods that use it,
bounds given as a pair of arrays).  SciPy is imported only when these functions run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fasttape.embed.numba_api import vjp

# Any tape will do: this module uses only the record's interface.
from fasttape.tape import TapeRecord as Tape

__all__ = ["HESSP_METHODS", "Objective", "constraint", "jacobian", "minimize", "objective"]

#: ``scipy.optimize.minimize`` methods that accept ``hessp``.
HESSP_METHODS = ("newton-cg", "trust-ncg", "trust-krylov", "trust-constr")


class Objective:
    """One output of a tape as the callables ``scipy.optimize`` expects.

    Attributes
    ----------
    tape : Tape
    output : int
    """

    def __init__(self, tape: Tape, output: int | None = None):
        if not isinstance(tape, Tape):
            raise TypeError(f"expected a fasttape.Tape, got {type(tape).__name__}")
        self.tape = tape
        self.output = tape.output_index(output)

    def fun(self, x: Any, p: Any = None) -> float:
        """Value of the output (``p``: the parameters, SciPy's ``args=(p,)``)."""
        v = self.tape.value(x, p)
        return float(v) if self.tape.n_outputs == 1 else float(v[self.output])

    def value_and_grad(self, x: Any, p: Any = None) -> tuple[float, np.ndarray]:
        """``(value, gradient)``: pass with ``jac=True``."""
        return self.tape.value_and_grad(x, p, output=self.output)

    def jac(self, x: Any, p: Any = None) -> np.ndarray:
        """Gradient of the output."""
        return self.tape.grad(x, p, output=self.output)

    @property
    def has_hessp(self) -> bool:
        """Whether the tape offers Hessian-vector products (``Tape.hvp``)."""
        return hasattr(self.tape, "hvp")

    def hessp(self, x: Any, v: Any, p: Any = None) -> np.ndarray:
        """Hessian of the output at ``x`` times ``v`` (through ``Tape.hvp``); ``p``: the
        parameters."""
        if not self.has_hessp:
            raise NotImplementedError(
                "this fasttape version has no Tape.hvp (Hessian-vector products); use a method "
                "that needs only gradients, e.g. method='L-BFGS-B'"
            )
        extra = {} if p is None else {"p": p}
        if self.tape.n_outputs == 1:
            return self.tape.hvp(x, v, **extra)
        return self.tape.hvp(x, v, output=self.output, **extra)


def objective(tape: Tape, output: int | None = None) -> Objective:
    """The output ``output`` of ``tape`` as an :class:`Objective` (``fun``, ``jac``, ``hessp``)."""
    return Objective(tape, output)


def jacobian(tape: Tape, x: Any, outputs: Sequence[int] | None = None) -> np.ndarray:
    """Dense Jacobian of the chosen outputs at ``x``: shape ``(len(outputs), n_inputs)``.

    One reverse sweep per output (a unit cotangent each); fine for the handful of outputs that
    constraints have, not for a Jacobian with thousands of rows.
    """
    rows = _outputs(tape, outputs)
    jac = np.empty((len(rows), tape.n_inputs))
    cot = np.zeros(tape.n_outputs)
    for r, k in enumerate(rows):
        cot[k] = 1.0
        vjp(tape, x, cot, out=jac[r])
        cot[k] = 0.0
    return jac


def constraint(
    tape: Tape,
    lb: Any,
    ub: Any,
    outputs: Sequence[int] | None = None,
    *,
    hess: bool | Callable[..., Any] | None = None,
    **kwargs: Any,
) -> Any:
    """``scipy.optimize.NonlinearConstraint`` ``lb <= outputs(x) <= ub`` with exact Jacobian.

    Parameters
    ----------
    tape : Tape
    lb, ub : float or array_like
        Bounds on the chosen outputs (``-np.inf`` / ``np.inf`` for one-sided; equal for an
        equality constraint).
    outputs : sequence of int, optional
        Which outputs are constrained (default: all).
    hess : bool or callable, optional
        ``True``: the constraint's Hessian ``sum_i v_i H_i`` as a ``LinearOperator`` made of
        ``Tape.hvp`` calls (one Hessian-vector product per constrained output), so
        ``method="trust-constr"`` gets exact second derivatives.  Default: none (SciPy's
        quasi-Newton update); other methods ignore it.
    **kwargs
        Passed on to ``NonlinearConstraint`` (``keep_feasible``, ...).
    """
    from scipy.optimize import NonlinearConstraint
    from scipy.sparse.linalg import LinearOperator

    rows = _outputs(tape, outputs)
    if hess is True:
        if not hasattr(tape, "hvp"):
            raise NotImplementedError("hess=True needs Tape.hvp, which this fasttape lacks")

        def hvp_hess(x: Any, v: Any) -> Any:
            x = np.array(x, dtype=np.float64)
            w = np.asarray(v, dtype=np.float64)

            def matvec(p: Any) -> np.ndarray:
                p = np.asarray(p, dtype=np.float64).reshape(-1)
                acc = np.zeros(tape.n_inputs)
                for wi, k in zip(w, rows, strict=True):
                    if wi != 0.0:
                        acc += wi * tape.hvp(x, p, output=k)
                return acc

            n = tape.n_inputs
            return LinearOperator((n, n), matvec=matvec, dtype=np.float64)

        kwargs["hess"] = hvp_hess
    elif hess not in (None, False):
        kwargs["hess"] = hess

    def fun(x: Any) -> np.ndarray:
        v = tape.value(x, out=np.empty(tape.n_outputs))
        return v[rows]

    def jac(x: Any) -> np.ndarray:
        return jacobian(tape, x, rows)

    return NonlinearConstraint(fun, lb, ub, jac=jac, **kwargs)


def minimize(
    tape: Tape,
    x0: Any,
    *,
    output: int | None = None,
    method: str | None = None,
    bounds: Any = None,
    hessp: bool | Callable[..., Any] | None = None,
    p: Any = None,
    **kwargs: Any,
) -> Any:
    """``scipy.optimize.minimize`` of one output of ``tape``, with its exact gradient.

    Parameters
    ----------
    tape : Tape
    x0 : array_like, shape (n_inputs,)
    output : int, optional
        Which output to minimise (required when the tape has several).
    method : str, optional
        As for SciPy.
    bounds : scipy.optimize.Bounds, sequence of (lo, hi) pairs, or a pair of arrays, optional
        A pair ``(lo, hi)`` of scalars or arrays of length ``n_inputs`` is turned into
        ``Bounds(lo, hi)`` (for a 2-input tape, two length-2 sequences keep SciPy's meaning:
        one ``(lo, hi)`` pair per variable).
    hessp : bool or callable, optional
        Default: ``Tape.hvp`` for the methods in :data:`HESSP_METHODS` when available.
        ``False`` disables it; a callable is passed through.
    p : array_like, shape (n_params,), optional
        The parameters of a tape that has some (passed to SciPy as ``args=(p,)``).
    **kwargs
        Passed on to ``scipy.optimize.minimize`` (``constraints=``, ``options=``, ...).

    Returns
    -------
    scipy.optimize.OptimizeResult
    """
    from scipy.optimize import Bounds
    from scipy.optimize import minimize as sp_minimize

    obj = Objective(tape, output)
    if p is not None or tape.n_params:
        kwargs["args"] = (tape.check_params(p),)
        x0 = np.array(x0, dtype=np.float64)  # checked by the first call, with p
    else:
        x0 = tape.as_input(x0).copy()
    if bounds is not None and not isinstance(bounds, Bounds) and _is_bound_pair(bounds, tape):
        bounds = Bounds(np.asarray(bounds[0], dtype=float), np.asarray(bounds[1], dtype=float))
    if hessp is None:
        use = method is not None and method.lower() in HESSP_METHODS and obj.has_hessp
        hessp = obj.hessp if use else None
    elif hessp is True:
        hessp = obj.hessp
    elif hessp is False:
        hessp = None
    if hessp is not None:
        kwargs["hessp"] = hessp
    return sp_minimize(obj.value_and_grad, x0, jac=True, method=method, bounds=bounds, **kwargs)


def _is_bound_pair(bounds: Any, tape: Tape) -> bool:
    # SciPy's own form is n_inputs (lo, hi) pairs; ours is one pair (lo, hi) of scalars or
    # arrays.  Two scalars can only be ours; two length-2 sequences on a 2-input tape read
    # either way, and then SciPy's meaning wins.
    if len(bounds) != 2:
        return False
    if all(np.ndim(b) == 0 for b in bounds):
        return True
    return tape.n_inputs != 2


def _outputs(tape: Tape, outputs: Sequence[int] | None) -> list[int]:
    if outputs is None:
        return list(range(tape.n_outputs))
    return [tape.output_index(int(k)) for k in outputs]
