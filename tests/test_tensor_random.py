"""Random tensor programs (hypothesis): random shapes, broadcasting, axes and chains of ops.

Each program starts from two inputs of broadcast-compatible shapes and applies a few random
steps (elementwise ops, reductions over random axes, views, gathers, joins, products); it is
run on NumPy arrays for the values, on traced tensors, and on JAX for the gradients.  The
programs avoid ties of max/min (JAX splits a tie evenly, fasttape gives it to the first
extremum, by design): no step duplicates values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.tensor_helpers import NP, as_list, assert_close, central_differences, jax_vjp, tape_of

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

UNARY = {
    "sin": lambda xp, t: xp.sin(t),
    "tanh": lambda xp, t: xp.tanh(t),
    "exp": lambda xp, t: xp.exp(0.3 * t),
    "sqrt": lambda xp, t: xp.sqrt(t * t + 1.0),
    "log1p": lambda xp, t: xp.log1p(t * t),
    "square": lambda xp, t: t ** 2,
    "abs": lambda xp, t: xp.abs(t) + 0.1 * t,
    "where": lambda xp, t: xp.where(t > 0.1, t, 0.5 * t),
    "clip": lambda xp, t: xp.clip(t, -0.8, 0.9),
    "neg-div": lambda xp, t: -t / (t * t + 2.0),
}


def apply(xp: Any, step: tuple[str, Any], t: Any) -> Any:
    """Apply one step of a program to ``t`` (NumPy, traced tensor or JAX array)."""
    kind, arg = step
    if kind in UNARY:
        return UNARY[kind](xp, t)
    if kind in ("add", "mul", "sub", "div", "maximum"):
        c = arg
        if kind == "add":
            return t + c
        if kind == "mul":
            return c * t
        if kind == "sub":
            return c - t
        if kind == "div":
            return t / (c * c + 1.0)
        return xp.maximum(t, c)
    if kind in ("sum", "max", "min", "mean", "prod"):
        axis, keepdims = arg
        return getattr(xp, kind)(t, axis=axis, keepdims=keepdims)
    if kind == "logsumexp":
        axis, keepdims = arg
        return xp.logsumexp(t, axis=axis, keepdims=keepdims)
    if kind == "softmax":
        return xp.softmax(t, axis=arg)
    if kind == "transpose":
        return xp.transpose(t, arg)
    if kind == "reshape":
        return xp.reshape(t, arg)
    if kind == "slice":
        return t[arg]
    if kind == "gather":
        axis, idx = arg
        return t[(slice(None),) * axis + (idx,)]
    if kind == "matmul":
        return t @ arg
    if kind == "rmatmul":
        return arg @ t
    if kind == "einsum":
        spec, c = arg
        return xp.einsum(spec, t, c)
    if kind == "expand":
        axis, c = arg
        return xp.expand_dims(t, axis) * c
    if kind == "concatenate":
        return xp.concatenate([t, xp.sin(t) + 1.0], axis=arg)
    if kind == "stack":
        return xp.stack([t, 2.0 * t + 0.5], axis=arg)
    raise AssertionError(kind)


def run(xp: Any, program: dict, x: Any, y: Any) -> Any:
    t = x * y + x if program["start"] == "mul" else x - 2.0 * y
    for step in program["steps"]:
        t = apply(xp, step, t)
    return t


def _sub_shape(draw: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts to ``shape``: some leading dims dropped, some set to 1."""
    drop = draw(st.integers(0, len(shape)))
    return tuple(1 if draw(st.booleans()) else d for d in shape[drop:])


@st.composite
def programs(draw: Any) -> dict:
    ndim = draw(st.integers(0, 3))
    x_shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    y_shape = _sub_shape(draw, x_shape)
    if draw(st.booleans()):
        x_shape, y_shape = y_shape, x_shape
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cur = np.zeros(np.broadcast_shapes(x_shape, y_shape))
    steps: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 5))):
        nd = cur.ndim
        choices = [*UNARY, "add", "mul", "sub", "div", "maximum"]
        if nd:
            choices += ["sum", "max", "min", "mean", "prod", "logsumexp", "softmax",
                        "transpose", "reshape", "slice", "gather", "matmul", "rmatmul",
                        "einsum", "concatenate", "stack"]
        if cur.size <= 64:
            choices.append("expand")
        kind = draw(st.sampled_from(choices))
        arg: Any = None
        if kind in ("add", "mul", "sub", "div", "maximum"):
            arg = rng.uniform(-1.0, 1.0, size=_sub_shape(draw, cur.shape))
        elif kind in ("sum", "max", "min", "mean", "prod", "logsumexp"):
            axes = draw(st.lists(st.integers(-nd, nd - 1), max_size=nd,
                                 unique_by=lambda a, nd=nd: a % nd))
            axis = draw(st.sampled_from([None, tuple(axes), axes[0] if axes else None]))
            arg = (axis, draw(st.booleans()))
        elif kind == "softmax":
            arg = draw(st.integers(-nd, nd - 1))
        elif kind == "transpose":
            arg = tuple(draw(st.permutations(range(nd))))
        elif kind == "reshape":
            n = cur.size
            first = draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
            arg = draw(st.sampled_from([(-1,), (first, -1), (n // first, first),
                                        (1, n, 1)]))
        elif kind == "slice":
            axis = draw(st.integers(0, nd - 1))
            d = cur.shape[axis]
            start = draw(st.integers(-d, d - 1))
            sl = draw(st.sampled_from([slice(None, None, -1), slice(start, None),
                                       slice(None, None, 2), slice(None, start or None, -1),
                                       start]))
            extra = draw(st.sampled_from([(), (None,), (Ellipsis,)]))
            key = (slice(None),) * axis + (sl,) + extra
            if isinstance(sl, slice) and cur[key].size == 0:
                key = (slice(None),) * axis + (slice(None, None, -1),) + extra
            arg = key
        elif kind == "gather":
            axis = draw(st.integers(0, nd - 1))
            d = cur.shape[axis]
            idx = rng.permutation(d)[:draw(st.integers(1, d))]  # no repeats: no ties
            if draw(st.booleans()):
                idx = np.isin(np.arange(d), idx)  # the same rows as a boolean mask
            arg = (axis, idx)
        elif kind in ("matmul", "rmatmul"):
            k = draw(st.integers(1, 3))
            if kind == "matmul":
                arg = rng.uniform(-1.0, 1.0, size=(cur.shape[-1], k) if draw(st.booleans())
                                  else (cur.shape[-1],))
            else:
                inner = cur.shape[-2] if nd >= 2 else cur.shape[0]
                arg = rng.uniform(-1.0, 1.0, size=(k, inner) if draw(st.booleans())
                                  else (inner,))
        elif kind == "einsum":
            letters = "abcdefgh"[:nd]
            summed = draw(st.sampled_from(letters))
            out = "".join(c for c in letters if c != summed) + "z"
            if draw(st.booleans()):
                out = out[::-1]
            c = rng.uniform(-1.0, 1.0, size=(cur.shape[letters.index(summed)], 2))
            arg = (f"{letters},{summed}z->{out}", c)
        elif kind == "expand":
            axis = draw(st.integers(-nd - 1, nd))
            shape = list(cur.shape)
            shape.insert(axis % (nd + 1), 2)
            arg = (axis, rng.uniform(0.5, 1.5, size=tuple(shape)))
        elif kind in ("concatenate",):
            arg = draw(st.integers(-nd, nd - 1))
        elif kind == "stack":
            arg = draw(st.integers(-nd - 1, nd))
        step = (kind, arg)
        cur = apply(NP, step, cur)
        steps.append(step)
    return {"x": x_shape, "y": y_shape, "start": draw(st.sampled_from(["mul", "sub"])),
            "steps": steps, "seed": int(rng.integers(0, 2**31))}


def _setup(program: dict) -> tuple[Any, list[np.ndarray], np.ndarray, Any]:
    def fn(xp: Any, x: Any, y: Any) -> Any:
        return run(xp, program, x, y)

    rng = np.random.default_rng(program["seed"])
    args = [rng.uniform(-1.0, 1.0, size=program["x"]), rng.uniform(-1.0, 1.0,
                                                                     size=program["y"])]
    tape = tape_of(fn, [program["x"], program["y"]])
    cot = rng.uniform(-1.0, 1.0, size=tape.output_shape)
    return fn, args, cot, tape


@SETTINGS
@given(programs())
def test_random_program_values_match_numpy(program: dict) -> None:
    fn, args, _, tape = _setup(program)
    want = np.asarray(fn(NP, *args), dtype=np.float64)
    assert tape.output_shape == want.shape
    assert_close(tape.value(*args), want, rtol=1e-13, what=str(program["steps"]))


@SETTINGS
@given(programs())
def test_random_program_gradients_match_differences(program: dict) -> None:
    fn, args, cot, tape = _setup(program)
    got = as_list(tape.vjp(tuple(args), cot), 2)
    for g, f in zip(got, central_differences(fn, args, cot), strict=True):
        assert_close(g, f, rtol=2e-6, what=str(program["steps"]))


@pytest.mark.oracle
@SETTINGS
@given(programs())
def test_random_program_gradients_match_jax(program: dict) -> None:
    pytest.importorskip("jax")
    fn, args, cot, tape = _setup(program)
    got = as_list(tape.vjp(tuple(args), cot), 2)
    for g, j in zip(got, jax_vjp(fn, args, cot), strict=True):
        assert_close(g, j, rtol=1e-12, what=str(program["steps"]))
