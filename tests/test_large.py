"""Large graphs: no recursion anywhere, linear memory, chains of millions of nodes."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fasttape as ft
from fasttape.bench.families import chain, random_local
from fasttape.ops import OP_BY_NAME


def test_chain_of_one_million_nodes_traced_from_python():
    n = 1_000_000
    g = ft.Graph()
    (w,) = g.inputs(1)
    y = w
    for _ in range(n):
        y = ft.sin(y)
    g.output(y)
    tape = ft.compile(g)
    assert tape.n_instructions == n
    v, dw = tape.value_and_grad([0.5])
    # Independent check: the same chain in plain Python (value and chain-rule product).
    x, d = 0.5, 1.0
    for _ in range(n):
        d *= math.cos(x)
        x = math.sin(x)
    assert v == x
    assert math.isclose(dw[0], d, rel_tol=1e-9)


@pytest.mark.slow
def test_chain_of_ten_million_nodes_through_from_arrays():
    n = 10_000_000
    tape = chain(n, "sin")
    assert tape.n_instructions == n and tape.args.dtype == np.int32
    for mode in ft.GRAD_MODES:
        v, dw = tape.with_grad_mode(mode).value_and_grad([0.5])
        # sin^n(x) ~ sqrt(3/n) for large n; the derivative is positive and tiny.
        assert math.isclose(v, math.sqrt(3 / n), rel_tol=0.01)
        assert 0 < dw[0] < 1


def test_deep_add_chain_of_one_million_traced_nodes_with_sum():
    n = 1_000_000
    g = ft.trace(lambda x: ft.sum(x[i] * x[i + 1] for i in range(len(x) - 1)), n_inputs=n)
    tape = ft.compile(g)
    x = np.linspace(-1, 1, n)
    v, grad = tape.value_and_grad(x)
    assert math.isclose(v, float(np.dot(x[:-1], x[1:])), rel_tol=1e-12)
    expected = np.zeros(n)
    expected[:-1] += x[1:]
    expected[1:] += x[:-1]
    np.testing.assert_array_equal(grad, expected)


def test_int64_indices_are_supported_by_the_kernels():
    """A tape whose args are int64 (what from_arrays picks past 2**31 slots) evaluates too."""
    tape = random_local(5000, seed=3)
    a = tape.to_arrays()
    args64 = np.asarray(a["args"], dtype=np.int64)
    t64 = ft.Tape.from_trusted_arrays(a["ops"], args64, a["consts"], a["outputs"],
                                      a["n_inputs"])
    x = np.linspace(0.1, 0.9, tape.n_inputs)
    v, g = tape.value_and_grad(x)
    v64, g64 = t64.value_and_grad(x)
    assert v == v64
    np.testing.assert_array_equal(g, g64)


def test_compile_keeps_only_live_nodes():
    g = ft.Graph()
    x = g.inputs(3)
    for i in range(1000):
        _ = ft.exp(x[i % 3]) * i  # dead: never reaches an output
    g.output(x[0] * x[1])
    tape = ft.compile(g)
    assert tape.n_instructions == 1 and tape.n_consts == 0
    assert list(tape.ops) == [OP_BY_NAME["mul"].code]
    assert list(tape.grad([2.0, 3.0, 4.0])) == [3.0, 2.0, 0.0]
