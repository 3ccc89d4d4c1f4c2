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
from tests.thread_helpers import run_threads

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
    integer = np.issubdtype(np.asarray(exponent).dtype, np.integer)
    # x ** 2 records square (powi(x, 2) is x * x, bitwise): the one exception.
    name = ("square" if np.ndim(exponent) == 0 and exponent == 2 else "powi") \
        if integer else "powc"
    assert name in tape.op_names()
    assert_close(tape.value(x), x ** np.asarray(exponent, dtype=np.float64), rtol=1e-15)
    g = tape.vjp(x, np.ones(3))
    e = np.asarray(exponent, dtype=np.float64)
    assert_close(g, np.where(e == 0, 0.0, e * x ** (e - 1)), rtol=1e-14)


# ------------------------------------------------------------------------------------------
# 2. Structural ops: values against NumPy, gradients against JAX and central differences
# ------------------------------------------------------------------------------------------


def _reduction_cases() -> list[tuple[str, object, list[tuple[int, ...]]]]:
    cases = []
    axes_3d = [None, 0, 1, 2, -1, -3, (0, 2), (2, 0), (-1, 1), (0, 1, 2), ()]
    for red in ("sum", "prod", "max", "min", "mean"):
        for axis in axes_3d:
            for keepdims in (False, True):
                def fn(xp, x, red=red, axis=axis, keepdims=keepdims):
                    return getattr(xp, red)(x, axis=axis, keepdims=keepdims)
                cases.append((f"{red}-{axis}-{keepdims}", fn, [(2, 3, 4)]))
        cases.append((f"{red}-method", lambda xp, x, red=red: getattr(x, red)(axis=1),
                      [(3, 4)]))
        cases.append((f"{red}-0d", lambda xp, x, red=red: getattr(xp, red)(x), [()]))
        cases.append((f"{red}-1d-long", lambda xp, x, red=red: getattr(xp, red)(x, axis=0),
                      [(19,)]))
    for axis in (None, 0, 1, -1, (0, 1)):
        for keepdims in (False, True):
            cases.append((f"logsumexp-{axis}-{keepdims}",
                          lambda xp, x, axis=axis, k=keepdims: xp.logsumexp(x, axis=axis,
                                                                            keepdims=k),
                          [(3, 4)]))
    for axis in (0, 1, -1):
        cases.append((f"softmax-{axis}", lambda xp, x, axis=axis: xp.softmax(x, axis=axis),
                      [(3, 4)]))
    return cases


def _product_cases() -> list[tuple[str, object, list[tuple[int, ...]]]]:
    mm = [
        ("vec-vec", [(4,), (4,)]), ("mat-vec", [(3, 4), (4,)]), ("vec-mat", [(3,), (3, 4)]),
        ("mat-mat", [(2, 3), (3, 4)]), ("batched", [(5, 2, 3), (5, 3, 4)]),
        ("batch-broadcast", [(5, 2, 3), (3, 4)]), ("broadcast-batch", [(2, 3), (5, 3, 4)]),
        ("batch-1-broadcast", [(2, 1, 2, 3), (1, 4, 3, 2)]), ("batched-vec", [(5, 2, 3), (3,)]),
        ("vec-batched", [(2,), (5, 2, 3)]), ("1x1", [(1, 1), (1, 1)]),
    ]
    cases = [(f"matmul-{n}", lambda xp, a, b: xp.matmul(a, b), s) for n, s in mm]
    cases += [(f"at-{n}", lambda xp, a, b: a @ b, s) for n, s in mm[:4]]
    cases += [
        ("matmul-transposed", lambda xp, a, b: a.T @ b, [(3, 2), (3, 4)]),
        ("matmul-const-left", lambda xp, b: np.arange(6.0).reshape(2, 3) @ b, [(3, 4)]),
        ("matmul-const-right", lambda xp, a: a @ np.arange(12.0).reshape(3, 4), [(2, 3)]),
        ("dot-vv", lambda xp, a, b: xp.dot(a, b), [(4,), (4,)]),
        ("dot-mv", lambda xp, a, b: xp.dot(a, b), [(3, 4), (4,)]),
        ("dot-mm", lambda xp, a, b: xp.dot(a, b), [(3, 4), (4, 2)]),
        ("dot-scalar", lambda xp, a, b: xp.dot(a, b), [(), (3, 4)]),
        ("dot-method", lambda xp, a, b: a.dot(b), [(3, 4), (4,)]),
        ("outer", lambda xp, a, b: xp.outer(a, b), [(3,), (4,)]),
        ("outer-2d", lambda xp, a, b: xp.outer(a, b), [(2, 2), (3,)]),
    ]
    einsums = [
        ("ij,j->i", [(3, 4), (4,)]), ("ij,jk->ik", [(3, 4), (4, 2)]),
        ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("ij->ji", [(3, 4)]), ("ij->", [(3, 4)]),
        ("ij->j", [(3, 4)]), ("ij,ij->", [(3, 4), (3, 4)]), ("ij,ij->ij", [(3, 4), (3, 4)]),
        ("ji,jk->ik", [(4, 3), (4, 2)]), ("ij,kj->ki", [(3, 4), (2, 4)]),
        ("i,j->ij", [(3,), (4,)]), ("ij,jk", [(3, 4), (4, 2)]), ("ba,ca", [(3, 4), (2, 4)]),
        ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]), ("bij,jk->bki", [(2, 3, 4), (4, 5)]),
        ("ijk,ik->j", [(2, 3, 4), (2, 4)]), ("i,i", [(5,), (5,)]),
        ("ij,jk,k->i", [(2, 3), (3, 4), (4,)]), ("abc,cd->bad", [(2, 3, 4), (4, 2)]),
    ]
    cases += [(f"einsum-{s}", lambda xp, *a, s=s: xp.einsum(s, *a), shapes)
              for s, shapes in einsums]
    return cases


def _view_cases() -> list[tuple[str, object, list[tuple[int, ...]]]]:
    idx = np.array([2, 0, 2, 1])
    mask = np.array([True, False, True, True])
    slices = {
        "int": 1, "neg-int": -1, "slice": slice(1, 3), "neg-step": slice(None, None, -1),
        "step2": slice(3, 0, -2), "2d": (slice(None), 2), "2d-neg": (slice(None, None, -1), -2),
        "newaxis": (None, slice(1, None)), "ellipsis": (Ellipsis, 1),
        "ellipsis-newaxis": (1, Ellipsis, None), "all-ints": (2, 3), "empty-tuple": (),
        "int-array": idx, "int-array-2d": (idx, slice(1, 3)), "int-arrays": (idx, idx),
        "int-array-col": (slice(None), np.array([[0, 3], [1, 1]])), "list": [0, 2],
        "bool": mask[:3], "bool-2d": np.arange(12).reshape(3, 4) % 3 == 0,
        "bool-col": (slice(None), mask), "neg-int-array": np.array([-1, -3]),
    }
    cases = [(f"getitem-{k}", lambda xp, x, key=key: x[key] * 1.0, [(3, 4)])
             for k, key in slices.items()]
    cases += [
        ("getitem-3d-mixed", lambda xp, x: x[1:, np.array([0, 2]), ::-1], [(3, 4, 5)]),
        ("rosenbrock", lambda xp, x: xp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2
                                            + (1.0 - x[:-1]) ** 2), [(6,)]),
        ("reshape", lambda xp, x: xp.reshape(x, (4, 3)), [(3, 4)]),
        ("reshape-minus1", lambda xp, x: x.reshape(2, -1), [(3, 4)]),
        ("reshape-minus1-first", lambda xp, x: x.reshape((-1, 6)), [(3, 4)]),
        ("reshape-int", lambda xp, x: xp.reshape(x, 12), [(3, 4)]),
        ("reshape-of-transpose", lambda xp, x: x.T.reshape(-1), [(3, 4)]),
        ("reshape-of-slice", lambda xp, x: x[:, ::2].reshape(6), [(3, 4)]),
        ("ravel", lambda xp, x: xp.ravel(x.T), [(3, 4)]),
        ("flatten", lambda xp, x: x[::-1].flatten(), [(3, 4)]),
        ("transpose", lambda xp, x: xp.transpose(x), [(2, 3, 4)]),
        ("transpose-axes", lambda xp, x: xp.transpose(x, (1, 2, 0)), [(2, 3, 4)]),
        ("transpose-method", lambda xp, x: x.transpose(2, 0, 1), [(2, 3, 4)]),
        ("T", lambda xp, x: x.T, [(3, 4)]),
        ("swapaxes", lambda xp, x: xp.swapaxes(x, 0, 2), [(2, 3, 4)]),
        ("swapaxes-method", lambda xp, x: x.swapaxes(-1, 0), [(2, 3, 4)]),
        ("moveaxis", lambda xp, x: xp.moveaxis(x, 0, -1), [(2, 3, 4)]),
        ("expand_dims", lambda xp, x: xp.expand_dims(x, 1), [(3, 4)]),
        ("expand_dims-neg", lambda xp, x: xp.expand_dims(x, -1), [(3, 4)]),
        ("squeeze", lambda xp, x: xp.squeeze(x), [(1, 3, 1, 4)]),
        ("squeeze-axis", lambda xp, x: xp.squeeze(x, axis=2), [(1, 3, 1, 4)]),
        ("squeeze-method", lambda xp, x: x.squeeze(0), [(1, 3, 1, 4)]),
        ("broadcast_to", lambda xp, x: xp.broadcast_to(x, (2, 3, 4)), [(3, 1)]),
        ("broadcast_to-scalar", lambda xp, x: xp.broadcast_to(x, (2, 3)), [()]),
        ("broadcast-then-reduce", lambda xp, x: xp.sum(xp.broadcast_to(x, (5, 4)) * 2.0,
                                                       axis=1), [(4,)]),
        ("concatenate-0", lambda xp, a, b: xp.concatenate([a, b]), [(2, 4), (3, 4)]),
        ("concatenate-1", lambda xp, a, b: xp.concatenate((a, b), axis=1), [(3, 2), (3, 4)]),
        ("concatenate-neg", lambda xp, a, b: xp.concatenate([a, b, a], axis=-1),
         [(2, 3, 1), (2, 3, 2)]),
        ("concatenate-mid", lambda xp, a, b: xp.concatenate([a, b], axis=1),
         [(2, 1, 3), (2, 2, 3)]),
        ("concatenate-None", lambda xp, a, b: xp.concatenate([a, b], axis=None),
         [(2, 2), (3,)]),
        ("concatenate-const", lambda xp, a: xp.concatenate([a, np.ones(2), a[:1]]), [(3,)]),
        ("concatenate-views", lambda xp, a: xp.concatenate([a.T, a[::-1].T]), [(3, 2)]),
        ("stack-0", lambda xp, a, b: xp.stack([a, b]), [(3, 4), (3, 4)]),
        ("stack-1", lambda xp, a, b: xp.stack([a, b], axis=1), [(3, 4), (3, 4)]),
        ("stack-last", lambda xp, a, b: xp.stack((a, b, a), axis=-1), [(3, 4), (3, 4)]),
        ("stack-scalars", lambda xp, a, b: xp.stack([a, b, a * b]), [(), ()]),
        ("where", lambda xp, a, b: xp.where(a > b, a, b * 2.0), [(3, 4), (4,)]),
        ("where-const", lambda xp, a: xp.where(np.arange(4) % 2 == 0, a, 0.0), [(3, 4)]),
        ("clip", lambda xp, a: xp.clip(a, -0.5, 0.5), [(3, 4)]),
        ("clip-method", lambda xp, a: a.clip(-0.5, None), [(3, 4)]),
        ("iter", lambda xp, a: xp.stack([r * i for i, r in enumerate(a)]), [(3, 4)]),
        ("len", lambda xp, a: a * float(len(a)), [(3, 4)]),
    ]
    return cases


# Cases whose spelling JAX does not accept (their values and differences are still checked).
JAX_REFUSES = {"getitem-list": "JAX refuses a list as an index (jax-ml/jax#4564)"}

STRUCTURAL = _reduction_cases() + _product_cases() + _view_cases()
STRUCT_IDS = [c[0] for c in STRUCTURAL]


def _inputs(shapes: list[tuple[int, ...]], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=s) for s in shapes]


@pytest.mark.parametrize(("name", "fn", "shapes"), STRUCTURAL, ids=STRUCT_IDS)
def test_structural_values_match_numpy(name: str, fn: object, shapes: list) -> None:
    args = _inputs(shapes, STRUCT_IDS.index(name))
    tape = tape_of(fn, shapes)
    want = np.asarray(fn(NP, *args), dtype=np.float64)
    got = tape.value(*args)
    assert np.shape(got) == want.shape
    assert tape.output_shape == want.shape
    assert_close(got, want, rtol=1e-14, what=name)


def _check_structural_vjp(name: str, fn: object, shapes: list, oracle: object,
                          rtol: float) -> tuple[list, object]:
    """The tape's vjp of a structural case at a random cotangent against ``oracle(fn, args,
    cot)``; returns the inputs and the tape for further checks."""
    args = _inputs(shapes, STRUCT_IDS.index(name))
    tape = tape_of(fn, shapes)
    cot = np.random.default_rng(1).uniform(-1.0, 1.0, size=tape.output_shape)
    got = as_list(tape.vjp(tuple(args), cot), len(args))
    for g, want in zip(got, oracle(fn, args, cot), strict=True):
        assert_close(g, want, rtol=rtol, what=name)
    return args, tape


@pytest.mark.parametrize(("name", "fn", "shapes"), STRUCTURAL, ids=STRUCT_IDS)
def test_structural_gradients_match_central_differences(name: str, fn: object,
                                                         shapes: list) -> None:
    _check_structural_vjp(name, fn, shapes, central_differences, rtol=1e-7)


@pytest.mark.oracle
@pytest.mark.parametrize(("name", "fn", "shapes"),
                         [c for c in STRUCTURAL if c[0] not in JAX_REFUSES],
                         ids=[i for i in STRUCT_IDS if i not in JAX_REFUSES])
def test_structural_gradients_match_jax(name: str, fn: object, shapes: list) -> None:
    pytest.importorskip("jax")
    args, tape = _check_structural_vjp(name, fn, shapes, jax_vjp, rtol=1e-13)
    if tape.output_shape == ():
        _, g = tape.value_and_grad(*args)
        assert_close(as_list(g, len(args))[0], jax_vjp(fn, args, np.ones(()))[0], rtol=1e-13)


@pytest.mark.parametrize("red", ["max", "min"])
def test_max_min_ties_go_to_the_first_extremum(red: str) -> None:
    """The documented convention (JAX splits a tie evenly; fasttape gives it to the first)."""
    x = np.array([[1.0, 3.0, 3.0, -2.0], [-2.0, 0.0, -2.0, 0.0]])
    if red == "min":
        x = -x
    tape = tape_of(lambda xp, t: getattr(xp, red)(t, axis=1), [(2, 4)])
    np.testing.assert_array_equal(tape.value(x), getattr(np, red)(x, axis=1))
    g = tape.vjp(x, np.array([1.0, 2.0]))
    want = np.zeros((2, 4))
    want[0, 1] = 1.0
    want[1, 0 if red == "min" else 1] = 2.0
    if red == "min":  # -x: row 1 is [2, 0, 2, 0], its minimum 0 first at column 1
        want[1] = [0.0, 2.0, 0.0, 0.0]
    np.testing.assert_array_equal(g, want)
    # Along axis 0 (an inner reduction): the first row holding the extremum.
    tape0 = tape_of(lambda xp, t: getattr(xp, red)(t, axis=0), [(2, 2)])
    np.testing.assert_array_equal(tape0.vjp(np.ones((2, 2)), np.ones(2)),
                                  [[1.0, 1.0], [0.0, 0.0]])


@pytest.mark.parametrize("red", ["max", "min"])
def test_max_min_nan_propagates_and_takes_the_gradient(red: str) -> None:
    x = np.array([[1.0, np.nan, 5.0, np.nan], [1.0, 2.0, 3.0, 4.0]])
    tape = tape_of(lambda xp, t: getattr(xp, red)(t, axis=1), [(2, 4)])
    np.testing.assert_array_equal(tape.value(x), getattr(np, red)(x, axis=1))
    g = tape.vjp(x, np.array([1.0, 1.0]))
    want = np.zeros((2, 4))
    want[0, 1] = 1.0  # the first NaN
    want[1, 3 if red == "max" else 0] = 1.0
    np.testing.assert_array_equal(g, want)
    v, g_all = tape_of(lambda xp, t: getattr(xp, red)(t), [(2, 4)]).value_and_grad(x)
    assert np.isnan(v)
    assert g_all[0, 1] == 1.0 and np.count_nonzero(g_all) == 1


@pytest.mark.parametrize(("row", "want"), [
    ([2.0, 3.0, 4.0], [12.0, 8.0, 6.0]),
    ([2.0, 0.0, 4.0], [0.0, 8.0, 0.0]),  # one zero: only it gets the others' product
    ([0.0, 3.0, 0.0], [0.0, 0.0, 0.0]),  # two zeros: all 0
    ([-0.0, 3.0, 4.0], [12.0, 0.0, 0.0]),
    ([np.inf, 0.0, 2.0], [0.0, np.inf, 0.0]),
])
def test_prod_gradient_with_zeros(row: list[float], want: list[float]) -> None:
    x = np.array([row, [1.0, 2.0, 3.0]])
    tape = tape_of(lambda xp, t: xp.prod(t, axis=1), [(2, 3)])
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(tape.value(x), np.prod(x, axis=1))
    g = tape.vjp(x, np.array([1.0, 0.0]))
    np.testing.assert_array_equal(g[0], want)
    np.testing.assert_array_equal(g[1], 0.0)
    # Inner axis (a column reduction) takes the same rule.
    gt = tape_of(lambda xp, t: xp.prod(t, axis=0), [(3, 2)]).vjp(x.T, np.array([1.0, 0.0]))
    np.testing.assert_array_equal(gt[:, 0], want)


def test_logsumexp_and_softmax_do_not_overflow() -> None:
    x = np.array([[1000.0, 1000.0, -1000.0], [-np.inf, -np.inf, -np.inf]])
    lse = tape_of(lambda xp, t: xp.logsumexp(t, axis=1), [(2, 3)])
    v = lse.value(x)
    assert v[0] == 1000.0 + np.log(2.0)
    assert v[1] == -np.inf
    g = lse.vjp(x, np.array([1.0, 0.0]))
    np.testing.assert_allclose(g[0], [0.5, 0.5, 0.0], rtol=1e-15, atol=0)
    sm = tape_of(lambda xp, t: xp.softmax(t), [(3,)])
    np.testing.assert_allclose(sm.value(x[0]), [0.5, 0.5, 0.0], rtol=1e-15, atol=0)
    assert np.all(np.isfinite(sm.vjp(x[0], np.array([1.0, -1.0, 0.5]))))


def test_empty_tensors() -> None:
    tape = tape_of(lambda xp, x: xp.sum(x, axis=0) + xp.prod(x, axis=0), [(0, 3)])
    np.testing.assert_array_equal(tape.value(np.zeros((0, 3))), [1.0, 1.0, 1.0])
    assert tape.vjp(np.zeros((0, 3)), np.ones(3)).shape == (0, 3)
    tape = tape_of(lambda xp, x: xp.sum(x[:0] * 2.0) + x[0], [(3,)])
    assert tape.value_and_grad(np.ones(3)) == (1.0, pytest.approx([1.0, 0.0, 0.0]))


# ------------------------------------------------------------------------------------------
# 4. Pytrees, parameters, several inputs, scalar inputs, vjp
# ------------------------------------------------------------------------------------------


def mlp_loss(params: dict, X: object, y: np.ndarray, xp: object = FT) -> object:
    """The issue's MLP loss: tanh hidden layer, logsumexp cross-entropy, L2 penalty."""
    h = xp.tanh(X @ params["W1"] + params["b1"])
    logits = h @ params["W2"] + params["b2"]
    return xp.mean(xp.logsumexp(logits, axis=1) - logits[np.arange(len(y)), y]) \
        + 1e-4 * (xp.sum(params["W1"] ** 2) + xp.sum(params["W2"] ** 2))


MLP_SHAPES = {"W1": (4, 5), "b1": (5,), "W2": (5, 3), "b2": (3,)}


def _mlp_data(seed: int = 3) -> tuple[dict, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s) for k, s in MLP_SHAPES.items()}
    return params, rng.normal(size=(6, 4)), rng.integers(0, 3, size=6)


def test_mlp_params_dict_and_data_parameter() -> None:
    params, X, y = _mlp_data()
    tape = ft.compile(ft.trace(lambda p, X: mlp_loss(p, X, y), shapes=[MLP_SHAPES],
                               params=[X.shape]))
    v, g = tape.value_and_grad(params, p=X)
    assert isinstance(g, dict) and sorted(g) == sorted(MLP_SHAPES)
    assert all(g[k].shape == s for k, s in MLP_SHAPES.items())
    assert_close(v, mlp_loss(params, X, y, NP), rtol=1e-14)
    assert tape.value(params, p=X) == v
    # Parameters change between calls without tracing again.
    X2 = X[::-1].copy()
    assert_close(tape.value(params, p=(X2,)), mlp_loss(params, X2, y, NP), rtol=1e-14)
    # Differences, entry by entry.
    for k in MLP_SHAPES:
        for idx in [(0,) * len(MLP_SHAPES[k]), tuple(d - 1 for d in MLP_SHAPES[k])]:
            hi = {q: a.copy() for q, a in params.items()}
            lo = {q: a.copy() for q, a in params.items()}
            hi[k][idx] += 1e-6
            lo[k][idx] -= 1e-6
            fd = (mlp_loss(hi, X, y, NP) - mlp_loss(lo, X, y, NP)) / 2e-6
            assert abs(g[k][idx] - fd) <= 1e-7 * max(1.0, abs(fd))


@pytest.mark.oracle
def test_mlp_gradient_matches_jax() -> None:
    jax = pytest.importorskip("jax")
    from tests.tensor_helpers import jax_namespace

    params, X, y = _mlp_data()
    tape = ft.compile(ft.trace(lambda p, X: mlp_loss(p, X, y), shapes=[MLP_SHAPES],
                               params=[X.shape]))
    _, g = tape.value_and_grad(params, p=X)
    jnp = jax_namespace()
    gj = jax.grad(lambda p: mlp_loss(p, X, y, jnp))(params)
    for k in MLP_SHAPES:
        assert_close(g[k], np.asarray(gj[k]), rtol=1e-13, what=k)


def test_nested_list_and_tuple_inputs_several_positional() -> None:
    def fn(pair, lst, s):
        a, b = pair
        return np.sum(a * b) * s + np.sum(lst[0]) - lst[1][0] ** 2 * s

    shapes = [((2,), (2,)), [(3,), (1,)], ()]
    tape = ft.compile(ft.trace(fn, shapes=shapes))
    a, b, c, d, s = np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.ones(3), np.array([2.0]), 0.5
    v, (g_pair, g_lst, g_s) = tape.value_and_grad((a, b), [c, d], s)
    assert v == fn((a, b), [c, d], s)
    assert isinstance(g_pair, tuple) and isinstance(g_lst, list)
    np.testing.assert_array_equal(g_pair[0], b * s)
    np.testing.assert_array_equal(g_pair[1], a * s)
    np.testing.assert_array_equal(g_lst[0], np.ones(3))
    np.testing.assert_array_equal(g_lst[1], -2.0 * d * s)
    assert g_s.shape == () and g_s == np.sum(a * b) - d[0] ** 2


def test_dict_keys_sorted_whatever_the_insertion_order() -> None:
    fn = lambda d: d["b"] - 2.0 * d["a"]  # noqa: E731
    t1 = ft.compile(ft.trace(fn, shapes=[{"a": (2,), "b": (2,)}]))
    t2 = ft.compile(ft.trace(fn, shapes=[{"b": (2,), "a": (2,)}]))
    x = {"b": np.array([1.0, 2.0]), "a": np.array([3.0, 4.0])}
    np.testing.assert_array_equal(t1.value(x), t2.value(x))
    g = t1.vjp(x, np.ones(2))
    assert list(g) == ["a", "b"]
    np.testing.assert_array_equal(g["a"], [-2.0, -2.0])


def test_scalar_inputs_and_int_shapes() -> None:
    tape = ft.compile(ft.trace(lambda s, v: s * np.sum(v), shapes=[(), 3]))
    v, (gs, gv) = tape.value_and_grad(2.0, [1.0, 2.0, 3.0])
    assert v == 12.0 and gs.shape == () and gs == 6.0
    np.testing.assert_array_equal(gv, [2.0, 2.0, 2.0])


def test_vjp_with_tensor_output_and_params() -> None:
    fn = lambda x, W: np.tanh(W @ x)  # noqa: E731
    tape = ft.compile(ft.trace(fn, shapes=[(3,)], params=[(2, 3)]))
    x, W = np.array([0.1, -0.2, 0.3]), np.arange(6.0).reshape(2, 3) / 6
    cot = np.array([1.0, -2.0])
    g = tape.vjp(x, cot, p=W)
    assert_close(g, W.T @ (cot * (1 - np.tanh(W @ x) ** 2)), rtol=1e-14)
    assert_close(tape.value(x, p=W), fn(x, W), rtol=1e-15)
    two = ft.compile(ft.trace(lambda a, b: a * b, shapes=[(2,), (2,)]))
    ga, gb = two.vjp((np.array([1.0, 2.0]), np.array([3.0, 4.0])), np.array([1.0, 10.0]))
    np.testing.assert_array_equal(ga, [3.0, 40.0])
    np.testing.assert_array_equal(gb, [1.0, 20.0])


def test_constant_and_identity_outputs() -> None:
    tape = ft.compile(ft.trace(lambda x: x, shapes=[(2, 2)]))
    np.testing.assert_array_equal(tape.vjp(np.ones((2, 2)), np.arange(4.0).reshape(2, 2)),
                                  np.arange(4.0).reshape(2, 2))
    tape = ft.compile(ft.trace(lambda x: 3.0, shapes=[(2,)]))
    assert tape.value_and_grad(np.ones(2)) == (3.0, pytest.approx([0.0, 0.0]))
    tape = ft.compile(ft.trace(lambda x: x[1], shapes=[(3,)]))
    assert tape.value_and_grad(np.array([1.0, 2.0, 3.0])) == (2.0, pytest.approx([0, 1, 0]))
    tape = ft.compile(ft.trace(lambda x: np.arange(3.0) + 0.0 * x, shapes=[()]))
    np.testing.assert_array_equal(tape.value(1.0), [0.0, 1.0, 2.0])


def test_captured_constants_and_tape_size_independent_of_n() -> None:
    def rosen(x):
        return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    small = ft.compile(ft.trace(rosen, shapes=[(10,)]))
    big = ft.compile(ft.trace(rosen, shapes=[(10_000,)]))
    huge = ft.compile(ft.trace(rosen, shapes=[(1_000_000,)]))
    assert small.n_ops == big.n_ops == huge.n_ops == 8
    # Above the fusion threshold the arrays themselves do not grow with n.
    assert big.n_instructions == huge.n_instructions == 2
    assert big.to_arrays()["fields"].size == huge.to_arrays()["fields"].size
    x = np.linspace(-1.0, 1.5, 10_000)
    v, g = big.value_and_grad(x)
    assert_close(v, rosen(x), rtol=1e-13)
    gx = np.zeros_like(x)
    gx[:-1] = -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2.0 * (1.0 - x[:-1])
    gx[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    assert_close(g, gx, rtol=1e-13)


# ------------------------------------------------------------------------------------------
# 5. Errors
# ------------------------------------------------------------------------------------------


def _trace_error(fn: object, shapes: list, exc: type, match: str, params: list | None = None
                 ) -> None:
    with pytest.raises(exc, match=match):
        ft.trace(fn, shapes=shapes, params=params)


@pytest.mark.parametrize(("fn", "shapes", "exc", "match"), [
    (lambda x, y: x + y, [(3,), (4,)], ValueError,
     r"shape mismatch: objects cannot be broadcast to a single shape"),
    (lambda x: np.sum(x, axis=2), [(3, 4)], np.exceptions.AxisError,
     "axis 2 is out of bounds for array of dimension 2"),
    (lambda x: np.max(x, axis=-3), [(3, 4)], np.exceptions.AxisError, "axis -3 is out"),
    (lambda x: np.sum(x, axis=(0, 0)), [(3, 4)], ValueError, "duplicate value in 'axis'"),
    (lambda x: np.sum(x, axis=1.0), [(3, 4)], TypeError, "axis must be an integer"),
    (lambda x: np.swapaxes(x, 0, 5), [(3, 4)], np.exceptions.AxisError, "axis 5"),
    (lambda x: np.concatenate([x, x], axis=2), [(3, 4)], np.exceptions.AxisError, "axis 2"),
    (lambda x, y: x @ y, [(3, 4), (3,)], ValueError,
     r"matmul: Input operand 1 has a mismatch in its core dimension 0.*size 3 is different "
     r"from 4"),
    (lambda x, y: np.matmul(x, y), [(2, 3), (2, 3)], ValueError, "mismatch in its core"),
    (lambda x: x @ 2.0, [(3,)], ValueError, "does not have enough dimensions"),
    (lambda x: np.dot(x, x), [(3, 4)], ValueError, r"shapes \(3, 4\) and \(3, 4\) not aligned"),
    (lambda x: x.reshape(5, 2), [(3, 4)], ValueError,
     r"cannot reshape array of size 12 into shape \(5, 2\)"),
    (lambda x: x.reshape(-1, -1), [(3, 4)], ValueError, "only specify one unknown dimension"),
    (lambda x: np.broadcast_to(x, (3, 5)), [(3, 4)], ValueError,
     "operands could not be broadcast"),
    (lambda x: np.concatenate([x, x.T]), [(3, 4)], ValueError,
     "along dimension 1, the array at index 0 has size 4 and the array at index 1 has size 3"),
    (lambda x: np.concatenate([x, x[0]]), [(3, 4)], ValueError, "dimension"),
    (lambda x: np.stack([x, x.T]), [(3, 4)], ValueError, "must have the same shape"),
    (lambda x: x[5], [(3,)], IndexError, "index 5 is out of bounds for axis 0 with size 3"),
    (lambda x: x[np.array([0, 3])], [(3,)], IndexError, "index 3 is out of bounds"),
    (lambda x: x[np.array([True, False])], [(3,)], IndexError, "boolean index did not match"),
    (lambda x: x[1.5], [(3,)], IndexError, "only integers, slices"),
    (lambda x: x[0, 0], [(3,)], IndexError, "too many indices"),
    (lambda x: np.max(x[:0]), [(3,)], ValueError, "zero-size array to reduction operation"),
    (lambda x: np.einsum("ii->i", x), [(3, 3)], TypeError, "repeated subscript"),
    (lambda x: np.einsum("...i->i", x), [(3, 3)], TypeError, r"'\.\.\.' is not supported"),
    (lambda x: np.einsum("ij,jk->ik", x, x), [(3, 4)], ValueError, "size of label 'j'"),
    (lambda x: np.einsum("ij->k", x), [(3, 4)], ValueError, "output label"),
    (lambda x: np.einsum("ijk->i", x), [(3, 4)], ValueError, "has 2 dimensions"),
    (lambda x: x ** (2 ** 40), [(3,)], ValueError, "integer exponent out of range"),
    (lambda x: x.astype(np.float32), [(3,)], TypeError, "float64 only"),
    (lambda x: x + 1j, [(3,)], TypeError, "complex values are not supported"),
    (lambda x: x + np.array(["a"]), [(3,)], TypeError, "expected a number, an array"),
    (lambda x: (x, x), [(3,)], TypeError, "returns one tensor"),
    (lambda x: "a", [(3,)], TypeError, "returned str"),
    (lambda x: x + ft.trace(lambda v: v[0], 1).inputs(1)[0], [(3,)], TypeError,
     "cannot be mixed into a tensor trace"),
    (lambda x: len(x), [()], TypeError, "len"),
])
def test_trace_errors(fn: object, shapes: list, exc: type, match: str) -> None:
    _trace_error(fn, shapes, exc, match)


@pytest.mark.parametrize(("fn", "name"), [
    (lambda x: np.sort(x), "numpy.sort"),
    (lambda x: np.cumsum(x), "numpy.cumsum"),
    (lambda x: np.linalg.norm(x), "numpy.linalg.norm"),
    (lambda x: np.sinc(x), "numpy.sinc"),
    (lambda x: np.tensordot(x, x, 1), "numpy.tensordot"),
    (lambda x: np.where(x > 0), "np.where(cond) with one argument"),
    (lambda x: np.sum(x, out=np.zeros(())), "numpy.sum on traced tensors takes axis and "
                                              "keepdims only"),
    (lambda x: np.mean(x, where=x > 0), "numpy.mean on traced tensors takes axis"),
])
def test_unsupported_numpy_function_is_named(fn: object, name: str) -> None:
    with pytest.raises(TypeError, match=name.replace(".", r"\.").replace("(", r"\(")
                       .replace(")", r"\)")):
        ft.trace(fn, shapes=[(3,)])


@pytest.mark.parametrize(("fn", "match"), [
    (lambda x: np.remainder(x, 2.0), r"numpy\.remainder is not supported"),
    (lambda x: np.exp(x, out=np.zeros(3)), r"numpy\.exp with \['out'\] is not supported"),
    (lambda x: np.add.reduce(x), r"numpy\.add\.reduce is not supported"),
    (lambda x: np.add.accumulate(x), r"numpy\.add\.accumulate is not supported"),
    (lambda x: np.isfinite(x), r"numpy\.isfinite is not supported"),
    (lambda x: np.matmul(x, x, out=np.zeros(())), r"numpy\.matmul"),
])
def test_unsupported_ufunc_is_named(fn: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        ft.trace(fn, shapes=[(3,)])


def _setitem(x: object) -> None:
    x[0] = 1.0


@pytest.mark.parametrize(("fn", "match"), [
    (lambda x: 1.0 if x else x, r"cannot decide an `if`"),
    (lambda x: x[0] > 0 and x[1], r"cannot decide an `if`"),
    (lambda x: float(x[0]), r"float\(\) needs one"),
    (lambda x: int(x[0]), r"has no value while tracing"),
    (lambda x: np.asarray(x), r"cannot become a NumPy array"),
    (lambda x: np.array(x), r"cannot become a NumPy array"),
    (lambda x: np.zeros(3) + list(x), r"cannot become a NumPy array|expected a number"),
    (_setitem, r"traced tensors are immutable"),
    (lambda x: x[x > 0], r"used as an index must be a parameter argument itself"),
    (lambda x: x[(0, x)], r"used as an index must be a parameter argument itself"),
])
def test_tensors_have_no_value_while_tracing(fn: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        ft.trace(fn, shapes=[(3,)])


def test_shapes_argument_errors() -> None:
    with pytest.raises(TypeError, match=r"shapes=\(3, 4\) is ambiguous.*shapes=\[\(3, 4\)\]"):
        ft.trace(lambda x: x, shapes=(3, 4))
    with pytest.raises(TypeError, match="expected a shape"):
        ft.trace(lambda x: x, shapes=[(-1,)])
    with pytest.raises(TypeError, match="expected a shape"):
        ft.trace(lambda x: x, shapes=[("a",)])
    with pytest.raises(TypeError, match="dict keys must be sortable"):
        ft.trace(lambda x: x, shapes=[{"a": (3,), 1: (2,)}])
    with pytest.raises(TypeError, match="either n_inputs"):
        ft.trace(lambda x: x, 3, shapes=[(3,)])
    with pytest.raises(TypeError, match="params must be a list"):
        ft.trace(lambda x, p: x, shapes=[(3,)], params=5)


def _mlp_tape() -> tuple[ft.TensorTape, dict, np.ndarray]:
    params, X, y = _mlp_data()
    tape = ft.compile(ft.trace(lambda p, X: mlp_loss(p, X, y), shapes=[MLP_SHAPES],
                               params=[X.shape]))
    return tape, params, X


def test_call_errors_name_the_leaf() -> None:
    tape, params, X = _mlp_tape()
    bad = dict(params, b1=np.ones(4))
    with pytest.raises(ValueError, match=r"argument\[0\]\['b1'\] has shape \(4,\), expected "
                                         r"\(5,\)"):
        tape.value(bad, p=X)
    with pytest.raises(ValueError, match=r"p\[0\] has shape \(3, 3\), expected \(6, 4\)"):
        tape.value(params, p=np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"argument\[0\] must be a dict with keys \['W1', 'W2', "
                                         r"'b1', 'b2'\].*got \['W1'\]"):
        tape.value({"W1": params["W1"]}, p=X)
    with pytest.raises(ValueError, match=r"argument\[0\] must be a dict.*got list"):
        tape.value(list(params.values()), p=X)
    with pytest.raises(TypeError, match=r"this tape takes parameters: pass p="):
        tape.value(params)
    with pytest.raises(ValueError, match=r"p must be a tuple of 1 entries.*got 2"):
        tape.value(params, p=(X, X))
    with pytest.raises(TypeError, match=r"expected 1 argument\(s\).*got 2"):
        tape.value(params, params, p=X)
    with pytest.raises(TypeError, match=r"argument\[0\]\['W1'\] must be an array of real "
                                        r"numbers.*got str"):
        tape.value(dict(params, W1="abc"), p=X)
    plain = ft.compile(ft.trace(lambda x: np.sum(x), shapes=[(3,)]))
    with pytest.raises(TypeError, match="this tape takes no parameters, but p= was given"):
        plain.value(np.ones(3), p=np.ones(2))
    with pytest.raises(TypeError, match=r"argument\[0\] must be an array of real numbers"):
        plain.value([1.0, "x", 2.0])


def test_complex_input_is_refused_not_truncated() -> None:
    """Regression: a complex array was cast to float64 (imaginary part dropped, a warning)."""
    tape = ft.compile(ft.trace(lambda x: np.sum(x), shapes=[(2,)]))
    with pytest.raises(TypeError, match=r"real numbers.*complex128"):
        tape.value(np.array([1.0 + 2.0j, 3.0]))


def test_output_shape_errors() -> None:
    tape = ft.compile(ft.trace(lambda x: x * 2.0, shapes=[(3,)]))
    with pytest.raises(ValueError, match=r"value_and_grad needs a scalar output.*\(3,\).*vjp"):
        tape.value_and_grad(np.ones(3))
    with pytest.raises(ValueError, match=r"value_and_grad needs a scalar output"):
        tape.grad(np.ones(3))
    with pytest.raises(ValueError, match=r"cotangent has shape \(4,\), expected.*\(3,\)"):
        tape.vjp(np.ones(3), np.ones(4))


def test_embedding_entry_points_refuse_a_misplaced_argument() -> None:
    # Both exist on tensor tapes (tests/test_embed_tensor.py); an array where the kind or a
    # keyword belongs is a clear error, not a crash.
    tape = ft.compile(ft.trace(lambda x: np.sum(x), shapes=[(3,)]))
    with pytest.raises(ValueError, match="kind must be one of"):
        tape.numba_kernel(np.ones(3))
    with pytest.raises(TypeError):
        tape.cfunc(np.ones(3))


@pytest.mark.parametrize("option", [{"optimize": ["cse"]}, {"grad_mode": "lean"},
                                    {"finite_math": True}, {"memory_limit": 1 << 20}])
def test_compile_options_on_a_tensor_graph(option: dict) -> None:
    g = ft.trace(lambda x: np.sum(x), shapes=[(3,)])
    with pytest.raises(NotImplementedError, match="scalar graphs"):
        ft.compile(g, **option)


def test_a_tensor_graph_compiled_without_optimizing() -> None:
    # optimize=False: one instruction per traced op (no merged repeats, no fused groups),
    # bitwise the same values; gradients to rounding (fusion recomputes, same formulas).
    def fn(x):
        return np.sum(np.tanh(x) * np.exp(np.tanh(x)) + (x[1:] - x[:-1] ** 2).sum())

    g = ft.trace(fn, shapes=[(5000,)])
    fast, plain = ft.compile(g), ft.compile(g, optimize=False)
    assert plain.op_names().count("tanh") == 2 and fast.op_names().count("tanh") == 1
    assert plain.n_instructions == plain.n_ops > fast.n_instructions
    x = np.linspace(-1.0, 1.0, 5000)
    v1, g1 = fast.value_and_grad(x)
    v2, g2 = plain.value_and_grad(x)
    assert v1 == pytest.approx(v2, rel=1e-15)
    np.testing.assert_allclose(g1, g2, rtol=1e-13, atol=1e-13)


def test_graph_extended_from_another_thread() -> None:
    caught = []

    def fn(x):
        def other() -> None:
            try:
                np.sin(x)
            except RuntimeError as exc:
                caught.append(str(exc))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        return np.sum(x)

    ft.trace(fn, shapes=[(3,)])
    assert caught and "other than the one that traces it" in caught[0]


def test_tensors_of_two_traces_do_not_mix() -> None:
    kept = []
    ft.trace(lambda x: kept.append(x) or np.sum(x), shapes=[(3,)])
    with pytest.raises(ValueError, match="two different traces"):
        ft.trace(lambda x: x + kept[0], shapes=[(3,)])


# ------------------------------------------------------------------------------------------
# 5b. validate(): hostile arrays are refused before any kernel runs
# ------------------------------------------------------------------------------------------

I64 = np.int64
EW, CP, TK, RD, MM = 0, 1, 2, 3, 4  # the kinds (fasttape.kernels.tensor)
ADD = OP_BY_NAME["add"].code
SIN = OP_BY_NAME["sin"].code


def _current(kind: int, op: int, f: list) -> list:
    """Fields in today's encoding, from the short spellings of the cases below: an
    elementwise op as ``[d, n, a0, s0, a1, s1, a2, s2]`` becomes a group of one (adjoints to
    the arguments' own ranges), a matmul without its two adjoint flags gets ``wa = wb = 1``."""
    if kind == EW and len(f) == 8:
        d, n, a0, s0, a1, s1, a2, s2 = f
        return [n, max(n, 1), 1, op, d, 1, a0, s0, s0, a1, s1, s1, a2, s2, s2,
                a0, s0, s0, a1, s1, s1, 0]
    if kind == MM and len(f) == 9:
        return [*f, 1, 1]
    return f


def _build(kinds: list, ops: list, fields: list, n_slots: int = 8, at: list | None = None,
           inputs: list | None = None, out: tuple = (0, ())) -> ft.TensorTape:
    from fasttape.tensor.tree import TreeDef

    fields = [_current(k, op, f) for k, op, f in zip(kinds, ops, fields, strict=True)]
    if at is None:
        at, pos = [], 0
        for f in fields:
            at.append(pos)
            pos += len(f)
    flat = [v for f in fields for v in f]
    inputs = [(0, (2,))] if inputs is None else inputs
    tree = TreeDef("tuple", (), tuple(TreeDef("leaf") for _ in inputs))
    return ft.TensorTape(np.array(kinds, dtype=I64), np.array(ops, dtype=I64),
                         np.array(at, dtype=I64), np.array(flat, dtype=I64),
                         np.zeros(n_slots), inputs, [], tree, TreeDef("tuple"), *out)


def test_hand_built_tape_runs() -> None:
    """The encoding the hostile cases below corrupt: x (slots 0-1) + x -> 2-3, sum -> 4."""
    tape = _build([EW, RD], [ADD, 0], [[2, 2, 0, 1, 0, 1, 0, 0], [4, 1, 2, 1, 2]],
                  out=(4, ()))
    assert tape.value_and_grad(np.array([1.0, 2.0])) == (6.0, pytest.approx([2.0, 2.0]))


@pytest.mark.parametrize(("kinds", "ops", "fields", "match"), [
    ([7], [0], [[0] * 9], "unknown kind 7"),
    ([-1], [0], [[0] * 9], "unknown kind -1"),
    ([EW], [ADD], [[0, 1, 0, 1]], "bad elementwise group header"),
    ([EW], [ADD], [[2, 2]], "fields out of range"),
    ([EW], [999], [[2, 2, 0, 1, 0, 1, 0, 0]], "op code 999 out of range"),
    ([EW], [-1], [[2, 2, 0, 1, 0, 1, 0, 0]], "op code -1 out of range"),
    ([EW], [ADD], [[2, -1, 0, 1, 0, 1, 0, 0]], "bad elementwise group header"),
    ([EW], [ADD], [[7, 2, 0, 1, 0, 1, 0, 0]], r"the result reaches slots 7\.\.8"),
    ([EW], [ADD], [[-1, 2, 0, 1, 0, 1, 0, 0]], "the result reaches slots -1"),
    ([EW], [ADD], [[2, 2, 0, 2, 0, 1, 0, 0]], "argument 0: strides must be 0 or 1"),
    ([EW], [ADD], [[2, 2, 0, -1, 0, 1, 0, 0]], "argument 0: strides must be 0 or 1"),
    ([EW], [ADD], [[2, 2, 0, 1, 7, 1, 0, 0]], r"argument 1 reaches slots 7\.\.8"),
    ([EW], [SIN], [[2, 2, -5, 1, 0, 0, 0, 0]], "argument 0 reaches slots -5"),
    ([EW], [ADD], [[2, 7, 0, 1, 0, 1, 0, 0]], r"the result reaches slots 2\.\.8"),
    ([EW], [ADD], [[2, 2**62, 0, 1, 0, 1, 0, 0]], "reaches slots"),
    ([CP], [0], [[2, 2, 0, 0]], "bad number of dimensions"),
    ([CP], [0], [[2, 2, 0, 5, 2, 1]], "bad number of dimensions"),
    ([CP], [0], [[2, 3, 0, 1, 2, 1]], r"shape \[2\] does not hold 3 elements"),
    ([CP], [0], [[2, 0, 0, 2, -1, 0, 1, 1]], "does not hold"),
    ([CP], [0], [[2, 2, 0, 1, 2, 8]], "the source view reaches slots 0..8"),
    ([CP], [0], [[2, 2, 0, 1, 2, -1]], "the source view reaches slots -1..0"),
    ([CP], [0], [[2, 4, 1, 2, 2, 2, -3, 1]], "the source view reaches slots -2"),
    ([CP], [0], [[2, 2, 0, 1, 2, 2**62]], "the source view reaches"),
    ([CP], [0], [[7, 2, 0, 1, 2, 1]], "the result reaches"),
    ([TK], [0], [[2, 2, 0, 0]], "index list out of range"),
    ([TK], [0], [[2, -1, 0]], "index list out of range"),
    ([TK], [0], [[2, 2, 0, 0, 8]], "an index reaches slots 0..8"),
    ([TK], [0], [[2, 2, 1, 0, -2]], "an index reaches slots -1"),
    ([TK], [0], [[2, 2, 2**62, 0, 2**62]], "an index reaches"),
    ([TK], [0], [[7, 2, 0, 0, 1]], "the result reaches"),
    ([RD], [4], [[2, 1, 2, 1, 0]], "bad reduction"),
    ([RD], [0], [[2, 1, -2, 1, 0]], "bad reduction"),
    ([RD], [2], [[2, 1, 0, 1, 0]], "max/min over zero elements"),
    ([RD], [0], [[2, 1, 9, 1, 0]], "the source reaches"),
    ([RD], [0], [[2, 2, 2, 2, 1]], r"the source reaches slots 1\.\.8"),
    ([RD], [1], [[2, 1, 2, 1, -1]], "the source reaches slots -1"),
    ([RD], [0], [[2, 2**40, 2**40, 2**40, 0]], "reaches"),
    ([MM], [0], [[2, 1, 1, 2, 1, 0, 0, 0, -1]], "bad matmul sizes"),
    ([MM], [0], [[2, -1, 1, 1, 1, 0, 0, 0, 0]], "bad matmul sizes"),
    ([MM], [0], [[4, 1, 1, 2, 1, 0, 0, 7, 0]], "operand b reaches"),
    ([MM], [0], [[4, 2, 1, 2, 1, 0, 7, 0, 0]], "operand a reaches slots 0..8"),
    ([MM], [0], [[4, 1, 2, 2, 4, 0, 0, 0, 0]], "the result reaches"),
    ([MM], [0], [[2, 1, 1, 2**40, 1, 0, 0, 0, 0]], "operand a reaches"),
])
def test_validate_rejects_hostile_arrays(kinds: list, ops: list, fields: list,
                                         match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _build(kinds, ops, fields)


def test_validate_rejects_bad_array_types_and_ranges() -> None:
    from fasttape.tensor.tree import TreeDef

    good = ([EW], [ADD], [[2, 2, 0, 1, 0, 1, 0, 0]])
    with pytest.raises(ValueError, match="fields out of range"):
        _build(*good, at=[-3])
    with pytest.raises(ValueError, match="fields out of range"):
        _build(*good, at=[100])
    with pytest.raises(ValueError, match="one entry per instruction"):
        _build(*good, at=[0, 0])
    with pytest.raises(ValueError, match=r"the input range 7\.\.8 is outside the 8 slots"):
        _build(*good, inputs=[(7, (2,))])
    with pytest.raises(ValueError, match="the output range"):
        _build(*good, out=(6, (3,)))
    with pytest.raises(ValueError, match="the output range"):
        _build(*good, out=(-1, ()))
    tree = TreeDef("tuple", (), (TreeDef("leaf"),))
    for name, bad in [("kinds", np.array([0], dtype=np.int32)),
                      ("fields", np.zeros((1, 8), dtype=I64)),
                      ("ops", np.array([ADD], dtype=np.float64))]:
        arrays = {"kinds": np.array([EW], dtype=I64), "ops": np.array([ADD], dtype=I64),
                  "at": np.zeros(1, dtype=I64),
                  "fields": np.array([2, 2, 0, 1, 0, 1, 0, 0], dtype=I64), name: bad}
        with pytest.raises(ValueError, match=f"{name} must be a 1-D int64 array"):
            ft.TensorTape(arrays["kinds"], arrays["ops"], arrays["at"], arrays["fields"],
                          np.zeros(8), [(0, (2,))], [], tree, TreeDef("tuple"), 0, ())


def test_tape_arrays_are_read_only_and_round_trip() -> None:

    tape = tape_of(lambda xp, x: xp.sum(xp.tanh(x @ x.T)[::-1, np.array([0, 0])]), [(3, 2)])
    a = tape.to_arrays()
    with pytest.raises(ValueError, match="read-only"):
        a["fields"][0] = 10**9
    again = ft.TensorTape.from_arrays(a, tape.layout())
    x = np.arange(6.0).reshape(3, 2) / 7
    assert again.value_and_grad(x)[0] == tape.value_and_grad(x)[0]


# ------------------------------------------------------------------------------------------
# 6. Threads
# ------------------------------------------------------------------------------------------


def test_one_tape_from_four_threads() -> None:
    tape, params, X = _mlp_tape()
    rng = np.random.default_rng(5)
    points = [{k: v + 0.1 * rng.normal(size=v.shape) for k, v in params.items()}
              for _ in range(8)]
    want = [tape.value_and_grad(p, p=X) for p in points]
    results: dict[int, list] = {}

    def work(t: int) -> None:
        out = []
        for _ in range(25):
            for p in points[t:] + points[:t]:
                out.append((id(p), tape.value_and_grad(p, p=X)))
        results[t] = out

    run_threads(work, 4)
    by_id = {id(p): w for p, w in zip(points, want, strict=True)}
    assert len(results) == 4
    for out in results.values():
        assert len(out) == 200
        for pid, (v, g) in out:
            v0, g0 = by_id[pid]
            assert v == v0
            for k in g0:
                np.testing.assert_array_equal(g[k], g0[k])


@pytest.mark.parametrize(("x", "want"), [
    ([1e-200, 1e-200, 2.0], [2e-200, 2e-200, 0.0]),  # the product underflows to 0
    ([1e-160, 1e-160, 3.0], [3e-160, 3e-160, 1e-320]),  # ... to a subnormal
    ([1e300, 1e300, 1e-300], [1.0, 1.0, np.inf]),  # ... overflows
])
def test_prod_gradient_when_the_product_under_or_overflows(x: list, want: list) -> None:
    """Regression: the gradient was prod / x_t, 0 or inf or imprecise where prod is not a
    normal number; it is the product of the others (as JAX's)."""
    tape = tape_of(lambda xp, t: xp.prod(t), [(3,)])
    _, g = tape.value_and_grad(np.array(x))
    np.testing.assert_allclose(g, want, rtol=1e-15, atol=0)
    g_inner = tape_of(lambda xp, t: xp.prod(t, axis=0), [(3, 1)]).vjp(
        np.array(x)[:, None], np.ones(1))
    np.testing.assert_allclose(g_inner[:, 0], want, rtol=1e-15, atol=0)


@pytest.mark.parametrize(("fn", "match"), [
    (lambda x: np.reshape(x, (3, 2), order="F"), r"numpy\.reshape.*does not take order='F'"),
    (lambda x: np.ravel(x, order="F"), r"numpy\.ravel.*does not take order='F'"),
    (lambda x: np.concatenate([x, x], out=np.zeros((4, 3))), r"numpy\.concatenate.*out="),
    (lambda x: np.stack([x, x], out=np.zeros((2, 2, 3))), r"numpy\.stack.*out="),
    (lambda x: np.clip(x, 0.0, 1.0, out=np.zeros((2, 3))), r"numpy\.clip.*out="),
])
def test_order_and_out_are_refused_not_ignored(fn: object, match: str) -> None:
    """Regression: order='F' was ignored (a C-order result, silently different from NumPy's)
    and out= was never written."""
    with pytest.raises(TypeError, match=match):
        ft.trace(fn, shapes=[(2, 3)])
    tape = ft.compile(ft.trace(lambda x: np.reshape(np.ravel(x, order="C"), (3, 2), order="C"),
                               shapes=[(2, 3)]))
    np.testing.assert_array_equal(tape.value(np.arange(6.0).reshape(2, 3)),
                                  np.arange(6.0).reshape(3, 2))


@pytest.mark.parametrize("r", [0, 1, 2, 3, 7, 8, 9, 17, 128])
def test_row_sums_of_every_length_are_numpys_and_broadcast_back(r: int) -> None:
    """The sum over a last axis has a plain loop for rows under 8 elements and 8 lanes above:
    both give NumPy's bits (its order for rows up to 128, where its pairwise sum starts to
    split).  The reverse broadcasts each row's adjoint back to its elements (the unsigned loop
    for a last axis, the general one for axis 0)."""
    x = np.random.default_rng(r).standard_normal((5, r))
    rows = ft.compile(ft.trace(lambda a: np.sum(a, axis=1), shapes=[(5, r)]))
    np.testing.assert_array_equal(rows.value(x), np.sum(x, axis=1))
    w = np.arange(1.0, 6.0)
    tape = ft.compile(ft.trace(lambda a: np.sum(np.sum(a, axis=1) * w), shapes=[(5, r)]))
    _, g = tape.value_and_grad(x)
    np.testing.assert_array_equal(g, np.broadcast_to(w[:, None], (5, r)))
    cols = ft.compile(ft.trace(lambda a: np.sum(np.sum(a, axis=0) * w), shapes=[(r, 5)]))
    _, g = cols.value_and_grad(x.T.copy())
    np.testing.assert_array_equal(g, np.broadcast_to(w, (r, 5)))
