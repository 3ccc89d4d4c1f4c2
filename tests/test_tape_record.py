"""The thin Tape: the record's public interface, one user-facing type, batches without
exceptions, and the names (``n_instructions``; ``Tape.n_nodes`` deprecated)."""

from __future__ import annotations

import ast
import inspect
import pickle
import warnings

import numpy as np
import pytest

import fasttape as ft
from fasttape import tape as tape_module
from fasttape.checkpoint.scan import compile_plain
from fasttape.tape import TapeRecord, check_out, resolve_threads


@pytest.fixture
def graph():
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(ft.sin(x) * y + ft.exp(x - y), x * y)
    return g


def test_every_way_to_make_a_tape_gives_the_user_facing_type(graph, tmp_path):
    tape = ft.compile(graph)
    assert type(tape) is ft.Tape and isinstance(tape, TapeRecord)
    assert type(ft.compile(graph, optimize=False)) is ft.Tape
    assert type(ft.Tape.from_arrays(**tape.to_arrays())) is ft.Tape
    assert type(tape.with_grad_mode("lean")) is ft.Tape
    assert type(pickle.loads(pickle.dumps(tape))) is ft.Tape
    assert type(ft.optimize(tape)) is ft.Tape
    tape.save(tmp_path / "t.npz")
    assert type(ft.load(tmp_path / "t.npz")) is ft.Tape


def test_compile_returns_one_type_unless_memory_limit_asks_for_checkpointing(graph):
    # The annotation says which: a Tape, a CheckpointedTape (memory_limit) or, for a graph
    # traced on tensors, a TensorTape.
    assert inspect.signature(ft.compile).return_annotation == \
        "Tape | CheckpointedTape | TensorTape"
    assert type(ft.compile(graph, memory_limit=10**6)) is ft.checkpoint.CheckpointedTape
    tensor = ft.compile(ft.trace(lambda x: x.sum(), shapes=[(3,)]))
    assert type(tensor) is ft.TensorTape
    assert type(pickle.loads(pickle.dumps(tensor))) is ft.TensorTape


def test_a_batch_is_found_by_its_shape_not_by_an_exception(graph):
    # No try/except on the evaluation path of the record.
    src = inspect.getsource(TapeRecord)
    cls = ast.parse(src).body[0]
    for fn in cls.body:
        if isinstance(fn, ast.FunctionDef) and fn.name in ("value", "value_and_grad",
                                                           "_point_or_batch"):
            assert not any(isinstance(n, ast.Try) for n in ast.walk(fn)), fn.name
    assert not any(isinstance(v, type) and issubclass(v, BaseException)
                   for v in vars(tape_module).values())
    tape = ft.compile(graph)
    X = np.array([[0.3, 0.7], [1.0, -2.0]])
    v, g = tape.value_and_grad(X, output=0)
    for k in range(2):
        v1, g1 = tape.value_and_grad(X[k], output=0)
        assert v[k] == v1 and np.array_equal(g[k], g1)
    assert np.array_equal(tape.value([[0.3, 0.7]]), tape.value(X[:1]))


def test_the_bare_record_evaluates_single_points_only(graph):
    rec = compile_plain(graph)
    assert type(rec) is TapeRecord
    full = ft.compile(graph, optimize=False)
    x = np.array([0.3, 0.7])
    assert rec.value_and_grad(x, output=1)[0] == full.value_and_grad(x, output=1)[0]
    with pytest.raises(ValueError, match="1-D"):
        rec.value(np.ones((2, 2)))
    with pytest.raises(ValueError, match="1-D"):
        rec.value_and_grad(np.ones((2, 2)), output=0)


def test_as_input(graph):
    tape = ft.compile(graph)
    x = np.array([1.0, 2.0])
    assert tape.as_input(x) is x  # no copy on the fast path
    got = tape.as_input([1, 2])
    assert got.dtype == np.float64 and got.flags.c_contiguous and list(got) == [1.0, 2.0]
    with pytest.raises(ValueError, match="1-D"):
        tape.as_input(np.ones((3, 2)))
    with pytest.raises(ValueError, match="2 inputs"):
        tape.as_input([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"1-D .* or 2-D"):
        tape.as_input(np.ones((1, 1, 2)))
    with pytest.raises(TypeError, match="real numbers"):
        tape.as_input(["a", "b"])


def test_output_index(graph):
    tape = ft.compile(graph)
    assert tape.output_index(0) == 0 and tape.output_index(-1) == 1
    assert tape.output_index(np.int64(1)) == 1
    with pytest.raises(ValueError, match="2 outputs"):
        tape.output_index(None)
    with pytest.raises(ValueError, match="out of range"):
        tape.output_index(2)
    with pytest.raises(TypeError, match="int"):
        tape.output_index(True)


def test_work_buffers_are_per_thread_and_point_buffers_sized_to_the_tape(graph):
    import threading

    tape = ft.compile(graph, optimize=False)
    tape.work_buffers().mine = "main"
    assert tape.work_buffers().mine == "main"
    other = []
    t = threading.Thread(target=lambda: other.append(hasattr(tape.work_buffers(), "mine")))
    t.start()
    t.join()
    assert other == [False]  # another thread has its own store
    buf = tape.point_buffers(grad=True)
    assert buf.vals.shape == (tape.n_slots,) and buf.res.shape == (tape.n_outputs,)
    assert buf.adj.shape == (tape.n_slots,) and not buf.adj.any()
    assert buf.parts.shape == (tape.n_edges,)


def test_check_out_and_resolve_threads():
    out = np.empty(3)
    assert check_out(out, 3, "out") is out
    with pytest.raises(ValueError, match="out must be a writeable C-contiguous float64"):
        check_out(np.empty(3, dtype=np.float32), 3, "out")
    assert resolve_threads(1) == 1
    with pytest.raises(TypeError):
        resolve_threads(1.5)
    with pytest.raises(ValueError, match="out of range"):
        resolve_threads(0)


def test_plan_and_pass_records_are_read_only(graph):
    tape = ft.compile(graph)
    assert tape.pass_records[0].name == "dce"
    assert tape.stats()["passes"] == [r.as_dict() for r in tape.pass_records]
    assert tape.reuse_plan is None  # a tiny tape: no plan
    assert ft.compile(graph, optimize=False).pass_records == ()
    with pytest.raises(AttributeError):
        tape.reuse_plan = None
    with pytest.raises(AttributeError):
        tape.pass_records = ()


def test_optimize_refuses_what_is_not_a_tape(graph):
    with pytest.raises(TypeError, match=r"expects a fasttape\.Tape"):
        ft.optimize(graph)


def test_n_instructions_and_the_deprecated_n_nodes(graph):
    tape = ft.compile(graph, optimize=False)
    assert tape.n_instructions == 6  # sin, mul, sub, exp, add, mul
    assert tape.n_slots == tape.n_inputs + tape.n_consts + tape.n_instructions
    assert graph.n_nodes == 2 + 6  # Graph.n_nodes counts inputs too
    with pytest.warns(DeprecationWarning, match="n_instructions"):
        assert tape.n_nodes == tape.n_instructions
    s = tape.stats()
    assert s["n_instructions"] == tape.n_instructions and "n_nodes" not in s
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tape.listing()  # the display uses the new name


def test_work_array_is_per_layer_per_thread_and_keeps_one_size_per_name():
    import threading

    tape = ft.compile(ft.trace(lambda v: v[0] * v[1], 2))
    a = tape.work_array("deriv", "vals", (5,), zero=True)
    assert a.shape == (5,) and not a.any()
    assert tape.work_array("deriv", "vals", (5,)) is a  # reused
    assert tape.work_array("sparse", "vals", (5,)) is not a  # layers do not share
    b = tape.work_array("deriv", "vals", (7,))
    assert b.shape == (7,) and tape.work_array("deriv", "vals", (5,)) is not a  # old size dropped
    seen = []
    t = threading.Thread(target=lambda: seen.append(tape.work_array("deriv", "vals", (7,))))
    t.start()
    t.join()
    assert seen[0] is not b  # another thread gets its own array


def test_graph_leaf_counts_are_checked():
    g = ft.Graph()
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"inputs\(n\) expects a non-negative integer"):
            g.inputs(bad)
        with pytest.raises(ValueError, match=r"params\(n\) expects a non-negative integer"):
            g.params(bad)
