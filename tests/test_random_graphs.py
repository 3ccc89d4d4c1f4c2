"""Hypothesis-generated random graphs over every op: kernels vs the pure-Python oracle."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import fasttape as ft
from fasttape.ops import OP_BY_NAME, OPS
from fasttape.trace import _INTERNAL
from tests import reference
from tests.test_ops import same

# Mostly ordinary numbers (so gradients flow), sometimes the special values.
FLOATS = st.integers(0, 7).flatmap(
    lambda k: st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, math.inf, -math.inf, math.nan])
    if k == 0
    else st.floats(-3.0, 3.0, allow_nan=False)
)
EXPONENTS = [-3.0, -1.0, 0.0, 1.0, 2.0, 3.0]


@st.composite
def instructions(draw, n_in: int, n_consts: int, max_ops: int, window: int):
    """``(ops, args)`` of 1 to ``max_ops`` instructions over any op, for a tape whose
    ``n_consts`` constants start with :data:`EXPONENTS`.

    Constant arguments (exponents, the ``c`` of ``mulc``, ...) point at constant slots (an
    exponent for ``powi``); other arguments at any earlier slot, half the time among the
    ``window`` previous ones so that graphs are deep, not just fans of the inputs.
    """
    n_pre = n_in + n_consts
    n_ops = draw(st.integers(1, max_ops))
    ops, args = [], []
    for i in range(n_ops):
        spec = draw(st.sampled_from(OPS))
        slot = n_pre + i
        for j in range(spec.arity):
            if spec.param == "const" and j >= spec.ndiff:
                if spec.name == "powi":
                    args.append(n_in + draw(st.integers(0, len(EXPONENTS) - 1)))
                else:
                    args.append(draw(st.integers(n_in, n_pre - 1)))
            else:
                lo = max(0, slot - window) if draw(st.booleans()) else 0
                args.append(draw(st.integers(lo, slot - 1)))
        ops.append(spec.code)
    return ops, args


@st.composite
def random_tapes(draw):
    """A valid tape using any op, with parameters (exponents) pointing at constant slots."""
    n_in = draw(st.integers(1, 4))
    consts = EXPONENTS + draw(st.lists(FLOATS, max_size=3))
    ops, args = draw(instructions(n_in, len(consts), max_ops=25, window=6))
    n_slots = n_in + len(consts) + len(ops)
    outputs = [n_slots - 1, *draw(st.lists(st.integers(0, n_slots - 1), max_size=3))]
    x = draw(st.lists(FLOATS, min_size=n_in, max_size=n_in))
    return ft.Tape.from_arrays(ops, args, consts, outputs, n_in), x


def _all_slots_tape(tape: ft.Tape) -> ft.Tape:
    """The same tape with every slot as an output, to compare every intermediate value."""
    a = tape.to_arrays()
    return ft.Tape.from_arrays(a["ops"], a["args"], a["consts"], np.arange(tape.n_slots),
                               a["n_inputs"])


@settings(max_examples=300, deadline=None)
@given(random_tapes())
def test_random_tapes_match_the_oracle(case):
    tape, x = case
    every = _all_slots_tape(tape)
    values = every.value(x)
    ref_values = reference.forward(tape, x)
    for i, (a, b) in enumerate(zip(np.atleast_1d(values), ref_values, strict=True)):
        assert same(a, b), f"slot {i}: kernel {a!r} vs reference {b!r}\n{tape.listing()}"
    # The gradient of every slot, so each instruction's partials are checked directly.
    for k in range(tape.n_inputs + tape.n_consts, every.n_slots):
        rv, rg = reference.value_and_grad(every, x, output=k)
        v, g = every.value_and_grad(x, output=k)
        assert all(same(a, b) for a, b in zip(g, rg, strict=True)), f"slot {k}: {list(g)} vs {rg}"
    for k in range(tape.n_outputs):
        rv, rg = reference.value_and_grad(tape, x, output=k)
        for mode in ft.GRAD_MODES:
            v, g = tape.with_grad_mode(mode).value_and_grad(x, output=k)
            assert same(v, rv), (mode, k, v, rv)
            for j, (a, b) in enumerate(zip(g, rg, strict=True)):
                assert same(a, b), f"{mode} d out{k}/dx{j}: {a!r} vs {b!r}\n{tape.listing()}"


# ---------------------------------------------------------------------- traced programs
UNARY = [op.name for op in OPS if op.arity == 1]
# Internal ops (sqdiff, ...) have no frontend function: the passes make them from these.
BINARY = [op.name for op in OPS
          if op.arity == 2 and op.param != "const" and op.name not in _INTERNAL]


@st.composite
def programs(draw):
    """A random straight-line program over the frontend: (n_inputs, steps, outputs)."""
    n_in = draw(st.integers(1, 4))
    steps = []
    n = n_in
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["unary", "binary", "const", "where", "powi", "powc"]))
        a = draw(st.integers(0, n - 1))
        b = draw(st.integers(0, n - 1))
        c = draw(st.integers(0, n - 1))
        if kind == "unary":
            steps.append(("unary", draw(st.sampled_from(UNARY)), a))
        elif kind == "binary":
            steps.append(("binary", draw(st.sampled_from(BINARY)), a, b))
        elif kind == "const":
            steps.append(("const", draw(st.sampled_from(BINARY)), a, draw(FLOATS),
                          draw(st.booleans())))
        elif kind == "where":
            steps.append(("where", a, b, c))
        elif kind == "powi":
            steps.append(("powi", a, draw(st.integers(-4, 4))))
        else:
            steps.append(("powc", a, draw(st.floats(-2.5, 2.5))))
        n += 1
    outputs = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))
    x = draw(st.lists(FLOATS, min_size=n_in, max_size=n_in))
    return n_in, steps, outputs, x


def _run(steps, start, ops):
    """Interpret a program: ``ops`` maps names to functions over the value type."""
    vals = list(start)
    for s in steps:
        if s[0] == "unary":
            vals.append(ops[s[1]](vals[s[2]]))
        elif s[0] == "binary":
            vals.append(ops[s[1]](vals[s[2]], vals[s[3]]))
        elif s[0] == "const":
            _, name, a, c, left = s
            vals.append(ops[name](c, vals[a]) if left else ops[name](vals[a], c))
        elif s[0] == "where":
            vals.append(ops["where"](vals[s[1]], vals[s[2]], vals[s[3]]))
        elif s[0] == "powi":
            vals.append(ops["powi"](vals[s[1]], s[2]))
        else:
            vals.append(ops["powc"](vals[s[1]], s[2]))
    return vals


_TRACED = {**ft.trace.__globals__["OP_FUNCTIONS"], "where": ft.where, "powi": ft.pow,
           "powc": ft.pow}


def _ref_fn(name):
    fwd = reference.REFERENCE[name][0]
    if name == "where":  # ft.where(cond, a, b) -> stored (a, b, cond)
        return lambda c, a, b: fwd(a, b, c)
    return fwd


_REF = {name: _ref_fn(name) for name in reference.REFERENCE}
_REF["powc"] = reference.fpow


@settings(max_examples=200, deadline=None)
@given(programs())
def test_traced_programs_compile_to_the_same_values(prog):
    """Trace + compile (DCE, renumbering, constants) vs interpreting the program in Python."""
    n_in, steps, outputs, x = prog
    g = ft.Graph()
    xs = g.inputs(n_in)
    traced = _run(steps, xs, _TRACED)
    g.output([traced[i] for i in outputs])
    tape = ft.compile(g)
    expected = [_run(steps, x, _REF)[i] for i in outputs]
    got = np.atleast_1d(tape.value(x))
    for a, b in zip(got, expected, strict=True):
        assert same(float(a), float(b)), (a, b, steps)
    # and the compiled tape's gradient agrees with the oracle run on the same tape
    for k in range(tape.n_outputs):
        rv, rg = reference.value_and_grad(tape, x, output=k)
        v, gr = tape.value_and_grad(x, output=k)
        assert same(v, rv)
        assert all(same(a, b) for a, b in zip(gr, rg, strict=True)), (list(gr), rg)


def test_gradient_matches_finite_differences_on_a_smooth_graph():
    rng = np.random.default_rng(1)
    g = ft.Graph()
    x = g.inputs(5)
    y = ft.sin(x[0]) * x[1] + ft.exp(x[2]) / (1 + x[3] ** 2) + ft.tanh(x[4] * x[0])
    y = ft.sqrt(ft.hypot(y, x[2]) + 1.0) * ft.log1p(ft.sigmoid(x[1]) + x[4] ** 2)
    g.output(y)
    tape = ft.compile(g)
    for _ in range(20):
        x0 = rng.uniform(-1, 1, 5)
        grad = tape.grad(x0)
        for j in range(5):
            e = np.zeros(5)
            e[j] = 1e-6
            fd = (tape.value(x0 + e) - tape.value(x0 - e)) / 2e-6
            assert abs(fd - grad[j]) < 1e-7 * max(1, abs(grad[j]))


def test_reference_is_not_trivially_equal():
    """The oracle can fail: a wrong partial is caught (guards against a test that can't fail)."""
    tape = ft.Tape.from_arrays([OP_BY_NAME["sin"].code], [0], [], [1], 1)
    _, g = tape.value_and_grad([0.3])
    _, rg = reference.value_and_grad(tape, [0.3])
    assert same(g[0], rg[0])
    assert not same(g[0] * (1 + 1e-10), rg[0])
