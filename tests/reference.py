"""An independent pure-Python reference of both sweeps: the tests' oracle.

Written from the mathematics, not generated from the op table: each op's forward function and
partials are spelled out again here with Python's ``math`` module (the same libm that Numba calls,
so results usually agree bit for bit), falling back to NumPy only where ``math`` raises instead of
returning the IEEE result (``log(0)``, ``exp(1000)``).  The reverse sweep applies the documented
zero rule: an exactly-zero adjoint or partial contributes nothing.
"""

from __future__ import annotations

import math

import numpy as np

_LN2 = math.log(2.0)
_LN10 = math.log(10.0)


def _ieee(fm, fn):
    """Call ``fm`` (math) and fall back to ``fn`` (NumPy, errors ignored) where math raises."""

    def call(*a):
        try:
            return fm(*a)
        except (ValueError, OverflowError, ZeroDivisionError):
            with np.errstate(all="ignore"):
                return float(fn(*(np.float64(v) for v in a)))

    return call


sqrt = _ieee(math.sqrt, np.sqrt)
exp = _ieee(math.exp, np.exp)
expm1 = _ieee(math.expm1, np.expm1)
log = _ieee(math.log, np.log)
log1p = _ieee(math.log1p, np.log1p)
log2 = _ieee(math.log2, np.log2)
log10 = _ieee(math.log10, np.log10)
sin = _ieee(math.sin, np.sin)
cos = _ieee(math.cos, np.cos)
tan = _ieee(math.tan, np.tan)
asin = _ieee(math.asin, np.arcsin)
acos = _ieee(math.acos, np.arccos)
atan = _ieee(math.atan, np.arctan)
atan2 = _ieee(math.atan2, np.arctan2)
sinh = _ieee(math.sinh, np.sinh)
cosh = _ieee(math.cosh, np.cosh)
tanh = _ieee(math.tanh, np.tanh)
asinh = _ieee(math.asinh, np.arcsinh)
acosh = _ieee(math.acosh, np.arccosh)
atanh = _ieee(math.atanh, np.arctanh)
hypot = _ieee(math.hypot, np.hypot)
fpow = _ieee(math.pow, np.power)


def div(a, b):
    try:
        return a / b
    except ZeroDivisionError:
        with np.errstate(all="ignore"):
            return float(np.float64(a) / np.float64(b))


def mul(a, b):
    with np.errstate(all="ignore"):  # inf * 0 = nan, quietly, as in the kernels
        return float(np.float64(a) * np.float64(b))


def ipow(x, n):
    """x ** n for integer n by binary exponentiation (the documented powi semantics)."""
    n = int(n)
    m = abs(n)
    acc, base = 1.0, x
    while m:
        if m & 1:
            acc = mul(acc, base)
        base = mul(base, base)
        m >>= 1
    return div(1.0, acc) if n < 0 else acc


def sign(x):
    if x > 0:
        return 1.0
    if x < 0:
        return -1.0
    return x


def sigmoid(x):
    if x >= 0:
        return div(1.0, 1.0 + exp(-x))
    e = exp(x)
    return e / (1.0 + e)


def softplus(x):
    if x != x:
        return x
    return max(x, 0.0) + log1p(exp(-abs(x)))


def fmin(x, y):
    if x != x or y != y:
        return math.nan
    return x if x <= y else y


def fmax(x, y):
    if x != x or y != y:
        return math.nan
    return x if x >= y else y


def tie(x, y):
    """Partial of min(x, y) wrt x: 1 below, 0.5 at a tie, 0 above (JAX)."""
    return 1.0 if x < y else 0.5 if x == y else 0.0


def dpow_base(x, y):
    return 0.0 if y == 0 else mul(y, fpow(x, y - 1.0))


def logaddexp(x, y):
    with np.errstate(all="ignore"):  # NumPy's, without its warning for a NaN argument
        return float(np.logaddexp(np.float64(x), np.float64(y)))


# name -> (forward(args), partials(args, f) -> list over the differentiable args)
REFERENCE = {
    "add": (lambda x, y: x + y, lambda x, y, f: [1.0, 1.0]),
    "mul": (mul, lambda x, y, f: [y, x]),
    "sub": (lambda x, y: x - y, lambda x, y, f: [1.0, -1.0]),
    "div": (div, lambda x, y, f: [div(1.0, y), -div(f, y)]),
    "mulc": (mul, lambda x, c, f: [c]),
    "addc": (lambda x, c: x + c, lambda x, c, f: [1.0]),
    "subc": (lambda x, c: x - c, lambda x, c, f: [1.0]),
    "rsubc": (lambda x, c: c - x, lambda x, c, f: [-1.0]),
    "divc": (div, lambda x, c, f: [div(1.0, c)]),
    "rdivc": (lambda x, c: div(c, x), lambda x, c, f: [-div(f, x)]),
    "neg": (lambda x: -x, lambda x, f: [-1.0]),
    "square": (lambda x: mul(x, x), lambda x, f: [2.0 * x]),
    "powi": (ipow, lambda x, n, f: [0.0 if n == 0 else mul(n, ipow(x, n - 1))]),
    "powc": (fpow, lambda x, c, f: [dpow_base(x, c)]),
    "pow": (fpow, lambda x, y, f: [dpow_base(x, y), 0.0 if x == 0 else mul(f, log(x))]),
    "sqrt": (sqrt, lambda x, f: [div(0.5, f)]),
    "cbrt": (lambda x: float(np.cbrt(np.float64(x))), lambda x, f: [div(1.0, 3.0 * f * f)]),
    "exp": (exp, lambda x, f: [f]),
    "expm1": (expm1, lambda x, f: [f + 1.0]),
    "log": (log, lambda x, f: [div(1.0, x)]),
    "log1p": (log1p, lambda x, f: [div(1.0, 1.0 + x)]),
    "log2": (log2, lambda x, f: [div(1.0, x * _LN2)]),
    "log10": (log10, lambda x, f: [div(1.0, x * _LN10)]),
    "sin": (sin, lambda x, f: [cos(x)]),
    "cos": (cos, lambda x, f: [-sin(x)]),
    "tan": (tan, lambda x, f: [1.0 + f * f]),
    "asin": (asin, lambda x, f: [div(1.0, sqrt(1.0 - x * x))]),
    "acos": (acos, lambda x, f: [-div(1.0, sqrt(1.0 - x * x))]),
    "atan": (atan, lambda x, f: [div(1.0, 1.0 + x * x)]),
    "atan2": (atan2, lambda x, y, f: [div(y, x * x + y * y), div(-x, x * x + y * y)]),
    "sinh": (sinh, lambda x, f: [cosh(x)]),
    "cosh": (cosh, lambda x, f: [sinh(x)]),
    "tanh": (tanh, lambda x, f: [1.0 - f * f]),
    "asinh": (asinh, lambda x, f: [div(1.0, sqrt(x * x + 1.0))]),
    "acosh": (acosh, lambda x, f: [div(1.0, mul(sqrt(x - 1.0), sqrt(x + 1.0)))]),
    "atanh": (atanh, lambda x, f: [div(1.0, 1.0 - x * x)]),
    "erf": (math.erf, lambda x, f: [2.0 / math.sqrt(math.pi) * exp(-x * x)]),
    "erfc": (math.erfc, lambda x, f: [-2.0 / math.sqrt(math.pi) * exp(-x * x)]),
    "abs": (abs, lambda x, f: [sign(x)]),
    "sign": (sign, lambda x, f: []),
    "floor": (lambda x: float(np.floor(x)), lambda x, f: []),
    "ceil": (lambda x: float(np.ceil(x)), lambda x, f: []),
    "minimum": (fmin, lambda x, y, f: [tie(x, y), tie(y, x)]),
    "maximum": (fmax, lambda x, y, f: [tie(y, x), tie(x, y)]),
    "hypot": (hypot, lambda x, y, f: [0.0 if f == 0 else div(x, f), 0.0 if f == 0 else div(y, f)]),
    "sigmoid": (sigmoid, lambda x, f: [f * (1.0 - f)]),
    "softplus": (softplus, lambda x, f: [sigmoid(x)]),
    "where": (lambda a, b, c: a if c != 0 else b,
              lambda a, b, c, f: [1.0 if c != 0 else 0.0, 0.0 if c != 0 else 1.0]),
    "lt": (lambda x, y: float(x < y), lambda x, y, f: []),
    "le": (lambda x, y: float(x <= y), lambda x, y, f: []),
    "gt": (lambda x, y: float(x > y), lambda x, y, f: []),
    "ge": (lambda x, y: float(x >= y), lambda x, y, f: []),
    "eq": (lambda x, y: float(x == y), lambda x, y, f: []),
    "ne": (lambda x, y: float(x != y), lambda x, y, f: []),
    "fmac": (lambda x, y, c: mul(x, c) + y, lambda x, y, c, f: [c, 1.0]),
    "sqdiff": (lambda x, y: mul(x - y, x - y), lambda x, y, f: [2.0 * (x - y), -(2.0 * (x - y))]),
    "stop_gradient": (lambda x: x, lambda x, f: []),
    # log(e^x + e^y); d/dx = e^x / (e^x + e^y) = 1 / (1 + e^(y - x)).
    "logaddexp": (logaddexp,
                  lambda x, y, f: [div(1.0, 1.0 + exp(y - x)), div(1.0, 1.0 + exp(x - y))]),
}


# The constant-argument ops as the Python expressions the simplify pass rewrites into them
# (they have no frontend function): ``CONST_FORMS[name](x, c)`` works on Vars and floats.
CONST_FORMS = {
    "mulc": lambda x, c: x * c,
    "addc": lambda x, c: x + c,
    "subc": lambda x, c: x - c,
    "rsubc": lambda x, c: c - x,
    "divc": lambda x, c: x / c,
    "rdivc": lambda x, c: c / x,
}


# The fused ops as the expressions the fuse pass turns into them (no frontend function
# either): ``FUSED_FORMS[name](x, y, *c)`` on Vars, floats or JAX arrays (``c`` for fmac).
FUSED_FORMS = {
    "fmac": lambda x, y, c: x * c + y,
    "sqdiff": lambda x, y: (x - y) ** 2,
}


def internal_form(name, args, c):
    """``name`` applied to the variables ``args`` (and the constant ``c`` where the op takes
    one) through the expression the passes rewrite into it, or None for a public op."""
    if name in CONST_FORMS:
        return CONST_FORMS[name](args[0], c)
    if name == "fmac":
        return FUSED_FORMS[name](args[0], args[1], c)
    if name in FUSED_FORMS:
        return FUSED_FORMS[name](args[0], args[1])
    return None


def _instructions(ops, args, names):
    k = 0
    for i, code in enumerate(ops):
        name, arity = names[int(code)]
        yield i, name, [int(a) for a in args[k : k + arity]]
        k += arity


def forward(tape, x, p=()):
    """All slot values of ``tape`` at ``x`` (and parameters ``p``), computed in pure Python."""
    from fasttape.ops import OPS

    names = [(op.name, op.arity) for op in OPS]
    vals = [float(v) for v in x] + [float(v) for v in p] + [float(c) for c in tape.consts]
    for _, name, a in _instructions(tape.ops, tape.args, names):
        vals.append(float(REFERENCE[name][0](*(vals[j] for j in a))))
    return vals


def value_and_grad(tape, x, output=0, p=()):
    """(value, gradient list) of one output, by the pure-Python reverse sweep (no gradient
    for the parameters ``p``)."""
    from fasttape.ops import OPS

    names = [(op.name, op.arity) for op in OPS]
    vals = forward(tape, x, p)
    adj = [0.0] * len(vals)
    out = int(tape.outputs[output])
    adj[out] = 1.0
    n_pre = tape.n_inputs + getattr(tape, "n_params", 0) + tape.n_consts
    for i, name, a in reversed(list(_instructions(tape.ops, tape.args, names))):
        g = adj[n_pre + i]
        if g == 0.0:
            continue  # the zero rule: a zero adjoint contributes nothing
        partials = REFERENCE[name][1](*(vals[j] for j in a), vals[n_pre + i])
        for j, d in zip(a, partials, strict=False):  # params have no partial
            if d != 0.0:
                adj[j] += mul(g, d)
    return vals[out], adj[: tape.n_inputs]
