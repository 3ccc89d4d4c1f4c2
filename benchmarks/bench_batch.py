"""Batch evaluation throughput: one call over B points vs a Python loop of single calls.

Usage::

    python benchmarks/bench_batch.py [--nodes 1000,100000,1000000] [--batch 1,16,256,4096]
                                     [--repeat 5] [--max-work 2e9] [--first-call] [--json PATH]

For every graph size (``random_local(n, window=100)``) and batch size ``B`` it prints the time
per point of ``value_and_grad`` (and of ``value``) for

- the loop ``for x in X: tape.value_and_grad(x)`` (the baseline, measured in the same run),
- one batch call ``tape.value_and_grad(X, threads=t)`` for t = 1 and t = 2,

and the speedups batch/loop and 2 threads/1 thread.  Timing rules: every figure is the median
of ``--repeat`` timed calls after one untimed warm-up call, and the three variants are
interleaved round-robin so that drifting machine load (other processes) biases none of them.
The loop's time per point does not depend on B, so it is timed over ``min(B, L)`` points with
``L`` chosen to take about 0.2 s.  Cases where ``n * B`` exceeds ``--max-work`` are skipped (a
1e6-node graph at B = 4096 takes about a minute per repeat); pass a larger value to run them.

``--chunks 8,16,32,64`` also times ``value_and_grad`` on one thread with each of these chunk
sizes (``fasttape.batch.value_and_grad(..., chunk=C)``) on ``random_local(--chunk-nodes)`` at
B = 256, the measurement behind the default ``CHUNK_MAX`` (docs/batch.md); ``--no-table``
skips the main table.

``--first-call`` also times, in fresh processes, the first batch gradient with an empty Numba
cache (compiling the serial and parallel kernels) and with a warm cache.

``python -m pytest benchmarks`` runs :func:`bench_batch_smoke` once on a small graph as a
smoke test; it checks the batch result against single calls and asserts no time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(_ROOT))

from fasttape import batch  # noqa: E402
from fasttape.atomic import atomic_write_text  # noqa: E402
from fasttape.bench.families import random_local  # noqa: E402
from fasttape.bench.timing import median_times  # noqa: E402

FIRST_CALL_SNIPPET = (
    "import time; t=time.perf_counter(); import numpy as np; import fasttape as ft; "
    "from fasttape.bench.families import random_local; tape=random_local(1000); "
    "X=np.full((256, tape.n_inputs), 0.5); tape.value_and_grad(X, threads=2); "
    "tape.value(X, threads=2); tape.value_and_grad(X[:1], threads=1); tape.value(X[:1]); "
    "print(time.perf_counter()-t)"
)


def measure(n_nodes: int, B: int, repeat: int, threads: tuple[int, ...]) -> dict[str, Any]:
    """Per-point times (seconds) of the loop and of batch calls for one graph size and B."""
    tape = random_local(n_nodes, window=100)
    X = np.random.default_rng(0).uniform(0.1, 0.9, (B, tape.n_inputs))
    # Points for the loop: enough for about 0.2 s per timed call.
    t0 = time.perf_counter()
    tape.value_and_grad(X[0])
    one = max(time.perf_counter() - t0, 1e-7)
    n_loop = int(min(B, max(1, 0.2 // one)))
    Xl = X[:n_loop]

    def loop_vg() -> None:
        for x in Xl:
            tape.value_and_grad(x)

    def loop_v() -> None:
        for x in Xl:
            tape.value(x)

    fns: dict[str, Callable[[], Any]] = {"loop_vg": loop_vg, "loop_v": loop_v}
    for t in threads:
        fns[f"batch_vg_t{t}"] = lambda t=t: tape.value_and_grad(X, threads=t)
        fns[f"batch_v_t{t}"] = lambda t=t: tape.value(X, threads=t)
    med = median_times(fns, repeat, min_sample=0.0)
    per_point = {k: v / (n_loop if k.startswith("loop") else B) for k, v in med.items()}
    return {
        "n_nodes": n_nodes,
        "B": B,
        "chunk": batch.chunk_size(tape, True, B),
        "loop_points": n_loop,
        "per_point_s": per_point,
    }


def chunk_sweep(n_nodes: int, B: int, chunks: list[int], repeat: int) -> dict[int, float]:
    """Seconds per node per point of one-thread batch ``value_and_grad`` for each chunk size."""
    tape = random_local(n_nodes, window=100)
    X = np.random.default_rng(0).uniform(0.1, 0.9, (B, tape.n_inputs))
    fns = {c: (lambda c=c: batch.value_and_grad(tape, X, 0, chunk=c, threads=1)) for c in chunks}
    med = median_times(fns, repeat, min_sample=0.0)
    return {c: t / B / n_nodes for c, t in med.items()}


def first_call() -> dict[str, float]:
    """Seconds for import + first batch calls in a fresh process: cold and warm Numba cache."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, PYTHONPATH=str(_ROOT))
        for label, extra in (("cold_cache", {"NUMBA_CACHE_DIR": cache}), ("warm_cache", {})):
            r = subprocess.run([sys.executable, "-c", FIRST_CALL_SNIPPET], env={**env, **extra},
                               capture_output=True, text=True, check=True)
            out[label] = float(r.stdout.strip().splitlines()[-1])
    return out


def _fmt_ns(seconds: float, n_nodes: int) -> str:
    return f"{seconds / n_nodes * 1e9:.2f}"


def report(rows: list[dict[str, Any]], threads: tuple[int, ...]) -> str:
    """Markdown table: ns per node per point, and the speedups."""
    tmax = max(threads)
    head = ["nodes", "B", "C", "loop vg"] + [f"batch vg t={t}" for t in threads]
    head += [f"vg speedup t={t}" for t in threads]
    if len(threads) > 1:
        head.append(f"vg t={tmax}/t=1")
    head += ["loop v", f"batch v t={tmax}", f"v speedup t={tmax}"]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for r in rows:
        n, pp = r["n_nodes"], r["per_point_s"]
        if "skipped" in r:
            skip = f"| {n:,} | {r['B']} | | skipped: {r['skipped']} |"
            lines.append(skip + " |" * (len(head) - 4))
            continue
        cells = [f"{n:,}", str(r["B"]), str(r["chunk"]), _fmt_ns(pp["loop_vg"], n)]
        cells += [_fmt_ns(pp[f"batch_vg_t{t}"], n) for t in threads]
        cells += [f"{pp['loop_vg'] / pp[f'batch_vg_t{t}']:.2f}x" for t in threads]
        if len(threads) > 1:
            cells.append(f"{pp['batch_vg_t1'] / pp[f'batch_vg_t{tmax}']:.2f}x")
        cells += [_fmt_ns(pp["loop_v"], n), _fmt_ns(pp[f"batch_v_t{tmax}"], n),
                  f"{pp['loop_v'] / pp[f'batch_v_t{tmax}']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the report (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", default="1000,100000,1000000")
    p.add_argument("--batch", default="1,16,256,4096")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--max-work", type=float, default=2e9, help="skip cases with n * B above")
    p.add_argument("--first-call", action="store_true")
    p.add_argument("--chunks", default="", help="chunk sizes to sweep, e.g. 8,16,32,64")
    p.add_argument("--chunk-nodes", type=int, default=100_000)
    p.add_argument("--no-table", action="store_true")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    threads = tuple(sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}))
    rows = []
    for n in ([] if a.no_table else (int(float(v)) for v in a.nodes.split(","))):
        for B in (int(v) for v in a.batch.split(",")):
            if n * B > a.max_work:
                rows.append({"n_nodes": n, "B": B, "skipped": f"n*B > {a.max_work:g}",
                             "per_point_s": {}})
                continue
            rows.append(measure(n, B, a.repeat, threads))
            print(f"done n={n} B={B}", file=sys.stderr, flush=True)
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "none used"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"numba {numba.__version__}, threading layer {layer}, "
          f"SVML {'on' if numba.config.USING_SVML else 'off'}; random_local(n, window=100); "
          f"ns per node per point, median of {a.repeat}")
    if rows:
        print(report(rows, threads))
    result: dict[str, Any] = {"rows": rows, "threads": threads, "layer": layer}
    if a.chunks:
        n = a.chunk_nodes
        sweep = chunk_sweep(n, 256, [int(c) for c in a.chunks.split(",")], a.repeat)
        result["chunk_sweep"] = {str(c): v for c, v in sweep.items()}
        print(f"\none thread, n = {n:,}, B = 256: ns per node per point by chunk size")
        print("| C | " + " | ".join(str(c) for c in sweep) + " |")
        print("|" + " ---: |" * (len(sweep) + 1))
        print("| ns | " + " | ".join(f"{v * 1e9:.2f}" for v in sweep.values()) + " |")
    if a.first_call:
        result["first_call"] = fc = first_call()
        print(f"\nfirst batch calls in a fresh process: {fc['cold_cache']:.1f} s with an empty "
              f"Numba cache, {fc['warm_cache']:.2f} s with a warm one")
    if a.json:
        atomic_write_text(a.json, json.dumps(result, indent=1))
    return 0


def bench_batch_smoke() -> None:
    """Smoke test for ``python -m pytest benchmarks``: tiny sizes, result checked, no timing."""
    row = measure(500, 16, 1, (1, 2) if numba.config.NUMBA_NUM_THREADS >= 2 else (1,))
    assert set(row["per_point_s"]) >= {"loop_vg", "batch_vg_t1"}
    tape = random_local(500, window=100)
    X = np.random.default_rng(0).uniform(0.1, 0.9, (16, tape.n_inputs))
    assert np.array_equal(tape.grad(X), np.array([tape.grad(x) for x in X]))


if __name__ == "__main__":
    raise SystemExit(main())
