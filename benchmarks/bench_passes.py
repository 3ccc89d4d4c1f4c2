"""Benchmarks of the optimisation passes (docs/passes.md).

Usage::

    python benchmarks/bench_passes.py [--nodes N] [--big M] [--repeat R] [--families a,b]

Prints Markdown tables:

1. **pipeline cost**: ns per input instruction of each pass and of the whole of
   ``ft.optimize`` (default passes, and with ``locality``), on ``random_local`` and
   ``random_uniform`` of ``N`` and ``M`` instructions;
2. **reduction**: instructions, value work memory and gradient work memory before and after
   the default passes on every bench family (about ``N`` instructions each);
3. **speed**: ``value`` and ``value_and_grad`` in ns per instruction of the unoptimised tape,
   for the tape as built, after dead-code elimination only (what ``optimize=False`` gives),
   after the default passes and after default + ``locality``; ratios to the dce-only tape.

Timing rules: one untimed warm-up call, then ``R`` rounds in which the variants are timed
round-robin (so drifting machine load biases none of them); each figure is the median over
the rounds.  Nothing here asserts a time.  ``python -m pytest benchmarks`` runs
:func:`bench_passes_smoke`, a tiny run of everything, as a smoke test.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, _ROOT)

import fasttape as ft  # noqa: E402
from fasttape.bench import families  # noqa: E402
from fasttape.passes import DEFAULT_PASSES, PASS_NAMES, reuse  # noqa: E402

WITH_LOCALITY = (*DEFAULT_PASSES, "locality")
STRUCTURED = ("rosenbrock", "lennard-jones", "mlp", "autograd-west")
RANDOM = ("random_local", "random_uniform")


def _per_call(fn: Callable[[], Any], calls: int) -> float:
    """Seconds per call of ``fn`` over ``calls`` back-to-back calls."""
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def family_tape(name: str, n: int) -> tuple[ft.Tape, np.ndarray]:
    """The unoptimised tape of bench family ``name`` at about ``n`` instructions, and a point."""
    if name == "random_local":
        t = families.random_local(n)
        return t, np.full(t.n_inputs, 0.5)
    if name == "random_uniform":
        t = families.random_uniform(n)
        return t, np.full(t.n_inputs, 0.5)
    size = families.structured_size(name, n)
    if name == "rosenbrock":
        g = ft.trace(lambda x: families.rosenbrock_fn(x, ft), size)
        x = families.rosenbrock_point(size)
    elif name == "lennard-jones":
        g = ft.trace(lambda x: families.lennard_jones_fn(x, ft), 3 * size)
        x = families.lennard_jones_point(size)
    elif name == "mlp":
        feats, targets = families.mlp_data(size)
        d, h = families.MLP_SHAPE
        g = ft.trace(lambda x: families.mlp_fn(x, ft, feats, targets), h * d + 2 * h + 1)
        x = families.mlp_point()
    else:
        g = ft.trace(lambda x: families.autograd_west_fn(x, ft, size), families.WEST_INPUTS)
        x = families.autograd_west_point()
    return ft.compile(g, optimize=[]), np.asarray(x, dtype=np.float64)


def pipeline_cost(names: list[str], sizes: list[int]) -> list[str]:
    rows = ["| family | instructions | passes | " + " | ".join(PASS_NAMES)
            + " | whole pipeline |", "| --- | ---: | --- |" + " ---: |" * (len(PASS_NAMES) + 1)]
    # Compile (or load) every pass's kernels before timing; reuse skips tiny tapes, so plan
    # this one directly.
    small = ft.optimize(families.random_local(1000), WITH_LOCALITY)
    reuse.plan_slots(small.ops, small.args, small.outputs, small.n_inputs + small.n_consts)
    for n in sizes:
        for name in names:
            tape, _ = family_tape(name, n)
            for passes in (DEFAULT_PASSES, WITH_LOCALITY):
                t0 = time.perf_counter()
                opt = ft.optimize(tape, passes)
                total = time.perf_counter() - t0
                per = dict.fromkeys(PASS_NAMES, 0.0)
                for r in opt.pass_records:
                    per[r.name] += r.seconds
                cells = [f"{per[k] / n * 1e9:.1f}" if k in passes else "" for k in per]
                label = "default" if passes == DEFAULT_PASSES else "default + locality"
                rows.append(f"| {name} | {n:,} | {label} | " + " | ".join(cells)
                            + f" | {total / n * 1e9:.0f} |")
                del opt
            del tape
            gc.collect()
    return rows


def reduction(names: list[str], n: int) -> list[str]:
    rows = ["| family | instructions | after dce | after default passes | value work B "
            "(dce -> default) | ratio | grad work B (dce -> default) | tape + plan B |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in names:
        tape, _ = family_tape(name, n)
        dce = ft.optimize(tape, ["dce"])
        opt = ft.optimize(tape)
        vd, vo = dce.work_nbytes(grad=False), opt.work_nbytes(grad=False)
        tape_plan = opt.nbytes + opt.stats()["plan_nbytes"]
        rows.append(
            f"| {name} | {tape.n_instructions:,} | {dce.n_instructions:,} | "
            f"{opt.n_instructions:,} | "
            f"{vd:,} -> {vo:,} | {vd / vo:.0f}x | {dce.work_nbytes():,} -> "
            f"{opt.work_nbytes():,} | {dce.nbytes:,} -> {tape_plan:,} |")
    return rows


def speed(names: list[str], n: int, repeat: int, calls: int = 0) -> list[str]:
    rows = ["| family | variant | instructions | value ns/instr | value+grad ns/instr | "
            "value vs dce | value+grad vs dce |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in names:
        tape, x = family_tape(name, n)
        variants = {
            "as built": tape,
            "dce only": ft.optimize(tape, ["dce"]),
            "default": ft.optimize(tape),
            "default + locality": ft.optimize(tape, WITH_LOCALITY),
        }
        times: dict[str, dict[str, list[float]]] = {k: {"v": [], "g": []} for k in variants}
        for t in variants.values():  # warm-up: compile kernels, allocate buffers
            t.value(x)
            t.value_and_grad(x, output=0)
        k_calls = calls or max(1, int(2e7 / tape.n_instructions))  # about 0.5 s per round, variant
        for _ in range(repeat):
            for k, t in variants.items():
                times[k]["v"].append(_per_call(partial(t.value, x), k_calls))
                times[k]["g"].append(_per_call(partial(t.value_and_grad, x, output=0), k_calls))
        med = {k: (float(np.median(v["v"])), float(np.median(v["g"]))) for k, v in times.items()}
        base = med["dce only"]
        for k, (tv, tg) in med.items():
            rows.append(
                f"| {name} | {k} | {variants[k].n_instructions:,} | "
                f"{tv / tape.n_instructions * 1e9:.2f} | "
                f"{tg / tape.n_instructions * 1e9:.2f} | {tv / base[0]:.2f} | {tg / base[1]:.2f} |")
        del variants, tape
        gc.collect()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=float, default=1e6, help="instructions per family")
    p.add_argument("--big", type=float, default=1e7,
                   help="second size for the pipeline cost (0: skip)")
    p.add_argument("--repeat", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--calls", type=int, default=0,
                   help="calls per timed round (0: about 2e7 instructions' worth)")
    p.add_argument("--families", default=",".join(RANDOM + STRUCTURED))
    a = p.parse_args(argv)
    n, big = int(a.nodes), int(a.big)
    names = a.families.split(",")
    print(f"# bench_passes: {platform.processor() or platform.machine()}, Python "
          f"{sys.version.split()[0]}, NumPy {np.__version__}, "
          f"command: python benchmarks/bench_passes.py {' '.join(argv or sys.argv[1:])}\n")
    print("## Pipeline cost, ns per input instruction\n")
    print("\n".join(pipeline_cost([f for f in names if f in RANDOM],
                                  [n] + ([big] if big else []))))
    print("\n## Reduction (default passes)\n")
    print("\n".join(reduction(names, n)))
    print(f"\n## Speed (median of {a.repeat} rounds; ns per instruction of the tape as "
          "built)\n")
    print("\n".join(speed(names, n, a.repeat, a.calls)))
    return 0


def bench_passes_smoke() -> None:
    """Smoke test for ``python -m pytest benchmarks``: every table on tiny graphs."""
    assert main(["--nodes", "3000", "--big", "0", "--repeat", "1", "--calls", "1"]) == 0


if __name__ == "__main__":
    raise SystemExit(main())
