"""The "Fastest Autograd in the West" workload: 10,000 ops, 10,000 value+gradient evaluations.

A. Rogozhnikov's comparison (2023) times a graph of ``n_ops = 10,000`` ops
(:func:`fasttape.bench.families.autograd_west_fn`, about 55,000 instructions here) evaluated
value+gradient 10,000 times, and counts building the graph too, because in that use case the
graph changes constantly.  Published on an M1 laptop: a C switch interpreter 0.99 s, Rust 1.4 s,
Numba over typed lists 41 s, JAX jit 47 s just to compile 1,000 ops, PyTorch about 1,130 s.

:func:`west_workload` reports fasttape's trace and compile times and the evaluation time two
ways: 10,000 sequential single-point calls, and the 10,000 distinct points handed over as one
batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

import fasttape as ft
from fasttape.bench.families import WEST_INPUTS, autograd_west_fn, autograd_west_point
from fasttape.kernels import fpenv

__all__ = ["PUBLISHED", "TARGET_S", "west_workload"]

#: Published totals for 10k ops x 10k evaluations (seconds, M1 laptop), for context only.
PUBLISHED = {
    "C switch interpreter": 0.99,
    "Rust": 1.4,
    "Numba over typed lists": 41.0,
    "PyTorch (estimate)": 1130.0,
}

#: The issue's target for the batch figure, trace and compile included (seconds, 2 cores).
TARGET_S = 1.5


def west_workload(
    n_ops: int = 10_000, n_calls: int = 10_000, *, measured_calls: int | None = None,
    threads: int | None = None, seed: int = 0, repeat: int = 3,
    compiling: Callable[[str], AbstractContextManager[Any]] | None = None,
) -> dict[str, Any]:
    """Time the workload; a JSON-ready dict of figures (seconds).

    Parameters
    ----------
    n_ops : int
        Ops of the graph (10,000 in the published workload).
    n_calls : int
        Value+gradient evaluations reported (10,000).
    measured_calls : int, optional
        Evaluations actually run (default ``n_calls``); when fewer, the evaluation times are
        scaled up to ``n_calls`` and ``extrapolated`` says so (``--quick``).
    threads : int, optional
        Passed to the batch call.
    seed : int
        Seed of the points: the benchmark point 0..99 plus uniform noise in [-0.5, 0.5).
    repeat : int
        Timed batch calls; the median is reported (``batch_samples_s`` lists them all: a
        shared machine's speed drifts between calls).
    compiling : callable, optional
        ``compiling(what)`` returns a context manager wrapped around each untimed first call
        that may compile kernels (the CLI announces them: on a first run they take a while).

    Returns
    -------
    dict
        ``trace_s``, ``compile_s``, ``first_call_s``, ``sequential_s`` and ``sequential_total_s``
        (trace + compile + sequential), ``batch_s`` and ``batch_total_s`` (None without
        batching), ``batch`` (bool), ``n_nodes``, the agreement of the batch with the
        sequential results, and (x86 only) ``batch_flush_s`` / ``batch_flush_total_s``: the
        batch with ``flush_subnormals=True``, with ``batch_flush_max_abs_diff`` from the IEEE
        batch.
    """
    step = compiling or (lambda _what: nullcontext())
    m = n_calls if measured_calls is None else min(measured_calls, n_calls)
    rng = np.random.default_rng(seed)
    pts = autograd_west_point() + rng.uniform(-0.5, 0.5, size=(m, WEST_INPUTS))
    t0 = time.perf_counter()
    graph = ft.trace(lambda x: autograd_west_fn(x, ft, n_ops), WEST_INPUTS)
    t1 = time.perf_counter()
    tape = ft.compile(graph)
    t2 = time.perf_counter()
    del graph
    tape.value_and_grad(pts[0])
    t3 = time.perf_counter()
    seq_v = np.empty(m)
    seq_g = np.empty((m, WEST_INPUTS))
    t4 = time.perf_counter()
    for i in range(m):
        seq_v[i], seq_g[i] = tape.value_and_grad(pts[i])
    seq = (time.perf_counter() - t4) * n_calls / m
    out: dict[str, Any] = {
        "n_ops": n_ops, "n_calls": n_calls, "measured_calls": m,
        "extrapolated": m < n_calls, "n_nodes": tape.n_instructions,
        "trace_s": t1 - t0, "compile_s": t2 - t1, "first_call_s": t3 - t2,
        "sequential_s": seq, "sequential_total_s": (t2 - t0) + seq,
        "batch": True, "batch_s": None, "batch_total_s": None,
        "batch_first_call_s": None, "batch_matches_sequential": None, "threads": threads,
        "batch_flush_s": None, "batch_flush_total_s": None, "batch_flush_max_abs_diff": None,
        "batch_samples_s": None, "batch_flush_samples_s": None, "repeat": repeat,
    }
    if out["batch"]:
        kw = {} if threads is None else {"threads": threads}
        t5 = time.perf_counter()
        # Warm up on the same batch, not a slice: a small batch can take the serial path and
        # leave the parallel drivers to compile inside the timed call (regression: 156 s
        # reported on a fresh install for what takes 4 s).
        with step("batch evaluation (parallel)"):
            tape.value_and_grad(pts, **kw)
        t6 = time.perf_counter()
        samples = []
        for _ in range(max(1, repeat)):
            t = time.perf_counter()
            bv, bg = tape.value_and_grad(pts, **kw)
            samples.append((time.perf_counter() - t) * n_calls / m)
        batch = float(np.median(samples))
        out.update(
            batch_s=batch, batch_total_s=(t2 - t0) + batch, batch_first_call_s=t6 - t5,
            batch_samples_s=samples,
            batch_matches_sequential=bool(np.array_equal(bv, seq_v)
                                          and np.array_equal(bg, seq_g)),
        )
        if fpenv.SUPPORTED:
            # The same batch with subnormals flushed to zero (x86 FTZ/DAZ): this graph's
            # adjoints decay through the subnormal range, where each product costs a
            # microcode assist.  Not IEEE, so reported beside the batch, not instead of it.
            with step("batch evaluation with subnormals flushed"):
                tape.value_and_grad(pts, flush_subnormals=True, **kw)  # warm up
            fsamples = []
            for _ in range(max(1, repeat)):
                t = time.perf_counter()
                fv, fg = tape.value_and_grad(pts, flush_subnormals=True, **kw)
                fsamples.append((time.perf_counter() - t) * n_calls / m)
            flushed = float(np.median(fsamples))
            out.update(
                batch_flush_s=flushed, batch_flush_total_s=(t2 - t0) + flushed,
                batch_flush_samples_s=fsamples,
                batch_flush_max_abs_diff=float(max(np.max(np.abs(fv - bv), initial=0.0),
                                                   np.max(np.abs(fg - bg), initial=0.0))),
            )
    return out
