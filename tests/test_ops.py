"""Every op of the table: kernels vs the reference, partials vs finite differences, specials."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fasttape as ft
from fasttape.kernels import dispatch
from fasttape.ops import OP_BY_NAME, OPS

# Ops reached through another function (pow, where) or made only by the passes (mulc, ...).
from fasttape.trace import _INTERNAL
from tests.reference import REFERENCE
from tests.reference import value_and_grad as ref_value_and_grad

SPECIALS = [0.0, -0.0, 1.0, -1.0, 0.5, math.inf, -math.inf, math.nan]
IDS = [op.name for op in OPS]


def same(a: float, b: float, rtol: float = 1e-12) -> bool:
    """Equal up to ``rtol``, with NaN equal to NaN and infinities exact."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rtol * max(abs(a), abs(b))




def single_op_tape(name: str, params: tuple[float, ...] = ()) -> ft.Tape:
    """A one-instruction tape: differentiable args (and conditions) are inputs, exponents consts.

    Inputs come first in the op's argument order; parameter args of ``param == "const"`` ops
    refer to the constants ``params``.
    """
    spec = OP_BY_NAME[name]
    n_in = spec.arity if spec.param != "const" else spec.ndiff
    args = list(range(n_in)) + [n_in + j for j in range(spec.arity - n_in)]
    return ft.Tape.from_arrays([spec.code], args, list(params), [n_in + len(params)], n_in)


def params_for(spec) -> list[tuple[float, ...]]:
    if spec.name == "powi":
        return [(-3.0,), (-1.0,), (0.0,), (1.0,), (2.0,), (5.0,)]
    if spec.name == "powc":
        return [(-1.5,), (0.0,), (0.5,), (2.0,), (3.7,)]
    if spec.param == "const":  # the constant-argument arithmetic: mulc, addc, ..., rdivc
        return [(-2.5,), (-1.0,), (0.5,), (3.0,)]
    return [()]


def test_table_is_consistent():
    assert [op.code for op in OPS] == list(range(len(OPS)))
    assert len({op.name for op in OPS}) == len(OPS)
    assert set(REFERENCE) == {op.name for op in OPS}, "the reference must cover every op"
    for op in OPS:
        assert op.arity in (1, 2, 3)
        assert 0 <= op.ndiff <= op.arity
        assert len(op.domain) == op.arity, op.name
        if op.param:
            assert op.ndiff < op.arity, op.name
    assert list(dispatch.ARITY) == [op.arity for op in OPS]
    assert list(dispatch.NDIFF) == [op.ndiff for op in OPS]


@pytest.mark.parametrize("name", [op.name for op in OPS if op.name not in _INTERNAL])
def test_every_public_op_has_a_function(name):
    fn = getattr(ft, name)
    assert fn.__name__ == name
    if name not in ("where", "pow"):  # hand-written docstrings in trace.py
        assert OP_BY_NAME[name].doc[:10].lower() in fn.__doc__.lower()


def _draw_point(spec, data):
    vals = []
    for lo, hi in spec.domain[: spec.ndiff if spec.param == "const" else spec.arity]:
        vals.append(data.draw(st.floats(lo, hi, allow_nan=False), label="x"))
    return vals


def _draw_case(name: str, data) -> tuple[ft.Tape, list[float]]:
    """A one-op tape (with drawn exponent parameters) and a point in the op's domain."""
    spec = OP_BY_NAME[name]
    tape = single_op_tape(name, data.draw(st.sampled_from(params_for(spec))))
    return tape, _draw_point(spec, data)


@pytest.mark.parametrize("name", IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_kernel_matches_reference_in_domain(name, data):
    tape, x = _draw_case(name, data)
    if name == "powi" and data.draw(st.booleans()):
        x = [-x[0]]  # integer powers of negative bases are real
    v, g = tape.with_grad_mode("stored").value_and_grad(x)
    v2, g2 = tape.with_grad_mode("lean").value_and_grad(x)
    rv, rg = ref_value_and_grad(tape, x)
    assert same(v, rv), (name, x, v, rv)
    assert v2 == v or (math.isnan(v) and math.isnan(v2))
    for a, b, c in zip(g, g2, rg, strict=True):
        assert same(a, c), (name, x, list(g), rg)
        assert a == b or (math.isnan(a) and math.isnan(b)), "stored and lean must agree bitwise"


@pytest.mark.parametrize("name", [op.name for op in OPS if op.ndiff])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_partials_match_central_differences(name, data):
    spec = OP_BY_NAME[name]
    tape, x = _draw_case(name, data)
    x = np.array(x)
    if name in ("minimum", "maximum") and abs(x[0] - x[1]) < 1e-4:
        return  # the kink: the tie convention is tested separately
    if name in ("abs", "hypot") and np.all(np.abs(x) < 1e-4):
        return  # the kink at 0
    g = tape.grad(x)
    for j in range(spec.ndiff):
        h = 1e-6 * max(1.0, abs(x[j]))
        xp, xm = x.copy(), x.copy()
        xp[j] += h
        xm[j] -= h
        fd = (tape.value(xp) - tape.value(xm)) / (2 * h)
        assert abs(fd - g[j]) <= 1e-5 * max(1.0, abs(g[j])), (name, x, j, fd, g[j])


@pytest.mark.parametrize("name", IDS)
def test_special_values(name):
    """0, -0, +-1, +-inf and NaN in every argument: same value and partials as the reference."""
    spec = OP_BY_NAME[name]
    extra = []
    if name == "powc":
        extra = [(math.nan,), (math.inf,)]
    elif spec.param == "const" and name != "powi":  # constants that are special values too
        extra = [(0.0,), (-0.0,), (math.nan,), (math.inf,), (-math.inf,)]
    for params in params_for(spec) + extra:
        tape = single_op_tape(name, params)
        for x in itertools.product(SPECIALS, repeat=tape.n_inputs):
            v, g = tape.value_and_grad(list(x))
            v_lean, g_lean = tape.with_grad_mode("lean").value_and_grad(list(x))
            rv, rg = ref_value_and_grad(tape, x)
            assert same(v, rv), (name, params, x, v, rv)
            assert same(v_lean, rv)
            for a, b, c in zip(g, g_lean, rg, strict=True):
                assert same(a, c), (name, params, x, list(g), rg)
                assert same(b, c), (name, params, x, list(g_lean), rg)


def test_signed_zero_and_nan_conventions():
    assert math.copysign(1.0, ft.sign(-0.0)) == -1.0
    assert ft.sign(0.0) == 0.0 and math.copysign(1.0, ft.sign(0.0)) == 1.0
    assert math.isnan(ft.sign(math.nan))
    assert math.isnan(ft.minimum(math.nan, 1.0)) and math.isnan(ft.minimum(1.0, math.nan))
    assert math.isnan(ft.maximum(math.nan, 1.0)) and math.isnan(ft.maximum(1.0, math.nan))
    assert ft.sigmoid(-1000.0) == 0.0 and ft.sigmoid(1000.0) == 1.0
    assert ft.softplus(1000.0) == 1000.0 and ft.softplus(-1000.0) == 0.0


@pytest.mark.parametrize(
    ("name", "x", "expected"),
    [
        ("abs", [0.0], [0.0]),
        ("sqrt", [0.0], [math.inf]),
        ("minimum", [1.0, 1.0], [0.5, 0.5]),
        ("maximum", [2.0, 2.0], [0.5, 0.5]),
        ("hypot", [0.0, 0.0], [0.0, 0.0]),
        ("floor", [2.0], [0.0]),
        ("ceil", [2.0], [0.0]),
        ("sign", [0.0], [0.0]),
        ("pow", [0.0, 2.0], [0.0, 0.0]),
        ("pow", [3.0, 0.0], [0.0, math.log(3.0)]),
    ],
)
def test_nonsmooth_conventions(name, x, expected):
    tape = single_op_tape(name)
    g = tape.grad(x)
    assert list(g) == expected


def test_where_does_not_poison_the_gradient():
    """where(x > 0, sqrt(x), 0) at x = 0 and log(x) branches: the gradient is finite."""
    g = ft.Graph()
    (x,) = g.inputs(1)
    g.output(ft.where(x > 0, ft.sqrt(x), 0.0) + ft.where(x > 0, ft.log(x), 1.0) * 2)
    tape = ft.compile(g)
    for mode in ft.GRAD_MODES:
        v, dx = tape.with_grad_mode(mode).value_and_grad([0.0])
        assert v == 2.0 and list(dx) == [0.0]
        v, dx = tape.with_grad_mode(mode).value_and_grad([-1.0])
        assert v == 2.0 and list(dx) == [0.0]
        v, dx = tape.with_grad_mode(mode).value_and_grad([4.0])
        assert v == 2.0 + 2 * math.log(4.0) and list(dx) == [0.25 + 0.5]


def test_nan_and_inf_propagate_through_the_gradient():
    g = ft.Graph()
    (x,) = g.inputs(1)
    g.output(ft.sqrt(x) * 3.0)
    tape = ft.compile(g)
    v, dx = tape.value_and_grad([-1.0])
    assert math.isnan(v) and math.isnan(dx[0])
    v, dx = tape.value_and_grad([0.0])
    assert v == 0.0 and dx[0] == math.inf


@pytest.mark.parametrize("n", [-7, -2, -1, 0, 1, 2, 3, 10, 31])
def test_integer_power_is_repeated_squaring(n):
    x = 1.0000001
    acc = 1.0
    for _ in range(abs(n)):  # n multiplications agree with squaring for these small n
        acc *= x
    tape = single_op_tape("powi", (float(n),))
    v = tape.value([x])
    expected = 1.0 / acc if n < 0 else acc
    assert same(v, expected, rtol=4e-16 * (abs(n) + 1)), (n, v, expected)
    assert tape.value([0.0]) == (math.inf if n < 0 else (1.0 if n == 0 else 0.0))


_SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.5, -3.0, 5e-324, -5e-324, 1e308, -1e308, math.inf, -math.inf]


@pytest.mark.parametrize("name", [op.name for op in OPS if op.commutative])
def test_commutative_flag_means_bitwise_commutative(name):
    # Regression: minimum/maximum were flagged commutative, but on a tie they return their
    # first argument, so minimum(0.0, -0.0) and minimum(-0.0, 0.0) differ in sign.  CSE
    # merges a*b with b*a on this flag, so it must hold bit for bit.
    code = OP_BY_NAME[name].code
    for x, y in itertools.product(_SPECIAL, repeat=2):
        a = np.float64(ft.kernels.eval_op(code, (x, y)))
        b = np.float64(ft.kernels.eval_op(code, (y, x)))
        assert a.tobytes() == b.tobytes() or (math.isnan(a) and math.isnan(b)), (name, x, y)


@pytest.mark.parametrize("name", ["minimum", "maximum"])
def test_minimum_and_maximum_are_not_flagged_commutative(name):
    code = OP_BY_NAME[name].code
    a = ft.kernels.eval_op(code, (0.0, -0.0))
    b = ft.kernels.eval_op(code, (-0.0, 0.0))
    assert math.copysign(1.0, a) != math.copysign(1.0, b)
    assert not OP_BY_NAME[name].commutative


def test_stop_gradient_passes_values_and_blocks_derivatives():
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output([ft.stop_gradient(x * y) * x, ft.stop_gradient(y)])
    tape = ft.compile(g)
    v = tape.value([2.0, 3.0])
    assert list(v) == [12.0, 3.0]
    assert list(tape.grad([2.0, 3.0], output=0)) == [6.0, 0.0]  # only the outer x
    assert list(tape.grad([2.0, 3.0], output=1)) == [0.0, 0.0]
    _, jv = tape.jvp([2.0, 3.0], [1.0, 1.0])
    assert list(jv) == [6.0, 0.0]
    assert not tape.hessian([2.0, 3.0], output=1).any()
    assert ft.stop_gradient(2.5) == 2.5  # on plain numbers: the value


def test_softmax_with_a_stopped_shift_has_the_same_gradient():
    """The max-shift of a softmax cancels: stopping its gradient (as JAX's softmax does) gives
    the gradient of the unstopped form up to rounding, without its cancelling sums."""
    def softmax(z, stop):
        top = ft.maximum(ft.maximum(z[0], z[1]), ft.maximum(z[2], z[3]))
        top = ft.stop_gradient(top) if stop else top
        e = [ft.exp(v - top) for v in z]
        t = e[0] + e[1] + e[2] + e[3]
        return [v / t for v in e]

    rng = np.random.default_rng(3)
    stopped, plain = (ft.compile(ft.trace(lambda z, s=s: softmax(z, s), 4)) for s in (True, False))
    assert stopped.n_instructions > plain.n_instructions  # one stop_gradient more
    for _ in range(20):
        z = rng.normal(0.0, 2.0, 4)
        assert same(stopped.value(z)[0], plain.value(z)[0])
        for k in range(4):
            np.testing.assert_allclose(stopped.grad(z, output=k), plain.grad(z, output=k),
                                       rtol=1e-12, atol=1e-15)


def _repeated(tape: ft.Tape, copies: int) -> ft.Tape:
    """``tape``'s instructions ``copies`` times over (each copy reads only the inputs and the
    constants), the outputs those of the last copy."""
    outputs = tape.outputs + (copies - 1) * len(tape.ops)
    return ft.Tape.from_arrays(np.tile(tape.ops, copies), np.tile(tape.args, copies),
                               tape.consts, outputs, tape.n_inputs)


@pytest.mark.parametrize("planned", [False, True])
@pytest.mark.parametrize("large", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_stored_reverse_reads_only_partials_its_forward_stored(large, planned):
    # The single-point reverse sweep reads every partial from ``parts``, the unit ones (+-1)
    # included, so the forward sweep must store them all on every call; a large tape with a
    # slot-reuse plan (here the identity plan, dest[i] = n_pre + i) reads only the others.
    # With ``parts`` poisoned (NaN, or 7.0) the gradient must still be the lean mode's, which
    # recomputes each partial, bit for bit.
    from fasttape.kernels.forms import unit_partials
    from fasttape.kernels.sweep import (
        ALL_PARTIALS_MAX_EDGES,
        forward_partials,
        reverse_stored,
    )
    from tests.test_native import every_op_tape

    small = every_op_tape()
    tape = _repeated(small, ALL_PARTIALS_MAX_EDGES // len(small.args) + 1) if large else small
    assert (len(tape.args) >= ALL_PARTIALS_MAX_EDGES) == large
    lean = tape.with_grad_mode("lean")
    rng = np.random.default_rng(3)
    n_pre = tape.n_inputs + len(tape.consts)
    n_slots = n_pre + len(tape.ops)
    dest = np.arange(n_pre, n_slots) if planned else None
    # Every output on the small tape; on the large one (a sweep costs milliseconds) the
    # outputs of ops with a unit partial and every 7th other.
    ops = [OPS[int(tape.ops[o - n_pre])] for o in tape.outputs]
    outputs = [j for j, spec in enumerate(ops) if not large or j % 7 == 0
               or unit_partials(spec)]
    for x in [rng.uniform(-3, 3, 3), np.array([0.0, -0.0, 1e-310]), np.array([-1.0, 2.0, 0.5])]:
        for which in outputs:
            for poison in (np.nan, 7.0):
                parts = np.full(len(tape.args), poison)
                vals, adj = np.empty(n_slots), np.zeros(n_slots)
                forward_partials(tape.ops, tape.args, tape.consts, x, vals, parts, dest)
                adj[tape.outputs[which]] = 1.0
                reverse_stored(tape.ops, tape.args, parts, adj, n_pre, dest)
                v1, g1 = lean.value_and_grad(x, output=which)
                v, grad = vals[tape.outputs[which]], adj[:3]
                assert np.array_equal(np.float64(v).view(np.int64), np.float64(v1).view(np.int64)) \
                    or (np.isnan(v) and np.isnan(v1))
                same_bits = grad.view(np.int64) == g1.view(np.int64)
                assert np.all(same_bits | (np.isnan(grad) & np.isnan(g1))), \
                    (OPS[int(tape.ops[tape.outputs[which] - n_pre])].name, x, grad, g1)
                assert not adj[n_pre:].any(), "the instruction adjoints must be clean again"


def test_stored_reverse_with_subnormal_adjoints_is_the_lean_modes():
    # The stored mode's reverse sweep multiplies adjoints by unit partials (+-1) up to the
    # first subnormal one, then adds or subtracts them, as the lean mode does: the gradient
    # must not change by a bit.  Here every adjoint below the last product is subnormal.
    def f(v):
        u = ft.sin(v[0]) + v[1]
        w = (u - ft.cos(v[2]) * v[0]) * u
        return -(w + v[3]) * 1e-310 + ft.exp(v[3]) * 0.0 + ft.sin(v[1]) * 1e-300

    tape = ft.compile(ft.trace(f, 4))
    lean = tape.with_grad_mode("lean")
    for x in ([0.3, -1.2, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0], [-0.0, 0.0, 3.0, -2.0]):
        v0, g0 = tape.value_and_grad(x)
        v1, g1 = lean.value_and_grad(x)
        assert np.float64(v0).view(np.int64) == np.float64(v1).view(np.int64)
        assert np.array_equal(g0.view(np.int64), g1.view(np.int64)), (x, g0, g1)
        assert any(0 < abs(g) < np.finfo(np.float64).tiny for g in g0), g0  # the case is met


def test_tape_format_states_the_unit_partials_threshold():
    # docs/tape-format.md tells users which tapes store their unit partials; the number it
    # gives must be the kernel's.
    from pathlib import Path

    from fasttape.kernels.sweep import ALL_PARTIALS_MAX_EDGES

    text = " ".join((Path(__file__).parents[1] / "docs" / "tape-format.md").read_text().split())
    assert f"`fasttape.kernels.sweep.ALL_PARTIALS_MAX_EDGES` ({ALL_PARTIALS_MAX_EDGES:,})" in text
