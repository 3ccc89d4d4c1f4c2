"""Cost of the derivatives beyond the gradient, as ratios measured in one run.

Run from the repository root::

    python benchmarks/bench_derivatives.py            # default sizes (about a minute)
    python benchmarks/bench_derivatives.py --nodes 200000 --repeat 7

It prints, for ``random_local(nodes, window=100, n_inputs=100)``:

- jvp and vjp relative to ``value`` (target: jvp <= 3x), hvp relative to ``value_and_grad``
  (target: <= 5x);
- the Jacobian of a 100-output tape (m = n = 100) in vector mode against one sweep per
  direction (``chunk=1``), forward and reverse (target: vector >= 3x faster);
- the Hessian for n = 100 and n = 1000 inputs, and for a dense Hessian (every input interacts),
  in vector mode against ``chunk=1`` (target: >= 3x faster at n = 100);
- batches of 4,000 points of ``random_local(300, n_inputs=5)`` and ``random_local(3000,
  n_inputs=20)``: jvp, vjp and hvp on the batch (one kernel looping over the points) against
  a Python loop of single-point calls, and the batch on one thread against all of Numba's.

Each figure is the median over ``--repeat`` rounds of the best of a few calls; within a
round the compared calls run back to back, so the ratios are taken under the same load.  No
thresholds are asserted: this file prints figures (pytest collects it but it defines no
benchmark functions).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import fasttape as ft  # noqa: E402
from fasttape.bench.families import random_local  # noqa: E402
from fasttape.bench.timing import median_times  # noqa: E402


def _rounds(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds per call over ``repeat`` interleaved rounds, each sample >= 50 ms."""
    return median_times(fns, repeat, min_sample=0.05)


def _each(fn: Callable[..., object], xs: np.ndarray, vs: np.ndarray) -> list[object]:
    """``fn`` called point by point from Python: what a batch call replaces."""
    return [fn(x, v) for x, v in zip(xs, vs, strict=True)]


def _multi_output(tape: ft.Tape, m: int) -> ft.Tape:
    """The same instructions with the last ``m`` slots as outputs."""
    a = tape.to_arrays()
    outputs = np.arange(tape.n_slots - m, tape.n_slots)
    return ft.Tape.from_arrays(a["ops"], a["args"], a["consts"], outputs, a["n_inputs"])


def _dense(n: int) -> ft.Tape:
    """A function with a dense Hessian: log-sum-exp of a mixed vector plus a quartic."""

    def f(v):
        s = ft.sum([(0.3 + 0.01 * i) * v[i] for i in range(n)])
        lse = ft.log(ft.sum([ft.exp(v[i] * ft.sin(s)) for i in range(n)]))
        return lse + ft.sum([v[i] * v[i] for i in range(n)]) ** 2

    return ft.compile(ft.trace(f, n))


def _line(label: str, t: dict[str, float], num: str, den: str, target: str = "") -> None:
    r = t[num] / t[den]
    print(f"  {label:<44} {t[num] * 1e3:9.3f} ms / {t[den] * 1e3:9.3f} ms = {r:6.2f}x {target}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=100_000, help="random_local size")
    p.add_argument("--hess-nodes", type=int, default=20_000, help="size for Jacobian/Hessian")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)

    tape = random_local(args.nodes, window=100, n_inputs=100)
    x = np.linspace(0.1, 0.9, 100)
    v = rng.normal(size=100)
    print(f"random_local({args.nodes}, window=100, n_inputs=100); median of {args.repeat} "
          "rounds")
    t = _rounds({
        "value": lambda: tape.value(x),
        "value_and_grad": lambda: tape.value_and_grad(x),
        "jvp": lambda: tape.jvp(x, v),
        "vjp": lambda: tape.vjp(x, [1.0]),
        "hvp": lambda: tape.hvp(x, v),
    }, args.repeat)
    _line("jvp / value", t, "jvp", "value", "(target <= 3x)")
    _line("vjp / value", t, "vjp", "value")
    _line("vjp / value_and_grad", t, "vjp", "value_and_grad")
    _line("hvp / value_and_grad", t, "hvp", "value_and_grad", "(target <= 5x)")

    small = random_local(args.hess_nodes, window=100, n_inputs=100, seed=1)
    jt = _multi_output(small, 100)
    print(f"Jacobian, m = n = 100, random_local({args.hess_nodes}) with the last 100 slots as "
          "outputs")
    t = _rounds({
        "fwd_vec": lambda: jt.jacobian(x, mode="forward"),
        "fwd_1": lambda: jt.jacobian(x, mode="forward", chunk=1),
        "rev_vec": lambda: jt.jacobian(x, mode="reverse"),
        "rev_1": lambda: jt.jacobian(x, mode="reverse", chunk=1),
        "value": lambda: jt.value(x),
    }, args.repeat)
    _line("forward: one sweep per direction / vector", t, "fwd_1", "fwd_vec", "(target >= 3x)")
    _line("reverse: one sweep per direction / vector", t, "rev_1", "rev_vec", "(target >= 3x)")
    _line("forward vector Jacobian / value", t, "fwd_vec", "value")
    _line("reverse vector Jacobian / value", t, "rev_vec", "value")

    for n in (100, 1000):
        ht = random_local(args.hess_nodes, window=100, n_inputs=n, seed=2)
        xh = np.linspace(0.1, 0.9, n)
        print(f"Hessian, n = {n}, random_local({args.hess_nodes}, n_inputs={n})")
        fns = {
            "vec": lambda ht=ht, xh=xh: ht.hessian(xh),
            "one": lambda ht=ht, xh=xh: ht.hessian(xh, chunk=1),
            "vg": lambda ht=ht, xh=xh: ht.value_and_grad(xh),
        }
        t = _rounds(fns, args.repeat if n == 100 else max(1, args.repeat // 2))
        _line("one sweep pair per direction / vector", t, "one", "vec", "(target >= 3x)")
        _line("vector Hessian / value_and_grad", t, "vec", "vg")

    n = 100
    dt = _dense(n)
    xd = np.linspace(-0.5, 0.5, n)
    print(f"dense Hessian, n = {n} (log-sum-exp + quartic, {dt.n_instructions} instructions)")
    t = _rounds({
        "vec": lambda: dt.hessian(xd),
        "one": lambda: dt.hessian(xd, chunk=1),
        "vg": lambda: dt.value_and_grad(xd),
    }, args.repeat)
    _line("one sweep pair per direction / vector", t, "one", "vec", "(target >= 3x)")
    _line("vector Hessian / value_and_grad", t, "vec", "vg")

    for nodes, n_in in ((300, 5), (3000, 20)):
        bt = random_local(nodes, window=100, n_inputs=n_in, seed=3)
        rng = np.random.default_rng(3)
        xb = rng.uniform(0.1, 0.9, (4000, n_in))
        vb = rng.standard_normal((4000, n_in))
        wb = rng.standard_normal((4000, bt.n_outputs))
        print(f"batches of 4,000 points, random_local({nodes}, n_inputs={n_in})")
        t = _rounds({
            "jvp": lambda bt=bt, xb=xb, vb=vb: bt.jvp(xb, vb),
            "jvp_1": lambda bt=bt, xb=xb, vb=vb: _each(bt.jvp, xb, vb),
            "vjp": lambda bt=bt, xb=xb, wb=wb: bt.vjp(xb, wb),
            "vjp_1": lambda bt=bt, xb=xb, wb=wb: _each(bt.vjp, xb, wb),
            "hvp": lambda bt=bt, xb=xb, vb=vb: bt.hvp(xb, vb),
            "hvp_1": lambda bt=bt, xb=xb, vb=vb: _each(bt.hvp, xb, vb),
            "jvp_t1": lambda bt=bt, xb=xb, vb=vb: bt.jvp(xb, vb, threads=1),
            "vjp_t1": lambda bt=bt, xb=xb, wb=wb: bt.vjp(xb, wb, threads=1),
            "hvp_t1": lambda bt=bt, xb=xb, vb=vb: bt.hvp(xb, vb, threads=1),
        }, args.repeat)
        for op in ("jvp", "vjp", "hvp"):
            _line(f"{op}: loop of single points / batch", t, f"{op}_1", op)
        for op in ("jvp", "vjp", "hvp"):
            _line(f"{op}: batch on 1 thread / on {numba.get_num_threads()}", t, f"{op}_t1", op)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
