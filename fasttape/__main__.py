"""Command line: ``fasttape demo`` and ``fasttape bench`` (or ``python -m fasttape ...``)."""

from __future__ import annotations

import argparse
import sys
import time


def demo() -> int:
    """Trace, compile and differentiate a small function and a 1M-node graph; print results."""
    import numpy as np

    import fasttape as ft

    g = ft.Graph()
    x = g.inputs(3)
    g.output(ft.sin(x[0]) * x[1] + ft.exp(x[2]) / 2)
    tape = ft.compile(g)
    print(tape)
    v, dx = tape.value_and_grad([1.0, 2.0, 3.0])
    print(f"value = {v!r}")
    print(f"grad  = {dx!r}")

    n = 1_000_000
    t0 = time.perf_counter()
    g2 = ft.trace(lambda x: ft.sum(ft.tanh(x[i]) * x[i + 1] for i in range(len(x) - 1)), n)
    t1 = time.perf_counter()
    tape2 = ft.compile(g2)
    t2 = time.perf_counter()
    x0 = np.linspace(-1.0, 1.0, n)
    tape2.value_and_grad(x0)  # first call: loads the kernels from Numba's cache
    t3 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        v2, _ = tape2.value_and_grad(x0)
    t4 = time.perf_counter()
    per = (t4 - t3) / reps
    print(
        f"\n{n:,} inputs, {tape2.n_instructions:,} instructions: traced in {t1 - t0:.2f} s, "
        f"compiled in {t2 - t1:.3f} s, first call {t3 - t2:.2f} s,\n"
        f"value+gradient {per * 1e3:.1f} ms "
        f"({per / tape2.n_instructions * 1e9:.1f} ns/instruction); "
        f"value = {v2:.6f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # bench parses its own options (fasttape/bench/cli.py); imported only when used.
        from fasttape.bench.cli import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="fasttape", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="trace, compile and differentiate example graphs")
    sub.add_parser("bench", help="benchmark graph families against installed peers "
                   "(fasttape bench --help)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    return 2  # pragma: no cover (argparse rejects unknown commands)


if __name__ == "__main__":
    raise SystemExit(main())
