"""Batch evaluation (fasttape.batch): bitwise the loop of single calls, shapes, errors, threads."""

from __future__ import annotations

import itertools
import math
import os
import threading

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fasttape as ft
from fasttape import batch
from fasttape.bench.families import random_local
from fasttape.ops import OP_BY_NAME, OPS
from tests.test_ops import SPECIALS, params_for, single_op_tape
from tests.test_random_graphs import random_tapes

MAX_THREADS = numba.config.NUMBA_NUM_THREADS
THREADS = sorted({1, min(2, MAX_THREADS)})


@pytest.fixture(autouse=True)
def parallel_even_for_tiny_work(monkeypatch):
    """Tiny test tapes would run serially (PARALLEL_MIN_WORK): test the parallel drivers too."""
    monkeypatch.setattr(batch, "PARALLEL_MIN_WORK", 0)


def bits(a) -> np.ndarray:
    """The float64 bit patterns of ``a``, so that == compares NaN payloads and signed zeros."""
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def assert_same_bits(got, want, what: str) -> None:
    """Bitwise equal (signed zeros, infinities), except that any NaN matches any NaN.

    IEEE 754 leaves open which operand's payload and sign a NaN result carries when both are
    NaN, and LLVM may commute an addition: the scalar and the vector code of the same
    ``a + b`` can return different NaNs (seen for ``pow(x, x)`` at x < 0, where both partials
    are NaNs of different signs).
    """
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    bad = np.argwhere((bits(got) != bits(want)) & ~(np.isnan(got) & np.isnan(want)))
    assert bad.size == 0, f"{what}: first differences at {bad[:5].tolist()}: " + ", ".join(
        f"{got[tuple(i)]!r} vs {want[tuple(i)]!r}" for i in bad[:5]
    )


def single_loop(tape: ft.Tape, X: np.ndarray, output: int | None = None):
    """Values (all outputs), value of ``output`` and gradients by a loop of single calls."""
    values = np.array([np.atleast_1d(tape.value(x)) for x in X]).reshape(len(X), -1)
    vg = [tape.value_and_grad(x, output=output) for x in X]
    v = np.array([a for a, _ in vg])
    g = np.array([b for _, b in vg]).reshape(len(X), tape.n_inputs)
    return values, v, g


def check_batch(tape: ft.Tape, X: np.ndarray, *, chunk: int | None, threads: int) -> None:
    """Every batch entry point equals the single-call loop bitwise, in both grad modes."""
    for mode in ft.GRAD_MODES:
        t = tape.with_grad_mode(mode)
        values, v, g = single_loop(t, X, output=0)
        got = batch.value(t, X, chunk=chunk, threads=threads)
        assert_same_bits(got.reshape(len(X), -1), values, f"{mode} value")
        for k in range(t.n_outputs):
            if k:
                _, v, g = single_loop(t, X, output=k)
            bv, bg = batch.value_and_grad(t, X, k, chunk=chunk, threads=threads)
            assert_same_bits(bv, v, f"{mode} value of output {k}")
            assert_same_bits(bg, g, f"{mode} gradient of output {k}")


def op_points(name: str, n_random: int = 21, seed: int = 0) -> np.ndarray:
    """Rows for a one-op tape: every combination of special values, then points in the domain.

    The row count is odd and larger than the small chunks used below.
    """
    spec = OP_BY_NAME[name]
    n_in = spec.ndiff if spec.param == "const" else spec.arity
    rows = [list(p) for p in itertools.product(SPECIALS, repeat=n_in)]
    rng = np.random.default_rng(seed)
    for _ in range(n_random):
        rows.append([rng.uniform(lo, hi) for lo, hi in spec.domain[:n_in]])
    if len(rows) % 2 == 0:
        rows.append(rows[-1])
    return np.array(rows, dtype=np.float64)


# --------------------------------------------------------------------------- every op
@pytest.mark.parametrize("name", [op.name for op in OPS])
def test_every_op_is_bitwise_the_single_call_loop(name):
    """Specials and domain points, B = 1, odd B, B > chunk; serial and parallel drivers."""
    X = op_points(name)
    for params in params_for(OP_BY_NAME[name]):
        tape = single_op_tape(name, params)
        check_batch(tape, X[:1], chunk=None, threads=1)  # B = 1
        check_batch(tape, X, chunk=4, threads=THREADS[-1])  # B odd, many chunks, parallel
        check_batch(tape, X, chunk=None, threads=1)  # default chunk (>= 4 points per chunk)


@pytest.mark.parametrize("name", [op.name for op in OPS])
def test_every_op_inside_a_graph(name):
    """The op's result feeds further ops, so adjoints other than 1 (and 0) reach its partials."""
    spec = OP_BY_NAME[name]
    X = op_points(name, seed=1)
    n_in = X.shape[1]
    for params in params_for(spec):
        code = {k: v.code for k, v in OP_BY_NAME.items()}
        n_pre = n_in + len(params)
        # slot n_pre: op(inputs..., params...), n_pre+1: mul(op, x0), n_pre+2: sub(that, op)
        args = list(range(n_in)) + [n_in + j for j in range(len(params))]
        ops = [spec.code, code["mul"], code["sub"], code["where"]]
        args += [n_pre, 0, n_pre + 1, n_pre, n_pre + 2, n_pre, 0]
        tape = ft.Tape.from_arrays(ops, args, list(params), [n_pre + 3, n_pre], n_in)
        check_batch(tape, X, chunk=8, threads=THREADS[-1])


# --------------------------------------------------------------------------- random graphs
@settings(max_examples=60, deadline=None)
@given(random_tapes(), st.integers(1, 19), st.integers(1, 9), st.sampled_from(THREADS))
def test_random_graphs_are_bitwise_the_single_call_loop(case, B, chunk, threads):
    tape, x = case
    rng = np.random.default_rng(B)
    X = rng.uniform(-3, 3, (B, tape.n_inputs))
    X[0] = x  # the drawn point (with its special values)
    specials = np.array(SPECIALS)
    mask = rng.random(X.shape) < 0.2
    X[mask] = rng.choice(specials, size=int(mask.sum()))
    check_batch(tape, X, chunk=chunk, threads=threads)


@settings(max_examples=60, deadline=None)
@given(random_tapes(), st.integers(1, 19), st.integers(1, 9), st.sampled_from(THREADS))
def test_random_graphs_on_the_batch_plan_are_bitwise_the_single_call_loop(case, B, chunk,
                                                                          threads):
    """Large tapes run their batches on a slot-reuse plan without in-place slots; force it
    on every drawn graph (batch.BATCH_PLAN_MIN_SLOTS = 0)."""
    tape, x = case
    X = np.random.default_rng(B).uniform(-3, 3, (B, tape.n_inputs))
    X[0] = x
    old = batch.BATCH_PLAN_MIN_SLOTS
    batch.BATCH_PLAN_MIN_SLOTS = 0
    try:
        _, dest, _, rows = batch.layout(tape.with_grad_mode("lean"), True)
        n_pre = tape.n_inputs + tape.n_consts
        assert rows == tape.n_slots and np.array_equal(dest, n_pre + np.arange(tape.n_instructions))
        _, dest, _, rows = batch.layout(tape.with_grad_mode("stored"), True)
        assert rows <= tape.n_slots and np.all(dest >= n_pre)
        check_batch(tape, X, chunk=chunk, threads=threads)
    finally:
        batch.BATCH_PLAN_MIN_SLOTS = old


def test_batch_plan_never_writes_a_slot_its_instruction_reads():
    """The batch plan is valid (no live value overwritten) and never in place: a loop over
    points whose input and output rows overlap does not vectorize (measured 1.5x slower on
    autograd-west when 77% of its instructions were in place)."""
    from fasttape.bench.families import autograd_west_fn

    tape = ft.compile(ft.trace(lambda x: autograd_west_fn(x, ft, 2000), 100))
    assert tape.n_slots >= batch.BATCH_PLAN_MIN_SLOTS and tape.reuse_plan is None
    args, dest, outputs, rows = batch.layout(tape, True)
    assert rows < 200  # the work set of a softmax chain is small
    n_pre = tape.n_inputs + tape.n_consts
    holder = np.full(rows, -1, dtype=np.int64)
    holder[:n_pre] = np.arange(n_pre)
    k = 0
    for i, op in enumerate(tape.ops):
        ar = OPS[op].arity
        own = args[k:k + ar]
        assert all(holder[own[j]] == tape.args[k + j] for j in range(ar)), i
        assert dest[i] not in own and n_pre <= dest[i] < rows, i
        holder[dest[i]] = n_pre + i
        k += ar
    assert all(holder[o] == t for o, t in zip(outputs, tape.outputs, strict=True))
    X = np.arange(100.0) + np.random.default_rng(1).uniform(-0.5, 0.5, (9, 100))
    check_batch(tape, X, chunk=4, threads=THREADS[-1])


def test_larger_graph_many_chunks_both_threads():
    tape = random_local(3000, n_inputs=20, seed=3)
    X = np.random.default_rng(0).uniform(0.1, 0.9, (101, tape.n_inputs))
    for threads in THREADS:
        check_batch(tape, X, chunk=None, threads=threads)
        check_batch(tape, X, chunk=8, threads=threads)
    if THREADS[-1] > 1:  # the parallel drivers run, with one buffer set per worker
        tape.grad(X, threads=THREADS[-1])
        assert tape.work_buffers().batch["stored"][0] == THREADS[-1]
    # The batch really differs from point to point (a test over identical rows proves little).
    assert len(set(batch.value(tape, X).tolist())) == len(X)


def test_where_branch_does_not_poison_a_batch():
    """docs/tape-format.md's worked example: at x = -1 the unselected sqrt has a NaN partial."""
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(ft.where(x > 0, ft.sqrt(x) * y, 2.0 * y) + x**3)
    tape = ft.compile(g)
    v, dx = tape.value_and_grad(np.array([[4.0, 1.5], [-1.0, 1.5], [0.0, -0.0]]))
    assert v[:2].tolist() == [67.0, 2.0]
    assert dx[:2].tolist() == [[48.375, 2.0], [3.0, 2.0]]
    check_batch(tape, np.array([[4.0, 1.5], [-1.0, 1.5], [0.0, -0.0], [-0.0, math.nan]]),
                chunk=2, threads=THREADS[-1])


# --------------------------------------------------------------------------- the Tape API
@pytest.fixture(scope="module")
def two_out() -> ft.Tape:
    g = ft.Graph()
    x = g.inputs(3)
    g.output(ft.sin(x[0]) * x[1] + ft.exp(x[2]) / 2)
    g.output(x[0] * x[2])
    return ft.compile(g)


def test_tape_methods_accept_a_batch(two_out):
    X = np.random.default_rng(5).normal(size=(9, 3))
    values = two_out.value(X)
    assert values.shape == (9, 2)
    assert_same_bits(values, [two_out.value(x) for x in X], "value")
    assert_same_bits(two_out(X), values, "__call__")
    v, g = two_out.value_and_grad(X, output=1)
    assert v.shape == (9,) and g.shape == (9, 3)
    assert_same_bits(g, [two_out.grad(x, output=1) for x in X], "grad")
    assert_same_bits(two_out.grad(X.tolist(), output=-2, threads=1),
                     [two_out.grad(x, output=0) for x in X], "grad of a nested list")
    # One output: values of shape (B,); integer input is converted.
    one = ft.Tape.from_arrays(two_out.ops, two_out.args, two_out.consts, two_out.outputs[:1], 3)
    assert one.value(np.ones((4, 3), dtype=np.int32)).shape == (4,)
    # A 1-D x keeps its single-point behaviour and types.
    assert isinstance(one.value(X[0]), float)
    assert isinstance(one.value_and_grad(X[0])[0], float)


def test_out_arguments(two_out):
    X = np.random.default_rng(6).normal(size=(5, 3))
    out = np.empty((5, 2))
    assert two_out.value(X, out=out) is out
    assert_same_bits(out, two_out.value(X), "value out=")
    gout = np.empty((5, 3))
    _, g = two_out.value_and_grad(X, output=0, out=gout)
    assert g is gout
    assert_same_bits(g, [two_out.grad(x, output=0) for x in X], "grad out=")
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        two_out.value(X, out=np.empty(5))
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        two_out.grad(X, output=0, out=np.empty((3, 5)))
    with pytest.raises(ValueError, match="writeable C-contiguous float64"):
        two_out.grad(X, output=0, out=np.empty((5, 3), dtype=np.float32))


def test_empty_batch(two_out):
    assert two_out.value(np.empty((0, 3))).shape == (0, 2)
    v, g = two_out.value_and_grad(np.empty((0, 3)), output=0)
    assert v.shape == (0,) and g.shape == (0, 3)


@pytest.mark.parametrize(
    "x,exc,pattern",
    [
        (np.ones((4, 2)), ValueError, r"shape \(B, 3\), one row per point.*\(4, 2\)"),
        (np.ones((2, 4)), ValueError, r"shape \(B, 3\).*\(2, 4\)"),
        (np.ones((2, 3, 1)), ValueError, r"1-D.*2-D.*\(2, 3, 1\)"),
        (np.ones((2, 3), dtype=complex), TypeError, "complex"),
        (np.array([["a", "b", "c"]]), TypeError, "real numbers"),
    ],
    ids=["too-few-columns", "too-many-columns", "3d", "complex", "strings"],
)
def test_bad_batches_are_refused_with_clear_errors(two_out, x, exc, pattern):
    for call in (two_out.value, lambda x: two_out.value_and_grad(x, output=0),
                 lambda x: two_out.grad(x, output=0)):
        with pytest.raises(exc, match=pattern):
            call(x)


def test_output_is_checked_for_batches(two_out):
    with pytest.raises(ValueError, match="2 outputs"):
        two_out.grad(np.ones((2, 3)))
    with pytest.raises(ValueError, match="out of range"):
        two_out.grad(np.ones((2, 3)), output=2)


@pytest.mark.parametrize("threads", [0, -1, MAX_THREADS + 1, 1.0, "2", True])
def test_bad_thread_counts(two_out, threads):
    exc = ValueError if isinstance(threads, int) and not isinstance(threads, bool) else TypeError
    for x in (np.ones((2, 3)), np.ones(3)):  # refused for a single point too
        with pytest.raises(exc, match="threads"):
            two_out.value(x, threads=threads)
        with pytest.raises(exc, match="threads"):
            two_out.grad(x, output=0, threads=threads)


def test_bad_chunk(two_out):
    with pytest.raises(ValueError, match="chunk"):
        batch.value(two_out, np.ones((2, 3)), chunk=0)


# --------------------------------------------------------------------------- threads, memory
def test_threads_argument_restores_numba_setting():
    tape = random_local(500, seed=1)
    X = np.random.default_rng(0).uniform(0.1, 0.9, (64, tape.n_inputs))
    before = numba.get_num_threads()
    chunksize = numba.get_parallel_chunksize()
    for threads in THREADS:
        tape.value_and_grad(X, threads=threads)
        assert numba.get_num_threads() == before
        assert numba.get_parallel_chunksize() == chunksize
    # Numba's own setting is the default.
    numba.set_num_threads(1)
    try:
        assert batch.resolve_threads(None) == 1
        assert_same_bits(tape.grad(X), [tape.grad(x) for x in X], "grad, 1 numba thread")
    finally:
        numba.set_num_threads(before)


def test_chunk_size_bounds_memory():
    tape = random_local(2000, seed=2)
    per_point = batch.point_nbytes(tape, True)
    assert per_point == 8 * (2 * tape.n_slots + tape.n_edges)
    for B in (1, 3, 16, 10_000):
        c = batch.chunk_size(tape, True, B)
        assert c & (c - 1) == 0 and 1 <= c <= batch.CHUNK_MAX
        assert c >= min(B, batch.CHUNK_MAX) or c * 2 * per_point > batch.CHUNK_BYTES
        assert c * per_point <= batch.CHUNK_BYTES
    X = np.random.default_rng(0).uniform(0.1, 0.9, (5000, tape.n_inputs))
    tape.value_and_grad(X, threads=THREADS[-1])
    (workers, c, bufs) = tape.work_buffers().batch["stored"]
    # Buffers hold `workers` chunks of `c` points each, never B points.
    assert workers <= THREADS[-1] and c <= batch.CHUNK_MAX
    assert all(b.shape[0] == workers and b.shape[2] == c for b in bufs)
    # A huge tape still gets a chunk of one point (memory then is one point's work).
    assert batch.chunk_size(tape, True, 10**6) >= 1


def test_chunk_size_is_budget_driven(monkeypatch):
    tape = random_local(1000, seed=2)
    per_point = batch.point_nbytes(tape, True)
    monkeypatch.setattr(batch, "CHUNK_BYTES", 5 * per_point)
    assert batch.chunk_size(tape, True, 1000) == 4
    monkeypatch.setattr(batch, "CHUNK_BYTES", per_point // 2)
    assert batch.chunk_size(tape, True, 1000) == 1
    assert batch.chunk_size(tape, True, 3) == 1


def test_batches_from_several_python_threads():
    """Concurrent batch calls (each possibly parallel inside) give the single-call results."""
    tape = random_local(2000, seed=4)
    rng = np.random.default_rng(1)
    Xs = [rng.uniform(0.1, 0.9, (33, tape.n_inputs)) for _ in range(3)]
    want = [np.array([tape.grad(x) for x in X]) for X in Xs]
    errors: list[str] = []
    start = threading.Barrier(len(Xs))

    def work(i: int) -> None:
        start.wait()
        for _ in range(3):
            g = tape.grad(Xs[i], threads=THREADS[-1])
            if not np.array_equal(g, want[i], equal_nan=True):
                errors.append(f"thread {i}: wrong gradients")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(Xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_batches_work_in_a_forked_child():
    """A child forked after a parallel batch still evaluates batches (GNU OpenMP would abort
    it: the child falls back to one worker, docs/batch.md)."""
    tape = random_local(300, seed=5)
    X = np.random.default_rng(2).uniform(0.1, 0.9, (64, tape.n_inputs))
    want = tape.grad(X, threads=THREADS[-1])  # the parent uses the parallel drivers first
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        ok = False
        try:
            ok = np.array_equal(tape.grad(X, threads=THREADS[-1]), want, equal_nan=True)
        finally:
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    got = os.read(r, 1)
    os.close(r)
    assert status == 0 and got == b"1", (status, got)


def test_small_work_runs_on_the_calling_thread(monkeypatch):
    monkeypatch.setattr(batch, "PARALLEL_MIN_WORK", 100_000)
    tape = random_local(1000, seed=6)
    assert batch.plan(tape, True, 99, 2, None)[1] == 1  # 99 * 1000 node-points: serial
    workers, c = batch.plan(tape, True, 100, 2, None)[1:]
    assert workers == min(2, MAX_THREADS) and c >= batch.CHUNK_MIN_SPLIT
    assert batch.plan(tape, True, 10**4, 1, None)[1] == 1  # threads=1 is one worker
    if MAX_THREADS >= 2:
        assert batch.plan(tape, True, 160, 2, None)[1:] == (2, 32)
        # Too few chunks for the threads: halved (16 points -> two chunks of 8).
        assert batch.plan(random_local(10_000, seed=6), True, 16, 2, None)[1:] == (2, 8)


def test_non_contiguous_and_zero_input_batches(two_out):
    X = np.asfortranarray(np.random.default_rng(7).normal(size=(6, 3)))
    assert_same_bits(two_out.value(X), [two_out.value(x) for x in X], "Fortran-order x")
    assert_same_bits(two_out.grad(X[::2], output=1), [two_out.grad(x, output=1) for x in X[::2]],
                     "strided x")
    const = ft.Tape.from_arrays([OP_BY_NAME["exp"].code], [0], [0.5], [1], 0)
    v, g = const.value_and_grad(np.empty((3, 0)))
    assert v.tolist() == [math.exp(0.5)] * 3 and g.shape == (3, 0)


def test_nan_sign_regression_pow_of_itself():
    """Hypothesis found pow(x, x) at x < 0: both partials NaN, of different signs; the batch
    and the single call may sum them in either order (see assert_same_bits)."""
    tape = ft.Tape.from_arrays([OP_BY_NAME["pow"].code], [0, 0], [], [1], 1)
    X = np.array([[-2.3], [0.7], [-0.0], [math.nan]])
    check_batch(tape, X, chunk=1, threads=1)
    assert np.isnan(tape.grad(X)[0, 0]) and np.isfinite(tape.grad(X)[1, 0])
