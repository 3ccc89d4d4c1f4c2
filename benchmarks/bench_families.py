"""pytest-benchmark suites of the ``fasttape bench`` families, for regression tracking.

``python -m pytest benchmarks`` runs each benchmark once as a smoke test on small graphs
(pyproject sets ``--benchmark-disable``); ``python -m pytest benchmarks/bench_families.py
--benchmark-enable --benchmark-autosave`` times every family at 100,000 instructions
(``FASTTAPE_BENCH_NODES=N`` to choose), and ``--benchmark-compare`` compares with the last
saved run.  Per family: fasttape's value and value+gradient, the hand-written baseline's
value+gradient, and building (trace + compile, or generation + pruning for the array-built
random families).  Each benchmark checks its result against the baseline once; nothing asserts
a time.  The same cases as ``fasttape bench`` (:mod:`fasttape.bench.cases`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from fasttape.bench import baseline as bl
from fasttape.bench.cases import SCALAR_FAMILIES, Case, build_case

FULL_NODES = 100_000
SMALL_NODES = 2_000


def _n_nodes(config: pytest.Config) -> int:
    """Graph size: FASTTAPE_BENCH_NODES, else small when benchmarks are disabled."""
    env = os.environ.get("FASTTAPE_BENCH_NODES")
    if env:
        return int(float(env))
    disabled = bool(config.getoption("benchmark_disable", default=False)) and not bool(
        config.getoption("benchmark_enable", default=False)
    )
    return SMALL_NODES if disabled else FULL_NODES


@pytest.fixture(scope="module", params=SCALAR_FAMILIES)
def case(request: pytest.FixtureRequest) -> dict[str, Any]:
    """One family's case, its point and the baseline's reference value and gradient."""
    n = _n_nodes(request.config)
    c: Case = build_case(request.param, n)
    ref_v, ref_g = bl.run_baseline(c.tape, c.x)
    return {"case": c, "n": n, "ref_value": ref_v, "ref_grad": ref_g}


def _annotate(benchmark: Any, group: str, c: Case) -> None:
    benchmark.group = f"{group} {c.family}"
    benchmark.extra_info.update(family=c.family, n_nodes=int(c.n_nodes), size=int(c.size))


def _per_node(benchmark: Any, n_nodes: int) -> None:
    meta = getattr(benchmark, "stats", None)
    if meta is not None:
        benchmark.extra_info["ns_per_node_median"] = meta.stats.median / n_nodes * 1e9


def bench_family_value(benchmark: Any, case: dict[str, Any]) -> None:
    c = case["case"]
    _annotate(benchmark, "value", c)
    v = benchmark(c.tape.value, c.x)
    assert v == pytest.approx(case["ref_value"], rel=1e-12)
    _per_node(benchmark, c.n_nodes)


def bench_family_value_and_grad(benchmark: Any, case: dict[str, Any]) -> None:
    c = case["case"]
    _annotate(benchmark, "value_and_grad", c)
    v, g = benchmark(c.tape.value_and_grad, c.x)
    assert v == pytest.approx(case["ref_value"], rel=1e-12)
    scale = max(1e-300, float(np.abs(case["ref_grad"]).max()))
    np.testing.assert_allclose(g, case["ref_grad"], rtol=1e-9, atol=1e-12 * scale)
    _per_node(benchmark, c.n_nodes)


def bench_family_baseline_value_and_grad(benchmark: Any, case: dict[str, Any]) -> None:
    c = case["case"]
    t = c.tape
    _annotate(benchmark, "value_and_grad", c)
    benchmark.extra_info["system"] = "baseline"
    vals, adj, grad = np.empty(t.n_slots), np.empty(t.n_slots), np.empty(t.n_inputs)
    v = benchmark(bl.value_and_grad_kernel, t.ops, t.args, t.consts, c.x, vals, adj, grad)
    assert v == case["ref_value"]
    _per_node(benchmark, c.n_nodes)


def bench_family_build(benchmark: Any, case: dict[str, Any]) -> None:
    c = case["case"]
    _annotate(benchmark, "build", c)
    new = benchmark.pedantic(build_case, args=(c.family, case["n"]), rounds=3, iterations=1)
    assert new.n_nodes == c.n_nodes
    _per_node(benchmark, c.n_nodes)
