"""The tracing frontend: Python operators, NumPy interop, ft.* functions, Graph and trace."""

from __future__ import annotations

import math
import operator
import struct

import numpy as np
import pytest

import fasttape as ft
from fasttape.ops import OPS
from fasttape.trace import InputIndexError


def bits(v: float) -> bytes:
    """The IEEE bits of ``v``: equality of bits is bitwise equality (-0.0 != 0.0, NaN == NaN)."""
    return struct.pack("<d", float(v))


def op_names(tape: ft.Tape) -> list[str]:
    return [OPS[int(c)].name for c in tape.ops]


def compile1(fn, *, grad_mode: str = "stored") -> ft.Tape:
    """Compile ``fn`` of one traced input into a single-output tape."""
    g = ft.Graph()
    x = g.input()
    g.output(fn(x))
    return ft.compile(g, grad_mode=grad_mode)


# Python and NumPy real numbers that must work on either side of an operator.
NUMBERS = [
    pytest.param(3, id="int"),
    pytest.param(-2, id="neg-int"),
    pytest.param(2.5, id="float"),
    pytest.param(True, id="bool"),
    pytest.param(np.float64(2.5), id="np.float64"),
    pytest.param(np.int32(3), id="np.int32"),
    pytest.param(np.int64(-4), id="np.int64"),
    pytest.param(np.float32(1.5), id="np.float32"),
    pytest.param(np.float32(0.1), id="np.float32-inexact"),
    pytest.param(np.array(2.5), id="0d-float"),
    pytest.param(np.array(3, dtype=np.int64), id="0d-int"),
    pytest.param(np.uint8(7), id="np.uint8"),
    pytest.param(np.bool_(True), id="np.bool_"),
]

BINARY = [
    pytest.param(operator.add, id="+"),
    pytest.param(operator.sub, id="-"),
    pytest.param(operator.mul, id="*"),
    pytest.param(operator.truediv, id="/"),
]

X0 = [1.75, -0.3]


# ---------------------------------------------------------------------- operators and numbers
@pytest.mark.parametrize("c", NUMBERS)
@pytest.mark.parametrize("op", BINARY)
def test_binary_operator_with_number_on_either_side(op, c):
    right = compile1(lambda x: op(x, c))
    left = compile1(lambda x: op(c, x))
    cf = float(c)
    for x0 in X0:
        want_r, want_l = op(x0, cf), op(cf, x0)
        assert bits(right.value([x0])) == bits(want_r), (op, c, x0, right.value([x0]), want_r)
        assert bits(left.value([x0])) == bits(want_l), (op, c, x0, left.value([x0]), want_l)


@pytest.mark.parametrize("c", [2, 3, -2, 0, np.int32(3), np.int64(2), 0.5, 2.5, np.float64(1.5),
                               np.float32(0.5), np.array(1.5)])
def test_power_with_number_exponent(c):
    tape = compile1(lambda x: x**c)
    for x0 in [1.75, 0.4, 3.0]:
        want = x0 ** float(c)
        got = tape.value([x0])
        assert math.isclose(got, want, rel_tol=1e-14), (c, x0, got, want)


@pytest.mark.parametrize("c", [2, 3, 0.5, np.float64(2.5), np.int32(2), np.float32(1.5),
                               np.array(2.0)])
def test_power_with_number_base(c):
    tape = compile1(lambda x: c**x)
    for x0 in [1.75, -0.4, 3.0]:
        want = float(c) ** x0
        got = tape.value([x0])
        assert math.isclose(got, want, rel_tol=1e-14), (c, x0, got, want)


def test_power_between_vars():
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(x**y)
    tape = ft.compile(g)
    assert math.isclose(tape.value([1.7, 2.3]), 1.7**2.3, rel_tol=1e-15)


def test_unary_operators():
    for fn, ref in [
        (operator.neg, operator.neg),
        (operator.pos, operator.pos),
        (abs, abs),
        (lambda v: -abs(v), lambda v: -abs(v)),
        (lambda v: abs(-v) + (+v), lambda v: abs(-v) + v),
    ]:
        tape = compile1(fn)
        for x0 in [2.5, -1.25, 0.0, -0.0]:
            assert bits(tape.value([x0])) == bits(ref(x0)), (fn, x0)


def test_unary_plus_is_the_same_var():
    g = ft.Graph()
    x = g.input()
    assert (+x) is x


def test_abs_records_the_abs_op_and_its_gradient():
    tape = compile1(abs)
    assert op_names(tape) == ["abs"]
    assert tape.value_and_grad([-2.0]) == (2.0, pytest.approx([-1.0]))
    assert tape.grad([3.0])[0] == 1.0


def test_operator_gradients():
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(3 * x * y - x / y + 2.0**x - y**2 + abs(-x) + (1 - y) / 4)
    tape = ft.compile(g)
    a, b = 1.3, 0.7
    v, grad = tape.value_and_grad([a, b])
    assert math.isclose(v, 3 * a * b - a / b + 2.0**a - b**2 + abs(-a) + (1 - b) / 4)
    dx = 3 * b - 1 / b + math.log(2.0) * 2.0**a + 1.0
    dy = 3 * a + a / b**2 - 2 * b - 0.25
    assert grad[0] == pytest.approx(dx, rel=1e-14)
    assert grad[1] == pytest.approx(dy, rel=1e-14)


# ---------------------------------------------------------------------- comparisons
COMPARISONS = [
    pytest.param(operator.lt, id="<"),
    pytest.param(operator.le, id="<="),
    pytest.param(operator.gt, id=">"),
    pytest.param(operator.ge, id=">="),
]


@pytest.mark.parametrize(
    "c", [2, 2.0, np.float64(2.0), np.int32(2), np.float32(2.0), np.array(2.0)],
    ids=["int", "float", "np.float64", "np.int32", "np.float32", "0d"],
)
@pytest.mark.parametrize("cmp", COMPARISONS)
def test_comparison_gives_zero_one_node(cmp, c):
    right = compile1(lambda x: cmp(x, c))
    left = compile1(lambda x: cmp(c, x))
    for x0 in [1.0, 2.0, 3.0]:
        assert right.value([x0]) == float(cmp(x0, 2.0)), (cmp, c, x0)
        assert left.value([x0]) == float(cmp(2.0, x0)), (cmp, c, x0)
        assert list(right.grad([x0])) == [0.0]


@pytest.mark.parametrize("op", BINARY + COMPARISONS)
def test_binary_operator_between_vars(op):
    # Comparisons give 0.0 / 1.0 nodes: bits(True) is bits(1.0).
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(op(x, y))
    tape = ft.compile(g)
    for a, b in [(1.5, 0.25), (-3.0, 7.0), (0.1, 0.2), (1.0, 2.0), (2.0, 2.0), (3.0, 2.0)]:
        assert bits(tape.value([a, b])) == bits(op(a, b)), (op, a, b)


def test_comparisons_drive_where():
    g = ft.Graph()
    x = g.input()
    g.output(ft.where(x > 0, x * x, -x) + ft.where(x <= -1, 10.0, 0.0))
    tape = ft.compile(g)
    assert tape.value_and_grad([3.0]) == (9.0, pytest.approx([6.0]))
    assert tape.value_and_grad([-0.5]) == (0.5, pytest.approx([-1.0]))
    assert tape.value_and_grad([-2.0]) == (12.0, pytest.approx([-1.0]))
    assert tape.value([0.0]) == 0.0


def test_where_with_number_branches_and_var_condition():
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(ft.where(x < y, 1.5, np.float64(-2.0)))
    tape = ft.compile(g)
    assert tape.value([0.0, 1.0]) == 1.5
    assert tape.value([1.0, 0.0]) == -2.0
    assert list(tape.grad([0.0, 1.0])) == [0.0, 0.0]


@pytest.mark.parametrize(("fn", "name"), [(ft.eq, "eq"), (ft.ne, "ne")])
def test_eq_and_ne_functions(fn, name):
    tape = compile1(lambda x: fn(x, 2.0))
    assert op_names(tape) == [name]
    want = {2.0: name == "eq", 1.0: name == "ne", 3.0: name == "ne"}
    for x0, w in want.items():
        assert tape.value([x0]) == float(w), (name, x0)
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(fn(x, y), fn(np.float64(1.0), y))
    t2 = ft.compile(g)
    assert list(t2.value([1.0, 1.0])) == [float(name == "eq")] * 2
    assert list(t2.value([1.0, 2.0])) == [float(name == "ne")] * 2


# ---------------------------------------------------------------------- == and truthiness
def test_eq_on_vars_is_a_traced_comparison():
    """``a == b`` and ``a != b`` record ft.eq / ft.ne nodes, as ``<`` records lt (issue 15.5)."""
    g = ft.Graph()
    x, y = g.inputs(2)
    outs = [x == y, x != y, x == 2.0, 2.0 == x, x != 2, np.float64(2.0) == x, x == x]
    assert all(type(v) is type(x) for v in outs), [type(v) for v in outs]
    g.output(outs)
    tape = ft.compile(g, optimize=False)
    assert list(tape.value([1.0, 1.0])) == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert list(tape.value([2.0, 3.0])) == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert list(tape.value([np.nan, np.nan])) == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_if_a_equals_b_raises_naming_where():
    """The issue's repro: `==` used to keep Python's identity meaning, so the branch was picked
    silently at trace time (3.0 at (1, 1) where Python gives 2.0)."""
    with pytest.raises(TypeError, match=r"ft\.where") as info:
        ft.trace(lambda v: v[0] * 2 if v[0] == v[1] else v[1] * 3, 2)
    assert "==" in str(info.value)
    for cmp in (operator.eq, operator.ne):
        g = ft.Graph()
        x, y = g.inputs(2)
        with pytest.raises(TypeError, match=r"ft\.where"):
            bool(cmp(x, y))
        with pytest.raises(TypeError, match=r"ft\.where"):
            bool(cmp(x, 1.0))


def test_numpy_equal_on_vars_is_the_traced_comparison():
    g = ft.Graph()
    x, y = g.inputs(2)
    outs = [np.equal(x, y), np.not_equal(x, 2.0), np.equal(np.float64(1.0), y)]
    assert all(type(v) is type(x) for v in outs)
    arr = np.array([1.0, 3.0]) == x
    assert arr.dtype == object and arr.shape == (2,)
    g.output(*outs, *arr)
    tape = ft.compile(g)
    assert list(tape.value([1.0, 1.0])) == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert list(tape.value([3.0, 2.0])) == [0.0, 1.0, 0.0, 0.0, 1.0]


def test_eq_with_a_non_number_is_false_not_an_error():
    g = ft.Graph()
    x = g.input()
    for other in (None, "x", [1.0], object()):
        assert (x == other) is False and (x != other) is True
    assert x is not None
    n = g.n_nodes
    assert (x == None) is False  # noqa: E711 (the comparison itself is what is tested)
    assert g.n_nodes == n, "a comparison with a non-number must not record a node"


def test_vars_are_hashable_and_live_in_sets_and_dicts():
    g = ft.Graph()
    x, y = g.inputs(2)
    z = x * y
    s = {x, y, x, z, z}
    assert len(s) == 3
    assert x in s and z in s
    d = {x: "x", y: "y", z: "z"}
    assert d[x] == "x" and d[z] == "z"
    assert hash(x) == hash(x) and hash(x) != hash(y)
    assert [v for v in [y, z, x] if v is x] == [x]


def test_var_in_a_list_raises_instead_of_guessing():
    """`v in list` compares with ==, whose result has no truth value: it raises (as JAX's
    tracers do) and says to use a set or `is`."""
    g = ft.Graph()
    x, y = g.inputs(2)
    with pytest.raises(TypeError, match="set"):
        _ = x in [y, x]
    assert x in [x, y]  # identity is checked first: no comparison, no error


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(bool, id="bool"),
        pytest.param(lambda v: 1 if v else 0, id="if"),
        pytest.param(lambda v: not v, id="not"),
        pytest.param(lambda v: v and 1.0, id="and"),
    ],
)
def test_truth_value_raises_pointing_to_where(use):
    g = ft.Graph()
    x = g.input()
    for v in (x, x > 0, x + 1, x == 0, x != 1):
        with pytest.raises(TypeError, match=r"ft\.where"):
            use(v)


@pytest.mark.parametrize(
    "use",
    [float, int, complex, math.sin, math.floor, math.ceil, math.trunc, round, operator.index,
     lambda v: range(v), lambda v: [1, 2][v]],
    ids=["float", "int", "complex", "math.sin", "math.floor", "math.ceil", "math.trunc",
         "round", "index", "range", "list-index"],
)
def test_var_has_no_number(use):
    g = ft.Graph()
    x = g.input()
    with pytest.raises(TypeError, match=r"ft\.\w+\(v\)|ft\.where"):
        use(x)


def test_float_error_message_points_to_ft_and_numpy_functions():
    """math.sin(v) calls float(v) first: the message must name ft.sin / np.sin, not only
    "compile and evaluate" (issue 15.8)."""
    g = ft.Graph()
    x = g.input()
    for use in (float, math.sin, math.exp, math.sqrt):
        with pytest.raises(TypeError) as info:
            use(x)
        msg = str(info.value)
        assert "math.sin(v) and float(v) need a number" in msg, msg
        assert "ft.sin(v) or np.sin(v)" in msg and "compiled tape" in msg, msg
    for use, hint in ((int, "ft.floor"), (math.floor, "ft.floor"), (math.ceil, "ft.ceil"),
                      (round, "ft.floor"), (complex, "real"), (operator.index, "ft.where")):
        with pytest.raises(TypeError, match=hint.replace(".", r"\.")):
            use(x)


def test_var_is_not_iterable():
    g = ft.Graph()
    x = g.input()
    with pytest.raises(TypeError):
        list(x)


# ---------------------------------------------------------------------- traced inputs
def test_indexing_past_the_traced_inputs_names_n_inputs():
    """A bare IndexError said nothing about n_inputs (issue 15.10)."""
    with pytest.raises(IndexError, match=r"index 5 .*2 inputs \(n_inputs=2\)"):
        ft.trace(lambda v: v[0] * v[5], n_inputs=2)
    with pytest.raises(IndexError, match=r"index -3 .*n_inputs=2"):
        ft.trace(lambda v: v[-3], n_inputs=2)
    with pytest.raises(IndexError, match=r"n_inputs=0"):
        ft.trace(lambda v: v[0], n_inputs=0)


def _helper(inputs, k):
    return inputs[k + 1] * 2.0  # the inputs under another name, in another function


@pytest.mark.parametrize(
    ("fn", "index"),
    [
        pytest.param(lambda x: ft.sum(x[i] * x[i + 1] for i in range(len(x))), 3, id="genexpr"),
        pytest.param(lambda x: _helper(x, 2), 3, id="helper"),
        pytest.param(lambda x: x[len(x)], None, id="call-in-index"),
    ],
)
def test_index_error_names_n_inputs_wherever_the_inputs_are_indexed(fn, index):
    with pytest.raises(IndexError, match=r"\(n_inputs=3\)") as info:
        ft.trace(fn, n_inputs=3)
    assert isinstance(info.value, InputIndexError)
    assert str(info.value).startswith("index out of range" if index is None else f"index {index} ")
    assert info.traceback[-1].frame.code.raw is not ft.trace.__code__, "points at user code"


def test_other_index_errors_are_left_alone():
    other = [1.0]

    def fn(x):
        return x[0] * other[3]

    with pytest.raises(IndexError) as info:
        ft.trace(fn, n_inputs=3)
    assert str(info.value) == "list index out of range"


def test_an_index_error_without_source_still_names_n_inputs():
    # A lambda typed at a REPL or run by exec has no source to read the subscript back from:
    # the list's own error then says which counts were traced (regression: a bare IndexError).
    fn = eval("lambda v: v[0] * v[5]")  # no file behind it
    with pytest.raises(InputIndexError, match=r"n_inputs=2\): .*valid indices are 0\.\.1"):
        ft.trace(fn, n_inputs=2)
    other = [1.0]
    fn = eval("lambda v: v[0] * other[3]", {"other": other})
    with pytest.raises(IndexError, match="n_inputs=3"):  # cannot tell: the counts are named
        ft.trace(fn, n_inputs=3)


def test_traced_inputs_still_behave_as_a_list():
    seen = {}

    def fn(x):
        seen["len"] = len(x)
        seen["iter"] = [v for v in x]
        a, b, c = x
        seen["slices"] = (x[1:], x[5:], x[::-1], x[-1])
        seen["isinstance"] = isinstance(x, list)
        total = 0.0
        i = 0
        while True:  # code that stops on IndexError keeps working
            try:
                total = total + x[i]
            except IndexError:
                break
            i += 1
        return total + a * b * c

    tape = ft.compile(ft.trace(fn, n_inputs=3))
    assert tape.value([1.0, 2.0, 3.0]) == 12.0
    assert seen["len"] == 3 and len(seen["iter"]) == 3 and seen["isinstance"]
    tail, empty, rev, last = seen["slices"]
    assert len(tail) == 2 and empty == [] and len(rev) == 3 and last is seen["iter"][2]


# ---------------------------------------------------------------------- two graphs
MIXED = [
    pytest.param(lambda x, y, g: x + y, id="x+y"),
    pytest.param(lambda x, y, g: y + x, id="y+x"),
    pytest.param(lambda x, y, g: x - y, id="x-y"),
    pytest.param(lambda x, y, g: x * y, id="x*y"),
    pytest.param(lambda x, y, g: x / y, id="x/y"),
    pytest.param(lambda x, y, g: x**y, id="x**y"),
    pytest.param(lambda x, y, g: y**x, id="y**x"),
    pytest.param(lambda x, y, g: x < y, id="x<y"),
    pytest.param(lambda x, y, g: x >= y, id="x>=y"),
    pytest.param(lambda x, y, g: ft.maximum(x, y), id="ft.maximum"),
    pytest.param(lambda x, y, g: ft.atan2(x, y), id="ft.atan2"),
    pytest.param(lambda x, y, g: ft.hypot(y, x), id="ft.hypot"),
    pytest.param(lambda x, y, g: ft.pow(x, y), id="ft.pow"),
    pytest.param(lambda x, y, g: ft.eq(x, y), id="ft.eq"),
    pytest.param(lambda x, y, g: ft.sum([x, 1.0, y]), id="ft.sum"),
    pytest.param(lambda x, y, g: ft.where(x > 0, y, 1.0), id="where-a"),
    pytest.param(lambda x, y, g: ft.where(x > 0, 1.0, y), id="where-b"),
    pytest.param(lambda x, y, g: ft.where(y, x, 1.0), id="where-cond"),
    pytest.param(lambda x, y, g: ft.where(1.0, x, y), id="where-branches"),
    pytest.param(lambda x, y, g: np.float64(2.0) * x + y, id="numpy-then-mixed"),
    pytest.param(lambda x, y, g: np.maximum(x, y), id="np.maximum"),
    pytest.param(lambda x, y, g: g.output(y), id="output"),
    pytest.param(lambda x, y, g: g.output([x, y]), id="output-list"),
    pytest.param(lambda x, y, g: g.output(x, y), id="output-varargs"),
]


@pytest.mark.parametrize("fn", MIXED)
def test_mixing_vars_of_two_graphs_raises(fn):
    g1, g2 = ft.Graph(), ft.Graph()
    x = g1.input()
    y = g2.input()
    with pytest.raises(ValueError, match="another Graph"):
        fn(x, y, g1)


@pytest.mark.parametrize("bad", ["foreign", "str"])
def test_failed_output_leaves_graph_unchanged(bad):
    g1, g2 = ft.Graph(), ft.Graph()
    x = g1.input()
    other = g2.input() if bad == "foreign" else "abc"
    with pytest.raises((ValueError, TypeError)):
        g1.output([x, other])
    assert g1.n_outputs == 0, f"a failed output() left {g1.n_outputs} output(s) behind"
    g1.output(x * 2)
    assert ft.compile(g1).value([3.0]) == 6.0


def test_failed_operator_mix_leaves_graph_usable():
    g1, g2 = ft.Graph(), ft.Graph()
    x = g1.input()
    y = g2.input()
    n = g1.n_nodes
    with pytest.raises(ValueError):
        x + y
    assert g1.n_nodes == n, "a failed operator must not record a node"
    g1.output(x * 2)
    assert ft.compile(g1).value([3.0]) == 6.0


# ---------------------------------------------------------------------- bad types
BAD = [
    pytest.param(1j, "complex", id="complex"),
    pytest.param(np.complex128(1 + 2j), "complex", id="np.complex128"),
    pytest.param("abc", "str", id="str"),
]

BAD_USES = [
    pytest.param(lambda x, g, b: x + b, id="x+b"),
    pytest.param(lambda x, g, b: b + x, id="b+x"),
    pytest.param(lambda x, g, b: x * b, id="x*b"),
    pytest.param(lambda x, g, b: b - x, id="b-x"),
    pytest.param(lambda x, g, b: x / b, id="x/b"),
    pytest.param(lambda x, g, b: x < b, id="x<b"),
    pytest.param(lambda x, g, b: x**b, id="x**b"),
    pytest.param(lambda x, g, b: ft.maximum(x, b), id="ft.maximum"),
    pytest.param(lambda x, g, b: ft.sin(b), id="ft.sin"),
    pytest.param(lambda x, g, b: ft.where(x > 0, b, 1.0), id="where"),
    pytest.param(lambda x, g, b: ft.where(b, x, 1.0), id="where-cond"),
    pytest.param(lambda x, g, b: g.output(b), id="output"),
    pytest.param(lambda x, g, b: g.constant(b), id="constant"),
]


@pytest.mark.parametrize("use", BAD_USES)
@pytest.mark.parametrize(("bad", "type_word"), BAD)
def test_complex_and_strings_raise_type_error_naming_the_type(bad, type_word, use):
    g = ft.Graph()
    x = g.input()
    with pytest.raises(TypeError) as info:
        use(x, g, bad)
    assert type_word in str(info.value), str(info.value)


@pytest.mark.parametrize("bad", [None, [1.0], object()], ids=["None", "list", "object"])
def test_other_non_numbers_raise_type_error(bad):
    g = ft.Graph()
    x = g.input()
    with pytest.raises(TypeError):
        x + bad
    with pytest.raises(TypeError):
        ft.exp(bad)


# ---------------------------------------------------------------------- ft.* on numbers
@pytest.mark.parametrize(
    ("fn", "args", "want"),
    [
        (ft.sin, (0.5,), math.sin(0.5)),
        (ft.exp, (1.25,), math.exp(1.25)),
        (ft.log, (3,), math.log(3.0)),
        (ft.sqrt, (np.float64(2.0),), math.sqrt(2.0)),
        (ft.tanh, (np.float32(0.5),), math.tanh(0.5)),
        (ft.abs, (-2,), 2.0),
        (ft.atan2, (1.0, 2.0), math.atan2(1.0, 2.0)),
        (ft.maximum, (1, 2.5), 2.5),
        (ft.minimum, (np.int32(1), 2.5), 1.0),
        (ft.hypot, (3.0, 4.0), 5.0),
        (ft.pow, (2.0, 3.0), 8.0),
        (ft.pow, (2, 10), 1024.0),
        (ft.where, (1.0, 2.0, 3.0), 2.0),
        (ft.where, (0.0, 2.0, 3.0), 3.0),
        (ft.where, (True, 2, 3), 2.0),
        (ft.lt, (1.0, 2.0), 1.0),
        (ft.eq, (2.0, 2.0), 1.0),
        (ft.ne, (2.0, 2.0), 0.0),
        (ft.sum, ([1, 2.5, np.float64(3.0)],), 6.5),
    ],
)
def test_ft_functions_on_numbers_evaluate_at_once(fn, args, want):
    got = fn(*args)
    assert not isinstance(got, ft.Var)
    assert isinstance(got, (float, int))
    assert got == want, (fn, args, got, want)


def test_ft_function_on_numbers_matches_the_compiled_tape_bitwise():
    for name in ["sin", "exp", "log1p", "erf", "sigmoid", "softplus", "cbrt", "atan"]:
        fn = getattr(ft, name)
        tape = compile1(fn)
        for x0 in [0.3, 1.7, 2.9]:
            assert bits(fn(x0)) == bits(tape.value([x0])), (name, x0)


def test_ft_function_arity_is_checked():
    with pytest.raises(TypeError):
        ft.maximum(1.0)
    with pytest.raises(TypeError):
        ft.atan2(1.0, 2.0, 3.0)


# ---------------------------------------------------------------------- NumPy interop
@pytest.mark.parametrize(
    ("ufunc", "name", "ref"),
    [
        (np.sin, "sin", math.sin),
        (np.exp, "exp", math.exp),
        (np.sqrt, "sqrt", math.sqrt),
        (np.log, "log", math.log),
        (np.tanh, "tanh", math.tanh),
        (np.arctan, "atan", math.atan),
        (np.absolute, "abs", abs),
        (np.negative, "neg", operator.neg),
        (np.square, "square", lambda v: v * v),
    ],
)
def test_numpy_unary_ufunc_traces(ufunc, name, ref):
    assert_traces_to_one_op(ufunc, name, ref, [0.7])


def assert_traces_to_one_op(fn, name, ref, points) -> None:
    """``fn(var)`` records exactly the op ``name``, whose values equal ``ref`` bit for bit."""
    g = ft.Graph()
    x = g.input()
    y = fn(x)
    assert isinstance(y, ft.Var), type(y)
    g.output(y)
    tape = ft.compile(g, optimize=False)  # what tracing recorded, before the passes rewrite it
    assert op_names(tape) == [name]
    for x0 in points:
        assert bits(tape.value([x0])) == bits(ref(x0)), (name, x0)


@pytest.mark.parametrize(
    ("fn", "name", "ref"),
    [
        (lambda x: np.float64(2.0) * x, "mul", lambda v: 2.0 * v),
        (lambda x: np.float64(2.0) + x, "add", lambda v: 2.0 + v),
        (lambda x: np.float64(2.0) - x, "sub", lambda v: 2.0 - v),
        (lambda x: np.float64(2.0) / x, "div", lambda v: 2.0 / v),
        (lambda x: np.int32(3) * x, "mul", lambda v: 3.0 * v),
        (lambda x: np.float32(0.5) + x, "add", lambda v: 0.5 + v),
        (lambda x: np.array(2.0) * x, "mul", lambda v: 2.0 * v),
        (lambda x: np.float64(2.0) ** x, "pow", lambda v: 2.0**v),
        (lambda x: np.float64(2.0) < x, "lt", lambda v: float(2.0 < v)),
        (lambda x: np.maximum(x, 1.0), "maximum", lambda v: max(v, 1.0)),
        (lambda x: np.arctan2(x, 2.0), "atan2", lambda v: math.atan2(v, 2.0)),
        (lambda x: np.hypot(x, np.float64(1.0)), "hypot", lambda v: math.hypot(v, 1.0)),
    ],
)
def test_numpy_scalar_on_the_left_traces(fn, name, ref):
    assert_traces_to_one_op(fn, name, ref, [0.7, 1.5])


def test_numpy_positive_returns_the_var():
    g = ft.Graph()
    x = g.input()
    assert np.positive(x) is x


def test_numpy_array_times_var_gives_object_array_of_vars():
    g = ft.Graph()
    x = g.input()
    y = np.array([1.0, 2.0]) * x
    assert isinstance(y, np.ndarray) and y.dtype == object and y.shape == (2,)
    assert all(isinstance(v, ft.Var) for v in y)
    g.output(list(y))
    assert list(ft.compile(g).value([3.0])) == [3.0, 6.0]


# ---------------------------------------------------------------------- ft.sum
def test_sum_of_empty_iterable_is_zero():
    assert ft.sum([]) == 0.0
    assert ft.sum(iter(())) == 0.0


def test_sum_of_a_generator():
    g = ft.Graph()
    x = g.inputs(5)
    g.output(ft.sum(v * v for v in x))
    tape = ft.compile(g)
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    v, grad = tape.value_and_grad(xs)
    assert v == 55.0
    assert list(grad) == [2.0, 4.0, 6.0, 8.0, 10.0]


def test_sum_of_100001_terms_has_no_recursion_error():
    g = ft.Graph()
    x = g.input()
    s = ft.sum([x] * 100_001)
    g.output(s)
    tape = ft.compile(g, optimize=False)  # the tree as traced (CSE would merge equal halves)
    assert tape.n_instructions == 100_000  # one add per pair, a balanced tree
    v, grad = tape.value_and_grad([1.0])
    assert v == 100_001.0
    assert grad[0] == 100_001.0


def test_sum_of_many_inputs_matches_numpy():
    n = 100_001
    g = ft.Graph()
    xs = g.inputs(n)
    g.output(ft.sum(xs))
    tape = ft.compile(g)
    vals = np.arange(n, dtype=np.float64)
    assert tape.value(vals) == float(n * (n - 1) // 2)
    assert np.all(tape.grad(vals) == 1.0)


def test_sum_mixes_numbers_and_vars():
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(ft.sum([1, x, 2.5, np.float64(3.0), y, np.int32(4), y]))
    tape = ft.compile(g)
    v, grad = tape.value_and_grad([10.0, 100.0])
    assert v == 10.0 + 200.0 + 10.5
    assert list(grad) == [1.0, 2.0]


def test_sum_of_one_item_is_that_item():
    g = ft.Graph()
    x = g.input()
    assert ft.sum([x]) is x
    assert ft.sum([2.5]) == 2.5


# ---------------------------------------------------------------------- ** dispatch
@pytest.mark.parametrize(
    ("fn", "name"),
    [
        pytest.param(lambda x, y: x**2, "powi", id="x**2"),
        pytest.param(lambda x, y: x**-3, "powi", id="x**-3"),
        pytest.param(lambda x, y: x**0, "powi", id="x**0"),
        pytest.param(lambda x, y: x ** np.int32(3), "powi", id="x**np.int32"),
        pytest.param(lambda x, y: x ** np.int64(2), "powi", id="x**np.int64"),
        pytest.param(lambda x, y: x**2.0, "powc", id="x**2.0"),
        pytest.param(lambda x, y: x**0.5, "powc", id="x**0.5"),
        pytest.param(lambda x, y: x ** np.float64(1.5), "powc", id="x**np.float64"),
        pytest.param(lambda x, y: x ** np.float32(1.5), "powc", id="x**np.float32"),
        pytest.param(lambda x, y: x**y, "pow", id="x**y"),
        pytest.param(lambda x, y: ft.pow(x, y), "pow", id="ft.pow(x,y)"),
        pytest.param(lambda x, y: 2**y, "pow", id="2**y"),
        pytest.param(lambda x, y: 2.5**y, "pow", id="2.5**y"),
        pytest.param(lambda x, y: np.float64(2.0) ** y, "pow", id="np.float64**y"),
        pytest.param(lambda x, y: ft.pow(2.0, y), "pow", id="ft.pow(2.0,y)"),
    ],
)
def test_power_dispatch(fn, name):
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(fn(x, y))
    tape = ft.compile(g, optimize=False)  # what the frontend records, before simplification
    assert op_names(tape) == [name]


@pytest.mark.parametrize(("c", "name"), [(3, "powi"), (np.int32(-2), "powi"), (0.5, "powc")])
def test_ft_pow_dispatches_like_the_operator(c, name):
    g = ft.Graph()
    x = g.input()
    g.output(ft.pow(x, c))
    tape = ft.compile(g)
    assert op_names(tape) == [name], f"ft.pow(x, {c!r}) recorded {op_names(tape)}"
    with pytest.raises(ValueError, match="out of range"):
        ft.pow(x, 2**31)


def test_integer_exponent_is_stored_as_a_constant():
    g = ft.Graph()
    x = g.input()
    g.output(x**5)
    tape = ft.compile(g)
    assert list(tape.consts) == [5.0]
    assert list(tape.args) == [0, 1]  # x is slot 0, the exponent is the constant slot 1


def test_integer_exponent_out_of_range_raises():
    g = ft.Graph()
    x = g.input()
    with pytest.raises(ValueError, match="out of range"):
        x ** (2**31)
    with pytest.raises(ValueError, match="out of range"):
        x ** -(2**31)
    x ** (2**31 - 1)  # the largest allowed


@pytest.mark.parametrize(
    "x0", [1.75, -1.75, 3.0, 0.1, 1e-160, 1e154, -1e-300, 0.0, -0.0, 1.0000000001, math.pi]
)
def test_square_power_equals_product_bitwise(x0):
    tape = compile1(lambda x: x**2)
    prod = compile1(lambda x: x * x)
    assert bits(tape.value([x0])) == bits(x0 * x0), x0
    assert bits(tape.value([x0])) == bits(prod.value([x0])), x0
    assert tape.grad([x0])[0] == 2.0 * x0, x0
    assert bits(tape.grad([x0])[0]) == bits(prod.grad([x0])[0]), x0


def test_zero_power_has_zero_gradient():
    tape = compile1(lambda x: x**0)
    for x0 in [0.0, 2.0, -3.0]:
        assert tape.value_and_grad([x0]) == (1.0, pytest.approx([0.0]))


# ---------------------------------------------------------------------- constants
def test_equal_constants_share_one_node():
    g = ft.Graph()
    x = g.input()
    assert g.constant(1.5).i == g.constant(1.5).i == g.constant(np.float32(1.5)).i
    g.output(x * 1.5 + 1.5 + np.float64(1.5) + np.float32(1.5) + np.array(1.5) + g.constant(1.5))
    tape = ft.compile(g)
    assert tape.n_consts == 1
    assert list(tape.consts) == [1.5]


def test_int_float_and_bool_constants_share_one_node():
    g = ft.Graph()
    x = g.input()
    g.output(x + 1 + 1.0 + True + np.int32(1) + np.bool_(True))
    tape = ft.compile(g)
    assert tape.n_consts == 1
    assert tape.value([0.0]) == 5.0


def test_signed_zero_constants_are_distinct():
    g = ft.Graph()
    x = g.input()
    assert g.constant(0.0).i != g.constant(-0.0).i
    g.output(x * 0.0, x * -0.0, x + -0.0)
    tape = ft.compile(g)
    assert tape.n_consts == 2
    pos, neg, plus = tape.value([1.0])
    assert bits(pos) == bits(0.0)
    assert bits(neg) == bits(-0.0)
    assert plus == 1.0
    assert bits(tape.value([-0.0])[2]) == bits(-0.0)  # -0.0 + -0.0 = -0.0, not +0.0


def test_nan_constant_is_deduplicated_and_works():
    g = ft.Graph()
    x = g.input()
    assert g.constant(math.nan).i == g.constant(float("nan")).i == g.constant(np.nan).i
    g.output(x + math.nan, ft.where(x > 0, x, math.nan))
    tape = ft.compile(g)
    assert int(np.isnan(tape.consts).sum()) == 1, list(tape.consts)
    a, b = tape.value([2.0])
    assert math.isnan(a) and b == 2.0
    assert math.isnan(tape.value([-1.0])[1])
    assert list(tape.grad([2.0], output=1)) == [1.0]


def test_infinite_constants():
    tape = compile1(lambda x: ft.minimum(x, math.inf) + ft.maximum(x, -math.inf))
    assert tape.value([2.0]) == 4.0
    assert tape.n_consts == 2


# ---------------------------------------------------------------------- trace
def test_trace_single_output():
    g = ft.trace(lambda x: x[0] * x[1] + ft.sin(x[2]), n_inputs=3)
    assert isinstance(g, ft.Graph)
    assert g.n_inputs == 3 and g.n_outputs == 1
    tape = ft.compile(g)
    v = tape.value([2.0, 3.0, 0.5])
    assert isinstance(v, float)
    assert v == 6.0 + math.sin(0.5)


@pytest.mark.parametrize("container", [tuple, list], ids=["tuple", "list"])
def test_trace_multiple_outputs(container):
    g = ft.trace(lambda x: container([x[0] + x[1], x[0] * x[1], 7.0]), n_inputs=2)
    assert g.n_outputs == 3
    tape = ft.compile(g)
    v = tape.value([2.0, 3.0])
    assert isinstance(v, np.ndarray) and v.shape == (3,) and v.dtype == np.float64
    assert list(v) == [5.0, 6.0, 7.0]


@pytest.mark.parametrize("result", [2.5, 3, np.float64(2.5), np.array(2.5)],
                         ids=["float", "int", "np.float64", "0d"])
def test_trace_returning_a_plain_number(result):
    g = ft.trace(lambda x: result, n_inputs=2)
    tape = ft.compile(g)
    assert tape.n_instructions == 0
    v, grad = tape.value_and_grad([1.0, 2.0])
    assert v == float(result)
    assert list(grad) == [0.0, 0.0]


def test_trace_returning_zero_d_array_of_var():
    g = ft.trace(lambda x: np.sin(x[0]) * np.float64(2.0), n_inputs=1)
    assert ft.compile(g).value([0.5]) == math.sin(0.5) * 2.0


def test_trace_with_zero_inputs():
    g = ft.trace(lambda x: ft.sum(x) + 1.0, n_inputs=0)
    tape = ft.compile(g)
    assert tape.value([]) == 1.0
    assert tape.grad([]).shape == (0,)


# ---------------------------------------------------------------------- Graph / compile errors
def test_output_without_values_raises():
    g = ft.Graph()
    g.input()
    with pytest.raises(ValueError):
        g.output()
    with pytest.raises(ValueError):
        g.output([])
    assert g.n_outputs == 0


def test_compile_without_outputs_raises():
    g = ft.Graph()
    x = g.input()
    _ = x + 1
    with pytest.raises(ValueError, match="output"):
        ft.compile(g)


@pytest.mark.parametrize("thing", [None, "graph", 3, [1.0]], ids=["None", "str", "int", "list"])
def test_compile_non_graph_raises(thing):
    with pytest.raises(TypeError, match="Graph"):
        ft.compile(thing)


def test_compile_a_tape_or_var_raises():
    g = ft.Graph()
    x = g.input()
    g.output(x)
    tape = ft.compile(g)
    with pytest.raises(TypeError):
        ft.compile(tape)
    with pytest.raises(TypeError):
        ft.compile(x)


def test_compile_invalid_grad_mode_raises():
    g = ft.trace(lambda x: x[0], 1)
    with pytest.raises(ValueError, match="grad_mode"):
        ft.compile(g, grad_mode="fast")


@pytest.mark.parametrize("n", [-1, 1.5, "2", None, True])
def test_graph_inputs_rejects_bad_counts(n):
    with pytest.raises(ValueError):
        ft.Graph().inputs(n)


# ---------------------------------------------------------------------- outputs and gradients
def test_unreached_inputs_get_zero_gradient():
    g = ft.Graph()
    a, b, c, _d = g.inputs(4)
    _ = ft.exp(b) * 100  # dead code: not reached by the output
    g.output(a * c)
    tape = ft.compile(g)
    assert tape.n_inputs == 4
    assert tape.n_instructions == 1, "dead code should not become instructions"
    v, grad = tape.value_and_grad([2.0, 5.0, 3.0, 7.0])
    assert v == 6.0
    assert list(grad) == [3.0, 0.0, 2.0, 0.0]


def test_output_that_is_directly_an_input():
    g = ft.Graph()
    x = g.inputs(3)
    g.output(x[1])
    tape = ft.compile(g)
    assert tape.n_instructions == 0
    for mode in ft.GRAD_MODES:
        v, grad = tape.with_grad_mode(mode).value_and_grad([4.0, 5.0, 6.0])
        assert v == 5.0
        assert list(grad) == [0.0, 1.0, 0.0]
        # a second call gives the same (the work buffers are clean again)
        v, grad = tape.with_grad_mode(mode).value_and_grad([4.0, 5.0, 6.0])
        assert list(grad) == [0.0, 1.0, 0.0]


def test_output_that_is_a_constant():
    g = ft.Graph()
    x = g.inputs(2)
    g.output(g.constant(2.5), x[0], 3.5)
    tape = ft.compile(g)
    assert list(tape.value([1.0, 2.0])) == [2.5, 1.0, 3.5]
    for k in (0, 2):
        v, grad = tape.value_and_grad([1.0, 2.0], output=k)
        assert v == [2.5, None, 3.5][k]
        assert list(grad) == [0.0, 0.0]
    assert list(tape.grad([1.0, 2.0], output=1)) == [1.0, 0.0]


@pytest.fixture
def three_outputs() -> ft.Tape:
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(x * y, x + 2 * y, ft.sin(x))
    return ft.compile(g)


def test_several_outputs_value_is_an_array(three_outputs):
    v = three_outputs.value([2.0, 3.0])
    assert isinstance(v, np.ndarray) and v.shape == (3,)
    assert list(v) == [6.0, 8.0, math.sin(2.0)]
    v2 = three_outputs.value([1.0, 1.0])
    assert list(v) == [6.0, 8.0, math.sin(2.0)], "an earlier result must not be overwritten"
    assert list(v2) == [1.0, 3.0, math.sin(1.0)]


def test_several_outputs_grad_needs_output(three_outputs):
    with pytest.raises(ValueError, match="output="):
        three_outputs.grad([2.0, 3.0])
    with pytest.raises(ValueError, match="output="):
        three_outputs.value_and_grad([2.0, 3.0])


@pytest.mark.parametrize(
    ("k", "want_v", "want_g"),
    [
        (0, 6.0, [3.0, 2.0]),
        (1, 8.0, [1.0, 2.0]),
        (2, math.sin(2.0), [math.cos(2.0), 0.0]),
        (-1, math.sin(2.0), [math.cos(2.0), 0.0]),
        (-3, 6.0, [3.0, 2.0]),
        (np.int64(1), 8.0, [1.0, 2.0]),
    ],
)
def test_several_outputs_grad_with_output_k(three_outputs, k, want_v, want_g):
    for mode in ft.GRAD_MODES:
        v, grad = three_outputs.with_grad_mode(mode).value_and_grad([2.0, 3.0], output=k)
        assert v == want_v
        assert list(grad) == want_g
        assert list(three_outputs.with_grad_mode(mode).grad([2.0, 3.0], output=k)) == want_g


@pytest.mark.parametrize("k", [3, -4, 100])
def test_several_outputs_out_of_range_raises(three_outputs, k):
    with pytest.raises(ValueError, match="out of range"):
        three_outputs.grad([2.0, 3.0], output=k)


@pytest.mark.parametrize("k", [1.0, "1", True])
def test_output_must_be_an_int(three_outputs, k):
    with pytest.raises(TypeError):
        three_outputs.grad([2.0, 3.0], output=k)


def test_single_output_accepts_output_zero():
    tape = compile1(lambda x: 3 * x)
    assert tape.value_and_grad([1.0], output=0) == (3.0, pytest.approx([3.0]))
    assert tape.value_and_grad([1.0], output=-1)[0] == 3.0
    with pytest.raises(ValueError):
        tape.grad([1.0], output=1)


def test_compile_never_emits_a_tape_that_fails_validation():
    """However the Graph's columns got inconsistent (the concurrent-append race of issue
    15.4 left such graphs), compile raises instead of emitting a tape that reads wrong slots."""
    g = ft.Graph()
    x, y = g.inputs(2)
    z = x * y
    g.output(ft.sin(z) + x)
    g._args[-1] = g.n_nodes - 1  # the add refers to itself (once compiled: %4 = add(%3, %4))
    with pytest.raises(ValueError, match="invalid"):
        ft.compile(g)
    with pytest.raises(ValueError, match="invalid"):
        ft.compile(g, optimize=False)
