"""Shared helpers of the tensor tests: the same function on NumPy arrays, traced tensors and JAX.

A test case is written once as ``fn(xp, *args)`` where ``xp`` is a NumPy-like namespace:
:data:`NP` (NumPy itself, with SciPy-style ``logsumexp``/``softmax``) for plain arrays, and
for traced tensors too (NumPy's protocols dispatch them), except that ``logsumexp`` and
``softmax`` are fasttape's there (:data:`FT`); :func:`jax_namespace` gives ``jax.numpy``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import fasttape as ft


def _np_logsumexp(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def _np_softmax(x: Any, axis: Any = -1) -> Any:
    return np.exp(x - _np_logsumexp(x, axis=axis, keepdims=True))


class _Namespace:
    """``module`` with a few attributes replaced."""

    def __init__(self, module: Any, **overrides: Any) -> None:
        self._module = module
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._module, name)


NP = _Namespace(np, logsumexp=_np_logsumexp, softmax=_np_softmax)
FT = _Namespace(np, logsumexp=ft.logsumexp, softmax=ft.softmax)


def jax_namespace() -> Any:
    """``jax.numpy`` (float64 enabled) with ``logsumexp``/``softmax`` from ``jax.nn``."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    return _Namespace(jnp, logsumexp=jax.nn.logsumexp, softmax=jax.nn.softmax)


def tape_of(fn: Any, shapes: list[Any], params: list[Any] | None = None) -> ft.TensorTape:
    """The tensor tape of ``fn(FT, *inputs)``."""
    return ft.compile(ft.trace(lambda *a: fn(FT, *a), shapes=shapes, params=params))


def jax_vjp(fn: Any, args: list[np.ndarray], cot: np.ndarray) -> list[np.ndarray]:
    """``cot`` times the Jacobian of ``fn(jnp, *args)``, by JAX, one array per argument."""
    import jax

    xp = jax_namespace()
    out, pullback = jax.vjp(lambda *a: fn(xp, *a), *[np.asarray(a) for a in args])
    return [np.asarray(g) for g in pullback(np.asarray(cot, dtype=np.float64).reshape(
        np.shape(out)))]


def central_differences(fn: Any, args: list[np.ndarray], cot: np.ndarray,
                        h: float = 1e-6) -> list[np.ndarray]:
    """``cot . d fn(NP, *args) / d args`` by central differences."""
    out = []
    for k, a in enumerate(args):
        g = np.zeros(a.shape)
        for idx in np.ndindex(*a.shape):
            hi = [b.copy() for b in args]
            lo = [b.copy() for b in args]
            hi[k][idx] += h
            lo[k][idx] -= h
            g[idx] = np.sum(cot * (np.asarray(fn(NP, *hi)) - np.asarray(fn(NP, *lo)))) / (2 * h)
        out.append(g)
    return out


def as_list(grads: Any, n: int) -> list[np.ndarray]:
    """A tape's gradient (one array, or a tuple for several arguments) as a list."""
    return [grads] if n == 1 else list(grads)


def assert_close(actual: Any, expected: Any, rtol: float = 1e-12, what: str = "") -> None:
    """Equal to ``rtol`` relative to the largest magnitude of ``expected`` (NaN equal to NaN)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected,
                                                                        dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    finite = np.isfinite(expected)
    scale = float(np.max(np.abs(expected[finite]), initial=1.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale,
                               equal_nan=True, err_msg=what)
