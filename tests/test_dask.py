"""fasttape.dask: lazy batches on dask arrays, summed gradients, the tape shipped once per
worker, validation before scheduling, and a worker killed mid-computation (docs/distributed.md).

The threaded-scheduler tests are quick; the LocalCluster tests (2 worker processes, started
and closed by a module fixture) are marked slow.  Dask is in the ``test`` extra, so under CI
this module may not skip (conftest.py turns a skipped module into a failure).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

import fasttape as ft  # noqa: E402
import fasttape.dask as fd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def f3(x):
    return [ft.sum(ft.sin(x[i]) * x[i + 1] for i in range(len(x) - 1)),
            ft.exp(x[0] * 0.1) - x[2] * x[3]]


@pytest.fixture(scope="module")
def tape():
    return ft.compile(ft.trace(f3, n_inputs=6))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    return rng.uniform(-1.0, 1.0, (700, 6))


def same(a, b):
    """Bitwise equality (NaN matching NaN), shapes included."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


# ------------------------------------------------------------------ import and shipping
def test_import_fasttape_does_not_import_dask():
    code = "import sys, fasttape; print('dask' in sys.modules, 'distributed' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_shipped_tape_pickles_as_arrays_and_is_kept_by_digest(tape):
    shipped = fd.ShippedTape(tape)
    assert shipped.digest == fd.ShippedTape(ft.compile(ft.trace(f3, n_inputs=6))).digest
    other = ft.compile(ft.trace(f3, n_inputs=7))
    assert fd.ShippedTape(other).digest != shipped.digest
    assert fd.ShippedTape(tape.with_grad_mode("lean")).digest != shipped.digest
    before = fd.shipped_tape_stats()
    one = pickle.loads(pickle.dumps(shipped))
    two = pickle.loads(pickle.dumps(shipped))
    after = fd.shipped_tape_stats()
    assert one.tape is not tape and type(one.tape) is type(tape)
    assert two.tape is one.tape  # the second arrival reuses the kept tape
    assert after["received"] - before["received"] == 2
    assert after["built"] - before["built"] <= 1  # at most once (another test may have)
    x = np.linspace(0.1, 0.6, 6)
    assert same(one.tape.value(x), tape.value(x))


# ------------------------------------------------------------------ threaded scheduler
@pytest.mark.parametrize("chunks", [(128, 6), ((1, 0, 299, 400), (6,))])
def test_values_and_derivatives_are_the_numpy_batch_bitwise(tape, data, chunks):
    X = da.from_array(data, chunks=chunks)
    v = fd.value(tape, X)
    assert v.shape == (700, 2) and v.chunks == (X.chunks[0], (2,))
    assert same(v.compute(scheduler="threads"), tape.value(data))
    for k in (0, 1):
        val, g = fd.value_and_grad(tape, X, output=k)
        assert val.chunks == (X.chunks[0],) and g.chunks == X.chunks
        val_np, g_np = tape.value_and_grad(data, output=k)
        got_v, got_g = dask.compute(val, g, scheduler="threads")
        assert same(got_v, val_np) and same(got_g, g_np)
        assert same(fd.grad(tape, X, output=k).compute(scheduler="threads"), g_np)
    d = np.linspace(-1.0, 1.0, 6)
    val, tan = fd.jvp(tape, X, d)
    assert tan.chunks == (X.chunks[0], (2,))
    val_np, tan_np = tape.jvp(data, d)
    got_v, got_t = dask.compute(val, tan, scheduler="threads")
    assert same(got_v, val_np) and same(got_t, tan_np)
    h = fd.hvp(tape, X, X[::-1].rechunk(X.chunks), output=1)
    assert h.chunks == X.chunks
    assert same(h.compute(scheduler="threads"), tape.hvp(data, data[::-1], output=1))


def test_single_output_shapes_and_float32_points(data):
    one = ft.compile(ft.trace(lambda x: ft.sin(x[0]) * x[1], n_inputs=2))
    X = da.from_array(data[:, :2].astype(np.float32), chunks=(100, 2))
    exact = data[:, :2].astype(np.float32).astype(np.float64)  # widening is exact
    v = fd.value(one, X)
    assert v.shape == (700,) and v.chunks == (X.chunks[0],)
    assert same(v.compute(scheduler="threads"), one.value(exact))
    val, tan = fd.jvp(one, X, [1.0, 0.5])
    assert val.shape == tan.shape == (700,)
    assert same(val.compute(scheduler="threads"), one.value(exact))
    assert same(tan.compute(scheduler="threads"), one.jvp(exact, [1.0, 0.5])[1])


def test_parameters_vary_with_x_or_alone():
    fit = ft.compile(ft.trace(lambda w, p: (w[0] * p[0] + w[1] * p[1] - p[2]) ** 2,
                              n_inputs=2, n_params=3))
    rng = np.random.default_rng(2)
    P, W = rng.normal(size=(300, 3)), rng.normal(size=(300, 2))
    Pd, Wd = da.from_array(P, chunks=(64, 3)), da.from_array(W, chunks=(64, 2))
    w = np.array([0.5, -1.5])
    p = P[0]
    for x, pp, xn, pn in ((w, Pd, w, P), (Wd, p, W, p), (Wd, Pd, W, P)):
        val, g = fd.value_and_grad(fit, x, pp)
        got_v, got_g = dask.compute(val, g, scheduler="threads")
        exp_v, exp_g = fit.value_and_grad(xn, pn)
        assert same(got_v, exp_v) and same(got_g, exp_g)
        assert same(fd.value(fit, x, pp).compute(scheduler="threads"), fit.value(xn, pn))
        assert same(fd.hvp(fit, x, [1.0, 2.0], pp).compute(scheduler="threads"),
                    fit.hvp(xn, [1.0, 2.0], pn))
    loss, lg = fd.sum_value_and_grad(fit, w, Pd)
    got_l, got_g = dask.compute(loss, lg, scheduler="threads")
    assert got_l.shape == () and got_g.shape == (2,)
    np.testing.assert_allclose(got_l, fit.value(w, P).sum(), rtol=1e-13)
    np.testing.assert_allclose(got_g, fit.grad(w, P).sum(axis=0), rtol=1e-13)


def test_values_and_gradients_come_from_one_task_per_chunk(tape, data):
    from dask.callbacks import Callback

    X = da.from_array(data, chunks=(100, 6))
    val, g = fd.value_and_grad(tape, X, output=0)
    ran: list[str] = []

    class Count(Callback):
        def _posttask(self, key, result, dsk, state, id):
            name = key[0] if isinstance(key, tuple) else key
            if name.startswith("task_value_and_grad"):
                ran.append(key)

    with Count():
        dask.compute(val, g, scheduler="threads")
    assert len(ran) == len(set(ran)) == X.numblocks[0]


def test_one_task_per_chunk_fused_with_the_task_that_makes_the_points(tape):
    # Each task costs a fixed overhead on a cluster: a blockwise producer of the points
    # (map_blocks, a reader) and the evaluation run as one task per chunk; the graph adds one
    # key for the tape and one per shared vector.
    X = da.ones((800, 6), chunks=(100, 6)).map_blocks(np.sin)
    cases = [(fd.value(tape, X), 1), (fd.grad(tape, X, output=0), 1),
             (fd.hvp(tape, X, np.ones(6), output=0), 2)]
    for arr, extra in cases:
        (opt,) = dask.optimize(arr)
        assert len(opt.__dask_graph__()) == X.numblocks[0] + extra


def test_summed_value_and_gradient_is_deterministic_and_close_to_numpy(tape, data):
    X = da.from_array(data, chunks=(50, 6))
    s, g = fd.sum_value_and_grad(tape, X, output=0, split_every=3)
    assert s.shape == () and g.shape == (6,) and g.chunks == ((6,),)
    a = dask.compute(s, g, scheduler="threads")
    b = dask.compute(s, g, scheduler="synchronous")
    assert same(a[0], b[0]) and same(a[1], b[1])
    v_np, g_np = tape.value_and_grad(data, output=0)
    np.testing.assert_allclose(a[0], v_np.sum(), rtol=1e-12)
    np.testing.assert_allclose(a[1], g_np.sum(axis=0), rtol=1e-12, atol=1e-12)


def test_summed_gradient_tasks_hold_a_bounded_block(tape, data, monkeypatch):
    # A chunk of 700 rows evaluated 64 rows at a time gives the same sums as 64-row chunks
    # evaluated whole: the sub-blocks are the kernel calls (SUM_ROWS), summed in order.
    monkeypatch.setattr(fd, "SUM_ROWS", 64)
    big = fd.sum_value_and_grad(tape, da.from_array(data, chunks=(700, 6)), output=1)
    got = dask.compute(*big, scheduler="synchronous")
    v_np, g_np = tape.value_and_grad(data, output=1)
    blocks = [(np.sum(v_np[i:i + 64]), np.sum(g_np[i:i + 64], axis=0))
              for i in range(0, 700, 64)]
    exp_v, exp_g = 0.0, np.zeros(6)
    for bv, bg in blocks:
        exp_v += bv
        exp_g += bg
    assert same(got[0], np.float64(exp_v)) and same(got[1], exp_g)


def _peak_held_bytes(tape, n_points: int) -> int:
    """The most bytes of array results held at once while the sum runs (synchronous)."""
    from dask.callbacks import Callback

    X = da.random.default_rng(3).uniform(-1.0, 1.0, (n_points, 6), chunks=(2000, 6))
    s, g = fd.sum_value_and_grad(tape, X, output=0, split_every=4)
    peak = [0]

    class Held(Callback):
        def _posttask(self, key, result, dsk, state, id):
            held = sum(v.nbytes for v in state["cache"].values() if isinstance(v, np.ndarray))
            peak[0] = max(peak[0], held)

    with Held():
        dask.compute(s, g, scheduler="synchronous")
    return peak[0]


def test_summed_gradient_memory_does_not_grow_with_the_points(tape):
    small, large = _peak_held_bytes(tape, 20_000), _peak_held_bytes(tape, 320_000)
    # One chunk of points (96 kB) and a few partial sums (rows of 1 + 6 floats) per level of
    # the tree (depth log4 of the chunks: 2 and 4 here), never all 160 partial sums, nor
    # all per-point gradients (15 MB); a flat sum of the partials fails (150 rows more).
    chunk, row = 2000 * 6 * 8, 7 * 8
    assert chunk <= small <= large < small + 16 * row, (small, large)


# ------------------------------------------------------------------ validation
def _unschedulable(chunks, dtype=np.float64):
    """A dask array whose computation fails: building a graph on it must not compute it."""
    def boom(block_info=None):
        raise AssertionError("a task ran")
    return da.map_blocks(boom, chunks=chunks, dtype=dtype, meta=np.empty((0, 0), dtype))


@pytest.mark.parametrize("call", ["value", "value_and_grad", "grad", "jvp", "hvp",
                                  "sum_value_and_grad"])
def test_bad_batches_fail_at_graph_construction(tape, call):
    fn = getattr(fd, call)
    extra = (np.ones(6),) if call in ("jvp", "hvp") else ()
    kw = {"output": 0} if call not in ("value", "jvp") else {}
    cases = [
        (_unschedulable(((100, 100), (5,))), ValueError,
         r"x must have 6 columns \(one per input\); got shape \(200, 5\)"),
        (_unschedulable(((100, 100), (3, 3))), ValueError,
         r"x is chunked across its columns \(chunks \(3, 3\)\).*x\.rechunk\(\{1: -1\}\)"),
        (_unschedulable(((100, 100), (6,)), np.int64), TypeError,
         r"x must hold floating-point numbers of at most 64 bits; got dtype int64.*"
         r"astype\('float64'\)"),
        (_unschedulable(((100, 100), (6,)), np.longdouble), TypeError,
         r"x must hold floating-point numbers of at most 64 bits"),
        (da.ones(6, chunks=3), ValueError, r"x must be a 2-D dask array of shape \(B, 6\)"),
        (np.ones((4, 6)), TypeError, r"x is a 2-D ndarray, not a dask array"),
        (np.ones(6), TypeError, r"no dask array among x"),
        (np.ones(5), ValueError, r"x must have shape \(6,\)"),
    ]
    for x, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn(tape, x, *extra, **kw)


def test_bad_companions_fail_at_graph_construction(tape):
    X = _unschedulable(((100, 100), (6,)))
    with pytest.raises(ValueError, match=r"v and x must have the same row chunks.*"
                                         r"\(50, 150\) and \(100, 100\).*v\.rechunk"):
        fd.jvp(tape, X, _unschedulable(((50, 150), (6,))))
    with pytest.raises(ValueError, match=r"v must have 6 columns"):
        fd.hvp(tape, X, _unschedulable(((100, 100), (2,))), output=0)
    with pytest.raises(ValueError, match="output"):
        fd.grad(tape, X)  # two outputs: which one?
    with pytest.raises(ValueError, match="threads must be a positive int"):
        fd.value(tape, X, threads=0)
    with pytest.raises(TypeError, match="this tape has no parameters"):
        fd.value(tape, X, np.ones(2))
    with pytest.raises(TypeError, match="tape must be a fasttape Tape"):
        fd.value(object(), X)
    fit = ft.compile(ft.trace(lambda w, p: w[0] * p[0], n_inputs=1, n_params=2))
    with pytest.raises(TypeError, match=r"this tape has 2 parameters: pass p="):
        fd.value(fit, _unschedulable(((10,), (1,))))
    with pytest.raises(ValueError, match=r"p must have 2 columns"):
        fd.value(fit, np.ones(1), _unschedulable(((10,), (3,))))
    with pytest.raises(ValueError, match=r"p and x must have the same row chunks"):
        fd.value(fit, _unschedulable(((10,), (1,))),
                 _unschedulable(((5, 5), (2,))))


def test_rows_per_task_scales_with_the_target(tape, data):
    t = fd.point_seconds(tape, data[:64], grad=False, repeat=1)
    assert t > 0
    assert fd.rows_per_task(tape, data[:64], seconds=1e-12) == 1
    assert fd.rows_per_task(tape, data[:64], seconds=1e3) > 1000
    with pytest.raises(ValueError, match="seconds must be positive"):
        fd.rows_per_task(tape, data[:64], seconds=0)
    with pytest.raises(ValueError, match=r"sample must have shape \(S, 6\)"):
        fd.point_seconds(tape, data[0])


# ------------------------------------------------------------------ a cluster of processes
@pytest.fixture(scope="module", params=["default", "no-queuing"])
def client(request):
    # Two worker processes of one thread, importing this checkout's fasttape; closed (and
    # their processes ended) when the module's tests are done.  Once with Dask's default
    # scheduler, once without its queuing (worker-saturation inf), which docs/distributed.md
    # recommends for short tasks: the guarantees below hold under both.
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    config = ({"distributed.scheduler.worker-saturation": float("inf")}
              if request.param == "no-queuing" else {})
    with dask.config.set(config):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
            silence_logs=logging.CRITICAL, env=env,
        )
    c = distributed.Client(cluster)
    try:
        c.wait_for_workers(2, timeout=120)
        expected = (float("inf") if request.param == "no-queuing"
                    else dask.config.get("distributed.scheduler.worker-saturation"))
        assert c.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION) \
            == expected
        yield c
    finally:
        c.close()
        cluster.close(timeout=60)


@pytest.mark.slow
def test_cluster_results_are_bitwise_and_the_tape_travels_once_per_worker(client, tape, data):
    files = client.run(lambda: __import__("fasttape").__file__)
    assert set(files.values()) == {ft.__file__}
    X = da.from_array(data, chunks=(25, 6))  # 28 tasks per computation
    val, g = fd.value_and_grad(tape, X, output=0)
    exp_v, exp_g = tape.value_and_grad(data, output=0)
    for rep in range(2):
        before = client.run(fd.shipped_tape_stats)
        got_v, got_g = dask.compute(val, g)
        after = client.run(fd.shipped_tape_stats)
        assert same(got_v, exp_v) and same(got_g, exp_g)
        received = {w: after[w]["received"] - before[w]["received"] for w in after}
        built = {w: after[w]["built"] - before[w]["built"] for w in after}
        # Once per worker that ran a task, not once per task (28 of them)...
        assert 1 <= sum(received.values()) <= 2 and max(received.values()) == 1, received
        # ...and validated at most once per worker process, ever.
        assert sum(built.values()) <= (2 if rep == 0 else 0), built
    s = fd.sum_value_and_grad(tape, X, output=0)
    got = dask.compute(*s)
    local = dask.compute(*s, scheduler="threads")
    assert same(got[0], local[0]) and same(got[1], local[1])


@pytest.mark.slow
def test_a_worker_killed_mid_computation_loses_nothing(client):
    def deep(x):  # about 4,500 instructions over 8 inputs
        y = x[0]
        for k in range(1500):
            y = ft.sin(y * x[k % 8] + 0.25)
        return [y, y * x[1]]

    big = ft.compile(ft.trace(deep, n_inputs=8))
    # 60 tasks of about 40 ms here: the computation lasts long enough to be interrupted.
    X = da.random.default_rng(4).uniform(-1.0, 1.0, (60_000, 8), chunks=(1000, 8))
    val, g = fd.value_and_grad(big, X, output=1)
    s, sg = fd.sum_value_and_grad(big, X, output=1, split_every=4)
    expected = dask.compute(val, g, s, sg, scheduler="threads")
    pids = client.run(os.getpid)
    persisted = client.persist([val, g, s, sg])
    futures = distributed.futures_of(persisted)
    deadline = time.monotonic() + 120
    while sum(f.done() for f in futures) < 10:  # some results exist, most are to come
        assert time.monotonic() < deadline, "the cluster made no progress"
        time.sleep(0.01)
    holders = client.who_has(futures)
    held: dict[str, int] = {}
    for addrs in holders.values():
        for a in addrs:
            held[a] = held.get(a, 0) + 1
    victim = max(held, key=held.get)  # the worker holding most results: they are lost
    done_at_kill = sum(f.done() for f in futures)
    os.kill(pids[victim], signal.SIGKILL)
    results = client.compute(persisted)
    distributed.wait(results, timeout=120)  # bounded: a hang fails here
    got = client.gather(results)
    assert done_at_kill < len(futures)
    for a, b in zip(got, expected, strict=True):
        assert same(a, b)
    assert victim not in client.scheduler_info()["workers"]  # it did die
