"""Store versus recompute: time and memory of checkpointed gradients against storing everything.

Run from the repository root:

``python benchmarks/bench_checkpoint.py scan``
    ``ft.scan`` of T = 1,000,000 steps of a 100-variable nonlinear map with 100 snapshots,
    against the store-everything gradient of the same map unrolled T = 1,000 times (time per
    step, the ratio from one run, median of ``--repeat`` interleaved repetitions), and the
    scan's peak memory measured by tracemalloc.
``python benchmarks/bench_checkpoint.py chain``
    The 10,000,000-instruction sin chain with ``memory_limit`` about ``2 sqrt(N)`` values
    against its store-everything gradient.
``python benchmarks/bench_checkpoint.py curve --plot docs/store-vs-recompute.png``
    Time and peak memory as the budget shrinks, for a flat chain (segment lengths) and a scan
    (snapshots); writes the plot and prints the table.

``python -m pytest benchmarks`` runs the small smoke tests at the bottom (no timing).
Nothing here asserts a time: the figures are printed for docs/store-vs-recompute.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import fasttape as ft  # noqa: E402
from fasttape.atomic import atomic_write  # noqa: E402
from fasttape.bench.families import chain  # noqa: E402
from fasttape.bench.timing import traced_peak  # noqa: E402
from fasttape.checkpoint import checkpointed  # noqa: E402
from fasttape.checkpoint.scan import compile_plain  # noqa: E402

N_STATE = 100


def nonlinear_map(x: list[Any], p: list[Any]) -> tuple[list[Any], Any]:
    """A 100-variable nonlinear map with a running cost (about 1,100 instructions per step).

    ``x_i <- 0.6 x_i + 0.3 tanh(p_i x_{i-1} - x_{i+1}) + 0.2 cos(x_{i+1})`` (periodic): a
    contraction on average, so adjoints stay O(1) over a million steps (a benchmark whose
    adjoints underflow would time the reverse sweep skipping zero adjoints).
    """
    n = len(x)
    new = [
        0.6 * x[i] + 0.3 * ft.tanh(p[i] * x[i - 1] - x[(i + 1) % n]) + 0.2 * ft.cos(x[(i + 1) % n])
        for i in range(n)
    ]
    return new, 1e-3 * ft.sum(ft.square(v) for v in x)


def map_final(x: list[Any], p: list[Any]) -> Any:
    return ft.sum(x)


def unrolled_map(n_steps: int) -> ft.Tape:
    """The map traced ``n_steps`` times into one tape (the store-everything reference)."""
    g = ft.Graph()
    xs = g.inputs(2 * N_STATE)
    s, p = xs[:N_STATE], xs[N_STATE:]
    acc = None
    for _ in range(n_steps):
        s, c = nonlinear_map(s, p)
        acc = c if acc is None else acc + c
    g.output(acc + map_final(s, p))
    return compile_plain(g)


def map_inputs() -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(-1.0, 1.0, N_STATE), np.linspace(-0.5, 0.5, N_STATE)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_scan(n_steps: int, n_unrolled: int, snapshots: int, repeat: int) -> dict[str, Any]:
    x0, p = map_inputs()
    xin = np.concatenate([x0, p])
    tape = unrolled_map(n_unrolled)
    sc = ft.scan(nonlinear_map, n_steps, n_state=N_STATE, n_params=N_STATE, final=map_final,
                 running_cost=True, snapshots=snapshots)
    small = ft.scan(nonlinear_map, n_unrolled, n_state=N_STATE, n_params=N_STATE,
                    final=map_final, running_cost=True, snapshots=snapshots)
    # Bitwise check on the small T before timing anything.
    v, g = tape.value_and_grad(xin)
    v2, gx, gp = small.value_and_grad(x0, p)
    assert v == v2 and np.array_equal(g, np.concatenate([gx, gp])), "not bitwise equal"
    store_peak = traced_peak(lambda: tape.with_grad_mode("stored").value_and_grad(xin))
    sc.value_and_grad(x0, p)
    scan_peak = traced_peak(lambda: sc.value_and_grad(x0, p))
    per_unrolled, per_scan = [], []
    for _ in range(repeat):
        per_unrolled.append(timed(lambda: tape.value_and_grad(xin)) / n_unrolled)
        per_scan.append(timed(lambda: sc.value_and_grad(x0, p)) / n_steps)
    ratios = [b / a for a, b in zip(per_unrolled, per_scan, strict=True)]
    rep = sc.report
    assert rep is not None
    return {
        "n_steps": n_steps,
        "snapshots": snapshots,
        "step_instructions": sc.step_tape.n_instructions,
        "unrolled_steps": n_unrolled,
        "unrolled_instructions": tape.n_instructions,
        "store_all_us_per_step": 1e6 * statistics.median(per_unrolled),
        "scan_us_per_step": 1e6 * statistics.median(per_scan),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "advances": rep.forward_evaluations,
        "advances_per_step": rep.forward_evaluations / n_steps,
        "scan_tracemalloc_peak_bytes": scan_peak,
        "scan_engine_peak_bytes": rep.peak_nbytes,
        "step_tape_overhead_bytes": rep.overhead_nbytes,
        "snapshot_bytes": rep.peak_nbytes - rep.overhead_nbytes,
        "store_all_peak_bytes_unrolled": store_peak,
        "store_all_bytes_per_step": store_peak / n_unrolled,
        "store_all_bytes_extrapolated_to_T": store_peak / n_unrolled * n_steps,
    }


def run_chain(n_nodes: int, repeat: int, bytes_per_value: int = 36) -> dict[str, Any]:
    tape = chain(n_nodes, "sin")
    x = np.array([0.5])
    limit = int(2 * math.sqrt(n_nodes) * bytes_per_value)
    ct = checkpointed(tape, limit)
    plain = tape.with_grad_mode("stored")
    a, b = plain.value_and_grad(x), ct.value_and_grad(x)
    assert a[0] == b[0] and np.array_equal(a[1], b[1]), "not bitwise equal"
    seg_peak = traced_peak(lambda: ct.value_and_grad(x))
    full_peak = traced_peak(lambda: tape.with_grad_mode("stored").value_and_grad(x))
    t_full, t_seg = [], []
    for _ in range(repeat):
        t_full.append(timed(lambda: plain.value_and_grad(x)))
        t_seg.append(timed(lambda: ct.value_and_grad(x)))
    ratios = [b / a for a, b in zip(t_full, t_seg, strict=True)]
    plan = ct.plan
    return {
        "n_nodes": n_nodes,
        "memory_limit": limit,
        "memory_limit_rule": f"2*sqrt(N) values at {bytes_per_value} B each",
        "report": ct.report.as_dict(),
        "segment_length": plan.seg_len if plan else None,
        "checkpoints": plan.n_cross if plan else None,
        "values_held": (plan.n_cross + plan.seg_len) if plan else None,
        "values_held_over_sqrtN": (plan.n_cross + plan.seg_len) / math.sqrt(n_nodes)
        if plan else None,
        "store_all_s": statistics.median(t_full),
        "segmented_s": statistics.median(t_seg),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "segmented_tracemalloc_peak_bytes": seg_peak,
        "store_all_tracemalloc_peak_bytes": full_peak,
    }


def run_curve(n_nodes: int, n_steps: int, repeat: int) -> dict[str, Any]:
    """Time and memory as the budget shrinks: segment lengths on a chain, snapshots on a scan.

    Peak memory is what one gradient call allocates (tracemalloc) plus, for segments, the
    plan's index arrays (allocated once, before).  Each time ratio is the median over
    ``repeat`` interleaved pairs (store everything, then checkpointed).
    """
    tape = chain(n_nodes, "sin")
    x = np.array([0.5])
    plain = tape.with_grad_mode("stored")
    plain.value_and_grad(x)
    full_peak = traced_peak(lambda: tape.with_grad_mode("stored").value_and_grad(x))
    flat = []
    for L in [2**k for k in range(4, int(math.log2(n_nodes)))]:
        ct = checkpointed(tape, 1, segment_length=L)
        ct.value_and_grad(x)
        peak = traced_peak(lambda ct=ct: ct.value_and_grad(x)) + ct.plan.plan_nbytes
        ratios = [timed(lambda ct=ct: ct.value_and_grad(x)) / timed(lambda: plain.value_and_grad(x))
                  for _ in range(repeat)]
        flat.append({"segment_length": L, "peak_bytes": peak,
                     "time_ratio": statistics.median(ratios)})
    x0, p = map_inputs()
    n_u = min(n_steps, 1000)
    tape_u = unrolled_map(n_u)
    xin = np.concatenate([x0, p])
    tape_u.value_and_grad(xin)
    scan_peak_u = traced_peak(lambda: tape_u.with_grad_mode("stored").value_and_grad(xin))
    scan_pts = []
    for s in (2, 3, 5, 10, 30, 100, 300, n_steps):
        sc = ft.scan(nonlinear_map, n_steps, n_state=N_STATE, n_params=N_STATE,
                     final=map_final, running_cost=True, snapshots=s)
        sc.value_and_grad(x0, p)
        peak = traced_peak(lambda sc=sc: sc.value_and_grad(x0, p))
        ratios = []
        for _ in range(repeat):
            t_u = timed(lambda: tape_u.value_and_grad(xin)) / n_u
            t_s = timed(lambda sc=sc: sc.value_and_grad(x0, p)) / n_steps
            ratios.append(t_s / t_u)
        scan_pts.append({"snapshots": s, "peak_bytes": peak,
                         "time_ratio": statistics.median(ratios),
                         "advances_per_step": sc.report.forward_evaluations / n_steps})
    return {"flat_chain_nodes": n_nodes, "store_all_peak_bytes": full_peak, "flat": flat,
            "scan_steps": n_steps, "scan_unrolled_steps": n_u,
            "scan_store_all_bytes_per_step": scan_peak_u / n_u, "scan": scan_pts}


def _label_axes(ax: Any, ylabel: str, title: str) -> None:
    """The frame both panels share: peak memory on a log x axis, a grid and a legend."""
    ax.set_xscale("log")
    ax.set_xlabel("peak memory of one gradient (bytes)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_curve(res: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    f = res["flat"]
    # Markers only: memory is U-shaped in the segment length (checkpoints vs one segment).
    a1.plot([r["peak_bytes"] for r in f], [r["time_ratio"] for r in f], "o",
            label="segments (label: segment length)")
    for r in f[::2]:
        a1.annotate(str(r["segment_length"]), (r["peak_bytes"], r["time_ratio"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    a1.plot([res["store_all_peak_bytes"]], [1.0], "s", color="k", label="store everything")
    _label_axes(a1, "gradient time / store-everything time",
                f"flat chain of {res['flat_chain_nodes']:,} sin instructions")
    a1.set_ylim(bottom=0)
    s = res["scan"]
    a2.plot([r["peak_bytes"] for r in s], [r["time_ratio"] for r in s], "o-",
            label="ft.scan (label: snapshots, advances per step)")
    for r in s:
        a2.annotate(f"s={r['snapshots']}, {r['advances_per_step']:.1f}",
                    (r["peak_bytes"], r["time_ratio"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    store = res["scan_store_all_bytes_per_step"] * res["scan_steps"]
    a2.plot([store], [1.0], "s", color="k", label="store everything (unrolled, per step)")
    _label_axes(a2, "time per step / unrolled store-everything",
                f"ft.scan: {res['scan_steps']:,} steps of a 100-variable map")
    a2.set_yscale("log")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, dpi=110, format=Path(path).suffix[1:] or "png"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["scan", "chain", "curve"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--unrolled", type=int, default=1000)
    ap.add_argument("--snapshots", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--plot", default=None)
    a = ap.parse_args(argv)
    if a.what == "scan":
        res = run_scan(a.steps or 1_000_000, a.unrolled, a.snapshots, a.repeat)
    elif a.what == "chain":
        res = run_chain(a.nodes or 10_000_000, a.repeat)
    else:
        res = run_curve(a.nodes or 2_000_000, a.steps or 5_000, a.repeat)
        if a.plot:
            plot_curve(res, a.plot)
    print(json.dumps(res, indent=1))
    return 0


# --- smoke tests for ``python -m pytest benchmarks`` (small sizes, no timing) ---


def test_scan_bench_smoke():
    res = run_scan(200, 20, 5, 1)
    assert res["advances"] == ft.checkpoint.revolve_cost(200, 5)


def test_chain_bench_smoke():
    res = run_chain(20_000, 1)
    assert res["report"]["kind"] == "segments"


if __name__ == "__main__":
    raise SystemExit(main())
