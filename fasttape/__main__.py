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


#: ``fasttape --help`` (plain text: argparse prints it as is).
DESCRIPTION = """\
fasttape: compile a scalar computational graph once, then evaluate its value and gradient
with Numba tape kernels. Also runnable as python -m fasttape."""

#: ``fasttape demo --help``.
DEMO_DESCRIPTION = """\
Trace, compile and differentiate two example graphs and print what happens: a three-input
function (its tape listing, value and gradient), then a 1,000,000-node chain (trace, compile,
first-call and value+gradient times). The first run compiles the kernels with Numba (about
10 s on 2 cores); later runs load them from the cache. Takes no options."""

EPILOG = """\
commands:
  demo    a small and a 1M-node example, with timings (fasttape demo --help)
  bench   benchmark graph families against a hand-written kernel and installed peers
          (fasttape bench --help; the main job: fasttape bench --quick)"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``fasttape`` (``bench`` parses its own options)."""
    parser = argparse.ArgumentParser(prog="fasttape", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench}")
    sub.add_parser("demo", help="trace, compile and differentiate example graphs",
                   description=DEMO_DESCRIPTION,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_parser("bench", help="benchmark graph families against installed peers",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fasttape`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # bench parses its own options (fasttape/bench/cli.py); imported only when used.
        from fasttape.bench.cli import main as bench_main

        return bench_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help or a bad argument: the status, without exiting
        return int(exc.code or 0)
    if args.command == "demo":
        return demo()
    return 2  # pragma: no cover (argparse rejects unknown commands)


if __name__ == "__main__":
    raise SystemExit(main())
