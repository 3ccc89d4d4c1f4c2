"""Evaluating one tape from several Python threads: same results, and the GIL is released."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from array import array
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fasttape as ft
from fasttape.bench.families import chain, random_local
from tests.thread_helpers import run_threads

N_THREADS = 4
CALLS_PER_THREAD = 10


def same_bits(a, b) -> bool:
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(a.view(np.uint64), b.view(np.uint64))


@pytest.fixture(scope="module")
def big_tape() -> ft.Tape:
    return random_local(200_000)


@pytest.mark.parametrize("mode", ft.GRAD_MODES)
def test_one_tape_from_four_threads_gives_single_threaded_results(big_tape, mode):
    tape = big_tape.with_grad_mode(mode)
    rng = np.random.default_rng(2024)
    # Two different points per thread, so a thread that read another thread's buffers (or its
    # own previous call's) would return a wrong result.
    xs = [[rng.uniform(0.1, 0.9, tape.n_inputs) for _ in range(2)] for _ in range(N_THREADS)]
    expected = [
        [(tape.value(x), *tape.value_and_grad(x)) for x in per_thread] for per_thread in xs
    ]
    for per_thread in expected:
        for _, _, grad in per_thread:
            assert np.count_nonzero(grad) > 0, "the gradient should not be identically zero"
    start = threading.Barrier(N_THREADS)

    def work(t: int) -> list[str]:
        errors = []
        out = np.empty(tape.n_inputs)
        start.wait()
        for call in range(CALLS_PER_THREAD):
            j = call % 2
            x = xs[t][j]
            want_value, want_v, want_grad = expected[t][j]
            v = tape.value(x)
            if not same_bits(v, want_value):
                errors.append(f"thread {t} call {call}: value {v!r} != {want_value!r}")
            vg, grad = tape.value_and_grad(x)
            if not same_bits(vg, want_v) or not same_bits(grad, want_grad):
                bad = np.flatnonzero(grad != want_grad)[:5]
                errors.append(f"thread {t} call {call}: value_and_grad differs at {bad}")
            vg2, grad2 = tape.value_and_grad(x, out=out)
            if grad2 is not out or not same_bits(out, want_grad) or not same_bits(vg2, want_v):
                errors.append(f"thread {t} call {call}: value_and_grad(out=) differs")
        return errors

    with ThreadPoolExecutor(max_workers=N_THREADS) as pool:
        results = list(pool.map(work, range(N_THREADS)))
    errors = [e for r in results for e in r]
    assert not errors, "\n".join(errors[:10])


def test_threads_with_several_outputs_and_modes_at_once():
    g = ft.Graph()
    xs = g.inputs(50)
    s = ft.sum(ft.sin(a) * b for a, b in itertools.pairwise(xs))
    g.output(s, ft.sum(ft.exp(v) for v in xs), s * s)
    stored = ft.compile(g)
    lean = stored.with_grad_mode("lean")
    rng = np.random.default_rng(5)
    points = [rng.uniform(-1, 1, 50) for _ in range(8)]
    expected = {
        (i, k): stored.value_and_grad(points[i], output=k) for i in range(8) for k in range(3)
    }
    values = [stored.value(p) for p in points]

    def work(t: int) -> int:
        tape = stored if t % 2 else lean
        n = 0
        for rep in range(30):
            i = (t + rep) % 8
            k = rep % 3
            v, grad = tape.value_and_grad(points[i], output=k)
            assert same_bits(v, expected[i, k][0]) and same_bits(grad, expected[i, k][1]), (t, i, k)
            assert same_bits(tape.value(points[i]), values[i]), (t, i)
            n += 1
        return n

    with ThreadPoolExecutor(max_workers=N_THREADS) as pool:
        assert sum(pool.map(work, range(2 * N_THREADS))) == 2 * N_THREADS * 30


def test_each_thread_has_its_own_buffers():
    """A result array returned to one thread is not overwritten by another thread's call."""
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(x + y, x * y)
    tape = ft.compile(g)
    got = {}
    barrier = threading.Barrier(2)

    def work(t: int) -> None:
        barrier.wait()
        r = tape.value([float(t), 10.0])
        barrier.wait()
        for _ in range(50):
            tape.value([100.0 + t, 1.0])
        got[t] = r

    run_threads(work, 2)
    assert list(got[0]) == [10.0, 0.0]
    assert list(got[1]) == [11.0, 10.0]


def test_kernels_release_the_gil():
    """While one thread is inside a long kernel call, another thread starts *and finishes*
    kernel calls.  That is impossible if the kernel held the GIL: the other thread could then
    only run Python code just before or after the long call (within a few switch intervals),
    so we look for a short call nested well inside the middle of a long one."""
    long_tape = chain(3_000_000, "sin")
    short_tape = random_local(20_000)
    long_x = [0.5]
    short_x = np.full(short_tape.n_inputs, 0.5)
    long_tape.value_and_grad(long_x)  # allocate this thread's buffers, warm the caches
    margin = max(4 * sys.getswitchinterval(), 0.01)

    long_calls: list[tuple[float, float]] = []
    short_calls: list[tuple[float, float]] = []
    done = threading.Event()
    ready = threading.Barrier(2)

    def long_worker() -> None:
        ready.wait()
        try:
            for _ in range(3):
                t0 = time.perf_counter()
                long_tape.value_and_grad(long_x)
                long_calls.append((t0, time.perf_counter()))
        finally:
            done.set()

    def short_worker() -> None:
        short_tape.value(short_x)  # this thread's buffers
        ready.wait()
        while not done.is_set():
            t0 = time.perf_counter()
            short_tape.value(short_x)
            short_calls.append((t0, time.perf_counter()))

    threads = [threading.Thread(target=long_worker), threading.Thread(target=short_worker)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert len(long_calls) == 3

    def overlaps(a, b) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    assert any(overlaps(s, long) for s in short_calls for long in long_calls), (
        "no short kernel call overlapped a long one"
    )
    nested = [
        (s, long)
        for long in long_calls
        for s in short_calls
        if long[1] - long[0] > 3 * margin
        and s[0] >= long[0] + margin
        and s[1] <= long[1] - margin
    ]
    durations = [round(b - a, 4) for a, b in long_calls]
    assert max(durations) > 3 * margin, f"long calls too short to judge: {durations}"
    assert nested, (
        f"no short call ran inside a long call (long calls {durations} s, "
        f"{len(short_calls)} short calls, margin {margin} s): the kernel seems to hold the GIL"
    )


# ---------------------------------------------------------------------- recording a Graph
GRAPH_THREADS = 4
GRAPH_OPS = 3_000  # per thread: long enough that threads switch inside node creation


def _thread_term(xs: list, t: int) -> object:
    """Thread t's expression: a chain mixing unary, binary and constant-creating ops."""
    v = xs[t]
    for k in range(GRAPH_OPS):
        w = xs[(t + k) % len(xs)]
        v = ft.sin(v) * 0.5 + w * (t + 1) if k % 3 else v / (1.0 + w * w) - float(k % 7)
    return v


def _single_threaded_values(x: np.ndarray) -> np.ndarray:
    g = ft.Graph()
    xs = g.inputs(len(x))
    g.output([_thread_term(xs, t) for t in range(GRAPH_THREADS)])
    return ft.compile(g).value(x)


def _record_term(xs: list, t: int, results: list, errors: list, barrier) -> None:
    barrier.wait()
    try:
        results[t] = _thread_term(xs, t)
    except RuntimeError as exc:
        errors.append(exc)


def test_graph_extended_from_threads_is_right_or_refused():
    """Four threads extending one Graph at once used to compile, silently, to wrong values
    (the node index was read after an unsynchronised append; issue 15.4).  Now each run
    either gives the single-threaded values bitwise or raises a clear error: at the thread
    that saw the clash and again at compile (never a wrong tape)."""
    x = np.linspace(0.1, 0.9, 7)
    want = _single_threaded_values(x)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows at once
    outcomes = []
    try:
        for _ in range(20):
            g = ft.Graph()
            xs = g.inputs(len(x))
            results: list = [None] * GRAPH_THREADS
            errors: list = []
            barrier = threading.Barrier(GRAPH_THREADS)
            threads = [
                threading.Thread(target=_record_term, args=(xs, t, results, errors, barrier))
                for t in range(GRAPH_THREADS)
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            for exc in errors:
                assert "thread" in str(exc) and "Graph" in str(exc), str(exc)
            if errors:
                done = [r for r in results if r is not None] or [xs[0]]
                g.output(done)
                with pytest.raises(RuntimeError, match="thread"):
                    ft.compile(g)
                outcomes.append("refused")
                continue
            g.output(results)
            got = ft.compile(g).value(x)
            assert same_bits(got, want), f"wrong values from a Graph built in threads: {got}"
            outcomes.append("right")
    finally:
        sys.setswitchinterval(old)
    assert len(outcomes) == 20, outcomes


def test_graph_extended_by_threads_one_after_another_is_fine():
    """Handing a Graph from thread to thread (no overlap) is not an error."""
    x = np.linspace(0.1, 0.9, 7)
    g = ft.Graph()
    xs = g.inputs(len(x))
    results: list = [None] * GRAPH_THREADS
    for t in range(GRAPH_THREADS):
        th = threading.Thread(target=lambda t=t: results.__setitem__(t, _thread_term(xs, t)))
        th.start()
        th.join()
    g.output(results)
    assert same_bits(ft.compile(g).value(x), _single_threaded_values(x))


class _InterleavedArgs(array):
    """An argument column whose appends let "another thread" add a node at that moment."""

    graph: ft.Graph | None = None

    def append(self, value: int) -> None:
        super().append(value)
        if self.graph is not None:
            self.graph._ops.append(self.graph._ops[0])  # a node of the other thread


@pytest.mark.parametrize("record", [
    pytest.param(lambda x, y, c: -x, id="unary operator"),
    pytest.param(lambda x, y, c: ft.sin(x), id="unary function"),
    pytest.param(lambda x, y, c: x * y, id="binary operator"),
    pytest.param(lambda x, y, c: ft.atan2(x, y), id="binary function"),
    pytest.param(lambda x, y, c: ft.where(c, x, y), id="ternary"),
])
def test_a_node_appended_mid_record_is_caught_for_every_arity(record):
    """The clash check runs whatever the op's arity: a node appended by another thread while
    one is recorded (here, deterministically, during its argument appends) raises at once
    and the Graph then refuses to compile."""
    g = ft.Graph()
    x, y = g.inputs(2)
    cond = x < 0.5  # recorded before the interleaving starts
    args = _InterleavedArgs("i", g._args)
    g._args = args
    args.graph = g
    with pytest.raises(RuntimeError, match="threads"):
        record(x, y, cond)
    args.graph = None
    g.output(x)
    with pytest.raises(RuntimeError, match="thread"):
        ft.compile(g)
