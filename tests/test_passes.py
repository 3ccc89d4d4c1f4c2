"""The optimisation passes: values preserved bitwise, gradients preserved, slots never clash.

Checks are against the unoptimised tape (``optimize=False`` / the plain arrays) and against
independent checkers written here: a Python value-numbering CSE for the minimal node count and
a symbolic simulation of the slot-reuse plan.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fasttape as ft
from fasttape.bench.families import random_local
from fasttape.ops import OP_BY_NAME, OPS
from fasttape.passes import PASS_NAMES, optimize, reuse
from fasttape.passes.interleave import _ARITY as _IL_ARITY
from fasttape.passes.interleave import depths, interleave_order
from fasttape.passes.locality import distances, typical_distance
from tests.test_random_graphs import FLOATS, random_tapes

SPECIALS = [0.0, -0.0, 1.0, -1.0, 2.0, -3.5, 0.5, 5e-324, 1e308, math.inf, -math.inf, math.nan]
EXACT_ORDER = ("dce", "fold", "reuse")  # passes that keep the order of every adjoint sum


def same_bits(a, b) -> bool:
    """Bitwise equality of float arrays; any NaN equals any NaN (sign/payload not kept)."""
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    b = np.atleast_1d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape:
        return False
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b))
                and np.array_equal(a[~nan].view(np.uint64), b[~nan].view(np.uint64)))


def close_where_finite(g, ref, rtol=1e-9) -> bool:
    """Equal up to summation order wherever the reference is finite."""
    g, ref = np.asarray(g), np.asarray(ref)
    fin = np.isfinite(ref)
    return bool(np.all(np.abs(g[fin] - ref[fin]) <= rtol * (1.0 + np.abs(ref[fin]))))


def every_slot(tape: ft.Tape) -> ft.Tape:
    """The same tape with every slot as an output (so every intermediate value is compared)."""
    a = tape.to_arrays()
    return ft.Tape.from_arrays(a["ops"], a["args"], a["consts"], np.arange(tape.n_slots),
                               a["n_inputs"])


def check_plan(tape: ft.Tape) -> None:
    """Independent check of a slot-reuse plan by symbolic simulation.

    ``holder[w]`` is the plain-layout slot whose value work slot ``w`` holds.  Every argument
    read through the plan must find the value the plain tape reads, and every output must
    still be in place at the end: that is exactly "no live value is ever overwritten".
    """
    plan = tape.reuse_plan
    n_pre = tape.n_inputs + tape.n_consts
    assert n_pre <= plan.n_work <= tape.n_slots
    holder = np.full(plan.n_work, -1, dtype=np.int64)
    holder[:n_pre] = np.arange(n_pre)
    k = 0
    for i, op in enumerate(tape.ops):
        for j in range(OPS[op].arity):
            assert holder[plan.args[k + j]] == tape.args[k + j], (i, j)
        k += OPS[op].arity
        d = int(plan.dest[i])
        assert n_pre <= d < plan.n_work
        holder[d] = n_pre + i
    for j, o in enumerate(tape.outputs):
        assert holder[plan.outputs[j]] == o, j


def max_live(tape: ft.Tape) -> int:
    """Largest number of instruction values alive at once (independent of the plan code)."""
    n_pre = tape.n_inputs + tape.n_consts
    n = tape.n_instructions
    last = np.arange(n)  # a value is alive at least at its own instruction
    arity = np.array([OPS[o].arity for o in tape.ops], dtype=np.int64)
    owner = np.repeat(np.arange(n), arity)
    a = np.asarray(tape.args, np.int64)
    sel = a >= n_pre
    np.maximum.at(last, a[sel] - n_pre, owner[sel])
    outs = np.asarray(tape.outputs)
    last[outs[outs >= n_pre] - n_pre] = n
    # Alive during [i, last[i]); a value read for the last time at instruction t frees its slot
    # for t's own result, hence the half-open interval (the value of a dead instruction still
    # needs its slot at its own step).
    end = np.where(last > np.arange(n), last, np.arange(n) + 1)
    events = np.zeros(n + 2, dtype=np.int64)
    np.add.at(events, np.arange(n), 1)
    np.add.at(events, end, -1)
    return int(np.cumsum(events).max()) if n else 0


def value_numbering(tape: ft.Tape) -> int:
    """Minimal instruction count after CSE + DCE, by dictionary value numbering (reference)."""
    n_in, consts = tape.n_inputs, tape.consts
    vn: list = [("in", i) for i in range(n_in)]
    vn += [("c", int(np.float64(c).view(np.int64))) for c in consts]  # bits: -0.0 != 0.0
    deps: dict = {}
    k = 0
    for op in tape.ops:
        spec = OPS[op]
        key_args = [vn[int(a)] for a in tape.args[k : k + spec.arity]]
        if spec.commutative:
            key_args = sorted(key_args, key=repr)
        key = (spec.name, *key_args)
        vn.append(key)
        deps[key] = key_args
        k += spec.arity
    live: set = set()
    stack = [vn[int(o)] for o in tape.outputs]
    while stack:
        key = stack.pop()
        if key in live or key[0] in ("in", "c"):
            continue
        live.add(key)
        stack.extend(deps[key])
    return len(live)


@pytest.fixture(autouse=True, scope="module")
def plan_every_tape():
    """Plan even tiny tapes here (the pipeline skips tapes under reuse.MIN_SLOTS slots)."""
    saved = reuse.MIN_SLOTS
    reuse.MIN_SLOTS = 0
    yield
    reuse.MIN_SLOTS = saved


# ---------------------------------------------------------------------------- API
def test_small_tapes_get_no_plan_by_default():
    reuse.MIN_SLOTS = 65_536
    try:
        small = optimize(random_local(1000))
        assert small.reuse_plan is None and small.stats()["work_slots"] == small.n_slots
        assert small.stats()["passes"][-1]["detail"] == "skipped: fewer than 65,536 slots"
        assert "(reuse)" not in small.listing()
        big = optimize(random_local(200_000))  # about 100,000 instructions after dce
        assert big.reuse_plan is not None and big.stats()["work_slots"] < 1000
    finally:
        reuse.MIN_SLOTS = 0


def test_default_compile_runs_the_pipeline_and_reports_it(capsys):
    g = ft.Graph()
    x, y = g.inputs(2)
    a = ft.sin(x * y) + ft.sin(y * x)  # one mul, one sin after CSE
    g.output(a * 1.0 + ft.exp(g.constant(2.0)))  # x*1 -> x; exp(2) folded
    tape = ft.compile(g)
    plain = ft.compile(g, optimize=False)
    assert plain.n_instructions == 8 and tape.n_instructions == 4  # mul, sin, add, add
    s = tape.stats()
    names = [r["pass"] for r in s["passes"]]
    assert names[0] == "dce" and names[-1] == "reuse"
    assert {"fold", "simplify", "cse"} <= set(names)
    assert s["work_slots"] < tape.n_slots
    assert s["value_work_nbytes"] == 8 * s["work_slots"]
    print(tape)
    text = capsys.readouterr().out
    assert "passes: 8 instructions -> dce 8 -> fold 7" in text, text
    assert "cse 4 -> simplify 4 -> fuse 4 -> dce 4 -> interleave 4; slots 7 -> 4 (reuse)" in text
    xx = [0.3, -1.7]
    assert same_bits(tape.value(xx), plain.value(xx))
    v, gr = tape.value_and_grad(xx)
    v0, g0 = plain.value_and_grad(xx)
    assert same_bits(v, v0) and close_where_finite(gr, g0, 1e-15)


def test_optimize_false_is_the_old_compile():
    g = ft.Graph()
    x = g.inputs(2)
    _ = ft.exp(x[0])  # dead
    g.output(ft.sin(x[0]) + ft.sin(x[0]))
    tape = ft.compile(g, optimize=False)
    assert tape.reuse_plan is None and tape.n_instructions == 3
    assert "passes" in tape.stats() and tape.stats()["passes"] == []
    assert ft.compile(g, optimize=[]).n_instructions == 4  # no dce: the dead exp stays
    assert ft.compile(g, optimize=["cse"]).n_instructions == 3  # the dead exp stays, sin merged


@pytest.mark.parametrize("bad", ["cse", 3, None])
def test_optimize_argument_type_errors(bad):
    g = ft.Graph()
    g.output(g.input() + 1.0)
    with pytest.raises(TypeError, match="optimize must be True, False or a list"):
        ft.compile(g, optimize=bad)


def test_unknown_pass_name_is_refused():
    g = ft.Graph()
    g.output(g.input() + 1.0)
    with pytest.raises(ValueError, match=r"unknown pass name\(s\) \['cs'\]"):
        ft.compile(g, optimize=["cs"])


def test_optimize_refuses_non_tapes():
    with pytest.raises(TypeError, match=r"expects a fasttape\.Tape"):
        optimize(ft.Graph())


def test_pass_names():
    assert PASS_NAMES == ("dce", "fold", "simplify", "cse", "fuse", "locality", "interleave",
                          "reuse")


def test_with_grad_mode_keeps_the_plan_and_lean_mode_ignores_it():
    tape = optimize(random_local(3000))
    lean = tape.with_grad_mode("lean")
    assert lean.reuse_plan is tape.reuse_plan
    assert lean.work_nbytes(grad=False) == tape.work_nbytes(grad=False)
    assert lean.work_nbytes(grad=True) == 16 * tape.n_slots
    x = np.full(tape.n_inputs, 0.4)
    v1, g1 = tape.value_and_grad(x)
    v2, g2 = lean.value_and_grad(x)
    assert same_bits(v1, v2) and same_bits(g1, g2)


def test_out_argument_with_a_plan():
    tape = optimize(random_local(500))
    x = np.full(tape.n_inputs, 0.3)
    out = np.empty(1)
    assert tape.value(x, out=out) is out and same_bits(out, tape.value(x))
    with pytest.raises(ValueError, match="out must be"):
        tape.value(x, out=np.empty(2))


# ---------------------------------------------------------------------------- hypothesis
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_tapes(), st.sampled_from(
    [True, ["fold"], ["simplify"], ["cse"], ["dce"], ["reuse"], ["locality"], ["interleave"],
     ["dce", "fold", "simplify", "cse", "locality", "reuse"], list(PASS_NAMES)]))
def test_every_pass_preserves_values_and_gradients(case, passes):
    tape, x = case
    ref = every_slot(tape)  # every intermediate value is an output, so all are compared
    opt = optimize(ref, passes)
    assert same_bits(opt.value(x), ref.value(x)), opt.listing()
    names = set(PASS_NAMES if passes is True else passes)
    exact_order = names <= set(EXACT_ORDER)
    for k in range(tape.n_inputs + tape.n_consts, ref.n_slots, 3):
        v, g = opt.value_and_grad(x, output=k)
        v0, g0 = ref.value_and_grad(x, output=k)
        assert same_bits(v, v0)
        if exact_order:
            assert same_bits(g, g0), (k, g, g0, opt.listing())
        else:
            assert close_where_finite(g, g0), (k, g, g0, opt.listing())
    if opt.reuse_plan is not None:
        check_plan(opt)


@settings(max_examples=150, deadline=None)
@given(random_tapes())
def test_pipeline_is_idempotent(case):
    tape, _ = case
    for passes in (True, list(PASS_NAMES)):
        once = optimize(tape, passes)
        twice = optimize(once, passes)
        for name in ("ops", "args", "outputs"):
            assert np.array_equal(getattr(once, name), getattr(twice, name)), name
        assert same_bits(once.consts, twice.consts)
        assert twice.n_inputs == once.n_inputs


@settings(max_examples=150, deadline=None)
@given(random_tapes())
def test_cse_reaches_the_minimal_node_count(case):
    tape, _ = case
    assert optimize(tape, ["cse", "dce"]).n_instructions == value_numbering(tape)


@st.composite
def doubled(draw):
    """A tape in which every instruction is written twice; each use picks either copy."""
    tape, x = draw(random_tapes())
    base = optimize(tape, ["cse"])  # no repeats left (dead nodes stay: nothing is dropped)
    a = base.to_arrays()
    n_pre = base.n_inputs + base.n_consts
    ops, args = [], []
    k = 0

    def pick(s):
        s = int(s)
        return s if s < n_pre else n_pre + 2 * (s - n_pre) + draw(st.integers(0, 1))

    for op in a["ops"]:
        ar = OPS[op].arity
        for _ in range(2):
            ops.append(op)
            args += [pick(s) for s in a["args"][k : k + ar]]
        k += ar
    outputs = [pick(o) for o in a["outputs"]]
    twice = ft.Tape.from_arrays(ops, args, a["consts"], outputs, a["n_inputs"])
    return base, twice, x


@settings(max_examples=100, deadline=None)
@given(doubled())
def test_every_subexpression_written_twice_halves_exactly(case):
    base, twice, x = case
    assert twice.n_instructions == 2 * base.n_instructions
    merged = optimize(twice, ["cse"])
    assert merged.n_instructions == base.n_instructions
    assert same_bits(merged.value(x), twice.value(x))


@settings(max_examples=100, deadline=None)
@given(random_tapes())
def test_slot_plan_never_overwrites_a_live_value_and_is_optimal(case):
    tape, x = case
    opt = optimize(tape, ["reuse"])
    check_plan(opt)
    assert opt.reuse_plan.n_work - opt.n_inputs - opt.n_consts == max_live(opt)
    for k in range(tape.n_outputs):
        v, g = opt.value_and_grad(x, output=k)
        v0, g0 = tape.value_and_grad(x, output=k)
        assert same_bits(v, v0) and same_bits(g, g0)


# ---------------------------------------------------------------------------- folding
def _const_args(spec, draw_vals):
    """Argument values for ``spec`` (powi needs an integral exponent)."""
    vals = list(draw_vals[: spec.arity])
    if spec.name == "powi":
        vals[1] = float(int(vals[1]) % 7 - 3) if math.isfinite(vals[1]) else 2.0
    return vals


@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
def test_folding_is_bitwise_the_kernels_result_for_every_op(spec):
    rng = np.random.default_rng(spec.code)
    for _ in range(20):
        draw = [SPECIALS[i] for i in rng.integers(0, len(SPECIALS), 3)]
        vals = _const_args(spec, draw)
        g = ft.Graph()
        xin = g.input()
        node = g._node(spec.code, *[g.constant(v).i for v in vals])
        g.output(node + xin, node)
        folded = ft.compile(g)
        plain = ft.compile(g, optimize=False)
        assert folded.n_instructions <= 1  # only the add with the input remains
        got = folded.value([0.25])
        assert same_bits(got, plain.value([0.25])), (spec.name, vals)
        assert same_bits(got[1], ft.kernels.eval_op(spec.code, tuple(vals)))


def test_folding_whole_constant_subgraphs():
    g = ft.Graph()
    x = g.input()
    c = ft.exp(ft.log(g.constant(2.0)) * 3.0) + ft.sqrt(g.constant(-1.0))  # NaN
    g.output(x * c, ft.sin(g.constant(1.0)) * x)
    tape = ft.compile(g)
    assert tape.n_instructions == 2
    assert same_bits(tape.value([1.5]), ft.compile(g, optimize=False).value([1.5]))


# ---------------------------------------------------------------------------- simplification
def _rule_cases():
    return [
        ("x*1", lambda x, g: x * 1.0, 0),
        ("1*x", lambda x, g: 1.0 * x, 0),
        ("x*-1", lambda x, g: x * -1.0, 1),
        ("x*x", lambda x, g: x * x, 1),
        ("x/1", lambda x, g: x / 1.0, 0),
        ("x/-1", lambda x, g: x / -1.0, 1),
        ("x+-0.0", lambda x, g: x + g.constant(-0.0), 0),
        ("x-0.0", lambda x, g: x - 0.0, 0),
        ("x-neg(y)", lambda x, g: x - (-ft.sin(x)), 2),
        ("x+neg(y)", lambda x, g: x + (-ft.sin(x)), 2),
        ("neg(y)+x", lambda x, g: (-ft.sin(x)) + x, 2),
        ("--x", lambda x, g: ft.neg(ft.neg(x)), 0),
        ("square(-x)", lambda x, g: ft.square(-x), 1),
        ("abs(-x)", lambda x, g: abs(-x), 1),
        ("abs(abs(x))", lambda x, g: abs(abs(x)), 1),
        ("x**1", lambda x, g: x**1, 0),
        ("x**2", lambda x, g: x**2, 1),
        ("x**0", lambda x, g: x**0, 0),
        ("pow(x, c)", lambda x, g: ft.pow(x, g.constant(2.5)), 1),
        ("where(a, a, c)", lambda x, g: ft.where(x > 0, ft.sin(x), ft.sin(x)), 1),
        ("where(1, a, b)", lambda x, g: ft.where(g.constant(1.0), ft.sin(x), x), 1),
        ("where(0, a, b)", lambda x, g: ft.where(g.constant(0.0), ft.sin(x), x), 0),
        ("where(nan, a, b)", lambda x, g: ft.where(g.constant(math.nan), ft.sin(x), x), 1),
        *_CONST_ARG_CASES,
    ]


# One constant argument: same instruction count, one differentiable edge instead of two.
_CONST_ARG_CASES = [
    ("x*c", lambda x, g: x * 2.5, 1),
    ("c*x", lambda x, g: 2.5 * x, 1),
    ("x+c", lambda x, g: x + 2.5, 1),
    ("c+x", lambda x, g: 2.5 + x, 1),
    ("x-c", lambda x, g: x - 2.5, 1),
    ("c-x", lambda x, g: 2.5 - x, 1),
    ("x/c", lambda x, g: x / 2.5, 1),
    ("c/x", lambda x, g: 2.5 / x, 1),
    ("x*-0.0", lambda x, g: x * g.constant(-0.0), 1),
    ("x+0.0", lambda x, g: x + 0.0, 1),
]


@pytest.mark.parametrize("name,build,n_after", _rule_cases(), ids=[c[0] for c in _rule_cases()])
def test_exact_rules_are_bitwise_at_special_values(name, build, n_after):
    g = ft.Graph()
    x = g.input()
    g.output(build(x, g))
    tape = ft.compile(g)
    plain = ft.compile(g, optimize=False)
    assert tape.n_instructions == n_after, tape.listing()
    # Fewer instructions or edges, or fewer differentiable edges (pow -> powc, x*c -> mulc).
    assert (tape.n_instructions + tape.n_edges < plain.n_instructions + plain.n_edges
            or _n_diff_edges(tape) < _n_diff_edges(plain)), tape.listing()
    for v in [*SPECIALS, -2.0, 3.0]:
        assert same_bits(tape.value([v]), plain.value([v])), (name, v)
        _, gr = tape.value_and_grad([v])
        _, g0 = plain.value_and_grad([v])
        assert same_bits(gr, g0), (name, v, gr, g0)


def _n_diff_edges(tape: ft.Tape) -> int:
    return sum(OPS[int(o)].ndiff for o in tape.ops)


@pytest.mark.parametrize("name,build,_", _CONST_ARG_CASES, ids=[c[0] for c in _CONST_ARG_CASES])
def test_one_constant_argument_becomes_a_constant_argument_op(name, build, _):
    g = ft.Graph()
    x = g.input()
    g.output(build(x, g))
    (op,) = [OPS[int(o)] for o in ft.compile(g).ops]
    assert op.param == "const" and op.ndiff == 1, (name, op.name)


def test_nan_constant_first_is_not_swapped():
    """``c * x`` with a NaN ``c`` stays ``mul``: which NaN two NaN operands give is open."""
    g = ft.Graph()
    x = g.input()
    g.output(g.constant(math.nan) * x)
    g.output(x * g.constant(math.nan))
    assert [OPS[int(o)].name for o in ft.compile(g).ops] == ["mul", "mulc"]


def test_constant_arguments_shrink_a_data_loss_bitwise():
    """A least-squares loss over data: every weight * feature product loses its constant
    edge, and the gradient is bitwise that of the unoptimised tape (a constant's adjoint
    never reaches an input)."""
    rng = np.random.default_rng(3)
    feats, ys = rng.normal(size=(50, 3)), rng.normal(size=50)

    def loss(w):
        return ft.sum([(w[0] * f[0] + w[1] * f[1] + w[2] * f[2] - y) ** 2
                       for f, y in zip(feats.tolist(), ys.tolist(), strict=True)])

    g = ft.trace(loss, 3)
    tape = ft.compile(g, optimize=["simplify"])
    plain = ft.compile(g, optimize=False)
    assert _n_diff_edges(tape) == _n_diff_edges(plain) - 4 * 50
    w = rng.normal(size=3)
    v, gr = tape.value_and_grad(w)
    v0, g0 = plain.value_and_grad(w)
    assert same_bits(v, v0) and same_bits(gr, g0)


def test_max_x_x_is_kept_its_gradient_at_nan_is_zero():
    g = ft.Graph()
    x = g.input()
    g.output(ft.maximum(x, x))
    tape = ft.compile(g)
    assert tape.n_instructions == 1
    assert tape.grad([math.nan])[0] == 0.0 and tape.grad([2.0])[0] == 1.0


@pytest.mark.parametrize("build", [
    lambda x, g: x + 0.0, lambda x, g: x - g.constant(-0.0), lambda x, g: x - x,
    lambda x, g: x * 0.0, lambda x, g: x * g.constant(-0.0),
], ids=["x+0", "x--0", "x-x", "x*0", "x*-0"])
def test_finite_only_rules_need_the_opt_in(build):
    g = ft.Graph()
    x = g.input()
    g.output(build(x, g))
    exact = ft.compile(g)
    finite = ft.compile(g, finite_math=True)
    assert exact.n_instructions == 1 and finite.n_instructions == 0
    # Without the flag the results at -0.0, inf and NaN are kept; with it they may change.
    for v in (-0.0, math.inf, math.nan):
        assert same_bits(exact.value([v]), ft.compile(g, optimize=False).value([v]))
    for v in (-2.5, 3.0, 1e300):  # finite values agree (up to the sign of zero)
        assert exact.value([v]) == finite.value([v])


def test_x_plus_zero_is_not_simplified_by_default():
    g = ft.Graph()
    x = g.input()
    g.output(x + 0.0)
    tape = ft.compile(g)
    assert tape.n_instructions == 1
    assert math.copysign(1.0, tape.value([-0.0])) == 1.0  # -0.0 + 0.0 = +0.0


# ---------------------------------------------------------------------------- repeats
def test_many_repeats_give_the_minimal_graph():
    def f(x):
        return [ft.sin(x[0] * x[1]) + ft.cos(x[1] * x[0]) for _ in range(500)]

    g = ft.Graph()
    x = g.inputs(2)
    g.output(f(x))
    tape = ft.compile(g)
    assert tape.n_instructions == 4  # mul, sin, cos, add
    assert ft.compile(g, optimize=False).n_instructions == 2500
    assert np.all(tape.value([0.3, 0.7]) == ft.compile(g, optimize=False).value([0.3, 0.7]))


def test_traced_function_written_twice():
    def f(x):
        return ft.sum(ft.tanh(x[i] * x[i + 1] + 0.5) for i in range(len(x) - 1))

    g1 = ft.trace(f, n_inputs=50)
    g2 = ft.trace(lambda x: f(x) + f(x), n_inputs=50)
    assert ft.compile(g2).n_instructions == ft.compile(g1).n_instructions + 1


# ---------------------------------------------------------------------------- families
@pytest.fixture(scope="module")
def local20k():
    return random_local(20_000)


def test_random_local_value_memory_target(local20k):
    opt = optimize(local20k)
    check_plan(opt)
    assert opt.work_nbytes(grad=False) * 20 <= local20k.work_nbytes(grad=False)
    assert opt.work_nbytes(grad=True) < local20k.work_nbytes(grad=True)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.uniform(0.1, 0.9, local20k.n_inputs)
        assert same_bits(opt.value(x), local20k.value(x))
        v, gr = opt.value_and_grad(x)
        v0, g0 = local20k.value_and_grad(x)
        assert same_bits(v, v0)
        np.testing.assert_allclose(gr, g0, rtol=1e-12, atol=1e-300)
        assert np.count_nonzero(g0) > 0


def test_reuse_gradient_is_bitwise_on_random_local(local20k):
    opt = optimize(local20k, ["reuse"])
    x = np.full(local20k.n_inputs, 0.37)
    assert same_bits(opt.value_and_grad(x)[1], local20k.value_and_grad(x)[1])
    # Repeated calls: the adjoint buffer is left clean (read-then-zero on reused slots).
    assert same_bits(opt.value_and_grad(x)[1], local20k.value_and_grad(x)[1])


def test_locality_shortens_distances_on_random_uniform():
    from fasttape.bench.families import random_uniform

    tape = random_uniform(20_000)
    n_pre = tape.n_inputs + tape.n_consts
    opt = optimize(tape, ["dce", "locality"])
    plain = optimize(tape, ["dce"])
    before = typical_distance(plain.ops, plain.args, n_pre)
    after = typical_distance(opt.ops, opt.args, n_pre)
    assert after < 0.5 * before
    assert np.median(distances(opt.ops, opt.args, n_pre)) < np.median(
        distances(plain.ops, plain.args, n_pre))
    (rec,) = [r for r in opt.stats()["passes"] if r["pass"] == "locality"]
    assert rec["detail"].startswith("typical argument distance")
    x = np.full(tape.n_inputs, 0.5)
    assert same_bits(opt.value(x), tape.value(x))
    assert close_where_finite(opt.grad(x), tape.grad(x), 1e-12)


def test_dce_alone_on_a_tape_drops_dead_instructions():
    tape = random_local(2000)
    opt = optimize(tape, ["dce"])
    assert opt.n_instructions < tape.n_instructions
    x = np.full(tape.n_inputs, 0.5)
    assert same_bits(opt.value_and_grad(x)[1], tape.value_and_grad(x)[1])


@given(st.lists(FLOATS, min_size=2, max_size=2))
@settings(max_examples=50, deadline=None)
def test_commutative_ops_merge_in_either_order(xy):
    for spec in (s for s in OPS if s.commutative):
        g = ft.Graph()
        a, b = g.inputs(2)
        n1 = g._node(spec.code, a.i, b.i)
        n2 = g._node(spec.code, b.i, a.i)
        g.output(n1, n2)
        tape = ft.compile(g)
        assert tape.n_instructions == 1, spec.name
        assert same_bits(tape.value(xy), ft.compile(g, optimize=False).value(xy))


def test_minimum_is_not_bitwise_commutative_so_cse_keeps_both_orders():
    g = ft.Graph()
    a, b = g.inputs(2)
    g.output(ft.minimum(a, b), ft.minimum(b, a))
    assert ft.compile(g).n_instructions == 2
    assert math.copysign(1.0, ft.minimum(0.0, -0.0)) == 1.0
    assert math.copysign(1.0, ft.minimum(-0.0, 0.0)) == -1.0


def test_rule_ops_exist_in_the_table():
    from fasttape.passes.simplify import RULE_OPS

    assert all(name in OP_BY_NAME for name in RULE_OPS)


def test_edge_cases_empty_and_all_constant():
    empty = ft.Tape.from_arrays([], [], [2.5], [1, 0], 1)
    for passes in (True, list(PASS_NAMES), []):
        opt = optimize(empty, passes)
        assert opt.n_instructions == 0
        assert same_bits(opt.value([3.0]), [2.5, 3.0])
        assert same_bits(opt.grad([3.0], output=1), [1.0])
    g = ft.Graph()
    x = g.input()
    c = ft.sin(g.constant(0.5)) * ft.exp(g.constant(-1.0))
    g.output(c, c + 0.0 * x)  # 0.0 * x stays: x may be inf or NaN
    tape = ft.compile(g)
    assert tape.n_instructions == 2 and tape.n_consts == 2  # mul(0.0, x), add(c, ...)
    assert same_bits(tape.value([math.inf]), ft.compile(g, optimize=False).value([math.inf]))
    assert ft.compile(g, finite_math=True).n_instructions == 0


@pytest.mark.slow
def test_million_node_random_local_pipeline():
    tape = random_local(1_000_000)
    opt = optimize(tape)
    check_plan(opt)
    assert opt.work_nbytes(grad=False) * 20 <= optimize(tape, ["dce"]).work_nbytes(grad=False)
    x = np.random.default_rng(5).uniform(0.1, 0.9, tape.n_inputs)
    assert same_bits(opt.value(x), tape.value(x))
    np.testing.assert_allclose(opt.grad(x), tape.grad(x), rtol=1e-11, atol=1e-300)
    assert same_bits(optimize(opt).ops, opt.ops)  # idempotent at scale too


def test_planned_tape_from_many_threads_and_after_pickling():
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    tape = optimize(random_local(5000))
    assert tape.reuse_plan is not None
    rng = np.random.default_rng(11)
    xs = [rng.uniform(0.1, 0.9, tape.n_inputs) for _ in range(16)]
    want = [tape.value_and_grad(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(tape.value_and_grad, xs))
    for (v, g), (v0, g0) in zip(got, want, strict=True):
        assert same_bits(v, v0) and same_bits(g, g0)
    back = pickle.loads(pickle.dumps(tape))  # the plan is derived data: not pickled
    assert back.reuse_plan is None
    assert same_bits(back.value(xs[0]), tape.value(xs[0]))
    assert same_bits(optimize(back, ["reuse"]).reuse_plan.dest, tape.reuse_plan.dest)


# ---------------------------------------------------------------------------- interleave
@settings(max_examples=100, deadline=None)
@given(random_tapes(), st.sampled_from([1, 2, 3, 7, 4096]))
def test_interleave_orders_each_window_by_depth(case, window):
    tape, x = case
    n_pre = tape.n_inputs + tape.n_consts
    ops, args, outs = interleave_order(tape.ops, tape.args, tape.outputs, n_pre, window)
    moved = ft.Tape.from_arrays(ops, args, tape.consts, outs, tape.n_inputs)  # validates order
    d_old = depths(tape.ops, tape.args, n_pre, _IL_ARITY)
    d_new = depths(ops, args, n_pre, _IL_ARITY)
    n = len(ops)
    for w0 in range(0, n, window):
        # Same instructions in each window (as a multiset of depths), sorted by depth.
        assert sorted(d_old[w0:w0 + window]) == d_new[w0:w0 + window].tolist()
    assert same_bits(moved.value(x), tape.value(x))
    again = interleave_order(ops, args, outs, n_pre, window)
    assert all(np.array_equal(a, b) for a, b in zip(again, (ops, args, outs), strict=True))
    if window == 1:  # windows of one instruction: nothing moves
        assert np.array_equal(ops, tape.ops) and np.array_equal(args, tape.args)


def test_interleave_leaves_a_chain_alone_and_separates_independent_work():
    g = ft.Graph()
    (w,) = g.inputs(1)
    y = w
    for _ in range(50):
        y = ft.sin(y)
    g.output(y)
    chain = ft.compile(g, optimize=["interleave"])
    assert np.array_equal(chain.ops, ft.compile(g, optimize=False).ops)
    # Four independent chains written one after the other come out interleaved.
    g = ft.Graph()
    xs = g.inputs(4)
    ends = []
    for x in xs:
        y = x
        for _ in range(10):
            y = ft.sin(y)
        ends.append(y)
    g.output(ft.sum(ends))
    tape = ft.compile(g, optimize=["interleave"])
    first = [OPS[int(o)].name for o in tape.ops[:4]]
    assert first == ["sin"] * 4 and list(tape.args[:4]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="window must be >= 1"):
        interleave_order(tape.ops, tape.args, tape.outputs, 4, 0)


# ---------------------------------------------------------------------------- fuse
NO_FUSE = [p for p in PASS_NAMES if p not in ("fuse", "locality")]


def _op_names(tape: ft.Tape) -> list[str]:
    return [OPS[int(o)].name for o in tape.ops]


@pytest.mark.parametrize("fn, fused", [
    (lambda x: x[0] * 2.5 + x[1], ["fmac"]),
    (lambda x: x[1] + 2.5 * x[0], ["fmac"]),
    (lambda x: (x[0] - x[1]) ** 2, ["sqdiff"]),
    (lambda x: ft.square(x[0] - x[1]), ["sqdiff"]),
    (lambda x: ft.sin(x[0]) * 3.0 + (x[0] - x[1]) ** 2, ["sin", "sqdiff", "fmac"]),
])
def test_fuse_makes_one_instruction_of_a_pair(fn, fused):
    tape = ft.compile(ft.trace(fn, 2))
    assert sorted(_op_names(tape)) == sorted(fused)
    plain = ft.compile(ft.trace(fn, 2), optimize=NO_FUSE)
    assert len(plain.ops) == len(tape.ops) + sum(n in ("fmac", "sqdiff") for n in fused)
    for x in ([0.3, -1.7], [2.0, 2.0], [-0.0, 0.0], [np.inf, 1.0], [np.nan, 0.5]):
        assert same_bits(tape.value(x), plain.value(x))
        assert same_bits(tape.grad(x), plain.grad(x))


@pytest.mark.parametrize("fn", [
    lambda x: [x[0] * 2.5 + x[1], x[0] * 2.5],  # the product is an output
    lambda x: (x[0] * 2.5 + x[1]) * (x[0] * 2.5),  # ... or has a second use (after CSE)
    lambda x: (x[0] - x[1]) ** 2 + (x[0] - x[1]),
    lambda x: [(x[0] - x[1]) ** 2, x[0] - x[1]],
])
def test_fuse_keeps_an_inner_result_that_is_still_needed(fn):
    tape = ft.compile(ft.trace(fn, 2))
    assert not {"fmac", "sqdiff"} & set(_op_names(tape)), tape.listing()


@st.composite
def sum_of_products_programs(draw):
    """Random wiring of the fused pairs' ops (mul by constants, add, sub, square), some
    results used twice or made outputs, so that some pairs fuse and some must not."""
    n_in = draw(st.integers(1, 4))
    steps = []
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["mulc", "add", "sub", "square", "sin"]))
        steps.append((kind, draw(st.integers(0, 10 ** 6)), draw(st.integers(0, 10 ** 6)),
                      draw(st.sampled_from([2.5, -1.0 / 3.0, 0.0, -0.0, 1e308, np.nan]))))
    outs = draw(st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=3))
    x = draw(st.lists(FLOATS, min_size=n_in, max_size=n_in))
    return n_in, steps, outs, x


def _build(n_in, steps, outs):
    def fn(x):
        v = list(x)
        for kind, a, b, c in steps:
            # p among the last three values (chains: a product feeding the next add), q anywhere
            p, q = v[-1 - a % min(3, len(v))], v[b % len(v)]
            if kind == "mulc":
                v.append(p * c)
            elif kind == "add":
                v.append(p + q)
            elif kind == "sub":
                v.append(p - q)
            elif kind == "square":
                v.append(ft.square(p))
            else:
                v.append(ft.sin(p))
        return [v[-1]] + [v[o % len(v)] for o in outs]  # the last value keeps the chain live

    return ft.trace(fn, n_in)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sum_of_products_programs())
def test_fuse_keeps_values_bitwise_and_gradients_to_rounding(prog):
    n_in, steps, outs, x = prog
    graph = _build(n_in, steps, outs)
    fused = ft.compile(graph)
    plain = ft.compile(graph, optimize=NO_FUSE)
    assert len(fused.ops) <= len(plain.ops)
    assert same_bits(fused.value(x), plain.value(x))
    for k in range(fused.n_outputs):
        v, g = fused.value_and_grad(x, output=k)
        v0, g0 = plain.value_and_grad(x, output=k)
        assert same_bits(v, v0)
        assert close_where_finite(g, g0), (k, g, g0, fused.listing())
        # and the fused tape's own gradient is exactly what the Python oracle computes on it
        from tests import reference

        rv, rg = reference.value_and_grad(fused, x, output=k)
        assert same_bits(v, rv) and same_bits(g, rg), (g, rg, fused.listing())
    again = optimize(fused, True)
    assert np.array_equal(again.ops, fused.ops) and np.array_equal(again.args, fused.args)


def test_fuse_shrinks_the_structured_families():
    from fasttape.bench import families as F

    for build, n, least in ((F.mlp, 3, 0.15), (F.lennard_jones, 12, 0.2)):
        rec = next(r for r in build(n).stats()["passes"] if r["pass"] == "fuse")
        assert rec["before"] - rec["after"] >= least * rec["before"], rec
