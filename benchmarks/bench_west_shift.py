"""What stopping the softmax shift's gradient is worth on the autograd-west graph.

    python benchmarks/bench_west_shift.py                 # 160k ops, one point
    python benchmarks/bench_west_shift.py --ops 10000 --batch 2000

The family's softmax subtracts the maximum under ``ft.stop_gradient`` (as JAX's softmax does;
fasttape/bench/families.py).  This script traces the same graph twice, with that stop and with the
identity in its place (the form CasADi SX, HIPS autograd and ddx run), and times
``value_and_grad`` of both in turn in one process, with and without
``flush_subnormals=True``: the unstopped form's argmax adjoint is a cancelling sum whose
rounding residue stays subnormal through the reverse sweep (docs/derivatives.md,
"stop_gradient").  Reported: best and median ns per instruction of the stopped tape, the
ratio of the medians, and the largest gradient difference between the forms (both are the
same gradient in exact arithmetic).
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np

import fasttape as ft
from fasttape.bench.families import WEST_INPUTS, autograd_west_fn, autograd_west_point


def tapes(n_ops: int) -> dict[str, ft.Tape]:
    """The west graph with the shift's gradient stopped, and with the identity instead."""
    unstopped = SimpleNamespace(softplus=ft.softplus, maximum=ft.maximum, exp=ft.exp,
                                stop_gradient=lambda a: a)
    return {
        "stopped": ft.compile(ft.trace(lambda x: autograd_west_fn(x, ft, n_ops), WEST_INPUTS)),
        "unstopped": ft.compile(ft.trace(lambda x: autograd_west_fn(x, unstopped, n_ops),
                                         WEST_INPUTS)),
    }


def main(argv: list[str] | None = None) -> dict[tuple[str, bool], list[float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", type=int, default=160_000)
    p.add_argument("--batch", type=int, default=0, help="points per call (0: one point)")
    p.add_argument("--rounds", type=int, default=8)
    ns = p.parse_args(argv)
    ts = tapes(ns.ops)
    rng = np.random.default_rng(0)
    if ns.batch:
        x = autograd_west_point() + rng.uniform(-0.5, 0.5, size=(ns.batch, WEST_INPUTS))
    else:
        x = autograd_west_point()
    grads = {name: t.value_and_grad(x)[1] for name, t in ts.items()}  # also warms up
    per = 1e9 / (len(ts["stopped"].ops) * max(1, ns.batch))
    times: dict[tuple[str, bool], list[float]] = {}
    for r in range(ns.rounds):
        order = list(ts.items()) if r % 2 == 0 else list(ts.items())[::-1]
        for name, t in order:
            for flush in (False, True):
                t0 = time.perf_counter()
                t.value_and_grad(x, flush_subnormals=flush)
                times.setdefault((name, flush), []).append((time.perf_counter() - t0) * per)
    where = f"{ns.batch} points" if ns.batch else "one point"
    print(f"# autograd-west, {ns.ops:,} ops, {where}; ns per instruction of the stopped tape "
          f"({len(ts['stopped'].ops):,} instr.; unstopped {len(ts['unstopped'].ops):,})")
    print("| tape | arithmetic | best | median |")
    print("| --- | --- | ---: | ---: |")
    for (name, flush), v in times.items():
        print(f"| {name} | {'flushed' if flush else 'IEEE'} | {min(v):.2f} "
              f"| {np.median(v):.2f} |")
    med = {k: float(np.median(v)) for k, v in times.items()}
    ratio = med["unstopped", False] / med["stopped", False]
    print(f"unstopped / stopped, IEEE medians: {ratio:.2f}x")
    diff = float(np.max(np.abs(grads["stopped"] - grads["unstopped"]), initial=0.0))
    scale = float(np.max(np.abs(grads["unstopped"]), initial=0.0))
    print(f"largest gradient difference {diff:.3g} (largest gradient entry {scale:.3g})")
    return times


def bench_west_shift_smoke(capsys) -> None:
    """Runs on a small graph and prints both tapes' rows (a smoke test: no timing checked)."""
    times = main(["--ops", "400", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "| stopped | IEEE |" in out and "| unstopped | flushed |" in out
    assert len(times) == 4


if __name__ == "__main__":
    main()
