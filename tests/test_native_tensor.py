"""``TensorTape.native()``: fused elementwise groups as compiled loops (fasttape/native/group.py).

The oracle is the same tape on the interpreter: values bitwise; gradients bitwise where every
slot gets its adjoint from one element of the group, and to rounding where shifted views or a
broadcast argument sum several (another order of the same additions).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fasttape as ft
from fasttape.native import cache
from fasttape.native import group as native_group
from fasttape.ops import OP_BY_NAME
from fasttape.tensor.lower import FUSE_MIN
from tests.test_tensor import PUBLIC_OPS, _call, _draw
from tests.thread_helpers import run_threads

N = FUSE_MIN + 1003  # fused; not a multiple of the reverse loop's block: a short last block


def _bits(a: object) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1).view(np.int64)


def _compare(tape: ft.TensorTape, fast: ft.TensorTape, args: tuple, exact: bool) -> None:
    np.testing.assert_array_equal(_bits(fast.value(*args)), _bits(tape.value(*args)))
    shape = tape.output_shape
    cot = np.random.default_rng(5).uniform(-1.0, 1.0, shape) if shape else 1.0
    want, got = tape.vjp(args, cot), fast.vjp(args, cot)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    for g, w in zip(got, want, strict=True):
        if exact:
            np.testing.assert_array_equal(_bits(g), _bits(w))
        else:
            np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-13 * np.max(np.abs(w)))


CHAINS = {
    # name: (function, exact gradients)
    "rosenbrock (shifted views)": (
        lambda x: np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2), False),
    "aligned chain": (lambda x: np.sum(np.tanh(x) * np.exp(-x * x) + np.sqrt(x * x + 1.0)),
                      True),
    "intermediate reused": (lambda x: np.sum(np.sin(x) * np.exp(np.sin(x)) + np.sin(x)), True),
    "member output read outside": (lambda x: np.sum(np.cos(x) * 3.0) + np.max(np.cos(x) * 3.0),
                                   True),
    "where branches": (lambda x: np.sum(np.where(x > 0, np.sqrt(np.abs(x)), np.sin(x) * 2.0)),
                       True),
    "constant array": (lambda x: np.sum((x - np.linspace(0.0, 1.0, N)) ** 2 * 0.5), True),
    "vector output": (lambda x: np.exp(x) * x - 2.0, True),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_native_groups_match_the_interpreter(name: str) -> None:
    fn, exact = CHAINS[name]
    tape = ft.compile(ft.trace(fn, shapes=[(N,)]))
    fast = tape.native()
    assert fast.n_native_groups >= 1, "nothing was compiled"
    assert "native groups" in repr(fast)
    x = np.random.default_rng(1).uniform(-1.5, 1.5, N)
    _compare(tape, fast, (x,), exact)
    if not tape.output_shape:
        v1, g1 = fast.value_and_grad(x)
        v2, g2 = tape.value_and_grad(x)
        assert v1 == v2
        np.testing.assert_allclose(g1, g2, rtol=1e-13, atol=1e-13)


def test_two_inputs_a_broadcast_scalar_and_a_parameter() -> None:
    def fn(x, y, a, p):
        return np.sum(a * np.sin(x * y) + (x - p) ** 2 / (1.0 + y * y))

    shapes = [(N,), (N,), ()]
    tape = ft.compile(ft.trace(fn, shapes=shapes, params=[(N,)]))
    fast = tape.native()
    assert fast.n_native_groups == 1
    rng = np.random.default_rng(2)
    args = (rng.normal(size=N), rng.normal(size=N), np.float64(0.7))
    p = rng.normal(size=N)
    v1, g1 = fast.value_and_grad(*args, p=p)
    v2, g2 = tape.value_and_grad(*args, p=p)
    assert v1 == v2
    np.testing.assert_array_equal(g1[0], g2[0])  # aligned: bitwise
    np.testing.assert_array_equal(g1[1], g2[1])
    np.testing.assert_allclose(g1[2], g2[2], rtol=1e-12)  # a sum over N elements
    # and that sum is the right one: central differences in the scalar
    h = 1e-6
    up = tape.value(args[0], args[1], args[2] + h, p=p)
    down = tape.value(args[0], args[1], args[2] - h, p=p)
    np.testing.assert_allclose(g1[2], (up - down) / (2 * h), rtol=1e-6)


def _op_cases() -> list[tuple[str, bool]]:
    return [(name, bcast) for name in PUBLIC_OPS for bcast in (False, True)
            if OP_BY_NAME[name].arity > 1 or not bcast]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "bcast"), _op_cases(),
                         ids=[f"{n}{'-bcast' if b else ''}" for n, b in _op_cases()])
def test_every_op_in_a_native_group(name: str, bcast: bool) -> None:
    # op(args) * 1.5 + args[0]: a group of three members whose first is the op.
    spec = OP_BY_NAME[name]
    shapes = [(N,)] * spec.arity
    if bcast:
        shapes[1] = ()
    rng = np.random.default_rng(PUBLIC_OPS.index(name))
    args = tuple(_draw(name, shapes, rng))

    def fn(*a):
        return _call(name, *a) * 1.5 + a[0]

    tape = ft.compile(ft.trace(fn, shapes=shapes))
    fast = tape.native()
    assert fast.n_native_groups == 1
    _compare(tape, fast, args, exact=not bcast)


# Random chains: every op of the table, arguments drawn from the inputs, earlier results,
# constants, shifted views and a broadcast scalar.
UNARY = ["neg", "square", "sin", "cos", "tanh", "exp", "abs", "sqrt", "log1p", "atan"]
BINARY = ["add", "sub", "mul", "div", "hypot", "maximum", "atan2"]


@st.composite
def chains(draw):
    steps = []
    for _ in range(draw(st.integers(2, 7))):
        if draw(st.booleans()):
            steps.append(("u", draw(st.sampled_from(UNARY))))
        else:
            other = draw(st.sampled_from(["x", "y", "prev", "shift", "scalar", "const"]))
            steps.append(("b", draw(st.sampled_from(BINARY)), other))
    return steps


def _run_chain(steps, x, y, s):
    m = N - 1
    t = x[:m]
    prev = t
    for step in steps:
        if step[0] == "u":
            name = step[1]
            arg = np.abs(t) + 0.5 if name in ("sqrt", "log1p") else t
            t, prev = ft.OP_FUNCTIONS[name](arg), t
        else:
            other = {"x": x[:m], "y": y[:m], "prev": prev, "shift": x[1:], "scalar": s,
                     "const": np.linspace(0.5, 2.0, m)}[step[2]]
            if step[1] == "div":
                other = other * other + 1.0
            t, prev = ft.OP_FUNCTIONS[step[1]](t, other), t
    return np.sum(t * y[:m])


@settings(max_examples=25, deadline=None)
@given(chains())
def test_random_chains_match_the_interpreter(steps) -> None:
    tape = ft.compile(ft.trace(lambda x, y, s: _run_chain(steps, x, y, s),
                               shapes=[(N,), (N,), ()]))
    fast = tape.native()
    rng = np.random.default_rng(len(steps))
    args = (rng.uniform(-1, 1, N), rng.uniform(-1, 1, N), np.float64(0.3))
    _compare(tape, fast, args, exact=False)


def test_native_tape_keeps_the_other_derivatives_and_batches() -> None:
    fn = CHAINS["aligned chain"][0]
    tape = ft.compile(ft.trace(fn, shapes=[(N,)]))
    fast = tape.native()
    rng = np.random.default_rng(4)
    x, t = rng.normal(size=N), rng.normal(size=N)
    assert fast.jvp(x, t)[1] == tape.jvp(x, t)[1]
    np.testing.assert_array_equal(fast.hvp(x, t), tape.hvp(x, t))
    batch = rng.normal(size=(3, N))
    np.testing.assert_array_equal(fast.value(batch, threads=2), tape.value(batch))
    np.testing.assert_array_equal(fast.grad(batch, threads=2), tape.grad(batch))


def test_native_tape_from_many_threads() -> None:
    fn = CHAINS["rosenbrock (shifted views)"][0]
    fast = ft.compile(ft.trace(fn, shapes=[(N,)])).native()
    points = [np.random.default_rng(k).uniform(-1, 1, N) for k in range(4)]
    want = [fast.value_and_grad(x) for x in points]
    same = []

    def work(k: int) -> None:
        for _ in range(20):
            v, g = fast.value_and_grad(points[k])
            same.append(v == want[k][0] and np.array_equal(g, want[k][1]))

    run_threads(work, 4)
    assert len(same) == 80 and all(same)


def test_native_code_is_cached_on_disk_and_a_bad_entry_is_rebuilt(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FASTTAPE_CACHE_DIR", str(tmp_path))
    fn = CHAINS["aligned chain"][0]
    tape = ft.compile(ft.trace(fn, shapes=[(N,)]))
    first = tape.native()
    assert not first.native_groups.from_cache and first.native_groups.seconds > 0
    entries = list(cache.entry_path("x").parent.glob("*.fto"))
    assert len(entries) == 1
    second = tape.native()
    assert second.native_groups.from_cache and second.native_groups.seconds == 0.0
    entries[0].write_bytes(entries[0].read_bytes()[:-7])  # truncated: never executed
    assert cache.load(entries[0].stem) is None
    third = tape.native()
    assert not third.native_groups.from_cache
    x = np.linspace(-1.0, 1.0, N)
    assert third.value(x) == tape.value(x)
    assert not tape.native(cache_entries=False).native_groups.from_cache


def test_a_tape_without_groups_comes_back_unchanged() -> None:
    tape = ft.compile(ft.trace(lambda x: np.sum(np.sin(x) * x), shapes=[(10,)]))
    fast = tape.native()
    assert fast.n_native_groups == 0 and fast.native_groups is None
    x = np.arange(10.0)
    assert fast.value_and_grad(x)[0] == tape.value_and_grad(x)[0]
    assert "native" not in repr(fast)


def test_group_runners_are_checked() -> None:
    tape = ft.compile(ft.trace(CHAINS["aligned chain"][0], shapes=[(N,)]))
    reduce_at = tape.n_instructions - 1
    with pytest.raises(ValueError, match="not an elementwise group"):
        tape.with_group_runners({reduce_at: (print, print)})
    with pytest.raises(ValueError, match="not an elementwise group"):
        tape.with_group_runners({99: (print, print)})
    with pytest.raises(TypeError, match=r"\(forward, reverse\) callables"):
        tape.with_group_runners({0: (print, 3)})
    for count in (0, 3, 1.5):
        with pytest.raises(ValueError, match="does not name instructions"):
            tape.with_group_runners({0: (print, print, count)})


def test_a_member_reading_an_earlier_result_shifted_is_left_to_the_interpreter() -> None:
    # members() refuses a group it cannot run element by element; hand-made fields here,
    # since the lowering never fuses such a read.
    tape = ft.compile(ft.trace(CHAINS["aligned chain"][0], shapes=[(N,)]))
    arrays = tape.to_arrays()
    fields, p = arrays["fields"].copy(), int(arrays["at"][0])
    assert native_group.members(fields, p) is not None
    rec = p + 3  # first member: make its destination's tile stride 2 (no such layout)
    fields[rec + 2] = 2
    assert native_group.members(fields, p) is None


@pytest.mark.parametrize("n", [FUSE_MIN, FUSE_MIN + 1, N, 2 * FUSE_MIN + 7])
def test_a_group_and_the_sum_after_it_are_one_loop(n: int) -> None:
    # The sum's order is the interpreter's (lanes, then the tail): the value is bitwise.
    def fn(x):
        return np.sum(np.tanh(x) * x + 0.5 * np.exp(-x * x))

    tape = ft.compile(ft.trace(fn, shapes=[(n,)]))
    fast = tape.native()
    assert fast.native_groups.with_sum == [0]
    x = np.random.default_rng(n).uniform(-2.0, 2.0, n)
    _compare(tape, fast, (x,), exact=True)
    v1, g1 = fast.value_and_grad(x)
    v2, g2 = tape.value_and_grad(x)
    assert v1 == v2
    np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("other", ["max", "second sum", "output", "matmul", "take",
                                   "reshaped product"])
def test_a_summed_result_read_elsewhere_is_still_stored(other: str) -> None:
    # Every kind that can read the summed result keeps it stored (reads_slots): a fused sum
    # would leave them reading a range never written.
    def fn(x):
        t = np.sin(x) * x + 1.0
        if other == "max":
            return np.sum(t) + np.max(t)
        if other == "second sum":
            return np.sum(t) * np.sum(t[::2])
        if other == "matmul":
            return np.sum(t) + t @ np.linspace(0.0, 1.0, N)
        if other == "take":
            return np.sum(t) + np.sum(t[[3, 0, N - 1, 3]])
        if other == "reshaped product":
            return np.sum(t) + np.sum(t[:N - N % 5].reshape(-1, 5) @ np.ones((5, 2)))
        return t

    tape = ft.compile(ft.trace(fn, shapes=[(N,)]))
    fast = tape.native()
    assert fast.n_native_groups == 1 and fast.native_groups.with_sum == []
    x = np.random.default_rng(9).uniform(-2.0, 2.0, N)
    _compare(tape, fast, (x,), exact=other != "second sum")
