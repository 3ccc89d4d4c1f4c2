"""Fused elementwise groups and gathers by parameter indices, on tensor tapes.

Fusion (fasttape/tensor/lower.py) only changes how an elementwise chain runs: tile by tile,
its intermediates recomputed in the reverse sweep.  So a fused tape must give bitwise the
values of the same tape with fusion turned off, and the same gradients (bitwise, except where
a broadcast argument sums its adjoints in another order).
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

import fasttape as ft
from fasttape.tensor import lower

N = 5003  # above FUSE_MIN, not a multiple of the tile: a short last tile


def _both(fn, shapes, params=None):
    """The fused tape and the unfused tape of ``fn``."""
    fused = ft.compile(ft.trace(fn, shapes=shapes, params=params))
    saved = lower.FUSE_MIN
    lower.FUSE_MIN = 10**18
    try:
        plain = ft.compile(ft.trace(fn, shapes=shapes, params=params))
    finally:
        lower.FUSE_MIN = saved
    return fused, plain


CHAINS = {
    "rosenbrock": lambda x: np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2),
    "where-branches": lambda x: np.sum(np.where(x > 0, np.sqrt(np.abs(x)), np.sin(x) * 2.0)),
    "intermediate-reused": lambda x: np.sum(np.tanh(x) * np.exp(np.tanh(x)) + np.tanh(x)),
    "shifted-read": lambda x: np.sum(np.sin(x)[1:] * np.cos(x)[:-1]),
    "output-read-twice": lambda x: np.sum(np.cos(x) * 3.0) + np.max(np.cos(x) * 3.0),
    "chain-then-reduce-then-chain": lambda x: np.sum(np.exp(-(x ** 2)) / np.sum(x ** 2)),
    "binary-inputs": lambda x: np.sum(ft.hypot(x, 2.0 * x + 1.0) * ft.atan2(x, x + 3.0)),
    "constant-array": lambda x: np.sum((x - np.linspace(0.0, 1.0, N)) ** 2 * 0.5),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_fused_equals_unfused(name: str) -> None:
    fn = CHAINS[name]
    fused, plain = _both(fn, [(N,)])
    assert fused.n_ops == plain.n_ops
    assert fused.n_instructions < plain.n_instructions, "the chain was not fused"
    x = np.random.default_rng(3).uniform(-2.0, 2.0, N)
    v1, g1 = fused.value_and_grad(x)
    v2, g2 = plain.value_and_grad(x)
    assert v1 == v2
    np.testing.assert_array_equal(g1, g2)
    assert fused.value(x) == v1
    np.testing.assert_array_equal(fused.vjp(x, 1.0), g1)
    # and against central differences on a few coordinates
    for i in (0, 1, N // 2, N - 1):
        h = 1e-6
        e = np.zeros(N)
        e[i] = h
        fd = (fused.value(x + e) - fused.value(x - e)) / (2 * h)
        assert fd == pytest.approx(g1[i], rel=1e-5, abs=1e-6)


def test_fusion_with_a_traced_scalar_broadcast() -> None:
    # The scalar's adjoint is summed over the tiles: bitwise equal up to that order.
    def fn(x, s):
        return np.sum(np.sin(x * s) + s * x ** 2)

    fused, plain = _both(fn, [(N,), ()])
    x = np.random.default_rng(4).uniform(-1.0, 1.0, N)
    (v1, (gx1, gs1)), (v2, (gx2, gs2)) = (fused.value_and_grad(x, 0.7),
                                         plain.value_and_grad(x, 0.7))
    assert v1 == v2
    np.testing.assert_array_equal(gx1, gx2)
    assert gs1 == pytest.approx(gs2, rel=1e-12)


def test_fused_tape_is_smaller() -> None:
    fused, plain = _both(CHAINS["rosenbrock"], [(100_000,)])
    assert fused.n_slots < plain.n_slots / 3


def test_fused_tape_from_many_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    tape = ft.compile(ft.trace(CHAINS["intermediate-reused"], shapes=[(N,)]))
    xs = [np.random.default_rng(k).uniform(-1, 1, N) for k in range(8)]
    expected = [tape.value_and_grad(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: tape.value_and_grad(x), xs * 4))
    for k, (v, g) in enumerate(got):
        assert v == expected[k % 8][0]
        np.testing.assert_array_equal(g, expected[k % 8][1])


# ------------------------------------------------------------------------- gathers by labels


def _classifier(params, X, y):
    logits = np.tanh(X @ params["W"]) @ params["V"]
    return ft.mean(ft.logsumexp(logits, axis=1) - logits[np.arange(len(y)), y])


def _data(n=20, d=3, k=4, seed=0):
    rng = np.random.default_rng(seed)
    params = {"W": rng.normal(size=(d, 5)), "V": rng.normal(size=(5, k))}
    return params, rng.normal(size=(n, d)), rng.integers(0, k, n)


def test_gather_by_parameter_labels_matches_one_hot() -> None:
    params, X, y = _data()
    shapes = {k: v.shape for k, v in params.items()}
    tape = ft.compile(ft.trace(_classifier, shapes=[shapes], params=[X.shape, y.shape]))
    assert "gather" in tape.op_names()

    def one_hot(params, X, Y):
        logits = np.tanh(X @ params["W"]) @ params["V"]
        return ft.mean(ft.logsumexp(logits, axis=1) - np.sum(logits * Y, axis=1))

    ref = ft.compile(ft.trace(one_hot, shapes=[shapes], params=[X.shape, (20, 4)]))
    for seed in range(3):
        y = np.random.default_rng(seed).integers(-4, 4, 20)  # negative labels count back
        v1, g1 = tape.value_and_grad(params, p=(X, y))
        v2, g2 = ref.value_and_grad(params, p=(X, np.eye(4)[y]))
        assert v1 == pytest.approx(v2, rel=1e-14)
        for key in g1:
            np.testing.assert_allclose(g1[key], g2[key], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("bad", [4, -5, 1.5, np.nan])
def test_gather_labels_are_checked_before_the_call(bad: float) -> None:
    params, X, y = _data()
    shapes = {k: v.shape for k, v in params.items()}
    tape = ft.compile(ft.trace(_classifier, shapes=[shapes], params=[X.shape, y.shape]))
    y = y.astype(float)
    y[7] = bad
    with pytest.raises(IndexError, match=r"p\[1\] is used as an index into an axis of length "
                                         r"4: its values must be integers in -4\.\.3"):
        tape.value(params, p=(X, y))


def test_gather_index_must_be_a_whole_parameter() -> None:
    with pytest.raises(TypeError, match="must be a parameter argument itself"):
        ft.trace(lambda x, i: np.sum(x[i[:2]]), shapes=[(5,)], params=[(3,)])
    with pytest.raises(TypeError, match="must be a parameter argument itself"):
        ft.trace(lambda x: np.sum(x[x.astype(float)]), shapes=[(5,)])


def test_gather_matrix_rows_by_labels() -> None:
    # Rows of a matrix by a parameter vector (embedding lookup), trailing axis kept whole.
    tape = ft.compile(ft.trace(lambda E, i: np.sum(E[i] ** 2 * np.arange(3.0)),
                               shapes=[(6, 3)], params=[(4,)]))
    E = np.arange(18.0).reshape(6, 3) / 10
    idx = np.array([5, 0, 5, 2])
    v, g = tape.value_and_grad(E, p=idx)
    assert v == pytest.approx(np.sum(E[idx] ** 2 * np.arange(3.0)), rel=1e-15)
    expected = np.zeros_like(E)
    np.add.at(expected, idx, 2 * E[idx] * np.arange(3.0))
    np.testing.assert_allclose(g, expected, rtol=1e-15)


def test_hostile_gather_fields_are_refused() -> None:
    params, X, y = _data()
    shapes = {k: v.shape for k, v in params.items()}
    tape = ft.compile(ft.trace(_classifier, shapes=[shapes], params=[X.shape, y.shape]))
    arrays = {k: v.copy() for k, v in tape.to_arrays().items()}
    (gi,) = [i for i, k in enumerate(arrays["kinds"].tolist()) if k == 5]
    p = int(arrays["at"][gi])
    for field, value, match in [(6, 10**6, "bad axis size|the indexed array reaches"),
                                (7, -1, "bad axis size or stride"),
                                (5, 10**9, "index 0's values reach"),
                                (2, 10**9, "reaches")]:
        bad = {k: v.copy() for k, v in arrays.items()}
        bad["fields"][p + field] = value
        with pytest.raises(ValueError, match=match):
            ft.TensorTape.from_arrays(bad, tape.layout())


# ------------------------------------------------------------------------- vectorization


@pytest.mark.slow
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="checks x86-64 machine code")
def test_element_loops_compile_to_packed_arithmetic() -> None:
    # The element loops are only fast if LLVM vectorizes them (unsigned slot indices, the
    # broadcast argument hoisted: fasttape/kernels/tensor.py): the forward and reverse kernels
    # must hold packed double-precision products (ymm with AVX2, else xmm).
    import re

    import numba

    from fasttape.kernels import tensor as kernels

    tape = ft.compile(ft.trace(lambda x: np.sum(x * x * 3.0), shapes=[(8,)]))
    a = {k: np.array(v) for k, v in tape.to_arrays().items()}
    vals, adj = a["init"].copy(), np.zeros_like(a["init"])
    n = a["kinds"].size
    # Compiled afresh (a kernel loaded from the disk cache keeps no assembly to inspect),
    # with the kernels' options.
    forward = numba.njit(nogil=True, error_model="numpy")(kernels.sweep.py_func)
    reverse = numba.njit(nogil=True, error_model="numpy")(kernels.sweep.py_func)
    forward(a["kinds"], a["ops"], a["at"], a["fields"], 0, n, vals)
    reverse(a["kinds"], a["ops"], a["at"], a["fields"], 0, n, vals, adj=adj)
    for name, k in (("forward", forward), ("reverse", reverse)):
        asm = k.inspect_asm(k.signatures[0])
        assert re.search(r"\bv?mulpd\s[^\n]*%[xy]mm", asm), f"the {name} sweep is not vectorized"


# ------------------------------------------------------------------ common subexpressions
def _arrays_equal(a: ft.TensorTape, b: ft.TensorTape) -> bool:
    ra, rb = a.to_arrays(), b.to_arrays()
    return all(np.array_equal(ra[k], rb[k]) for k in ("kinds", "ops", "at", "fields", "init"))


@pytest.mark.parametrize("n", [10, N])
def test_repeated_subexpressions_are_computed_once(n: int) -> None:
    # Written three times or once: the same tape, array for array.
    def repeated(x, w):
        return np.sum(np.tanh(x @ w) * np.exp(np.tanh(x @ w)) + np.tanh(x @ w)[::-1])

    def shared(x, w):
        t = np.tanh(x @ w)
        return np.sum(t * np.exp(t) + t[::-1])

    shapes = [(n, 2), (2,)]
    a = ft.compile(ft.trace(repeated, shapes=shapes))
    b = ft.compile(ft.trace(shared, shapes=shapes))
    assert a.op_names().count("tanh") == 1 and a.op_names().count("matmul") == 1
    assert _arrays_equal(a, b)
    x = np.random.default_rng(0).normal(size=(n, 2))
    w = np.array([0.3, -0.2])
    np.testing.assert_array_equal(a.value_and_grad(x, w)[1][0], b.value_and_grad(x, w)[1][0])


def test_different_computations_are_not_merged() -> None:
    def fn(x):
        return np.sum(x[1:] * 2.0) + np.sum(x[:-1] * 2.0) + np.sum(x[1:] * 3.0) \
            + np.sum(np.concatenate([np.sin(x), np.cos(x)])) + np.sum(np.sin(x[::2]))

    tape = ft.compile(ft.trace(fn, shapes=[(7,)]))
    names = tape.op_names()
    assert names.count("mulc") + names.count("mul") == 3
    assert names.count("sin") == 2 and names.count("cos") == 1
    x = np.linspace(-1.0, 1.0, 7)
    v, g = tape.value_and_grad(x)
    want = 2 * x[1:].sum() + 2 * x[:-1].sum() + 3 * x[1:].sum() + np.sin(x).sum() \
        + np.cos(x).sum() + np.sin(x[::2]).sum()
    assert v == pytest.approx(want, rel=1e-15)
    dg = np.zeros(7)
    dg[1:] += 5.0
    dg[:-1] += 2.0
    dg += np.cos(x) - np.sin(x)
    dg[::2] += np.cos(x[::2])
    np.testing.assert_allclose(g, dg, rtol=1e-14)
