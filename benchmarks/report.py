"""One-page performance report of fasttape on the ``random_local`` family.

Usage::

    python benchmarks/report.py [--nodes N] [--repeat R] [--json PATH]

Prints Markdown tables: evaluation speed of the engine and of the hand-written baseline
(:mod:`fasttape.bench.baseline`) in ns per instruction, their ratios, the speed of tracing,
compiling and validating in nodes per second, bytes per node of the tape and of the work
buffers, and the first-call time of a fresh process with a warm Numba cache.

Timing rules: every figure is the best (minimum) of ``R`` timed calls after one untimed warm-up
call; the evaluation measurements are interleaved round-robin (value, baseline value, stored,
lean, baseline value+grad, then again) so that drifting machine load biases none of them.  The
kernels are serial Numba loops (no ``prange``), so the number of Numba threads does not matter:
everything runs on one core.  The garbage collector stays enabled (tracing creates one Python
object per node, and a user pays for its collections too) but is run before every timed call.

This module also holds the workload shared with ``benchmarks/bench_core.py``
(:func:`mixed_workload`), so that both time the same thing.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

import fasttape as ft
from fasttape.atomic import atomic_write_text
from fasttape.bench import baseline as bl
from fasttape.bench.machine import machine_info
from fasttape.bench.pyops import FLOATS
from fasttape.bench.timing import best_times

__all__ = [
    "EDGES_PER_STEP",
    "NODES_PER_STEP",
    "FIRST_CALL_SNIPPET",
    "best_of",
    "machine_info",
    "main",
    "mixed_workload",
    "workload_edges",
    "workload_nodes",
    "workload_steps",
]

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent

#: Instructions and edges (instruction arguments) recorded per loop step of
#: :func:`mixed_workload`.
NODES_PER_STEP = 8
EDGES_PER_STEP = 13

#: The program whose wall time is the "first call" figure (run in a fresh interpreter).
FIRST_CALL_SNIPPET = (
    "import time; t=time.perf_counter(); import fasttape as ft; g=ft.Graph(); x=g.inputs(3); "
    "g.output(ft.sin(x[0])*x[1]+ft.exp(x[2])/2); ft.compile(g).value_and_grad([1.,2.,3.]); "
    "print(time.perf_counter()-t)"
)


# ---------------------------------------------------------------------------- shared workload
def mixed_workload(x: Sequence[Any], n_nodes: int, f: Any = ft) -> Any:
    """A deep chain of about ``n_nodes`` instructions mixing operators and ``ft`` functions.

    Each step records :data:`NODES_PER_STEP` = 8 instructions (mul, add, tanh, sin, div, sub,
    atan, add) and reads input ``x[step % len(x)]``; values stay in about (-2, 2) for inputs in
    [0.1, 0.9].  The two constants (0.5 and 3.0) are shared nodes.

    Parameters
    ----------
    x : sequence of Var or float
        The inputs (Vars when traced, floats for the reference value).
    n_nodes : int
        Target number of instructions; the loop runs ``max(1, n_nodes // 8)`` steps.
    f : module or namespace, default fasttape
        Where ``tanh``, ``sin`` and ``atan`` come from: :mod:`fasttape` to trace,
        :data:`fasttape.bench.pyops.FLOATS` to evaluate on floats.

    Returns
    -------
    Var or float
        The last value of the chain.
    """
    n = len(x)
    y = x[0]
    for i in range(workload_steps(n_nodes)):
        a = x[i % n]
        y = f.tanh(y * a + 0.5)
        z = f.sin(y) - a / 3.0
        y = f.atan(z) + y
    return y


def workload_steps(n_nodes: int) -> int:
    """Loop steps :func:`mixed_workload` runs for a target of ``n_nodes`` instructions."""
    return max(1, n_nodes // NODES_PER_STEP)


def workload_nodes(n_nodes: int) -> int:
    """Exact number of instructions :func:`mixed_workload` records for ``n_nodes``."""
    return NODES_PER_STEP * workload_steps(n_nodes)


def workload_edges(n_nodes: int) -> int:
    """Exact number of edges (instruction arguments) :func:`mixed_workload` records."""
    return EDGES_PER_STEP * workload_steps(n_nodes)


# ---------------------------------------------------------------------------- timing helpers
def best_of(fn: Callable[[], Any], repeat: int, *, collect: bool = False) -> float:
    """Best wall time in seconds of ``repeat`` calls of ``fn`` after one warm-up call
    (:func:`fasttape.bench.timing.best_times` of one callable)."""
    return best_times({"fn": fn}, repeat, collect=collect)["fn"]


def _run_python(code: str) -> tuple[float, str]:
    """Run ``python -c code`` in a fresh interpreter; (wall seconds, stripped stdout)."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_ROOT
    )
    return time.perf_counter() - t0, done.stdout.strip()


# ---------------------------------------------------------------------------- machine
# machine_info: one implementation, shared with `fasttape bench` (fasttape/bench/machine.py).


# ---------------------------------------------------------------------------- measurements
def _measure_evaluation(n_nodes: int, repeat: int) -> dict[str, Any]:
    """Engine and baseline evaluation times on ``random_local(n_nodes, window=100)``."""
    from fasttape.bench.families import random_local

    tape = random_local(n_nodes, window=100)
    lean = tape.with_grad_mode("lean")
    x = np.linspace(0.1, 0.9, tape.n_inputs)
    vals = np.empty(tape.n_slots)
    adj = np.empty(tape.n_slots)
    grad = np.empty(tape.n_inputs)
    ops, args = tape.ops, tape.args

    # Correctness first (also compiles/loads every kernel).
    consts = tape.consts
    b_val = bl.value_kernel(ops, args, consts, x, vals)
    b_vg, b_grad = bl.run_baseline(tape, x)
    v = tape.value(x)
    vs, gs = tape.value_and_grad(x)
    vl, gl = lean.value_and_grad(x)
    checks = {
        "value_bitwise_equal_baseline": bool(v == b_val == b_vg),
        "stored_value_bitwise_equal": bool(vs == b_val),
        "lean_value_bitwise_equal": bool(vl == b_val),
        "stored_grad_allclose_1e-12": bool(np.allclose(gs, b_grad, rtol=1e-12, atol=0.0)),
        "lean_grad_allclose_1e-12": bool(np.allclose(gl, b_grad, rtol=1e-12, atol=0.0)),
        "grad_finite": bool(np.all(np.isfinite(gs))),
    }
    times = best_times(
        {
            "value": partial(tape.value, x),
            "baseline_value": partial(bl.value_kernel, ops, args, consts, x, vals),
            "value_and_grad_stored": partial(tape.value_and_grad, x),
            "value_and_grad_lean": partial(lean.value_and_grad, x),
            "baseline_value_and_grad": partial(
                bl.value_and_grad_kernel, ops, args, consts, x, vals, adj, grad
            ),
        },
        repeat,
    )
    n = tape.n_instructions
    return {
        "tape": tape.stats(),
        "seconds": times,
        "ns_per_node": {k: t / n * 1e9 for k, t in times.items()},
        "checks": checks,
        "grad_abs_max": float(np.abs(gs).max()),
        "grad_nonzero": int(np.count_nonzero(gs)),
        "bytes_per_node": _bytes_per_node(tape, lean),
        "_tape": tape,
    }


def _bytes_per_node(tape: ft.Tape, lean: ft.Tape) -> dict[str, float]:
    n = tape.n_instructions
    return {
        "tape": tape.nbytes / n,
        "tape_without_consts": (tape.nbytes - tape.consts.nbytes) / n,
        "work_value": tape.work_nbytes(grad=False) / n,
        "work_value_and_grad_stored": tape.with_grad_mode("stored").work_nbytes(grad=True) / n,
        "work_value_and_grad_lean": lean.work_nbytes(grad=True) / n,
    }


def _measure_build(n_nodes: int, repeat: int, random_tape: ft.Tape) -> dict[str, Any]:
    """Tracing, compile and from_arrays validation speeds."""
    n_in = 100
    fn = partial(mixed_workload, n_nodes=n_nodes)
    holder = SimpleNamespace(graph=None)

    def do_trace() -> None:
        holder.graph = None  # free the previous graph before building the next one
        holder.graph = ft.trace(fn, n_in)

    t_trace = best_of(do_trace, repeat, collect=True)
    graph = holder.graph
    assert graph is not None
    # compile = flattening only (optimize=False): the workload's counts below are exact only
    # before CSE merges its repeats; the default pipeline is timed separately ("optimize").
    t_compile = best_of(partial(ft.compile, graph, optimize=False), repeat, collect=True)
    t_optimize = best_of(partial(ft.compile, graph), repeat, collect=True)
    tape = ft.compile(graph, optimize=False)
    x = np.linspace(0.1, 0.9, n_in)
    ref = mixed_workload(list(x), n_nodes, FLOATS)
    got = tape.value(x)
    arrays = tape.to_arrays()
    t_valid_traced = best_of(partial(ft.Tape.from_arrays, **arrays), repeat)
    t_valid_random = best_of(partial(ft.Tape.from_arrays, **random_tape.to_arrays()), repeat)
    checks = {
        "traced_instructions": bool(tape.n_instructions == workload_nodes(n_nodes)),
        "traced_edges": bool(tape.n_edges == workload_edges(n_nodes)),
        "traced_value_close_float_reference_1e-12": bool(math.isclose(got, ref, rel_tol=1e-12)),
    }
    lean = tape.with_grad_mode("lean")
    return {
        "graph_nodes": graph.n_nodes,
        "tape": tape.stats(),
        "seconds": {
            "trace": t_trace,
            "compile": t_compile,
            "compile_optimized": t_optimize,
            "from_arrays_traced": t_valid_traced,
            "from_arrays_random_local": t_valid_random,
        },
        "nodes_per_second": {
            "trace": tape.n_instructions / t_trace,
            "compile": tape.n_instructions / t_compile,
            "compile_optimized": tape.n_instructions / t_optimize,
            "from_arrays_traced": tape.n_instructions / t_valid_traced,
            "from_arrays_random_local": random_tape.n_instructions / t_valid_random,
            "compile_plus_validation": tape.n_instructions / (t_compile + t_valid_traced),
        },
        "checks": checks,
        # Python's math vs the kernels' (LLVM/libm) functions: equal is not guaranteed.
        "value_bitwise_equal_float_reference": bool(got == ref),
        "bytes_per_node": _bytes_per_node(tape, lean),
    }


def _measure_startup(repeat: int) -> dict[str, float]:
    """Fresh-process first-call time (warm Numba cache) and bare interpreter start."""
    _run_python(FIRST_CALL_SNIPPET)  # warm-up: fills Numba's cache and the OS file cache
    inner = wall = math.inf
    for _ in range(max(1, repeat)):
        w, out = _run_python(FIRST_CALL_SNIPPET)
        inner = min(inner, float(out.splitlines()[-1]))
        wall = min(wall, w)
    bare = best_of(partial(_run_python, "pass"), repeat)
    imp = best_of(partial(_run_python, "import fasttape"), repeat)
    return {
        "first_call_in_process": inner,
        "first_call_wall": wall,
        "python_pass_wall": bare,
        "import_fasttape_wall": imp,
    }


# ---------------------------------------------------------------------------- output
def _fmt_rate(r: float) -> str:
    return f"{r / 1e6:,.2f} M nodes/s"


def render(result: dict[str, Any]) -> str:
    """The Markdown report for a result dict of :func:`measure`."""
    m = result["machine"]
    ev, bu, st = result["evaluation"], result["build"], result["startup"]
    ns, t = ev["ns_per_node"], ev["tape"]
    lines = [
        "# fasttape performance report",
        "",
        f"- machine: {m['platform']} ({m['machine']}), CPU {m['cpu']}, "
        f"{m['cpu_count']} CPUs ({m['cpus_usable']} usable)",
        f"- Python {m['python']}, NumPy {m['numpy']}, Numba {m['numba']}, "
        f"fasttape {m['fasttape']}",
        "- one thread: the kernels are serial Numba loops (Numba's thread pool, "
        f"{m['numba_threads']} threads, is unused)",
        f"- graph: `random_local({t['n_instructions']:,}, window=100)`: {t['n_inputs']} inputs, "
        f"{t['n_edges']:,} edges ({t['n_edges'] / t['n_instructions']:.3f} per instruction), "
        f"{t['index_dtype']} indices",
        f"- timing: best of {result['repeat']} after one warm-up; evaluation measured "
        "round-robin (interleaved)",
        "",
        "## Evaluation (ns per instruction)",
        "",
        "| | engine | stored | lean | baseline |",
        "|---|---:|---:|---:|---:|",
        f"| value | {ns['value']:.2f} | | | {ns['baseline_value']:.2f} |",
        f"| value + gradient | | {ns['value_and_grad_stored']:.2f} | "
        f"{ns['value_and_grad_lean']:.2f} | {ns['baseline_value_and_grad']:.2f} |",
        "",
        "| ratio | value | value+grad stored | value+grad lean |",
        "|---|---:|---:|---:|",
        f"| engine / baseline | {ns['value'] / ns['baseline_value']:.3f} | "
        f"{ns['value_and_grad_stored'] / ns['baseline_value_and_grad']:.3f} | "
        f"{ns['value_and_grad_lean'] / ns['baseline_value_and_grad']:.3f} |",
        f"| gradient / value (engine) | 1 | {ns['value_and_grad_stored'] / ns['value']:.3f} | "
        f"{ns['value_and_grad_lean'] / ns['value']:.3f} |",
        f"| gradient / value (baseline) | 1 | "
        f"{ns['baseline_value_and_grad'] / ns['baseline_value']:.3f} | |",
        "",
        f"Checks: {_checks_line(ev['checks'])}.  Gradient: {ev['grad_nonzero']} of "
        f"{t['n_inputs']} inputs nonzero, max |g| = {ev['grad_abs_max']:.3g}.",
        "",
        "## Building",
        "",
        f"Traced graph: `mixed_workload` ({NODES_PER_STEP} instructions per step: mul, add, "
        "tanh, sin, div, sub, atan, add), "
        f"{bu['graph_nodes']:,} graph nodes -> {bu['tape']['n_instructions']:,} instructions, "
        f"{bu['tape']['n_consts']} constants.",
        "",
        "| step | time | rate |",
        "|---|---:|---:|",
    ]
    rate, sec = bu["nodes_per_second"], bu["seconds"]
    rows = [
        ("tracing (`ft.trace`, Python)", sec["trace"], rate["trace"]),
        ("compile, flatten only (`ft.compile(g, optimize=False)`)", sec["compile"],
         rate["compile"]),
        ("compile with the default passes (`ft.compile(g)`)", sec["compile_optimized"],
         rate["compile_optimized"]),
        ("validation (`Tape.from_arrays`, traced tape)", sec["from_arrays_traced"],
         rate["from_arrays_traced"]),
        ("validation (`Tape.from_arrays`, random_local)", sec["from_arrays_random_local"],
         rate["from_arrays_random_local"]),
        ("compile + validation (traced)", sec["compile"] + sec["from_arrays_traced"],
         rate["compile_plus_validation"]),
    ]
    lines += [f"| {name} | {s * 1e3:,.1f} ms | {_fmt_rate(r)} |" for name, s, r in rows]
    lines += [
        "",
        f"Checks: {_checks_line(bu['checks'])}; value bitwise equal to the Python-float "
        f"evaluation (math module): {_yes(bu['value_bitwise_equal_float_reference'])}.",
        "",
        "## Memory (bytes per instruction)",
        "",
        "| | random_local | traced chain |",
        "|---|---:|---:|",
    ]
    labels = {
        "tape": "tape (`tape.nbytes`)",
        "tape_without_consts": "tape without consts",
        "work_value": "work: value",
        "work_value_and_grad_stored": "work: value+grad, stored",
        "work_value_and_grad_lean": "work: value+grad, lean",
    }
    for key, label in labels.items():
        lines.append(
            f"| {label} | {ev['bytes_per_node'][key]:.2f} | {bu['bytes_per_node'][key]:.2f} |"
        )
    lines += [
        "",
        "## Start-up (fresh process, warm Numba cache)",
        "",
        "| | seconds |",
        "|---|---:|",
        f"| first call, in-process (import + trace + compile + value_and_grad) | "
        f"{st['first_call_in_process']:.3f} |",
        f"| first call, whole subprocess wall time | {st['first_call_wall']:.3f} |",
        f"| `python -c \"import fasttape\"` wall time | {st['import_fasttape_wall']:.3f} |",
        f"| `python -c pass` wall time | {st['python_pass_wall']:.3f} |",
        "",
    ]
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _checks_line(checks: dict[str, bool]) -> str:
    bad = [k for k, ok in checks.items() if not ok]
    return "all passed" if not bad else "FAILED: " + ", ".join(bad)


def measure(n_nodes: int, repeat: int) -> dict[str, Any]:
    """Run every measurement; a JSON-ready dict (see :func:`render`)."""
    ev = _measure_evaluation(n_nodes, repeat)
    random_tape = ev.pop("_tape")
    bu = _measure_build(n_nodes, repeat, random_tape)
    del random_tape
    st = _measure_startup(repeat)
    return {
        "machine": machine_info(),
        "n_nodes": n_nodes,
        "repeat": repeat,
        "evaluation": ev,
        "build": bu,
        "startup": st,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 if a correctness check failed)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1_000_000, help="instructions (1e6)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per figure (5)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    ns = parser.parse_args(argv)
    if ns.nodes < 1 or ns.repeat < 1:
        parser.error("--nodes and --repeat must be >= 1")
    result = measure(ns.nodes, ns.repeat)
    print(render(result))
    if ns.json is not None:
        atomic_write_text(ns.json, json.dumps(result, indent=2) + "\n")
    ok = all(result["evaluation"]["checks"].values()) and all(result["build"]["checks"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
