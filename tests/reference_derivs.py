"""An independent pure-Python reference for derivatives beyond the gradient.

Extends :mod:`tests.reference` (whose forward functions and first partials it reuses, without
changing them) with

- each op's second partials, written again from the mathematics (often in a different but
  equivalent form from the op table's, so a wrong table formula cannot be copied here);
- a forward tangent sweep (JVP) and a forward-over-reverse sweep (HVP), one direction at a
  time, applying the documented zero rule to every product: an exactly-zero factor (adjoint,
  tangent, partial or second partial) contributes nothing.
"""

from __future__ import annotations

import math

from tests.reference import (
    REFERENCE,
    _instructions,
    cos,
    cosh,
    div,
    exp,
    forward,
    fpow,
    ipow,
    log,
    mul,
    sigmoid,
    sin,
    sinh,
)

_LN2 = math.log(2.0)
_LN10 = math.log(10.0)
_C = 2.0 / math.sqrt(math.pi)


def _z2(x, y, f):
    return [0.0, 0.0, 0.0]


def _pow_second(x, y, f):
    # d2/dx2 = y (y - 1) x^(y - 2); d2/dxdy = x^(y - 1) (1 + y log x); d2/dy2 = x^y log(x)^2,
    # with the table's conventions: 0 where y = 0 (d/dx is 0 there) / where x = 0 (d/dy is 0).
    hxx = 0.0 if y == 0 else mul(mul(y, y - 1.0), fpow(x, y - 2.0)) if y != 1 else 0.0
    if x == 0:
        return [hxx, 0.0, 0.0]
    lx = log(x)
    return [hxx, mul(fpow(x, y - 1.0), 1.0 + mul(y, lx)), mul(f, mul(lx, lx))]


def _hypot_second(x, y, f):
    if f == 0:
        return [0.0, 0.0, 0.0]
    r3 = f * f * f
    return [div(y * y, r3), div(-x * y, r3), div(x * x, r3)]


def _atan2_second(x, y, f):
    r2 = x * x + y * y
    r4 = r2 * r2
    return [div(-2.0 * x * y, r4), div(x * x - y * y, r4), div(2.0 * x * y, r4)]


# name -> second(args..., f) -> [d2/dx2] or [d2/dx2, d2/dxdy, d2/dy2]
SECOND = {
    "add": _z2,
    "mul": lambda x, y, f: [0.0, 1.0, 0.0],
    "sub": _z2,
    "div": lambda x, y, f: [0.0, -div(1.0, y * y), div(2.0 * x, y * y * y)],
    "mulc": lambda x, c, f: [0.0],
    "addc": lambda x, c, f: [0.0],
    "subc": lambda x, c, f: [0.0],
    "rsubc": lambda x, c, f: [0.0],
    "divc": lambda x, c, f: [0.0],
    "rdivc": lambda x, c, f: [div(2.0 * c, x * x * x)],
    "neg": lambda x, f: [0.0],
    "square": lambda x, f: [2.0],
    "fmac": lambda x, y, c, f: [0.0, 0.0, 0.0],
    "sqdiff": lambda x, y, f: [2.0, -2.0, 2.0],
    "stop_gradient": lambda x, f: [],
    "powi": lambda x, n, f: [0.0 if n in (0, 1) else mul(n * (n - 1), ipow(x, n - 2))],
    "powc": lambda x, c, f: [0.0 if c in (0, 1) else mul(c * (c - 1.0), fpow(x, c - 2.0))],
    "pow": _pow_second,
    "sqrt": lambda x, f: [-0.25 * div(1.0, mul(x, f))],
    "cbrt": lambda x, f: [div(-2.0, 9.0 * mul(x, mul(f, f)))],
    "exp": lambda x, f: [exp(x)],
    "expm1": lambda x, f: [exp(x)],
    "log": lambda x, f: [-div(1.0, x * x)],
    "log1p": lambda x, f: [-div(1.0, (1.0 + x) ** 2)],
    "log2": lambda x, f: [-div(1.0, x * x * _LN2)],
    "log10": lambda x, f: [-div(1.0, x * x * _LN10)],
    "sin": lambda x, f: [-sin(x)],
    "cos": lambda x, f: [-cos(x)],
    "tan": lambda x, f: [div(2.0 * sin(x), cos(x) ** 3)],
    "asin": lambda x, f: [div(x, fpow(1.0 - x * x, 1.5))],
    "acos": lambda x, f: [-div(x, fpow(1.0 - x * x, 1.5))],
    "atan": lambda x, f: [div(-2.0 * x, (1.0 + x * x) ** 2)],
    "atan2": _atan2_second,
    "sinh": lambda x, f: [sinh(x)],
    "cosh": lambda x, f: [cosh(x)],
    "tanh": lambda x, f: [div(-2.0 * math.tanh(x), cosh(x) ** 2)],
    "asinh": lambda x, f: [-div(x, fpow(x * x + 1.0, 1.5))],
    "acosh": lambda x, f: [-div(x, fpow(x * x - 1.0, 1.5))],
    "atanh": lambda x, f: [div(2.0 * x, (1.0 - x * x) ** 2)],
    "erf": lambda x, f: [-2.0 * x * _C * exp(-x * x)],
    "erfc": lambda x, f: [2.0 * x * _C * exp(-x * x)],
    "abs": lambda x, f: [0.0],
    "sign": lambda x, f: [],
    "floor": lambda x, f: [],
    "ceil": lambda x, f: [],
    "minimum": _z2,
    "maximum": _z2,
    "hypot": _hypot_second,
    "sigmoid": lambda x, f: [sigmoid(x) * sigmoid(-x) * (1.0 - 2.0 * sigmoid(x))],
    "softplus": lambda x, f: [sigmoid(x) * sigmoid(-x)],
    "where": lambda a, b, c, f: [0.0, 0.0, 0.0],
    "lt": lambda x, y, f: [],
    "le": lambda x, y, f: [],
    "gt": lambda x, y, f: [],
    "ge": lambda x, y, f: [],
    "eq": lambda x, y, f: [],
    "ne": lambda x, y, f: [],
    # d2/dx2 = e^(x + y) / (e^x + e^y)^2 = -d2/dxdy = d2/dy2.
    "logaddexp": lambda x, y, f: [h := div(exp(x - y), (1.0 + exp(x - y)) ** 2), -h, h],
}


def second_partials(name, args):
    """The 2x2 (or 1x1, or empty) symmetric matrix of second partials of op ``name``."""
    f = REFERENCE[name][0](*args)
    h = SECOND[name](*args, f)
    if len(h) == 1:
        return [[h[0]]]
    if len(h) == 3:
        return [[h[0], h[1]], [h[1], h[2]]]
    return []


def _names():
    from fasttape.ops import OPS

    return [(op.name, op.arity) for op in OPS]


def _prod(a, b):
    """``a * b`` under the zero rule: an exactly-zero factor gives no contribution (None)."""
    if a == 0.0 or b == 0.0:
        return None
    return mul(a, b)


def _add(acc, term):
    return acc if term is None else acc + term


def tangents(tape, x, v):
    """(slot values, slot tangents along ``v``) by the pure-Python forward tangent sweep."""
    vals = forward(tape, x)
    n_in = tape.n_inputs
    tan = [float(t) for t in v] + [0.0] * (len(vals) - n_in)
    n_pre = n_in + tape.n_consts
    for i, name, a in _instructions(tape.ops, tape.args, _names()):
        s = n_pre + i
        partials = REFERENCE[name][1](*(vals[j] for j in a), vals[s])
        t = 0.0
        for j, d in zip(a, partials, strict=False):
            t = _add(t, _prod(d, tan[j]))
        tan[s] = t
    return vals, tan


def jvp(tape, x, v):
    """(output values, output tangents) as lists."""
    vals, tan = tangents(tape, x, v)
    return [vals[int(o)] for o in tape.outputs], [tan[int(o)] for o in tape.outputs]


def hvp(tape, x, v, output=0, second=second_partials):
    """(value, gradient, Hessian-vector product) of one output, forward-over-reverse.

    ``second(name, args)`` gives an instruction's matrix of second partials; by default the
    independent formulas of :data:`SECOND`.  Tests of the sweep logic alone can pass the
    kernels' own per-op second partials instead: the formulas here are equivalent but not
    identical forms, so under overflow or underflow (``2 * f / y**2`` vs ``2 * x / y**3`` for a
    tiny ``y``) they may legitimately give inf where the table's form gives a number.
    """
    vals, tan = tangents(tape, x, v)
    adj = [0.0] * len(vals)
    adjdot = [0.0] * len(vals)
    out = int(tape.outputs[output])
    adj[out] = 1.0
    n_pre = tape.n_inputs + tape.n_consts
    for i, name, a in reversed(list(_instructions(tape.ops, tape.args, _names()))):
        s = n_pre + i
        g, gd = adj[s], adjdot[s]
        adj[s] = adjdot[s] = 0.0
        if g == 0.0 and gd == 0.0:
            continue
        args = [vals[j] for j in a]
        partials = REFERENCE[name][1](*args, vals[s])
        h = second(name, args)
        for jj, (j, d) in enumerate(zip(a, partials, strict=False)):
            if g != 0.0 and d != 0.0:
                adj[j] += mul(g, d)
            u = adjdot[j]
            u = _add(u, _prod(gd, d))
            if g != 0.0:
                for ll in range(len(partials)):
                    if h[jj][ll] != 0.0:
                        u = _add(u, _prod(mul(g, h[jj][ll]), tan[a[ll]]))
            adjdot[j] = u
    n = tape.n_inputs
    return vals[out], adj[:n], adjdot[:n]
