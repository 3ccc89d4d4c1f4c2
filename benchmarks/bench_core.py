"""pytest-benchmark benchmarks of the core pipeline.

``python -m pytest benchmarks`` runs every benchmark once as a smoke test (pyproject sets
``--benchmark-disable``) on small graphs; ``python -m pytest benchmarks --benchmark-enable``
times them on ``random_local(1_000_000, window=100)`` and a 1M-node traced chain (set
``FASTTAPE_BENCH_SMALL=1`` to time the small sizes instead).  Each benchmark checks its
result once against the hand-written baseline or a float reference; nothing asserts a time.
The workload and import helpers are shared with ``benchmarks/report.py``.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fasttape as ft
from fasttape.bench import baseline as bl
from fasttape.bench.families import random_local
from fasttape.bench.pyops import FLOATS

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # for ``benchmarks.report``
    sys.path.append(_ROOT)

from benchmarks.report import (  # noqa: E402
    mixed_workload,
    workload_edges,
    workload_nodes,
)

FULL_NODES = 1_000_000
SMALL_NODES = 20_000
N_TRACE_INPUTS = 100


def _n_nodes(config: pytest.Config) -> int:
    """Graph size: small when benchmarks are disabled (smoke run) or FASTTAPE_BENCH_SMALL=1."""
    small = os.environ.get("FASTTAPE_BENCH_SMALL", "") == "1"
    # pyproject's addopts always passes --benchmark-disable; --benchmark-enable overrides it
    # (the same rule pytest-benchmark applies), so both options are read.
    disabled = bool(config.getoption("benchmark_disable", default=False)) and not bool(
        config.getoption("benchmark_enable", default=False)
    )
    return SMALL_NODES if small or disabled else FULL_NODES


def _annotate(benchmark: Any, group: str, n_nodes: int, n_edges: int) -> None:
    """Set the group and the size fields of ``extra_info`` (before the benchmark runs)."""
    benchmark.group = group
    benchmark.extra_info["n_nodes"] = int(n_nodes)
    benchmark.extra_info["n_edges"] = int(n_edges)


def _per_node(benchmark: Any, n_nodes: int) -> None:
    """Add ``ns_per_node`` (from the min and the median) when the benchmark was timed."""
    meta = getattr(benchmark, "stats", None)
    if meta is None:  # disabled: the function ran once, untimed
        return
    stats = meta.stats
    benchmark.extra_info["ns_per_node"] = stats.min / n_nodes * 1e9
    benchmark.extra_info["ns_per_node_median"] = stats.median / n_nodes * 1e9


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def case(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``random_local(n, window=100)`` in both grad modes, a point, buffers and the baseline.

    The reference value and gradient come from the hand-written baseline.
    """
    n = _n_nodes(request.config)
    tape = random_local(n, window=100)
    x = np.linspace(0.1, 0.9, tape.n_inputs)
    ref_value, ref_grad = bl.run_baseline(tape, x)
    return {
        "tape": tape,
        "tapes": {"stored": tape, "lean": tape.with_grad_mode("lean")},
        "x": x,
        "vals": np.empty(tape.n_slots),
        "adj": np.empty(tape.n_slots),
        "grad": np.empty(tape.n_inputs),
        "ref_value": ref_value,
        "ref_grad": ref_grad,
    }


@pytest.fixture(scope="module")
def traced(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A traced :func:`mixed_workload` graph, its size and its value on floats."""
    n = _n_nodes(request.config)
    graph = ft.trace(partial(mixed_workload, n_nodes=n), N_TRACE_INPUTS)
    x = np.linspace(0.1, 0.9, N_TRACE_INPUTS)
    return {
        "n": n,
        "graph": graph,
        "x": x,
        "ref_value": mixed_workload(list(x), n, FLOATS),
    }


def _check_value(value: float, ref: float) -> None:
    assert np.isfinite(value)
    assert value == ref, f"engine value {value!r} != baseline {ref!r} (expected bitwise equal)"


# ---------------------------------------------------------------------------- evaluation
def bench_baseline_value(benchmark: Any, case: dict[str, Any]) -> None:
    tape = case["tape"]
    _annotate(benchmark, "value", tape.n_instructions, tape.n_edges)
    v = benchmark(bl.value_kernel, tape.ops, tape.args, tape.consts, case["x"],
                  case["vals"])
    _check_value(v, case["ref_value"])
    _per_node(benchmark, tape.n_instructions)


def bench_value(benchmark: Any, case: dict[str, Any]) -> None:
    tape = case["tape"]
    _annotate(benchmark, "value", tape.n_instructions, tape.n_edges)
    v = benchmark(tape.value, case["x"])
    _check_value(v, case["ref_value"])
    _per_node(benchmark, tape.n_instructions)


def bench_baseline_value_and_grad(benchmark: Any, case: dict[str, Any]) -> None:
    tape = case["tape"]
    _annotate(benchmark, "value_and_grad", tape.n_instructions, tape.n_edges)
    grad = case["grad"]
    v = benchmark(
        bl.value_and_grad_kernel,
        tape.ops, tape.args, tape.consts, case["x"], case["vals"], case["adj"], grad,
    )
    _check_value(v, case["ref_value"])
    np.testing.assert_array_equal(grad, case["ref_grad"])
    _per_node(benchmark, tape.n_instructions)


@pytest.mark.parametrize("grad_mode", ft.GRAD_MODES)
def bench_value_and_grad(benchmark: Any, case: dict[str, Any], grad_mode: str) -> None:
    tape = case["tapes"][grad_mode]
    _annotate(benchmark, "value_and_grad", tape.n_instructions, tape.n_edges)
    benchmark.extra_info["grad_mode"] = grad_mode
    v, g = benchmark(tape.value_and_grad, case["x"])
    _check_value(v, case["ref_value"])
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, case["ref_grad"], rtol=1e-12, atol=0.0)
    _per_node(benchmark, tape.n_instructions)


# ---------------------------------------------------------------------------- building
def bench_trace(benchmark: Any, request: pytest.FixtureRequest) -> None:
    n = _n_nodes(request.config)
    expected = workload_nodes(n)
    _annotate(benchmark, "trace", expected, workload_edges(n))
    graph = benchmark(ft.trace, partial(mixed_workload, n_nodes=n), N_TRACE_INPUTS)
    # inputs + 2 shared constants + the instructions; one output, the end of the chain
    assert graph.n_inputs == N_TRACE_INPUTS
    assert graph.n_nodes == N_TRACE_INPUTS + 2 + expected
    assert graph.n_outputs == 1
    _per_node(benchmark, expected)


def bench_compile(benchmark: Any, traced: dict[str, Any]) -> None:
    expected = workload_nodes(traced["n"])
    graph = traced["graph"]
    _annotate(benchmark, "compile", expected, workload_edges(traced["n"]))
    # optimize=False: this times flattening (the passes have their own suite, bench_passes.py)
    # and the workload's node count is exact only before CSE merges its repeats.
    tape = benchmark(ft.compile, graph, optimize=False)
    assert tape.n_instructions == expected
    assert tape.n_edges == workload_edges(traced["n"])
    assert tape.n_consts == 2
    np.testing.assert_allclose(tape.value(traced["x"]), traced["ref_value"], rtol=1e-12, atol=0)
    _per_node(benchmark, expected)


def bench_from_arrays(benchmark: Any, case: dict[str, Any]) -> None:
    tape = case["tape"]
    _annotate(benchmark, "from_arrays", tape.n_instructions, tape.n_edges)
    arrays = tape.to_arrays()
    new = benchmark(ft.Tape.from_arrays, **arrays)
    for name in ("ops", "args", "consts", "outputs"):
        np.testing.assert_array_equal(getattr(new, name), arrays[name])
        assert getattr(new, name).dtype == arrays[name].dtype
    assert new.n_inputs == tape.n_inputs
    _check_value(new.value(case["x"]), case["ref_value"])
    _per_node(benchmark, tape.n_instructions)
