"""Compile time and run time of the native tier (docs/native.md).

Usage::

    python benchmarks/bench_native.py [--sizes 1e3,1e4,1e5] [--families random_local,rosenbrock]
                                      [--opt O] [--repeat R] [--no-loops] [--ddx]

Families: ``random_local``, ``random_uniform``, ``rosenbrock``, ``lennard_jones``, ``chain``
(:mod:`fasttape.bench.families`).  Prints one Markdown table row per family and size:
instructions, pieces (how many of them are loops, :mod:`fasttape.native.loops`, and the
LLVM levels they were compiled at: ``--opt``, else :func:`fasttape.native.piece_levels`),
compile seconds and microseconds per instruction, loading the same object code from the disk
cache, and ``value_and_grad`` of the native tape and of the interpreter (median of ``R`` alternating
rounds), with their ratio, the calls after which compiling has paid for itself (compile time
over the time saved per call), and whether both gave bitwise the same value and gradient.  The
cache lives in a temporary folder, so nothing is reused between runs.  Nothing here asserts a
time; ``python -m pytest benchmarks`` runs :func:`bench_native_smoke`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, _ROOT)

from fasttape.bench import families  # noqa: E402
from fasttape.bench.cases import Case, replay_fn  # noqa: E402
from fasttape.bench.peers.base import Unsupported  # noqa: E402
from fasttape.bench.peers.ddx_peer import DdxPeer  # noqa: E402
from fasttape.native import native  # noqa: E402


def tape_and_point(family: str, n: int) -> tuple[Any, np.ndarray]:
    """The family's tape of about ``n`` instructions and a point to evaluate it at."""
    if family == "rosenbrock":
        n_vars = families.structured_size("rosenbrock", n)
        return families.rosenbrock(n_vars), families.rosenbrock_point(n_vars)
    if family == "lennard_jones":
        n_atoms = families.structured_size("lennard-jones", n)
        return families.lennard_jones(n_atoms), families.lennard_jones_point(n_atoms)
    tape = getattr(families, family)(n)
    return tape, np.random.default_rng(0).uniform(0.1, 0.9, tape.n_inputs)


def _median_time(fn: Any, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def ddx_cells(family: str, n: int, tape: Any, x: np.ndarray, repeat: int,
              folder: str) -> str:
    """`` ddx compile s | ddx vg us |``: ddx-ad's LLVM backend on the same graph (replayed op
    for op from the tape), compiled at its default options into a fresh cache folder; its
    gradient checked against the tape's first."""
    peer = DdxPeer(compile_options={"cache_dir": folder})
    if peer.available() is not None:
        return " not installed | - |"
    try:
        built = peer.build(Case(family, n, tape, x, replay_fn(tape), "arrays", 0.0, 0.0))
    except Unsupported as exc:
        return f" {exc} | - |"
    v, g = built.value_and_grad(x)
    v0, g0 = tape.value_and_grad(x)
    if not (np.isclose(v, v0, rtol=1e-9) and np.allclose(g, g0, rtol=1e-9, atol=1e-12)):
        return f" {built.compile_s:.2f} | disagrees |"
    t = _median_time(lambda: built.value_and_grad(x), repeat)
    return f" {built.compile_s:.2f} | {t * 1e6:.1f} |"


def row(family: str, n: int, opt: int | None, repeat: int, ddx: str | None = None,
        loops: bool = True) -> str:
    """One table row (see the module docstring); with ``ddx`` (a folder), ddx-ad's columns."""
    tape, x = tape_and_point(family, n)
    nt = native(tape, opt=opt, loops=loops)
    t = time.perf_counter()
    again = native(tape, opt=opt, loops=loops)  # from the cache written just now
    load = time.perf_counter() - t
    v0, g0 = tape.value_and_grad(x)
    v1, g1 = nt.value_and_grad(x)
    same = np.array_equal(np.array([v0]).view(np.int64), np.array([v1]).view(np.int64)) \
        and np.array_equal(g0.view(np.int64), g1.view(np.int64))
    ti = _median_time(lambda: tape.value_and_grad(x), repeat)
    tn = _median_time(lambda: again.value_and_grad(x), repeat)
    m = len(tape.ops)
    # Calls of value_and_grad after which compiling has paid for itself (tiering's rule).
    even = f"{nt.compile_seconds / (ti - tn):.0f}" if tn < ti else "never"
    extra = "" if ddx is None else ddx_cells(family, n, tape, x, repeat, ddx)
    levels = "/".join(str(v) for v in sorted(set(nt.levels)))
    return (f"| {family} | {m} | {nt.n_pieces} ({nt.n_loops}; {levels}) | "
            f"{nt.compile_seconds:.2f} | "
            f"{1e6 * nt.compile_seconds / m:.0f} | {load:.3f} | {tn * 1e6:.1f} | "
            f"{ti * 1e6:.1f} | {tn / ti:.2f} | {even} | {'yes' if same else 'NO'} |{extra}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e3,1e4,1e5", help="instruction counts, comma-separated")
    ap.add_argument("--families", default="random_local,rosenbrock")
    ap.add_argument("--opt", type=int, default=None,
                    help="LLVM level 0-3 (default: per piece, by size and libm calls)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-loops", action="store_true",
                    help="straight-line code only (no loop pieces), for an A/B")
    ap.add_argument("--ddx", action="store_true",
                    help="add ddx-ad's LLVM compile time and compiled value+gradient")
    args = ap.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    head = ("| family | instructions | pieces (loops; levels) | compile s | compile us/instr | "
            "cached load s | native vg us | interpreter vg us | ratio | break-even calls | "
            "bitwise |")
    print(head + (" ddx compile s | ddx vg us |" if args.ddx else ""))
    print("| --- " * (11 + 2 * args.ddx) + "|")
    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as ddx:
        os.environ["FASTTAPE_CACHE_DIR"] = folder
        for family in args.families.split(","):
            for n in sizes:
                print(row(family, n, args.opt, args.repeat, ddx if args.ddx else None,
                          not args.no_loops), flush=True)


def bench_native_smoke() -> None:
    """A tiny run of everything (``python -m pytest benchmarks``)."""
    main(["--sizes", "200", "--families", "random_local", "--repeat", "2", "--ddx"])


if __name__ == "__main__":
    main()
