"""What one optimisation pass is worth: the default pipeline with and without it, in one process.

    python benchmarks/bench_ab_passes.py --without interleave \
        --families mlp,lennard-jones,rosenbrock
    python benchmarks/bench_ab_passes.py --without simplify --families mlp,rosenbrock

Each family is traced once and compiled twice: with ``fasttape.passes.DEFAULT_PASSES`` and
with the same list minus ``--without``.  The two tapes are then timed in turn (A, B, A, B, ...)
so that a shared machine's drift reaches both, and the best of ``--rounds`` is reported, in
ns per instruction of the full pipeline's tape.  Values must agree bitwise (every pass keeps
them); gradients agree up to rounding for the reordering passes.
"""

from __future__ import annotations

import argparse
from functools import partial

import fasttape as ft
from fasttape.bench.cases import build_case
from fasttape.bench.timing import best_times
from fasttape.passes import DEFAULT_PASSES

STRUCTURED = ("chain", "rosenbrock", "lennard-jones", "mlp", "autograd-west")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--without", required=True, choices=[n for n in DEFAULT_PASSES if n != "dce"])
    p.add_argument("--families", default="mlp,lennard-jones,rosenbrock")
    p.add_argument("--nodes", type=float, default=1e6)
    p.add_argument("--rounds", type=int, default=10)
    ns = p.parse_args(argv)
    fams = ns.families.split(",")
    bad = [f for f in fams if f not in STRUCTURED]
    if bad:
        p.error(f"traced families only ({', '.join(STRUCTURED)}); got {bad}")
    reduced = [n for n in DEFAULT_PASSES if n != ns.without]
    print(f"# default pipeline vs without {ns.without!r}; best of {ns.rounds} rounds, "
          "ns per instruction of the default tape")
    print("| family | instructions | value without | value with | v+g without | v+g with "
          "| v+g ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for fam in fams:
        case = build_case(fam, int(ns.nodes))
        graph = ft.trace(lambda v, case=case: case.fn(v, ft), case.tape.n_inputs)
        tapes = {"with": ft.compile(graph), "without": ft.compile(graph, optimize=reduced)}
        del graph
        x = case.x
        assert tapes["with"].value(x) == tapes["without"].value(x), "values must be bitwise"
        fns = {(name, kind): partial(fn, x) for name, tape in tapes.items()
               for kind, fn in (("value", tape.value), ("vg", tape.value_and_grad))}
        t = best_times(fns, ns.rounds, inner=3)
        n = tapes["with"].n_instructions
        ns_ = {k: v / n * 1e9 for k, v in t.items()}
        print(f"| {fam} | {n:,} | {ns_['without', 'value']:.2f} | {ns_['with', 'value']:.2f} "
              f"| {ns_['without', 'vg']:.2f} | {ns_['with', 'vg']:.2f} "
              f"| {t['without', 'vg'] / t['with', 'vg']:.2f}x |")


def bench_ab_passes_smoke(capsys) -> None:
    """The script runs and prints one row per family (tiny sizes: a smoke test, no timing)."""
    main(["--without", "interleave", "--families", "mlp,rosenbrock", "--nodes", "2000",
          "--rounds", "1"])
    out = capsys.readouterr().out
    assert "| mlp |" in out and "| rosenbrock |" in out


if __name__ == "__main__":
    main()
