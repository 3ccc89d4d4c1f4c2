"""Cost of the embedding routes against the kernel itself (issue 8's targets).

Two measurements, both ratios or differences against a baseline timed in the same run:

1. ``value_and_grad`` called from a user's ``@njit`` loop through ``tape.numba_kernel()``
   (``fn(*arrays, x, grad)``, with its O(1) length checks) versus the same loop calling the
   generated driver ``value_and_grad_kernel`` directly.  Target: <= 1.1x.
2. The C pointer ``tape.cfunc().value_and_grad_ctypes`` called from Python through ctypes,
   versus the kernel's own time per call (the direct ``@njit`` loop): the per-call overhead.
   Target: < 2 microseconds.

``python benchmarks/bench_embed.py [--nodes 1000] [--repeat 15]`` prints medians (and
min/max) of interleaved repeats.  Under pytest (``python -m pytest benchmarks``) the
``bench_*`` functions run once as smoke tests; with ``--benchmark-enable`` they are timed.
Nothing asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # run as a script from a checkout without installing
    sys.path.append(_ROOT)

from fasttape.bench.families import random_local  # noqa: E402
from fasttape.kernels import value_and_grad_kernel  # noqa: E402
from fasttape.kernels.jit import kernel  # noqa: E402


# ---------------------------------------------------------------------------- the two loops
@kernel
def loop_embedded(fn, arrays, x, grad, n):
    """A user's loop: ``fn(*arrays, x, grad)`` n times (x nudged so nothing is hoisted)."""
    s = 0.0
    for k in range(n):
        x[0] = 0.1 + 1e-9 * k
        s += fn(*arrays, x, grad)
    return s


@kernel
def loop_direct(ops, args, consts, outputs, which, vals, parts, adj, x, grad, n):
    """The baseline: the generated driver called directly, same loop."""
    s = 0.0
    for k in range(n):
        x[0] = 0.1 + 1e-9 * k
        s += value_and_grad_kernel(ops, args, consts, outputs, which, x, vals, parts, adj, grad)
    return s


def python_ctypes_loop(fn: Any, xa: int, fa: int, ga: int, n: int) -> None:
    for _ in range(n):
        fn(xa, fa, ga)


def python_empty_loop(n: int) -> None:
    for _ in range(n):
        pass


def direct_arrays(arrays: tuple) -> tuple:
    """The driver's arguments from ``numba_kernel()``'s tuple ``(ops, args, consts, outputs,
    meta, vals, parts, adj)``: the output index (0, the one output) in place of the checked
    record."""
    return (*arrays[:4], np.int64(0), *arrays[5:])


# ---------------------------------------------------------------------------- setup
def setup(n_nodes: int) -> dict[str, Any]:
    tape = random_local(n_nodes, window=100)
    fn, arrays = tape.numba_kernel()
    x = np.linspace(0.1, 0.9, tape.n_inputs)
    grad = np.empty(tape.n_inputs)
    cf = tape.cfunc()
    cf_re = tape.cfunc(reentrant=True)
    f = np.empty(1)
    vg = cf.value_and_grad_ctypes
    vg_re = cf_re.value_and_grad_ctypes
    # compile / warm everything once
    loop_embedded(fn, arrays, x, grad, 2)
    loop_direct(*direct_arrays(arrays), x, grad, 2)
    vg(x.ctypes.data, f.ctypes.data, grad.ctypes.data)
    vg_re(x.ctypes.data, f.ctypes.data, grad.ctypes.data)
    return {"tape": tape, "fn": fn, "arrays": arrays, "x": x, "grad": grad, "cf": cf, "f": f,
            "vg": vg, "cf_re": cf_re, "vg_re": vg_re}


def _timed(call: Any) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def measure(n_nodes: int, repeat: int, blocks: int = 40) -> dict[str, Any]:
    """Per-call seconds for each route, finely interleaved.

    Each repeat runs ``blocks`` rounds; a round times a short block (about 0.5 ms of kernel
    time) of every route one after the other, so all routes see the same background load (this
    VM is shared).  A repeat's figure per route is the sum over its rounds.
    """
    s = setup(n_nodes)
    fn, arrays, x, grad, f, vg = s["fn"], s["arrays"], s["x"], s["grad"], s["f"], s["vg"]
    vg_re = s["vg_re"]
    t = _timed(lambda: loop_direct(*direct_arrays(arrays), x, grad, 200)) / 200
    calls = max(20, int(5e-4 / max(t, 1e-9)))
    xa, fa, ga = x.ctypes.data, f.ctypes.data, grad.ctypes.data
    routes = {
        "direct": lambda: loop_direct(*direct_arrays(arrays), x, grad, calls),
        "embedded": lambda: loop_embedded(fn, arrays, x, grad, calls),
        "ctypes": lambda: python_ctypes_loop(vg, xa, fa, ga, calls),
        "reentrant": lambda: python_ctypes_loop(vg_re, xa, fa, ga, calls),
        "py_loop": lambda: python_empty_loop(calls),
    }
    rows: dict[str, list[float]] = {k: [] for k in routes}
    round_ratio: list[float] = []  # embedded / direct of adjacent blocks: robust to load spikes
    round_overhead: list[float] = []  # ctypes - direct - empty loop of adjacent blocks
    for _ in range(repeat):
        total = dict.fromkeys(routes, 0.0)
        for _ in range(blocks):
            t = {k: _timed(call) for k, call in routes.items()}
            for k in routes:
                total[k] += t[k]
            round_ratio.append(t["embedded"] / t["direct"])
            round_overhead.append((t["ctypes"] - t["direct"] - t["py_loop"]) / calls)
        for k in routes:
            rows[k].append(total[k] / (blocks * calls))
    ratio = [e / d for e, d in zip(rows["embedded"], rows["direct"], strict=True)]
    overhead = [c - d - p for c, d, p in
                zip(rows["ctypes"], rows["direct"], rows["py_loop"], strict=True)]
    return {"n_nodes": s["tape"].n_instructions, "calls": calls * blocks, "rows": rows,
            "ratio": ratio,
            "ctypes_overhead": overhead, "round_ratio": round_ratio,
            "round_overhead": round_overhead}


def compile_time(n_tapes: int = 5) -> list[float]:
    """Seconds to build a CFunction and compile its ``value_and_grad`` pointer, per tape."""
    out = []
    for k in range(n_tapes):
        tape = random_local(100 + k, window=10)
        t0 = time.perf_counter()
        _ = tape.cfunc().value_and_grad_address
        out.append(time.perf_counter() - t0)
    return out


def _fmt(xs: list[float], scale: float = 1.0, unit: str = "") -> str:
    xs = [v * scale for v in xs]
    return f"{statistics.median(xs):.3g}{unit} (min {min(xs):.3g}, max {max(xs):.3g})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 10])
    ap.add_argument("--repeat", type=int, default=15)
    a = ap.parse_args(argv)
    print(f"numba {numba.__version__}, {a.repeat} interleaved repeats; median (min, max)")
    for n in a.nodes:
        m = measure(n, a.repeat)
        r = m["rows"]
        print(f"\nrandom_local({n}, window=100): {m['n_nodes']} instructions, "
              f"{m['calls']} calls per repeat")
        print(f"  kernel, direct @njit loop     : {_fmt(r['direct'], 1e6, ' us')}")
        print(f"  numba_kernel, @njit loop      : {_fmt(r['embedded'], 1e6, ' us')}")
        print(f"  ratio embedded / direct       : {_fmt(m['ratio'])}; "
              f"ratio of the minimums {min(r['embedded']) / min(r['direct']):.3g}; "
              f"median over adjacent blocks {statistics.median(m['round_ratio']):.3g}")
        print(f"  ctypes call from Python       : {_fmt(r['ctypes'], 1e6, ' us')}")
        print(f"  ctypes, reentrant=True        : {_fmt(r['reentrant'], 1e6, ' us')}"
              "  (allocates the work buffers per call)")
        print(f"  empty Python loop, per pass   : {_fmt(r['py_loop'], 1e9, ' ns')}")
        print(f"  ctypes overhead beyond kernel : {_fmt(m['ctypes_overhead'], 1e6, ' us')}"
              "  (ctypes - direct - empty loop); from the minimums "
              f"{(min(r['ctypes']) - min(r['direct']) - min(r['py_loop'])) * 1e6:.3g} us; "
              f"median over adjacent blocks {statistics.median(m['round_overhead']) * 1e6:.3g} us")
    ct = compile_time()
    print(f"\ncfunc value_and_grad pointer, build + compile per tape: {_fmt(ct, 1e3, ' ms')}")


# ---------------------------------------------------------------------------- pytest smoke/bench
def bench_numba_kernel_loop(benchmark: Any) -> None:
    s = setup(1000)
    benchmark.group = "embed"
    v = benchmark(loop_embedded, s["fn"], s["arrays"], s["x"], s["grad"], 100)
    assert np.isfinite(v)


def bench_direct_kernel_loop(benchmark: Any) -> None:
    s = setup(1000)
    benchmark.group = "embed"
    v = benchmark(loop_direct, *direct_arrays(s["arrays"]), s["x"], s["grad"], 100)
    assert np.isfinite(v)


def bench_ctypes_pointer(benchmark: Any) -> None:
    s = setup(1000)
    benchmark.group = "embed"
    x, f, g = s["x"], s["f"], s["grad"]
    benchmark(python_ctypes_loop, s["vg"], x.ctypes.data, f.ctypes.data, g.ctypes.data, 100)
    v, g_ref = s["tape"].value_and_grad(x)
    assert f[0] == v and np.array_equal(g, g_ref)


if __name__ == "__main__":
    main()
