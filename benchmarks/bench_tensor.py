"""Tensor tapes side by side with the scalar tape, JAX jit and PyTorch: the tensor targets.

Usage::

    python benchmarks/bench_tensor.py [--repeat 7] [--rosenbrock 1e2,1e3,1e4,1e5,1e6]
                                      [--scalar-max-nodes 1e6] [--torch-compile] [--json PATH]

Value + gradient, in one process, each system sampled in turn with the others (medians of
``--repeat`` samples of at least 20 ms each, :func:`fasttape.bench.timing.median_times`), on
the cases of ``fasttape bench``'s tensor families (:func:`fasttape.bench.cases.tensor_case`:
one source of the array code, :func:`fasttape.bench.families.vectorized_fn`):

- extended Rosenbrock at n = 1e2 .. 1e6 variables;
- the MLP loss at batch 32, 16-32-32-1 tanh (squared error), and the MNIST-sized one, batch 256,
  784-256-10 tanh with the mean cross-entropy;
- Lennard-Jones energy of 1,000 atoms (all 499,500 pairs);

with the systems ``tensor`` (fasttape's TensorTape traced from the array code), ``native``
(the same tape's ``native()``: its fused elementwise groups as compiled loops), ``scalar``
(fasttape's scalar tape of the same function traced element by element, built only up to
``--scalar-max-nodes`` scalar instructions), ``jax`` (``jit(value_and_grad)``, float64,
called with a NumPy array and its results made NumPy's, as a NumPy user calls it),
``jax-device`` (the same compiled function on a device array, waited for with
``block_until_ready``: JAX's compute alone, without the copies), ``torch`` (eager autograd,
float64) and, with ``--torch-compile``, ``torch.compile`` of the same code.  Each peer's
value and gradient are checked against the tensor tape's before it is timed
(``fasttape.bench.runner.agreement``).  Also measured: tracing a 1e6-element Rosenbrock
(``ft.trace``, best of 5) and the tensor tape's instruction count at n = 1e3 and 1e6.

**One thread.** Run as a script, it sets ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` to 1 (unless already set) and
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` before NumPy,
JAX and PyTorch load, and calls ``torch.set_num_threads(1)``: the issue's targets are for one
thread, and NumPy's BLAS (fasttape's large products) and XLA's Eigen would otherwise use every
core.

It prints a Markdown table (times in microseconds; ``x / tensor`` ratios above 1: the tensor
tape is faster) and the verdict of each target, and with ``--json`` writes every figure.
``python -m pytest benchmarks`` runs :func:`bench_tensor_smoke` (tiny sizes, no timing
asserted).
"""

from __future__ import annotations

import os
import sys

# Only before NumPy, JAX and PyTorch load (see the docstring): they read these once.  Run
# inside a process that has NumPy already (the doc tests check the command line in-process),
# the environment is left alone, so that processes started later do not inherit it.
if __name__ == "__main__" and "numpy" not in sys.modules:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(_ROOT))

import fasttape as ft  # noqa: E402
from fasttape.atomic import atomic_write_text  # noqa: E402
from fasttape.bench.cases import TRACE_NS, tensor_case  # noqa: E402
from fasttape.bench.families import MNIST_WIDTHS, vectorized_fn  # noqa: E402
from fasttape.bench.peers import peer_by_name  # noqa: E402
from fasttape.bench.runner import agreement  # noqa: E402
from fasttape.bench.timing import median_times  # noqa: E402

#: Systems in table order; "torch-compile" only with --torch-compile.
SYSTEMS = ("tensor", "native", "scalar", "jax", "jax-device", "torch", "torch-compile")
ROSENBROCK = [100, 1_000, 10_000, 100_000, 1_000_000]


def _case_list(rosenbrock: list[int]) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(label, family, size, tensor_case options) of every measured case."""
    cases = [(f"Rosenbrock, n = {n:,}", "rosenbrock-vec", n, {}) for n in rosenbrock]
    cases += [
        ("MLP, batch 32, 16-32-32-1", "mlp-vec", 32, {}),
        ("MLP, batch 256, 784-256-10", "mlp-vec", 256, {"widths": MNIST_WIDTHS}),
        ("Lennard-Jones, 1,000 atoms", "lennard-jones-vec", 1_000, {}),
    ]
    return cases


def measure(label: str, family: str, size: int, opts: dict[str, Any], peers: list[str],
            repeat: int, scalar_max_nodes: float, min_sample: float,
            say: Callable[[str], None]) -> dict[str, Any]:
    """One case: build every system, check agreement, time value+gradient round-robin."""
    say(f"{label}: fasttape")
    probe = tensor_case(family, size, scalar=False, **opts)  # nodes estimated, cheap
    want_scalar = family != "mlp-vec" or opts.get("widths") is None
    if want_scalar and probe.n_nodes <= scalar_max_nodes:
        case = tensor_case(family, size, **opts)
    else:
        case = probe
    x = case.x
    v_ref, g_ref = case.tape.value_and_grad(x)
    row: dict[str, Any] = {"case": label, "family": family, "size": size,
                           "scalar_nodes": case.n_nodes,
                           "tensor_instructions": case.tape.n_instructions,
                           "build_s": {"tensor": case.build_s + case.compile_s},
                           "status": {}, "us": {}}
    fns: dict[str, Callable[[], Any]] = {"tensor": lambda: case.tape.value_and_grad(x)}
    say(f"{label}: fasttape native groups")
    t0 = time.perf_counter()
    nt = case.tape.native()
    row["build_s"]["native"] = time.perf_counter() - t0
    row["native_groups"] = nt.n_native_groups
    problem = agreement(v_ref, g_ref, *nt.value_and_grad(x))[2]
    row["status"]["native"] = problem or "ok"
    if problem is None:
        fns["native"] = lambda: nt.value_and_grad(x)
    st = case.scalar_tape
    if st is not None:
        row["build_s"]["scalar"] = case.scalar_build_s
        problem = agreement(v_ref, g_ref, *st.value_and_grad(x))[2]
        row["status"]["scalar"] = problem or "ok"
        if problem is None:
            fns["scalar"] = lambda: st.value_and_grad(x)
    else:
        row["status"]["scalar"] = "not built (over --scalar-max-nodes or no scalar twin)"
    for name in peers:
        say(f"{label}: {name}")
        peer = peer_by_name(name)
        missing = peer.available()
        if missing is not None:
            row["status"][name] = missing
            continue
        try:
            t0 = time.perf_counter()
            built = peer.build(case)
            v, g = built.value_and_grad(x)
            row["build_s"][name] = time.perf_counter() - t0
        except Exception as exc:  # a peer's failure is a status, never a crash
            row["status"][name] = f"failed ({type(exc).__name__}: {exc})"[:200]
            continue
        problem = agreement(v_ref, g_ref, v, g)[2]
        row["status"][name] = problem or "ok"
        if problem is None:
            fns[name] = lambda built=built: built.value_and_grad(x)
            if built.on_device is not None:  # the same function, the copies left out
                fns[f"{name}-device"] = built.on_device(x)
    say(f"{label}: timing {', '.join(fns)}")
    t = median_times(fns, repeat, min_sample=min_sample)
    row["status"]["tensor"] = "ok"
    row["us"] = {k: v * 1e6 for k, v in t.items()}
    return row


def tracing(n: int, repeat: int = 5) -> dict[str, Any]:
    """Best-of-``repeat`` seconds of tracing (``ft.trace``) and compiling a Rosenbrock of
    ``n`` elements, and its tensor tape's instruction count."""
    case = tensor_case("rosenbrock-vec", 10, scalar=False)
    f = vectorized_fn("rosenbrock-vec", case, TRACE_NS)
    trace_s, compile_s = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        g = ft.trace(f, shapes=[(n,)])
        t1 = time.perf_counter()
        tape = ft.compile(g)
        trace_s.append(t1 - t0)
        compile_s.append(time.perf_counter() - t1)
    return {"n": n, "trace_s": min(trace_s), "compile_s": min(compile_s),
            "n_ops": tape.n_ops, "n_instructions": tape.n_instructions,
            "fields": int(tape.to_arrays()["fields"].size), "n_slots": tape.n_slots}


def _ratio(row: dict[str, Any], system: str, base: str = "tensor") -> float | None:
    us = row["us"]
    return us[system] / us[base] if system in us and base in us else None


def targets(rows: list[dict[str, Any]], traces: list[dict[str, Any]]
            ) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) of each of the issue's targets this run can judge (met None:
    not measured in this run)."""
    def find(family: str, size: int) -> dict[str, Any] | None:
        return next((r for r in rows if r["family"] == family and r["size"] == size), None)

    out: list[tuple[str, str, bool | None]] = []
    ros5 = find("rosenbrock-vec", 100_000)
    # Every speed target for the tape as compiled (tensor) and with its fused groups as
    # compiled loops (native: tape.native()).
    for base, on in (("tensor", ""), ("native", ", tape.native()")):
        def check(what: str, row: dict[str, Any] | None, system: str,
                  ok: Callable[[float], bool], fmt: str, base: str = base) -> None:
            r = None if row is None else _ratio(row, system, base)
            if r is None:
                out.append((what, "not measured", None))
            else:
                out.append((what, fmt.replace("tensor", base).format(r), ok(r)))

        check(f"Rosenbrock n = 1e5: >= 10x faster than the scalar tape{on}", ros5, "scalar",
              lambda r: r >= 10, "scalar / tensor = {:.1f}x")
        # Each JAX target twice: JAX called from NumPy (as a NumPy user calls it), and on
        # device arrays (JAX's compute alone: the stricter comparison).
        for jax, how in (("jax", ""), ("jax-device", " (device arrays)")):
            check(f"Rosenbrock n = 1e5: no slower than JAX jit{how}{on}", ros5, jax,
                  lambda r: r >= 1, f"{jax} / tensor = {{:.2f}}x")
            for n in (100, 1_000):
                check(f"Rosenbrock n = {n:,}: >= 2x faster than JAX jit{how}{on}",
                      find("rosenbrock-vec", n), jax, lambda r: r >= 2,
                      f"{jax} / tensor = {{:.2f}}x")
            check(f"MLP batch 32, 16-32-32-1: no slower than JAX jit{how}{on}",
                  find("mlp-vec", 32), jax, lambda r: r >= 1, f"{jax} / tensor = {{:.2f}}x")
            mnist = find("mlp-vec", 256)
            r = None if mnist is None else _ratio(mnist, jax, base)
            out.append((f"MLP batch 256, 784-256-10: within 1.5x of JAX jit{how}{on}",
                        "not measured" if r is None else f"{base} / {jax} = {1 / r:.2f}x",
                        None if r is None else 1 / r <= 1.5))
            check(f"Lennard-Jones 1,000 atoms: no slower than JAX jit{how}{on}",
                  find("lennard-jones-vec", 1_000), jax, lambda r: r >= 1,
                  f"{jax} / tensor = {{:.2f}}x")
    big = [t for t in traces if t["n"] == 1_000_000]
    if big:
        ms = big[0]["trace_s"] * 1e3
        out.append(("Tracing a 1e6-element Rosenbrock: under 10 ms", f"{ms:.2f} ms", ms < 10))
    if len(traces) >= 2:
        # Ops, and (once both sizes are fused: n >= 4,096) the arrays themselves.
        counts = {t["n"]: (t["n_ops"], t["fields"]) for t in traces}
        fused = [c for n, c in counts.items() if n >= 4096]
        same = len({c[0] for c in counts.values()}) == 1 and len(set(fused)) <= 1
        out.append(("Tape size independent of n",
                    ", ".join(f"n = {n:.0e}: {o} ops, {f} fields" for n, (o, f)
                              in counts.items()), same))
    out.append(("Nothing slower on the scalar families (A/B)",
                "not measured here: python benchmarks/bench_ab_kernels.py --rev REV", None))
    return out


def render(rows: list[dict[str, Any]], traces: list[dict[str, Any]], systems: list[str]
           ) -> str:
    """The Markdown tables: times and ratios, tracing, targets."""
    peers = [s for s in systems if s != "tensor"]
    head = ["case", *(f"{s} us" for s in systems), *(f"{s} / tensor" for s in peers)]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for r in rows:
        cells = [r["case"]]
        for s in systems:
            us = r["us"].get(s)
            cells.append(f"{us:,.1f}" if us is not None else _short(r["status"].get(s, "-")))
        for s in peers:
            ratio = _ratio(r, s)
            cells.append(f"{ratio:.2f}" if ratio is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if traces:
        lines += ["", "| tracing Rosenbrock | ft.trace | ft.compile | tensor ops | "
                  "instructions (fused) |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| n = {t['n']:,} | {t['trace_s'] * 1e3:.2f} ms | "
                  f"{t['compile_s'] * 1e3:.2f} ms | {t['n_ops']} | {t['n_instructions']} |"
                  for t in traces]
    lines += ["", "| target | measured | verdict |", "| --- | --- | --- |"]
    for what, measured, met in targets(rows, traces):
        verdict = "n/a" if met is None else ("met" if met else "NOT met")
        lines.append(f"| {what} | {measured} | {verdict} |")
    return "\n".join(lines)


def _short(status: str) -> str:
    if status.startswith("not built"):
        return "not built"
    if status.startswith("not installed"):
        return "not installed"
    return status.split(" (")[0]


def run(rosenbrock: list[int], peers: list[str], repeat: int, scalar_max_nodes: float,
        min_sample: float, trace_sizes: list[int], say: Callable[[str], None] | None = None,
        cases: list[tuple[str, str, int, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Every measurement; the JSON-ready result."""
    say = say or (lambda _m: None)
    if "torch" in peers or "torch-compile" in peers:
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass
    t0 = time.perf_counter()
    warm = tensor_case("mlp-vec", 2)  # load (or compile) the tensor kernels before timing
    warm.tape.value_and_grad(warm.x)
    rows = [measure(label, family, size, opts, peers, repeat, scalar_max_nodes, min_sample,
                    say)
            for label, family, size, opts in (cases or _case_list(rosenbrock))]
    say("tracing")
    traces = [tracing(n) for n in trace_sizes]
    timed = {s for r in rows for s in r["us"]}
    systems = [s for s in SYSTEMS if s in timed or s in ("tensor", "scalar", *peers)]
    return {"rows": rows, "tracing": traces, "systems": systems,
            "targets": [{"target": a, "measured": b, "met": c}
                        for a, b, c in targets(rows, traces)],
            "machine": {"cpu": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "python": platform.python_version(),
                        "numpy": np.__version__,
                        "threads": {k: os.environ.get(k) for k in (
                            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                            "NUMBA_NUM_THREADS", "XLA_FLAGS")}},
            "total_s": time.perf_counter() - t0}


def _sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=7, help="samples per figure (median)")
    p.add_argument("--rosenbrock", type=_sizes, default=ROSENBROCK, metavar="SIZES",
                   help="Rosenbrock sizes, e.g. 1e2,1e3 (default 1e2 to 1e6)")
    p.add_argument("--scalar-max-nodes", type=float, default=1e6, metavar="N",
                   help="build the scalar tape only up to this many instructions (1e6)")
    p.add_argument("--torch-compile", action="store_true",
                   help="also time torch.compile (compiles for tens of seconds a case)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="write every figure as JSON")
    a = p.parse_args(argv)
    peers = ["jax", "torch"] + (["torch-compile"] if a.torch_compile else [])
    result = run(a.rosenbrock, peers, a.repeat, a.scalar_max_nodes, 0.02,
                 [1_000, 1_000_000], lambda m: print(m, file=sys.stderr, flush=True))
    threads = result["machine"]["threads"]
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cpus']} CPUs, Python "
          f"{result['machine']['python']}, NumPy {np.__version__}; threads: "
          f"OMP/MKL/OpenBLAS/Numba {threads['OMP_NUM_THREADS']}, torch 1, XLA_FLAGS "
          f"{threads['XLA_FLAGS']!r}; value + gradient, median of {a.repeat} samples")
    print()
    print(render(result["rows"], result["tracing"], result["systems"]))
    print(f"\ntotal {result['total_s']:.0f} s")
    if a.json:
        atomic_write_text(a.json, json.dumps(result, indent=1))
    return 0


def bench_tensor_smoke() -> None:
    """Smoke test for ``python -m pytest benchmarks``: tiny sizes, agreement checked inside,
    no time asserted."""
    peers = [q for q in ("jax", "torch") if peer_by_name(q).available() is None]
    cases = [("Rosenbrock, n = 100", "rosenbrock-vec", 100, {}),
             ("MLP, batch 4, 784-256-10", "mlp-vec", 4, {"widths": MNIST_WIDTHS}),
             ("Lennard-Jones, 10 atoms", "lennard-jones-vec", 10, {})]
    result = run([], peers, 1, 1e5, 1e-4, [100, 1_000], cases=cases)
    for row in result["rows"]:
        assert all(s == "ok" or s.startswith("not built") for s in row["status"].values()), row
    assert result["tracing"][0]["n_ops"] == result["tracing"][1]["n_ops"]
    if "jax" in peers:  # JAX is timed twice: from NumPy, and on device arrays
        assert all({"jax", "jax-device"} <= set(row["us"]) for row in result["rows"])
        assert result["systems"].index("jax-device") == result["systems"].index("jax") + 1
    text = render(result["rows"], result["tracing"], result["systems"])
    assert "| Tape size independent of n |" in text


if __name__ == "__main__":
    sys.exit(main())
