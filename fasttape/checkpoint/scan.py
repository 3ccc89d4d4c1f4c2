"""``ft.scan``: T applications of one traced step, differentiated with binomial checkpointing.

The step ``state_{t+1} = step(state_t, params)`` is traced and compiled once into a *step
tape* with ``n_state + n_params`` inputs and ``n_state`` outputs (plus the running cost as an
extra output).  A Numba driver (``scan_value_and_grad`` in
``fasttape/kernels/checkpoint.py``) runs the revolve schedule
(:mod:`fasttape.checkpoint.revolve`) over it with preallocated snapshot arrays: no Python code
runs per step.  Reversing a step is one ``forward_partials`` and one ``reverse_stored`` sweep
of the step tape with all state cotangents seeded at once (a vector-Jacobian product).

Bitwise equality with the unrolled tape.  The unrolled tape (the step traced ``T`` times into
one graph, the running cost summed ``acc = c_0; acc = acc + c_t`` after each step, then
``acc + final(state_T, params)``) accumulates every slot's adjoint as one running sum in
reverse instruction order.  The driver reproduces that order exactly: each step's
instructions are the unrolled tape's instructions of that step, in the same order; the
parameter adjoints are one running sum across steps (never restarted per step); a state's
cotangent is seeded before the step's own reverse sweep adds to it, as the next step's
reads are reversed first in the unrolled tape.  Exceptions (reported by
:attr:`Scan.bitwise_exact`): a step that returns the same value for two state entries, or a
parameter as a new state, merges two adjoint sums in the unrolled tape that the per-step
sweep keeps apart, so the gradients agree only to rounding.

Data (``n_data > 0``): inputs of every step that change between calls but are not
differentiated (a tape's parameters, docs/tape-format.md): ``step(state, params, data)``.  The
step tape takes them after the parameters; the driver accumulates their adjoints with the
parameters' (the shared sweep) and :meth:`Scan.value_and_grad` returns no gradient for them.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fasttape.checkpoint.report import CheckpointReport
from fasttape.compile import compile_graph
from fasttape.graph import Graph
from fasttape.kernels import checkpoint as _k
from fasttape.signature import same_arguments
from fasttape.tape import TapeRecord
from fasttape.trace import gc_paused

__all__ = ["Scan", "scan", "compile_plain", "DEFAULT_SNAPSHOTS"]

#: Snapshots used when neither ``snapshots=`` nor ``memory_limit=`` is given.
DEFAULT_SNAPSHOTS = 100

# Bytes per snapshot: the state, plus one (pos, n, c) row of the driver's continuation stack.
_STACK_ROW = 24


def compile_plain(graph: Graph, optimize: Any = False) -> TapeRecord:
    """``ft.compile(graph)`` with only dead-code elimination unless ``optimize`` says otherwise.

    Returns a :class:`~fasttape.tape.TapeRecord` (one-point value and gradient, which is all a
    scan evaluates): :mod:`fasttape.checkpoint` sits below the user-facing ``fasttape.Tape``.

    The passes that merge or rewrite instructions (common subexpressions, simplification)
    change the order in which adjoints are summed, so a step compiled with them would not
    reproduce the unoptimised unrolled tape bit for bit (and CSE in the unrolled tape merges
    nodes *across* steps, which no per-step tape can mirror).
    """
    return compile_graph(graph, optimize=optimize)


def _as_int(name: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if int(v) < low:
        raise ValueError(f"{name} must be >= {low}, got {int(v)}")
    return int(v)


def _vector(name: str, x: Any, n: int) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a 1-D array of {n} real numbers") from exc
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got shape {arr.shape}")
    return np.ascontiguousarray(arr)


class Scan:
    """A scan of ``n_steps`` steps, compiled once; see :func:`scan`.

    Attributes
    ----------
    step_tape : TapeRecord
        Inputs ``state + params``; outputs the new state (and the step's cost last).
    final_tape : TapeRecord or None
        Inputs ``state + params``; one output.
    n_steps, n_state, n_params, n_data, snapshots : int
    report : CheckpointReport or None
        Cost of the last :meth:`value_and_grad`.
    bitwise_exact : bool
        Whether the gradient is bitwise the unrolled tape's (see the module docstring).
    """

    def __init__(
        self,
        step: Callable[..., Any],
        n_steps: int,
        *,
        n_state: int,
        n_params: int = 0,
        final: Callable[..., Any] | None = None,
        running_cost: bool = False,
        snapshots: int | None = None,
        memory_limit: int | None = None,
        optimize: Any = False,
        n_data: int = 0,
    ) -> None:
        if not callable(step):
            raise TypeError(f"step must be callable, got {type(step).__name__}")
        if final is not None and not callable(final):
            raise TypeError(f"final must be callable or None, got {type(final).__name__}")
        self.n_steps = _as_int("n_steps", n_steps, 1)
        self.n_state = _as_int("n_state", n_state, 1)
        self.n_params = _as_int("n_params", n_params, 0)
        self.n_data = _as_int("n_data", n_data, 0)
        # The step tape's inputs after the state: the parameters, then the data.
        self._n_pd = self.n_params + self.n_data
        self.running_cost = bool(running_cost)
        if final is None and not self.running_cost:
            raise ValueError(
                "nothing to differentiate: pass final=f(state, params) (a scalar of the final "
                "state) and/or running_cost=True (step returns (new_state, cost))"
            )
        if snapshots is not None and memory_limit is not None:
            raise ValueError("pass snapshots= or memory_limit=, not both")
        self.optimize = optimize
        self.step_tape = self._trace_step(step)
        self.final_tape = None if final is None else self._trace_final(final)
        self.bitwise_exact = self._check_exact()
        self.memory_limit = None if memory_limit is None else _as_int("memory_limit",
                                                                      memory_limit, 1)
        if self.memory_limit is not None:
            per = 8 * self.n_state + _STACK_ROW
            room = self.memory_limit - self.overhead_nbytes
            if room < per:
                raise ValueError(
                    f"memory_limit={self.memory_limit} B is too small: the step tape's work "
                    f"buffers need {self.overhead_nbytes} B and one snapshot {per} B, so at "
                    f"least {self.overhead_nbytes + per} B"
                )
            snapshots = room // per
        elif snapshots is None:
            snapshots = DEFAULT_SNAPSHOTS
        else:
            snapshots = _as_int("snapshots", snapshots, 1)
        # More snapshots than steps are never used.
        self.snapshots = int(min(snapshots, self.n_steps))
        self.report: CheckpointReport | None = None

    # ------------------------------------------------------------------ tracing
    def _call(self, fn: Callable[..., Any], x: list[Any]) -> Any:
        ns, npar = self.n_state, self.n_params
        if self.n_data:
            return fn(x[:ns], x[ns : ns + npar], x[ns + npar :])
        return fn(x[:ns], x[ns:])

    def _trace(self, fn: Callable[..., Any]) -> tuple[Graph, Any]:
        """A new graph of the state, parameters and data as inputs, and ``fn``'s result on
        them (traced)."""
        g = Graph()
        with gc_paused(True):
            out = self._call(fn, g.inputs(self.n_state + self._n_pd))
        return g, out

    def _trace_step(self, step: Callable[..., Any]) -> TapeRecord:
        ns = self.n_state
        g, out = self._trace(step)
        if self.running_cost:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError(
                    "with running_cost=True, step must return (new_state, cost); got "
                    f"{type(out).__name__}"
                )
            new_state, cost = out
        else:
            new_state, cost = out, None
        if isinstance(new_state, np.ndarray):
            new_state = list(new_state.ravel())
        if not isinstance(new_state, Sequence) or len(new_state) != ns:
            got = len(new_state) if isinstance(new_state, Sequence) else type(new_state).__name__
            raise ValueError(f"step must return a sequence of n_state={ns} values, got {got}")
        g.output(list(new_state) + ([] if cost is None else [cost]))
        return compile_plain(g, self.optimize)

    def _trace_final(self, final: Callable[..., Any]) -> TapeRecord:
        g, out = self._trace(final)
        if isinstance(out, np.ndarray) and out.size == 1:
            out = out.reshape(()).item()
        if isinstance(out, (Sequence, np.ndarray)):
            raise ValueError("final must return one scalar")
        g.output(out)
        return compile_plain(g, self.optimize)

    def _check_exact(self) -> bool:
        outs = self.step_tape.outputs[: self.n_state]
        n_in = self.n_state + self._n_pd
        repeated = len(np.unique(outs)) != len(outs)
        param_out = bool(np.any((outs >= self.n_state) & (outs < n_in)))
        return not (repeated or param_out)

    # ------------------------------------------------------------------ sizes
    @property
    def overhead_nbytes(self) -> int:
        """Work bytes that do not depend on the number of snapshots (the constant overhead).

        The step tape's gradient buffers (values, partials, adjoints) and input vector, the
        same for the final tape, and the state cotangent, parameter gradient and counters.
        """
        st = self.step_tape
        n_in = self.n_state + self._n_pd
        n = st.work_nbytes(grad=True) + 8 * n_in
        if self.final_tape is not None:
            n += self.final_tape.work_nbytes(grad=True) + 8 * n_in
        n += 8 * (self.n_state + self._n_pd) + 8 + 32 + 8
        return n

    def snapshot_nbytes(self, snapshots: int | None = None) -> int:
        """Bytes of ``snapshots`` state snapshots and the schedule's stack."""
        s = self.snapshots if snapshots is None else snapshots
        return s * (8 * self.n_state + _STACK_ROW)

    def stats(self) -> dict[str, Any]:
        """Sizes, the budget and (after a gradient) the last report, as a dict."""
        d: dict[str, Any] = {
            "n_steps": self.n_steps,
            "n_state": self.n_state,
            "n_params": self.n_params,
            "n_data": self.n_data,
            "snapshots": self.snapshots,
            "step_nodes": self.step_tape.n_instructions,
            "overhead_nbytes": self.overhead_nbytes,
            "snapshot_nbytes": self.snapshot_nbytes(),
            "memory_limit": self.memory_limit,
            "bitwise_exact": self.bitwise_exact,
        }
        if self.report is not None:
            d["last"] = self.report.as_dict()
        return d

    def __repr__(self) -> str:
        return (
            f"<fasttape.Scan: {self.n_steps:,} steps of "
            f"{self.step_tape.n_instructions:,} instructions, "
            f"{self.n_state} state, {self.n_params} params, "
            + (f"{self.n_data} data, " if self.n_data else "")
            + f"{self.snapshots} snapshots>"
        )

    # ------------------------------------------------------------------ evaluation
    def _arrays(self) -> tuple[Any, ...]:
        st = self.step_tape
        ft_ = self.final_tape
        if ft_ is None:  # typed placeholders so one compiled driver serves both cases
            fops = np.zeros(0, np.uint8)
            fargs = np.zeros(0, st.args.dtype)
            fconsts = np.zeros(0)
            fouts = np.zeros(1, st.outputs.dtype)
        else:
            fops, fargs, fconsts, fouts = ft_.ops, ft_.args, ft_.consts, ft_.outputs
        return (st.ops, st.args, st.consts, st.outputs, fops, fargs, fconsts, fouts,
                ft_ is not None, self.running_cost, self.n_state)

    def _inputs(self, x0: Any, params: Any, data: Any) -> tuple[np.ndarray, np.ndarray]:
        """``x0`` and the step tape's inputs after the state (``params`` then ``data``)."""
        pa = _vector("params", params, self.n_params)
        if self.n_data:
            if data is None:
                raise TypeError(f"this scan has n_data={self.n_data}: pass data=")
            pa = np.concatenate([pa, _vector("data", data, self.n_data)])
        elif data is not None:
            raise TypeError("this scan has no data (n_data=0) but data= was given")
        return _vector("x0", x0, self.n_state), pa

    def value(self, x0: Any, params: Any = (), data: Any = None) -> float:
        """The objective ``sum_t cost_t + final(state_T, params)`` by plain forward steps."""
        return self._run(x0, params, data)[0]

    def final_state(self, x0: Any, params: Any = (), data: Any = None) -> np.ndarray:
        """``state_T`` after ``n_steps`` steps."""
        return self._run(x0, params, data)[1]

    def _run(self, x0: Any, params: Any, data: Any) -> tuple[float, np.ndarray]:
        x0a, pa = self._inputs(x0, params, data)
        arrs = self._arrays()
        xin = np.concatenate([x0a, pa])
        svals = np.empty(self.step_tape.n_slots)
        fvals = np.empty(self.final_tape.n_slots if self.final_tape is not None else 0)
        fxin = np.empty_like(xin)
        acc = np.zeros(1)
        cnt = np.zeros(4, np.int64)
        v = _k.scan_value(*arrs, self.n_steps, xin, svals, fxin, fvals, acc, cnt)
        return float(v), xin[: self.n_state].copy()

    def value_and_grad(
        self, x0: Any, params: Any = (), data: Any = None
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Objective and its gradient with respect to the initial state and the parameters.

        Parameters
        ----------
        x0 : array_like, shape (n_state,)
        params : array_like, shape (n_params,)
        data : array_like, shape (n_data,)
            Required when the scan has data; no gradient is returned for it.

        Returns
        -------
        value : float
        grad_x0 : ndarray, shape (n_state,)
        grad_params : ndarray, shape (n_params,)

        Every work array is allocated here (so ``tracemalloc`` sees the true peak, reported
        in :attr:`report`), and the whole schedule runs in one Numba call.
        """
        x0a, pa = self._inputs(x0, params, data)
        st, ft_ = self.step_tape, self.final_tape
        s = self.snapshots
        n_in = self.n_state + self._n_pd
        xin = np.empty(n_in)
        xin[self.n_state:] = pa
        svals = np.empty(st.n_slots)
        sparts = np.empty(st.n_edges)
        sadj = np.zeros(st.n_slots)
        if ft_ is not None:
            fvals, fparts = np.empty(ft_.n_slots), np.empty(ft_.n_edges)
            fadj = np.zeros(ft_.n_slots)
        else:
            fvals, fparts, fadj = np.empty(0), np.empty(0), np.zeros(0)
        fxin = np.empty(n_in)
        ct = np.zeros(self.n_state)
        snaps = np.empty((s, self.n_state))
        stack = np.empty((s, 3), np.int64)
        acc = np.zeros(1)
        cnt = np.zeros(4, np.int64)
        res = np.zeros(1)
        g_params = np.empty(self._n_pd)
        v = _k.scan_value_and_grad(
            *self._arrays(), x0a, self.n_steps, s, xin, svals, sparts, sadj, fxin, fvals,
            fparts, fadj, ct, snaps, stack, acc, cnt, res, g_params,
        )
        used = int(cnt[3])
        peak = self.overhead_nbytes + self.snapshot_nbytes(s)
        self.report = CheckpointReport(
            kind="revolve",
            budget_nbytes=self.memory_limit,
            peak_nbytes=peak,
            overhead_nbytes=self.overhead_nbytes,
            within_budget=self.memory_limit is None or peak <= self.memory_limit,
            snapshots=used,
            forward_evaluations=int(cnt[0]),
            taped_evaluations=int(cnt[1]),
        )
        if self.n_data:
            g_params = g_params[: self.n_params].copy()
        return float(v), ct, g_params

    def grad(
        self, x0: Any, params: Any = (), data: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(grad_x0, grad_params)``; see :meth:`value_and_grad`."""
        return self.value_and_grad(x0, params, data)[1:]


@same_arguments(Scan)
def scan(*args: Any, **kwargs: Any) -> Scan:
    """Apply ``step`` ``n_steps`` times; differentiate with binomial checkpointing.

    Parameters
    ----------
    step : callable
        ``step(state, params) -> new_state`` on lists of traced scalars (``new_state`` a
        sequence of ``n_state`` values), or ``-> (new_state, cost)`` with
        ``running_cost=True``.  Traced and compiled once.
    n_steps : int
        ``T >= 1``.
    n_state, n_params : int
        Lengths of the state and of the parameter vector.
    n_data : int
        Length of a data vector that every step reads but that is not differentiated (a tape's
        parameters): with ``n_data > 0`` the functions are ``step(state, params, data)`` and
        ``final(state, params, data)``, and each call takes ``data=``.
    final : callable, optional
        ``final(state, params) -> scalar``, applied to the final state.
    running_cost : bool
        Add the step costs ``c_0 + ... + c_{T-1}`` to the objective.
    snapshots : int, optional
        State snapshots to hold, the initial state included (default
        :data:`DEFAULT_SNAPSHOTS`, capped at ``n_steps``).  The reverse sweep then costs
        ``r*T - C(s+r, s+1)`` plain forward steps, ``r`` the smallest integer with
        ``C(s+r, s) >= T``.
    memory_limit : int, optional
        Bytes for the whole gradient call instead of ``snapshots``: the step tape's work
        buffers (:attr:`Scan.overhead_nbytes`, the constant overhead) plus as many
        snapshots as fit (``8 * n_state + 24`` bytes each).

    Returns
    -------
    Scan
        ``value(x0, params)``, ``value_and_grad(x0, params) -> (J, dJ/dx0, dJ/dparams)``,
        ``final_state``, ``report`` and ``stats()``.

    Examples
    --------
    >>> import fasttape as ft
    >>> sc = ft.scan(lambda s, p: [s[0] * p[0]], 10, n_state=1, n_params=1,
    ...              final=lambda s, p: s[0], snapshots=3)
    >>> sc.value_and_grad([1.0], [2.0])    # 2**10, 10 * 2**9
    (1024.0, array([1024.]), array([5120.]))
    >>> sc.report.forward_evaluations      # revolve_cost(10, 3)
    15
    """
    return Scan(*args, **kwargs)
