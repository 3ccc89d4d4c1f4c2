"""tape.explain(x): the first instruction that made a value or gradient non-finite (issue 15.14),
and the source lines recorded with record_source=True."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import fasttape as ft
from fasttape.explain import Explanation


def line_of(fn, text: str) -> int:
    """The line number of the first line of ``fn``'s source containing ``text``."""
    lines, first = inspect.getsourcelines(fn)
    for k, ln in enumerate(lines):
        if text in ln:
            return first + k
    raise AssertionError(f"{text!r} not in {fn.__name__}")


def model(v):
    shifted = v[0] - 1.0
    logged = ft.log(shifted)  # NaN for v[0] < 1
    rooted = ft.sqrt(v[1])  # infinite derivative at v[1] = 0
    return logged * v[2] + rooted


@pytest.fixture(params=[False, True], ids=["plain", "record_source"])
def tape(request) -> ft.Tape:
    return ft.compile(ft.trace(model, 3, record_source=request.param))


def test_all_finite(tape):
    r = tape.explain([2.0, 1.0, 3.0])
    assert isinstance(r, Explanation) and r.finite
    assert r.sweep is None and r.instruction is None
    assert str(r) == "all finite: output 0 = 1.0 and its gradient"


def test_forward_nan_names_the_log(tape):
    r = tape.explain([0.5, 1.0, 3.0])
    assert not r.finite and r.sweep == "forward" and r.op == "log"
    assert r.arg_values == (-0.5,) and math.isnan(r.result)
    assert math.isnan(r.value) and r.n_bad_grad == 1
    text = str(r)
    assert "log(" in text and "-0.5" in text and "forward" in text
    if r.source is not None:
        assert r.source[1] == line_of(model, "ft.log(")
        assert r.source[0] == __file__ and r.source[2] == "model"
        assert f":{r.source[1]} in model" in text


def test_sources_are_reported_only_when_recorded():
    plain = ft.compile(ft.trace(model, 3))
    rec = ft.compile(ft.trace(model, 3, record_source=True))
    x = [0.5, 1.0, 3.0]
    assert plain.explain(x).source is None and not plain.explain(x).unoptimised
    assert "record_source=True" in str(plain.explain(x))
    r = rec.explain(x)
    assert r.unoptimised and r.source == (__file__, line_of(model, "ft.log("), "model")
    assert r.node is not None


def test_reverse_inf_names_the_sqrt(tape):
    r = tape.explain([2.0, 0.0, 3.0])
    assert r.value == 0.0 and r.n_bad_grad == 1
    assert r.sweep == "reverse" and r.op == "sqrt"
    assert r.arg_values == (0.0,) and r.result == 0.0
    assert r.adjoint == 1.0 and r.partials == (math.inf,)
    assert "reverse" in str(r) and "inf" in str(r)
    if r.source is not None:
        assert r.source[1] == line_of(model, "ft.sqrt(")


def test_nan_input_is_named():
    tape = ft.compile(ft.trace(lambda v: ft.sin(v[0]) + v[1], 2))
    r = tape.explain([math.nan, 1.0])
    assert r.sweep == "forward" and r.op == "sin" and math.isnan(r.arg_values[0])
    assert "input 0" in str(r)


def test_output_that_is_a_nan_input():
    tape = ft.compile(ft.trace(lambda v: v[0], 1))
    r = tape.explain([math.inf])
    assert not r.finite and r.instruction is None and "input 0" in str(r)


def test_multi_output_checks_the_chosen_output_only():
    def fn(v):
        return ft.log(v[0]), ft.sqrt(v[1]) * 2.0

    tape = ft.compile(ft.trace(fn, 2, record_source=True))
    x = [-1.0, 4.0]
    r_all = tape.explain(x)
    assert r_all.output is None and r_all.n_bad_grad is None and r_all.op == "log"
    assert str(r_all).startswith("1 of 2 output values not finite")
    ok = tape.explain(x, output=1)
    assert ok.finite and ok.output == 1, str(ok)
    assert tape.explain(x, output=0).op == "log"
    assert tape.explain([1.0, 4.0]).finite


def test_dead_instructions_are_not_blamed():
    """A NaN in a node the output does not use (kept by optimize=[]) is not the culprit."""
    g = ft.Graph()
    x = g.inputs(1)[0]
    ft.log(x - 5.0)  # dead: never an output
    g.output(ft.sqrt(x))
    tape = ft.compile(g, optimize=[])
    r = tape.explain([0.0])
    assert r.sweep == "reverse" and r.op == "sqrt"


def test_nan_in_the_unselected_where_branch_is_all_finite():
    tape = ft.compile(ft.trace(lambda v: ft.where(v[0] > 0, ft.sqrt(v[0]), 0.0), 1))
    assert tape.explain([-1.0]).finite


def test_reverse_overflow_of_finite_partials():
    """Every value and partial finite, the adjoint product not: d/dx (x * 1e300) * 1e300."""
    tape = ft.compile(ft.trace(lambda v: v[0] * 1e300 * 1e300, 1), optimize=False)
    value, grad = tape.value_and_grad([1e-300])
    assert math.isfinite(value) and grad[0] == math.inf
    r = tape.explain([1e-300])
    assert r.sweep == "reverse" and r.instruction == 0 and r.op == "mul"
    assert r.adjoint == 1e300 and r.partials == (1e300, 1e-300)


def test_explain_after_the_passes_reports_on_the_unoptimised_tape():
    def fn(v):
        a = v[0] * 1.0 + 0.0  # simplified away by the passes
        b = a - 3.0
        return ft.log(b) + ft.log(b) * 2.0  # cse merges the logs

    g = ft.trace(fn, 1, record_source=True)
    tape = ft.compile(g)
    r = tape.explain([1.0])
    assert r.unoptimised and r.op == "log" and r.arg_values == (-2.0,)
    assert r.source == (__file__, line_of(fn, "ft.log(b) +"), "fn")
    assert g.source(r.node) == r.source


def test_lean_tape_keeps_the_sources():
    tape = ft.compile(ft.trace(model, 3, record_source=True), grad_mode="lean")
    lean = tape.with_grad_mode("lean")
    assert lean.explain([0.5, 1.0, 3.0]).source[1] == line_of(model, "ft.log(")


def test_tapes_from_arrays_are_explained_without_sources():
    src = ft.compile(ft.trace(model, 3, record_source=True))
    tape = ft.Tape.from_arrays(**src.to_arrays())
    r = tape.explain([0.5, 1.0, 3.0])
    assert r.op == "log" and r.source is None and not r.unoptimised


def test_graph_changed_after_compile_does_not_change_the_report():
    g = ft.Graph(record_source=True)
    x = g.inputs(1)[0]
    g.output(ft.log(x))
    tape = ft.compile(g)
    g.output(ft.sqrt(x) + 1.0)  # more nodes and outputs after compile
    r = tape.explain([-1.0])
    assert r.op == "log" and r.output == 0


def test_the_source_graph_travels_with_the_tape_and_is_a_private_copy():
    g = ft.trace(model, 3, record_source=True)
    tape = ft.compile(g)
    assert tape.source_graph is not None and tape.source_graph is not g
    assert tape.source_graph.n_nodes == g.n_nodes
    assert tape.with_grad_mode("lean").source_graph is tape.source_graph
    assert ft.compile(ft.trace(model, 3)).source_graph is None
    assert ft.Tape.from_arrays(**tape.to_arrays()).source_graph is None


@pytest.mark.parametrize(
    ("x", "output", "error", "match"),
    [
        ([[0.5, 1.0, 3.0]], None, ValueError, "one point"),
        ([0.5, 1.0], None, ValueError, r"shape \(3,\)"),
        (["a", 1.0, 2.0], None, TypeError, "real numbers"),
        ([0.5, 1.0, 3.0], 1, ValueError, "out of range"),
        ([0.5, 1.0, 3.0], 0.0, TypeError, "output must be an int"),
    ],
)
def test_bad_arguments_raise(x, output, error, match):
    tape = ft.compile(ft.trace(model, 3))
    with pytest.raises(error, match=match):
        tape.explain(x, output)


# ---------------------------------------------------------------------- source recording
def test_graph_records_the_user_line_of_every_node():
    g = ft.Graph(record_source=True)
    assert g.records_source and isinstance(g, ft.Graph)
    x, y = g.inputs(2)
    line_inputs = inspect.currentframe().f_lineno - 1
    z = x * 2.5 + np.sin(y)
    line_z = inspect.currentframe().f_lineno - 1
    s = ft.sum([x, y, z])
    line_s = inspect.currentframe().f_lineno - 1
    g.output(s)
    here = "test_graph_records_the_user_line_of_every_node"
    assert g.source(x.i) == (__file__, line_inputs, here)
    assert g.source(z.i) == (__file__, line_z, here)
    assert all(g.source(n) == (__file__, line_z, here) for n in range(2, z.i + 1)), (
        "the constant 2.5 and np.sin's node get the line that created them"
    )
    assert g.source(s.i) == (__file__, line_s, here), "ft.sum's additions: the caller's line"


def test_recording_sources_changes_nothing_else():
    plain = ft.compile(ft.trace(model, 3))
    rec = ft.compile(ft.trace(model, 3, record_source=True))
    for k, a in plain.to_arrays().items():
        assert np.array_equal(a, rec.to_arrays()[k]), k


def test_graph_without_sources_and_bad_nodes():
    g = ft.Graph()
    x = g.input()
    assert not g.records_source and g.source(x.i) is None
    rec = ft.Graph(record_source=True)
    rec.input()
    for bad in (-1, 1, 0.0, "0"):
        with pytest.raises(ValueError, match="node must be an int"):
            rec.source(bad)
    with pytest.raises(TypeError, match="record_source"):
        ft.Graph(record_source="yes")


def test_graph_copy_is_independent():
    g = ft.Graph(record_source=True)
    x = g.input()
    g.output(x + 1.0)
    c = g.copy()
    g.output(ft.sin(x))
    assert (c.n_nodes, c.n_outputs) == (3, 1) and (g.n_nodes, g.n_outputs) == (4, 2)
    assert c.records_source and c.source(2) == g.source(2)
    assert ft.compile(c).value([1.0]) == 2.0
