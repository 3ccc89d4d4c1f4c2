"""ft.from_sympy: values and gradients vs sympy.lambdify and sympy.diff, sharing, depth, errors."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fasttape as ft
from fasttape.embed.sympy_import import FUNCTIONS
from fasttape.ops import OPS

sp = pytest.importorskip("sympy")
cfn = pytest.importorskip("sympy.codegen.cfunctions")

X, Y, Z = sp.symbols("x y z", real=True)
SYMS = [X, Y, Z]


# lambdify does not know the C99 functions of sympy.codegen.cfunctions: spell them for "math".
CFUNCS = {
    "Cbrt": lambda v: math.copysign(abs(v) ** (1 / 3), v), "Sqrt": math.sqrt,
    "expm1": math.expm1, "log1p": math.log1p, "log2": math.log2, "log10": math.log10,
    "exp2": lambda v: 2.0**v, "fma": lambda a, b, c: a * b + c, "hypot": math.hypot,
}
MODULES = [CFUNCS, "math"]


def check(exprs, syms, points, rtol=1e-9):
    """Tape values and gradients equal lambdify(expr) and lambdify(diff(expr, s))."""
    exprs = list(exprs)
    tape = ft.compile(ft.from_sympy(exprs, syms))
    f = sp.lambdify(syms, exprs, MODULES)
    grads = [sp.lambdify(syms, [sp.diff(e, s) for s in syms], MODULES) for e in exprs]
    compared = 0
    for p in points:
        try:
            want = [float(v) for v in f(*p)]
        except (ValueError, ZeroDivisionError, OverflowError):
            continue  # outside the domain of the math module's functions
        got = np.atleast_1d(tape.value(p))
        for k, w in enumerate(want):
            if not math.isfinite(w) or abs(w) > 1e8:
                continue
            assert got[k] == pytest.approx(w, rel=rtol, abs=rtol), (exprs[k], p)
            try:
                gw = [float(v) for v in grads[k](*p)]
            except (ValueError, ZeroDivisionError, OverflowError):
                continue
            if not all(math.isfinite(v) and abs(v) < 1e8 for v in gw):
                continue
            gg = tape.grad(p, output=k)
            np.testing.assert_allclose(gg, gw, rtol=rtol, atol=rtol * max(1.0, *map(abs, gw)),
                                       err_msg=f"{exprs[k]} at {p}")
            compared += 1
    return compared


POINTS = [(0.3, -0.7, 0.45), (1.3, 0.2, -0.4), (-0.6, 1.7, 0.9), (0.05, 0.5, 2.5)]


# ---------------------------------------------------------------------------- every mapping
def _function_case(name):
    """A SymPy call of ``name`` on in-domain arguments built from x, y, z."""
    u = sp.tanh(X) / 2  # in (-1/2, 1/2)
    pos = X**2 + Y**2 + sp.Rational(1, 4)
    one_arg = {
        "asin": u, "acos": u, "atanh": u, "acosh": pos + 1, "log": pos, "log2": pos,
        "log10": pos, "log1p": pos, "Sqrt": pos, "Cbrt": pos,
    }
    cls = getattr(sp, name, None) or getattr(cfn, name)
    if name in ("atan2", "hypot"):
        return cls(X + 2, Y - 3)
    if name in ("sign", "floor", "ceiling"):
        return cls(X * 3 + Y) * Z + Y  # piecewise constant: gradient only through the rest
    return cls(one_arg.get(name, X * Y + Z))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_each_supported_function(name):
    expr = _function_case(name)
    if name in ("sign", "floor", "ceiling"):
        # sympy.diff leaves Derivative(floor(...)) unevaluated; compare values, and the
        # gradient with the documented convention (derivative 0 of the jump function).
        tape = ft.compile(ft.from_sympy(expr, SYMS))
        inner = sp.lambdify(SYMS, getattr(sp, name, None)(X * 3 + Y), "math")
        for p in POINTS:
            assert tape.value(p) == pytest.approx(float(inner(*p)) * p[2] + p[1], rel=1e-15)
            np.testing.assert_array_equal(tape.grad(p), [0.0, 1.0, float(inner(*p))])
        return
    assert check([expr], SYMS, POINTS, rtol=1e-10) >= 3


@pytest.mark.parametrize("spec", OPS, ids=[op.name for op in OPS])
def test_every_sympy_function_named_like_an_op_is_mapped(spec):
    """Derived by name: where SymPy (or sympy.codegen.cfunctions) has a function class spelled
    like the op (``sin``, ``Sqrt``, ...), from_sympy maps it to that op.  An op SymPy has no
    function for (``sigmoid``, ``fmac``, ...) is reached through SymPy's core classes or its
    written-out form, and needs nothing here."""
    spellings = {spec.name, spec.name.capitalize()}
    named = [n for ns in (sp, cfn) for n in spellings
             if isinstance(getattr(ns, n, None), type) and issubclass(getattr(ns, n), sp.Function)]
    if named:
        assert spec.name in FUNCTIONS.values(), (
            f"SymPy has {named} but fasttape/embed/sympy_import.py does not map it to "
            f"{spec.name!r}")


def test_structural_ops_and_logic():
    exprs = [
        X - 3 * Y / (7 * Z**2) + 1 / sp.sqrt(Z**2 + 1) - X**-3 + X ** sp.Rational(2, 3),
        (X**2 + 1) ** (Y / 3) + 2**X - sp.pi * sp.E,
        sp.Min(X, Y, 2 * Z) + sp.Max(X, -Y, 0),
        sp.Piecewise((X**2, X > 1), (Y * Z, sp.And(Y < 0, Z >= 0)), (-X, sp.Or(Z < 0, Y > 1)),
                     (Z, True)),
        sp.Piecewise((X, sp.Not(sp.Eq(Y, 1))), (Y, True))
        + sp.Piecewise((Y, sp.Ne(X, Z)), (0, True)),
        cfn.exp2(X) + cfn.fma(X, Y, Z) + cfn.expm1(X) - sp.Abs(Y),
    ]
    pts = [*[(abs(a) + 0.3, b, c) for a, b, c in POINTS], (1.5, -0.5, 0.2), (0.5, 0.5, -0.1),
           (0.8, 1.5, 0.7), (0.8, 1.0, 0.7)]
    assert check(exprs, SYMS, pts, rtol=1e-10) > 20
    # A relation as an output is its 0/1 value.
    rel = ft.compile(ft.from_sympy([X < Y, X <= Y, X > Y, X >= Y, sp.Eq(X, Y), sp.Ne(X, Y)],
                                   SYMS))
    np.testing.assert_array_equal(rel.value([1.0, 2.0, 0.0]), [1, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(rel.value([2.0, 2.0, 0.0]), [0, 1, 0, 1, 1, 0])


def test_outputs_of_every_shape():
    assert ft.compile(ft.from_sympy(sp.Integer(3), [])).value([]) == 3.0
    t = ft.compile(ft.from_sympy(sp.Matrix([[X, 2 * X], [X**2, 1]]), [X]))
    np.testing.assert_array_equal(t.value([3.0]), [3.0, 6.0, 9.0, 1.0])
    assert ft.compile(ft.from_sympy((X * Y for _ in range(2)), [X, Y])).n_outputs == 2
    assert ft.compile(ft.from_sympy(sp.Tuple(X, Y, 1), [X, Y])).n_outputs == 3
    # Numbers fold: a constant subexpression becomes one constant.
    t = ft.compile(ft.from_sympy(sp.sin(2) * X + sp.sqrt(2), [X]))
    assert t.n_instructions == 2  # mul, add
    assert t.value([1.0]) == pytest.approx(math.sin(2) + math.sqrt(2), rel=1e-15)


# ---------------------------------------------------------------------------- random expressions
_UNARY = [
    lambda e: sp.sin(e), lambda e: sp.cos(e), lambda e: sp.exp(sp.tanh(e)),
    lambda e: sp.log(e**2 + 1), lambda e: sp.sqrt(e**2 + sp.Rational(1, 2)),
    lambda e: sp.atan(e), lambda e: sp.tanh(e), lambda e: sp.asinh(e),
    lambda e: sp.asin(sp.tanh(e) / 2), lambda e: sp.erf(e), lambda e: sp.sinh(sp.tanh(e)),
    lambda e: -e, lambda e: e**2, lambda e: e**3, lambda e: 1 / (e**2 + 1),
    lambda e: (e**2 + 1) ** sp.Rational(-3, 2), lambda e: sp.acosh(e**2 + 2),
]
_BINARY = [
    lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b,
    lambda a, b: a / (b**2 + 1), lambda a, b: sp.atan2(a, b**2 + 1),
    lambda a, b: (a**2 + 1) ** sp.tanh(b), lambda a, b: 3 * a - b / 5,
]


@st.composite
def expressions(draw):
    pool = list(SYMS)
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            f = draw(st.sampled_from(_UNARY))
            pool.append(f(draw(st.sampled_from(pool))))
        else:
            f = draw(st.sampled_from(_BINARY))
            pool.append(f(draw(st.sampled_from(pool)), draw(st.sampled_from(pool))))
    # Two outputs sharing the pool's subexpressions.
    return [pool[-1], pool[draw(st.integers(0, len(pool) - 1))] + pool[-1] * Y]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions())
def test_random_expressions_match_sympy(exprs):
    check(exprs, SYMS, POINTS, rtol=1e-8)


# ---------------------------------------------------------------------------- structure
def test_shared_subexpressions_stay_shared():
    s = sp.sin(X * Y) + Z  # appears in all three outputs
    g = ft.from_sympy([s**2, sp.exp(s), s * X], SYMS)
    a = g.to_arrays()
    assert int(np.sum(a["ops"] == ft.ops.OP_BY_NAME["sin"].code)) == 1
    assert int(np.sum(a["ops"] == ft.ops.OP_BY_NAME["mul"].code)) == 2  # x*y and s*x
    # An equal subexpression built separately (a different object) is shared too.
    g2 = ft.from_sympy([sp.sin(X * Y) + Z, sp.Add(sp.sin(sp.Mul(Y, X)), Z, evaluate=True)],
                       SYMS)
    assert int(np.sum(g2.to_arrays()["ops"] == ft.ops.OP_BY_NAME["sin"].code)) == 1


def test_deeper_than_the_recursion_limit():
    # evaluate=False: SymPy neither flattens nor hashes while building, so the first hash of
    # the outer levels happens inside from_sympy (in post-order, or it would recurse).
    depth = 3 * sys.getrecursionlimit()
    c = sp.Rational(9, 10)
    e = X
    for _ in range(depth):
        e = sp.Add(sp.Mul(c, sp.sin(e, evaluate=False), evaluate=False), Y, evaluate=False)
    tape = ft.compile(ft.from_sympy(e, [X, Y]))
    assert tape.n_instructions == 2 * depth  # sin, and the mul by 0.9 fused with the add (fmac)
    v, g = tape.value_and_grad([0.4, 0.1])
    x, gx, gy = 0.4, 1.0, 0.0  # forward mode by hand
    for _ in range(depth):
        cos = math.cos(x)
        x, gx, gy = 0.9 * math.sin(x) + 0.1, 0.9 * cos * gx, 0.9 * cos * gy + 1.0
    assert v == pytest.approx(x, rel=1e-12)
    np.testing.assert_allclose(g, [gx, gy], rtol=1e-10, atol=1e-300)


def test_clear_errors():
    with pytest.raises(ValueError, match="unsupported SymPy function 'besselj'"):
        ft.from_sympy(sp.besselj(0, X) + 1, [X])
    with pytest.raises(ValueError, match="unsupported SymPy function 'Heaviside'"):
        ft.from_sympy([X, sp.Heaviside(X)], [X])
    with pytest.raises(ValueError, match="symbol 'z', which is not in symbols"):
        ft.from_sympy(X + Z, [X])
    with pytest.raises(ValueError, match="repeated"):
        ft.from_sympy(X, [X, X])
    with pytest.raises(TypeError, match="SymPy Symbols"):
        ft.from_sympy(X, ["x"])
    with pytest.raises(ValueError, match="ImaginaryUnit"):
        ft.from_sympy(X * sp.I, [X])
    with pytest.raises(ValueError, match="at least one expression"):
        ft.from_sympy([], [X])


def test_same_name_different_assumptions_is_explained():
    plain = sp.Symbol("x")
    with pytest.raises(ValueError, match="differs from the one in symbols by its assumptions"):
        ft.from_sympy(X + 1, [plain])


# ---------------------------------------------------------------------------- issue 15
@pytest.mark.parametrize(
    ("expr", "words"),
    [
        (lambda: sp.Function("sin")(X), "'sin' is an undefined function (made with "
                                        "sympy.Function('sin'))"),
        (lambda: sp.Function("exp2")(X, Y), "'exp2' is an undefined function"),
        (lambda: sp.Function("fma")(X, Y), "'fma' is an undefined function"),
        (lambda: sp.Function("f")(X) + 1, "'f' is an undefined function"),
        (lambda: sp.Function("Min")(X, Y), "'Min' is an undefined function"),
    ],
    ids=["sin", "exp2-two-args", "fma-two-args", "f", "Min"],
)
def test_undefined_functions_are_refused_not_matched_by_name(expr, words):
    """Matching on the class name turned Function("sin") into sin, dropped the second
    argument of Function("exp2")(x, y) and raised a bare IndexError for Function("fma")."""
    with pytest.raises(ValueError, match=re.escape(words)):
        ft.from_sympy(expr(), [X, Y])


def test_the_suggestion_names_the_real_function():
    with pytest.raises(ValueError, match=r"use sympy\.sin,"):
        ft.from_sympy(sp.Function("sin")(X), [X])
    with pytest.raises(ValueError, match=r"use sympy\.codegen\.cfunctions\.exp2,"):
        ft.from_sympy(sp.Function("exp2")(X), [X])


def test_wrong_argument_counts_are_refused():
    # SymPy's own classes check their arity; one built around that check must still be caught.
    odd = sp.Basic.__new__(cfn.fma, X, Y)
    with pytest.raises(ValueError, match="fma takes 3 arguments, got 2"):
        ft.from_sympy(odd, [X, Y])
    odd = sp.Basic.__new__(sp.sin, X, Y)
    with pytest.raises(ValueError, match="sin takes 1 argument, got 2"):
        ft.from_sympy(odd, [X, Y])


@pytest.mark.parametrize(
    ("expr", "name"),
    [
        (lambda: sp.Integral(X**2, (X, 0, 1)), "Integral"),
        (lambda: Y + sp.Integral(X * Y, (X, 0, Y)), "Integral"),
        (lambda: sp.Sum(X**Z, (Z, 1, 5)) * Y, "Sum"),
        (lambda: sp.Derivative(sp.Function("f")(X), X), "Derivative"),
    ],
)
def test_the_outermost_unsupported_construct_is_named(expr, name):
    """Integral was reported as "unsupported SymPy function 'Tuple'" (its limits)."""
    with pytest.raises(ValueError, match=f"unsupported SymPy function '{name}'"):
        ft.from_sympy(expr(), [X, Y])


def test_numbers_beyond_float64_are_rounded_or_refused():
    """Rational(1, 10**400) raised a bare OverflowError: it is 0.0 in float64 (documented);
    a finite number too large for float64 is refused rather than made inf."""
    tape = ft.compile(ft.from_sympy(X * sp.Rational(1, 10**400) + Y, [X, Y]))
    assert tape.value([3.0, 2.0]) == 2.0
    assert ft.compile(ft.from_sympy(X / 10**400, [X])).value([5.0]) == 0.0
    tiny = ft.compile(ft.from_sympy(X * sp.Rational(3, 10**310), [X]))
    assert tiny.value([1.0]) == 3e-310  # a subnormal, correctly rounded
    assert ft.compile(ft.from_sympy(X + sp.Rational(1, 3), [X])).value([0.0]) == 1 / 3
    assert ft.compile(ft.from_sympy(X + sp.oo, [X])).value([0.0]) == math.inf
    for huge in (sp.Integer(10**400), sp.Rational(10**400, 3), sp.Float("1e400")):
        with pytest.raises(ValueError, match="beyond the float64 range"):
            ft.from_sympy(X * huge + 1, [X])


def test_dummy_against_symbol_is_explained():
    """Both have empty assumptions: the message used to print two identical dicts."""
    d = sp.Dummy("x")
    with pytest.raises(ValueError, match="is a Dummy and the one in symbols a Symbol"):
        ft.from_sympy(d + 1, [sp.Symbol("x")])
    with pytest.raises(ValueError, match="is a Symbol and the one in symbols a Dummy"):
        ft.from_sympy(sp.Symbol("x") + 1, [d])
    with pytest.raises(ValueError, match="another Dummy than the one in symbols"):
        ft.from_sympy(sp.Dummy("x") + 1, [d])
    with pytest.raises(ValueError, match=r"assumptions \(.*positive=True vs None"):
        ft.from_sympy(sp.Symbol("x", positive=True) + 1, [sp.Symbol("x")])
    assert ft.compile(ft.from_sympy(d * 2, [d])).value([1.5]) == 3.0


def test_text_is_refused_with_a_pointer_to_sympify():
    """A str used to be iterated character by character."""
    with pytest.raises(TypeError, match=r"not text \('x\*y'\).*sympy\.sympify"):
        ft.from_sympy("x*y", [X, Y])
    with pytest.raises(TypeError, match=r"sympy\.sympify"):
        ft.from_sympy([X, "x*y"], [X, Y])
    with pytest.raises(TypeError, match=r"not a string.*sympy\.symbols"):
        ft.from_sympy(X * Y, "x y")
    assert ft.compile(ft.from_sympy([X * Y, 2, 0.5], [X, Y])).value([2.0, 3.0]).tolist() == [
        6.0, 2.0, 0.5]
