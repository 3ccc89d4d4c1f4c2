"""The op table: every operation fasttape knows, defined once.

Each :class:`OpSpec` row holds everything that is "about an op": its name, arity, which of its
arguments are differentiable, the forward formula, the partial derivatives, the input domain used
by the tests and the convention at non-smooth points.  The kernels' per-op dispatch functions
are generated from this table by :mod:`fasttape.kernels.codegen`; the frontend functions
(``ft.sin``, ...), the docs' op list and the tests' parametrisations are all derived from it.
Nothing else in the package spells out an op's formula.

Notation in the formula strings (Numba-compatible Python expressions):

``x, y, z``
    the first, second and third argument of the instruction, as stored in the tape;
``f``
    the instruction's result (partials may reuse it, as CasADi's ``der(x, y, f, d)`` does);
``math``, ``np``
    the standard modules; helpers such as ``sign`` and ``powi`` live in
    :mod:`fasttape.kernels.scalar`.

Arguments are ordered so that the differentiable ones come first: an op with ``ndiff = k`` has
partials with respect to its first ``k`` arguments only.  The remaining arguments are
*parameters* (the constant exponent of ``powi``/``powc``) or *conditions* (the selector of
``where``); they receive no adjoint.  That is why ``where(cond, a, b)`` is stored as
``where(a, b, cond)`` in the tape.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = [
    "OpSpec",
    "OPS",
    "OP_BY_NAME",
    "N_OPS",
    "INTERNAL_OPS",
    "table_hash",
]


@dataclass(frozen=True)
class OpSpec:
    """One row of the op table.

    Parameters
    ----------
    name : str
        Lowercase NumPy-style spelling; the op code is the row's position in :data:`OPS`.
    arity : int
        Number of arguments (1, 2 or 3).
    forward : str
        Expression for the result in terms of ``x, y, z``.
    partials : tuple of str
        One expression per differentiable argument (the first ``len(partials)`` arguments), in
        terms of ``x, y, z`` and the result ``f``.
    domain : tuple of (float, float)
        Per-argument interval on which the op is smooth, used by the tests to draw inputs.
    doc : str
        One line for docstrings and the docs' op table.
    commutative : bool
        ``op(x, y) == op(y, x)`` bitwise; lets passes canonicalise argument order.
    param : str
        ``""`` for plain args, ``"const"`` if the non-differentiable arguments must be constant
        slots (exponents), ``"cond"`` if they are 0/1 selectors.
    nonsmooth : str
        The documented derivative convention at non-smooth points (empty if smooth).
    second : tuple of str
        Second partial derivatives of the result with respect to the differentiable arguments,
        in terms of ``x, y, z`` and ``f``, used by the Hessian-vector products and Hessians
        (:mod:`fasttape.derivatives`): ``(d2f/dx2,)`` for one differentiable argument,
        ``(d2f/dx2, d2f/dxdy, d2f/dy2)`` for two, ``()`` for none.  Where a first partial has
        a convention (a constant branch, a guard against ``0 * inf``), the second partial is the
        derivative of that same branch, so it is exactly 0 wherever the first partial is a
        constant (``abs``, ``minimum``, ``where``, the ``c = 0`` exponent).
    nonsmooth2 : str
        The convention of the second partials at non-smooth points, where it is not simply
        "the derivative of the first partial's branch" (empty otherwise).
    """

    name: str
    arity: int
    forward: str
    partials: tuple[str, ...]
    domain: tuple[tuple[float, float], ...]
    doc: str
    commutative: bool = False
    param: str = ""
    nonsmooth: str = ""
    second: tuple[str, ...] = ()
    nonsmooth2: str = ""
    code: int = field(default=-1, compare=False)

    @property
    def ndiff(self) -> int:
        """Number of leading differentiable arguments."""
        return len(self.partials)

    @property
    def hessian_entries(self) -> tuple[tuple[int, int, str], ...]:
        """``(j, k, expr)`` for each second partial d2f/(dj dk) with ``j <= k``."""
        pairs = [(j, k) for j in range(self.ndiff) for k in range(j, self.ndiff)]
        return tuple((j, k, e) for (j, k), e in zip(pairs, self.second, strict=True))


_R = (-3.0, 3.0)  # default domain: reals, kept small so exp and friends stay finite
_P = (0.05, 4.0)  # strictly positive
_U = (-0.95, 0.95)  # open unit interval
_I = (-9.0, 9.0)  # integer exponents in tests

# The order matters only for speed: the most frequent ops come first so the kernels'
# if/elif chains (lowered by LLVM to a jump table where it can) test them first.
_ROWS = [
    # name       arity forward                            partials
    OpSpec("add", 2, "x + y", ("1.0", "1.0"), (_R, _R), "x + y", commutative=True,
           second=("0.0", "0.0", "0.0")),
    OpSpec("mul", 2, "x * y", ("y", "x"), (_R, _R), "x * y", commutative=True,
           second=("0.0", "1.0", "0.0")),
    OpSpec("sub", 2, "x - y", ("1.0", "-1.0"), (_R, _R), "x - y",
           second=("0.0", "0.0", "0.0")),
    OpSpec("div", 2, "x / y", ("1.0 / y", "-f / y"), (_R, _P), "x / y",
           second=("0.0", "-1.0 / (y * y)", "2.0 * f / (y * y)")),
    # Arithmetic with one constant argument, stored last (``param="const"``).  The tracer
    # never makes these: the ``simplify`` pass rewrites ``x * c``, ``c * x``, ``x + c``, ...
    # into them, with bitwise the same value.  A constant needs no adjoint, so each has one
    # differentiable edge where ``mul``/``add``/... have two: one partial fewer to store and
    # one adjoint update fewer per instruction in the reverse sweep (CasADi does not
    # differentiate constants either).
    OpSpec("mulc", 2, "x * y", ("y",), (_R, _R), "x * c for a constant c", param="const",
           second=("0.0",)),
    OpSpec("addc", 2, "x + y", ("1.0",), (_R, _R), "x + c for a constant c", param="const",
           second=("0.0",)),
    OpSpec("subc", 2, "x - y", ("1.0",), (_R, _R), "x - c for a constant c", param="const",
           second=("0.0",)),
    OpSpec("rsubc", 2, "y - x", ("-1.0",), (_R, _R), "c - x for a constant c (stored x, c)",
           param="const", second=("0.0",)),
    OpSpec("divc", 2, "x / y", ("1.0 / y",), (_R, _P), "x / c for a constant c",
           param="const", second=("0.0",)),
    OpSpec("rdivc", 2, "y / x", ("-f / x",), (_P, _R), "c / x for a constant c (stored x, c)",
           param="const", second=("2.0 * f / (x * x)",)),
    OpSpec("neg", 1, "-x", ("-1.0",), (_R,), "-x",
           second=("0.0",)),
    OpSpec("square", 1, "x * x", ("2.0 * x",), (_R,), "x * x",
           second=("2.0",)),
    OpSpec(
        "powi", 2, "powi(x, y)", ("dpowi(x, y)",), ((0.2, 3.0), _I),
        "x ** n for a constant integer n (repeated squaring, like JAX's integer_pow)",
        param="const", nonsmooth="n = 0 gives derivative 0 everywhere, x = 0 included",
        second=("0.0 if y == 0.0 else y * dpowi(x, y - 1.0)",),
    ),
    OpSpec(
        "powc", 2, "x ** y", ("dpowc(x, y)",), (_P, _R),
        "x ** c for a constant real c (libm pow)",
        param="const",
        nonsmooth="c = 0 gives derivative 0 (x ** 0 is constant; JAX gives NaN at x = 0); "
        "x = 0 with 0 < c < 1 gives inf",
        second=("0.0 if y == 0.0 else y * dpowc(x, y - 1.0)",),
    ),
    OpSpec(
        "pow", 2, "x ** y", ("dpowc(x, y)", "dpow_exp(x, y, f)"), (_P, _R),
        "x ** y, both arguments variable (libm pow)",
        nonsmooth="d/dx is 0 where y = 0 (x ** 0 is constant; JAX gives NaN at x = 0); d/dy is 0 "
        "where x = 0 (as JAX)",
        second=(
            "0.0 if y == 0.0 else y * dpowc(x, y - 1.0)",
            "0.0 if x == 0.0 else x ** (y - 1.0) * (1.0 + y * math.log(x))",
            "0.0 if x == 0.0 else f * math.log(x) * math.log(x)",
        ),
        nonsmooth2="the second partials involving y are 0 where x = 0 (as d/dy); d2/dx2 is 0 "
        "where y = 0 (as d/dx)",
    ),
    OpSpec("sqrt", 1, "math.sqrt(x)", ("0.5 / f",), (_P,), "square root",
           nonsmooth="+inf at x = 0 (as JAX)",
           second=("-0.25 / (f * f * f)",)),
    OpSpec("cbrt", 1, "np.cbrt(x)", ("1.0 / (3.0 * f * f)",), ((0.05, 4.0),), "cube root",
           nonsmooth="+inf at x = 0",
           second=("-2.0 / (9.0 * f * f * f * f * f)",)),
    OpSpec("exp", 1, "math.exp(x)", ("f",), (_R,), "e ** x",
           second=("f",)),
    OpSpec("expm1", 1, "math.expm1(x)", ("f + 1.0",), (_R,), "e ** x - 1, accurate near 0",
           second=("f + 1.0",)),
    OpSpec("log", 1, "math.log(x)", ("1.0 / x",), (_P,), "natural logarithm",
           second=("-1.0 / (x * x)",)),
    OpSpec("log1p", 1, "math.log1p(x)", ("1.0 / (1.0 + x)",), ((-0.9, 3.0),),
           "log(1 + x), accurate near 0",
           second=("-1.0 / ((1.0 + x) * (1.0 + x))",)),
    OpSpec("log2", 1, "math.log2(x)", ("1.4426950408889634 / x",), (_P,), "base-2 logarithm",
           second=("-1.4426950408889634 / (x * x)",)),
    OpSpec("log10", 1, "math.log10(x)", ("0.4342944819032518 / x",), (_P,),
           "base-10 logarithm",
           second=("-0.4342944819032518 / (x * x)",)),
    OpSpec("sin", 1, "math.sin(x)", ("math.cos(x)",), (_R,), "sine",
           second=("-f",)),
    OpSpec("cos", 1, "math.cos(x)", ("-math.sin(x)",), (_R,), "cosine",
           second=("-f",)),
    OpSpec("tan", 1, "math.tan(x)", ("1.0 + f * f",), ((-1.4, 1.4),), "tangent",
           second=("2.0 * f * (1.0 + f * f)",)),
    OpSpec("asin", 1, "math.asin(x)", ("1.0 / math.sqrt(1.0 - x * x)",), (_U,), "arcsine",
           nonsmooth="+inf at x = +-1",
           second=("x / ((1.0 - x * x) * math.sqrt(1.0 - x * x))",)),
    OpSpec("acos", 1, "math.acos(x)", ("-1.0 / math.sqrt(1.0 - x * x)",), (_U,),
           "arccosine", nonsmooth="-inf at x = +-1",
           second=("-x / ((1.0 - x * x) * math.sqrt(1.0 - x * x))",)),
    OpSpec("atan", 1, "math.atan(x)", ("1.0 / (1.0 + x * x)",), (_R,), "arctangent",
           second=("-2.0 * x / ((1.0 + x * x) * (1.0 + x * x))",)),
    OpSpec(
        "atan2", 2, "math.atan2(x, y)", ("y / (x * x + y * y)", "-x / (x * x + y * y)"),
        ((0.1, 3.0), (0.1, 3.0)), "atan2(a, b) = angle of the point (b, a), as math.atan2",
        nonsmooth="NaN at the origin (0/0, as JAX)",
        second=(
            "-2.0 * x * y / ((x * x + y * y) * (x * x + y * y))",
            "(x * x - y * y) / ((x * x + y * y) * (x * x + y * y))",
            "2.0 * x * y / ((x * x + y * y) * (x * x + y * y))",
        ),
    ),
    OpSpec("sinh", 1, "math.sinh(x)", ("math.cosh(x)",), (_R,), "hyperbolic sine",
           second=("f",)),
    OpSpec("cosh", 1, "math.cosh(x)", ("math.sinh(x)",), (_R,), "hyperbolic cosine",
           second=("f",)),
    OpSpec("tanh", 1, "math.tanh(x)", ("1.0 - f * f",), (_R,), "hyperbolic tangent",
           second=("-2.0 * f * (1.0 - f * f)",)),
    OpSpec("asinh", 1, "math.asinh(x)", ("1.0 / math.sqrt(x * x + 1.0)",), (_R,),
           "inverse hyperbolic sine",
           second=("-x / ((x * x + 1.0) * math.sqrt(x * x + 1.0))",)),
    OpSpec("acosh", 1, "math.acosh(x)", ("1.0 / (math.sqrt(x - 1.0) * math.sqrt(x + 1.0))",),
           ((1.05, 4.0),), "inverse hyperbolic cosine", nonsmooth="+inf at x = 1",
           second=("-x / ((x - 1.0) * (x + 1.0) * math.sqrt(x - 1.0) * math.sqrt(x + 1.0))",)),
    OpSpec("atanh", 1, "math.atanh(x)", ("1.0 / (1.0 - x * x)",), (_U,),
           "inverse hyperbolic tangent", nonsmooth="+inf at x = +-1",
           second=("2.0 * x / ((1.0 - x * x) * (1.0 - x * x))",)),
    OpSpec("erf", 1, "math.erf(x)", ("1.1283791670955126 * math.exp(-x * x)",), (_R,),
           "error function",
           second=("-2.2567583341910252 * x * math.exp(-x * x)",)),
    OpSpec("erfc", 1, "math.erfc(x)", ("-1.1283791670955126 * math.exp(-x * x)",), (_R,),
           "complementary error function",
           second=("2.2567583341910252 * x * math.exp(-x * x)",)),
    OpSpec("abs", 1, "abs(x)", ("sign(x)",), (_R,), "absolute value",
           nonsmooth="0 at x = 0 (sign(x), the minimum-norm subgradient, as PyTorch; JAX gives 1)",
           second=("0.0",), nonsmooth2="0 everywhere, x = 0 included (the kink is ignored)"),
    OpSpec("sign", 1, "sign(x)", (), (_R,), "-1, 0 or 1 (sign(+-0) = +-0, NaN stays NaN)",
           nonsmooth="derivative 0 everywhere (the jump at 0 is ignored)"),
    OpSpec("floor", 1, "np.floor(x)", (), (_R,), "round toward -inf",
           nonsmooth="derivative 0 everywhere (jumps are ignored)"),
    OpSpec("ceil", 1, "np.ceil(x)", (), (_R,), "round toward +inf",
           nonsmooth="derivative 0 everywhere (jumps are ignored)"),
    # minimum/maximum are NOT flagged commutative: on a tie they return their first argument,
    # so minimum(0.0, -0.0) is 0.0 but minimum(-0.0, 0.0) is -0.0 (bitwise different).
    OpSpec("minimum", 2, "fmin(x, y)", ("dmin(x, y)", "dmin(y, x)"), (_R, _R),
           "smaller argument; NaN if either is NaN",
           nonsmooth="at a tie x = y each argument gets 0.5 (as JAX)",
           second=("0.0", "0.0", "0.0"), nonsmooth2="0 everywhere, ties included"),
    OpSpec("maximum", 2, "fmax(x, y)", ("dmin(y, x)", "dmin(x, y)"), (_R, _R),
           "larger argument; NaN if either is NaN",
           nonsmooth="at a tie x = y each argument gets 0.5 (as JAX)",
           second=("0.0", "0.0", "0.0"), nonsmooth2="0 everywhere, ties included"),
    OpSpec("hypot", 2, "math.hypot(x, y)", ("safe_div(x, f)", "safe_div(y, f)"),
           (_R, _R), "sqrt(x*x + y*y) without overflow", commutative=True,
           nonsmooth="0 for both arguments at the origin (the minimum-norm subgradient)",
           second=(
               "safe_div(safe_div(y, f) * safe_div(y, f), f)",
               "safe_div(-safe_div(x, f) * safe_div(y, f), f)",
               "safe_div(safe_div(x, f) * safe_div(x, f), f)",
           ),
           nonsmooth2="0 at the origin (where the first partials are 0 too)"),
    OpSpec("sigmoid", 1, "sigmoid(x)", ("f * (1.0 - f)",), (_R,), "1 / (1 + exp(-x))",
           second=("f * (1.0 - f) * (1.0 - 2.0 * f)",)),
    OpSpec("softplus", 1, "softplus(x)", ("sigmoid(x)",), (_R,), "log(1 + exp(x)), stable",
           second=("sigmoid(x) * (1.0 - sigmoid(x))",)),
    OpSpec(
        "where", 3, "x if z != 0.0 else y", ("1.0 if z != 0.0 else 0.0",
                                             "0.0 if z != 0.0 else 1.0"),
        (_R, _R, (0.0, 1.0)), "where(cond, a, b): a where cond != 0 else b (stored a, b, cond)",
        param="cond",
        nonsmooth="the unselected branch gets exactly 0; a zero adjoint is never multiplied "
        "into an inf or NaN partial, so it cannot poison the gradient",
        second=("0.0", "0.0", "0.0"),
    ),
    OpSpec("lt", 2, "1.0 if x < y else 0.0", (), (_R, _R), "x < y as 0/1",
           nonsmooth="derivative 0"),
    OpSpec("le", 2, "1.0 if x <= y else 0.0", (), (_R, _R), "x <= y as 0/1",
           nonsmooth="derivative 0"),
    OpSpec("gt", 2, "1.0 if x > y else 0.0", (), (_R, _R), "x > y as 0/1",
           nonsmooth="derivative 0"),
    OpSpec("ge", 2, "1.0 if x >= y else 0.0", (), (_R, _R), "x >= y as 0/1",
           nonsmooth="derivative 0"),
    OpSpec("eq", 2, "1.0 if x == y else 0.0", (), (_R, _R), "x == y as 0/1",
           commutative=True, nonsmooth="derivative 0"),
    OpSpec("ne", 2, "1.0 if x != y else 0.0", (), (_R, _R), "x != y as 0/1",
           commutative=True, nonsmooth="derivative 0"),
    # Fused instructions, made only by the ``fuse`` pass (passes/fuse.py) from a pair whose
    # inner result has no other use; appended so that no op code moves.  Each computes exactly
    # what the pair did (two roundings, no fma), so values are bitwise the pair's.
    OpSpec("fmac", 3, "x * z + y", ("z", "1.0"), (_R, _R, _R),
           "x * c + y for a constant c (stored x, y, c): a mulc feeding an add",
           param="const", second=("0.0", "0.0", "0.0")),
    OpSpec("sqdiff", 2, "(x - y) * (x - y)", ("2.0 * (x - y)", "-2.0 * (x - y)"), (_R, _R),
           "(x - y) ** 2: a sub feeding a square", second=("2.0", "-2.0", "2.0")),
    # No partials, so no adjoint flows through it.  What a max-shifted softmax or logsumexp
    # wants (JAX's softmax applies it to the shift): the shift cancels in exact arithmetic, and
    # differentiating it only adds a cancelling sum whose rounding residue (on autograd-west, a
    # subnormal that never dies) reaches the whole gradient.
    OpSpec("stop_gradient", 1, "x", (), (_R,),
           "x itself, a constant for differentiation (JAX's lax.stop_gradient, torch's detach)",
           nonsmooth="derivative 0 by definition: no adjoint flows through it"),
    # NumPy's three cases: equal arguments (so logaddexp(inf, inf) is inf, not inf - inf), then
    # the larger plus log1p of the smaller's exponential, which never overflows.  The partials
    # are sigmoids of the difference, exact at an infinite argument, where exp(x - f) is NaN.
    OpSpec("logaddexp", 2,
           "x + 0.6931471805599453 if x == y else (x + math.log1p(math.exp(y - x)) if x > y "
           "else y + math.log1p(math.exp(x - y)))",
           ("sigmoid(x - y)", "sigmoid(y - x)"), (_R, _R),
           "log(exp(x) + exp(y)) without overflow (NumPy's logaddexp)", commutative=True,
           second=("sigmoid(x - y) * sigmoid(y - x)", "-(sigmoid(x - y) * sigmoid(y - x))",
                   "sigmoid(x - y) * sigmoid(y - x)")),
]

#: The table, indexed by op code.
OPS: tuple[OpSpec, ...] = tuple(
    OpSpec(**{**{f: getattr(r, f) for f in r.__dataclass_fields__}, "code": i})
    for i, r in enumerate(_ROWS)
)
OP_BY_NAME: dict[str, OpSpec] = {op.name: op for op in OPS}
N_OPS = len(OPS)

# Graph-only codes: inputs, params and constants are nodes of a Graph but not instructions of a Tape
# (their values are loaded into the first slots before the forward sweep).
INPUT_CODE = 254
CONST_CODE = 255
#: Graph-only code of a parameter: a non-differentiated input (``Graph.params``), loaded into the
#: slots after the inputs; its one argument is its parameter position.
PARAM_CODE = 253


def table_hash() -> str:
    """A short hash of everything in the table that the tape format depends on.

    Saved tapes record it; a tape written by a different table (ops renumbered or changed
    arity) is refused on load instead of being silently misread.
    """
    text = ";".join(f"{op.code}:{op.name}:{op.arity}:{op.ndiff}:{op.param}" for op in OPS)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: Ops that users never call by name, so they get no ``ft.<name>`` function: the
#: constant-argument and fused forms are made only by the optimisation passes
#: (docs/passes.md), and ``powi`` / ``powc`` are what ``x ** y`` records for a constant exponent.
INTERNAL_OPS = frozenset(
    {"powi", "powc", "mulc", "addc", "subc", "rsubc", "divc", "rdivc", "fmac", "sqdiff"}
)
