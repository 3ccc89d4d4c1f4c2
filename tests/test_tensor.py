"""Tensor-valued nodes (docs/tensors.md): every op against the scalar tape, NumPy and JAX.

* Elementwise ops of the op table, with broadcasting, against the scalar tape of the same
  function written element by element: values bitwise, gradients to 1e-12.
* Structural ops (reductions, products, views, gathers, joins) against NumPy for values and
  JAX's ``vjp`` (oracle) and central differences for gradients.
* Pytrees, parameters, vjp; the error cases; thread safety.

Random programs are in tests/test_tensor_random.py.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fasttape as ft
from fasttape.ops import INTERNAL_OPS, OP_BY_NAME, OPS
from tests.tensor_helpers import (
    FT,
    NP,
    as_list,
    assert_close,
    central_differences,
    jax_vjp,
    tape_of,
)

RNG_SEED = 20240611

# ------------------------------------------------------------------------------------------
# 1. Elementwise ops against the scalar tape
# ------------------------------------------------------------------------------------------

PUBLIC_OPS = [op.name for op in OPS if op.name not in INTERNAL_OPS]

# Broadcast patterns per arity: (shapes of the arguments); the result is (3, 4) or (3, 1)...
UNARY_SHAPES = [[(3, 4)], [()], [(4,)], [(3, 1)]]
BINARY_SHAPES = [
    [(3, 4), (3, 4)],  # full, full
    [(3, 4), ()],  # full, scalar
    [(), (3, 4)],  # scalar, full
    [(4,), (3, 1)],  # row, column
    [(3, 1), (3, 4)],  # column, full
    [(3, 4), (4,)],  # full, row
    [(), ()],
]
TERNARY_SHAPES = [
    [(3, 4), (3, 4), (3, 4)],
    [(4,), (3, 1), (3, 4)],
    [(3, 4), (), (4,)],
    [(), (3, 1), (4,)],
]


def _call(name: str, *args: object) -> object:
    """The public spelling of op ``name`` on ``args`` in the op's own argument order."""
    if name == "pow":
        return args[0] ** args[1]
    if name == "where":  # stored (a, b, cond); called where(cond, a, b)
        return ft.where(args[2], args[0], args[1])
    return ft.OP_FUNCTIONS[name](*args)


def _draw(name: str, shapes: list[tuple[int, ...]], rng: np.random.Generator
          ) -> list[np.ndarray]:
    spec = OP_BY_NAME[name]
    out = []
    for j, (shape, (lo, hi)) in enumerate(zip(shapes, spec.domain, strict=True)):
        if spec.param == "cond" and j >= spec.ndiff:
            out.append(rng.integers(0, 2, size=shape).astype(np.float64))
        else:
            out.append(rng.uniform(lo, hi, size=shape))
    if name in ("lt", "le", "gt", "ge", "eq", "ne", "minimum", "maximum"):
        # Ties exercise both sides of the comparisons and the tie rule of minimum/maximum.
        b = np.broadcast_arrays(*out)
        if b[0].size > 1 and out[0].shape == out[1].shape:
            out[1].flat[::2] = out[0].flat[::2]
    return out


def _scalar_tape(name: str, shapes: list[tuple[int, ...]], weights: np.ndarray | None
                 ) -> ft.Tape:
    """The scalar tape of op ``name`` written element by element on Vars."""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    out_shape = np.broadcast_shapes(*shapes)

    def fn(v: list[ft.Var]) -> object:
        args, pos = [], 0
        for s, n in zip(shapes, sizes, strict=True):
            args.append(np.array(v[pos:pos + n], dtype=object).reshape(s))
            pos += n
        b = [np.broadcast_to(a, out_shape) for a in args]
        outs = [_call(name, *(a[idx] for a in b)) for idx in np.ndindex(*out_shape)]
        if weights is None:
            return outs
        return ft.sum(w * o for w, o in zip(weights.reshape(-1).tolist(), outs, strict=True))

    return ft.compile(ft.trace(fn, sum(sizes)))


def _shape_cases() -> list[tuple[str, list[tuple[int, ...]]]]:
    cases = []
    for name in PUBLIC_OPS:
        arity = OP_BY_NAME[name].arity
        for shapes in {1: UNARY_SHAPES, 2: BINARY_SHAPES, 3: TERNARY_SHAPES}[arity]:
            cases.append((name, shapes))
    return cases


@pytest.mark.parametrize(("name", "shapes"), _shape_cases(),
                         ids=[f"{n}-{'-'.join(map(str, s))}" for n, s in _shape_cases()])
def test_elementwise_matches_scalar_tape(name: str, shapes: list[tuple[int, ...]]) -> None:
    rng = np.random.default_rng(RNG_SEED + PUBLIC_OPS.index(name))
    args = _draw(name, shapes, rng)
    out_shape = np.broadcast_shapes(*shapes)
    tape = ft.compile(ft.trace(lambda *a: _call(name, *a), shapes=shapes))
    assert tape.output_shape == out_shape
    flat = np.concatenate([a.reshape(-1) for a in args])

    # Values: the same libm call on the same doubles, so bitwise (NaN patterns aside).
    got = np.asarray(tape.value(*args)).reshape(-1)
    want = np.asarray(_scalar_tape(name, shapes, None).value(flat), dtype=np.float64)
    np.testing.assert_array_equal(got.view(np.int64), want.reshape(-1).view(np.int64))

    # Gradients of a weighted sum: the same partials, summed in another order.
    w = rng.uniform(-1.0, 1.0, size=out_shape)
    grads = as_list(tape.vjp(tuple(args), w), len(args))
    _, g_scalar = _scalar_tape(name, shapes, w).value_and_grad(flat)
    pos = 0
    for a, g in zip(args, grads, strict=True):
        assert g.shape == a.shape
        assert_close(g, g_scalar[pos:pos + a.size].reshape(a.shape), what=name)
        pos += a.size


UFUNCS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
          "neg": np.negative, "square": np.square, "sqrt": np.sqrt, "cbrt": np.cbrt,
          "exp": np.exp, "expm1": np.expm1, "log": np.log, "log1p": np.log1p, "log2": np.log2,
          "log10": np.log10, "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin,
          "acos": np.arccos, "atan": np.arctan, "atan2": np.arctan2, "sinh": np.sinh,
          "cosh": np.cosh, "tanh": np.tanh, "asinh": np.arcsinh, "acosh": np.arccosh,
          "atanh": np.arctanh, "abs": np.abs, "sign": np.sign, "floor": np.floor,
          "ceil": np.ceil, "minimum": np.minimum, "maximum": np.maximum, "hypot": np.hypot,
          "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
          "eq": np.equal, "ne": np.not_equal, "logaddexp": np.logaddexp, "pow": np.power}


@pytest.mark.parametrize("name", sorted(UFUNCS))
def test_numpy_ufunc_traces_to_the_op(name: str) -> None:
    """``np.<ufunc>(tensor)`` records the op of the table: values as NumPy's to 1 ulp-ish."""
    spec = OP_BY_NAME[name]
    shapes = [(3, 4), (4,)][:spec.arity]
    args = _draw(name, shapes, np.random.default_rng(7))
    tape = ft.compile(ft.trace(lambda *a: UFUNCS[name](*a), shapes=shapes))
    via_op = ft.compile(ft.trace(lambda *a: _call(name, *a), shapes=shapes))
    np.testing.assert_array_equal(tape.value(*args), via_op.value(*args))
    np.testing.assert_allclose(tape.value(*args), UFUNCS[name](*args), rtol=4e-16, atol=0)


def test_operators_and_reflected_operators() -> None:
    def fn(x, y):
        return (1.0 - x) * (2.0 + y) / (3.0 * x + 4.0) - (-x) + abs(y) ** 2 + 2.0 ** x \
            + (x < y) + (x <= 0.5) + (x > y) + (x >= y) + (x == y) + (x != y) + (+x) \
            + np.float64(2.0) * x - np.ones(4) / (y + 5.0)

    x, y = np.linspace(-1, 1, 12).reshape(3, 4), np.linspace(0.5, 2, 4)
    tape = ft.compile(ft.trace(fn, shapes=[(3, 4), (4,)]))
    assert_close(tape.value(x, y), fn(x, y), rtol=1e-15)


@pytest.mark.parametrize("exponent", [2, -3, 0, np.int64(5), 0.5, 2.5, np.array([1, 2, 3])])
def test_power_rules(exponent: object) -> None:
    """Integer constants record powi, real constants powc, as the scalar tracer does."""
    x = np.array([0.5, 1.5, 2.5])
    tape = ft.compile(ft.trace(lambda t: t ** exponent, shapes=[(3,)]))
    code = OP_BY_NAME["powi" if np.issubdtype(np.asarray(exponent).dtype, np.integer)
                      else "powc"].code
    assert code in tape.to_arrays()["ops"].tolist()
    assert_close(tape.value(x), x ** np.asarray(exponent, dtype=np.float64), rtol=1e-15)
    g = tape.vjp(x, np.ones(3))
    e = np.asarray(exponent, dtype=np.float64)
    assert_close(g, np.where(e == 0, 0.0, e * x ** (e - 1)), rtol=1e-14)
