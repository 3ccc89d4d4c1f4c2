"""A tape as a differentiable JAX function (``jax.pure_callback`` + ``jax.custom_vjp``).

The tape runs on the host through a callback, so the function works under ``jax.jit``,
``jax.grad``, ``jax.vjp`` and ``jax.vmap`` (one callback per batch element), on CPU or with
host round trips on an accelerator.  The reverse pass is one fasttape reverse sweep seeded with
the cotangent of every output (:func:`fasttape.embed.numba_api.vjp`).  Second derivatives
through the bridge are not supported (JAX refuses to differentiate a callback).

JAX computes in float32 unless ``jax_enable_x64`` is set; the tape always computes in float64
and the result is cast to the input's dtype, so enable x64 for full precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fasttape.embed.numba_api import vjp

# Any tape will do: this module uses only the record's interface.
from fasttape.tape import TapeRecord as Tape

__all__ = ["to_jax"]


def to_jax(tape: Tape) -> Callable[[Any], Any]:
    """Wrap ``tape`` as a JAX function of one array ``x`` of shape ``(n_inputs,)``.

    Parameters
    ----------
    tape : Tape
        Evaluated on the host in float64, one point per callback; its gradient is one
        reverse sweep seeded with the cotangent of every output.

    Returns
    -------
    callable
        ``f(x)``: a scalar for a single-output tape, shape ``(n_outputs,)`` otherwise, with a
        custom VJP.  ``x`` must have a floating dtype; the output has the same dtype.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, fasttape as ft
    >>> tape = ft.compile(ft.trace(lambda x: x[0] * ft.sin(x[1]), n_inputs=2))
    >>> f = to_jax(tape)
    >>> with jax.enable_x64(True):
    ...     print(jax.grad(lambda x: f(x) ** 2)(jnp.array([2.0, 0.5])))
    [0.91939539 3.36588394]
    """
    if not isinstance(tape, Tape):
        raise TypeError(f"to_jax() expects a fasttape.Tape, got {type(tape).__name__}")
    n_in, n_out = tape.n_inputs, tape.n_outputs
    scalar = n_out == 1

    def host_values(x: np.ndarray) -> np.ndarray:
        out = np.empty(n_out)
        tape.value(np.asarray(x, dtype=np.float64), out=out)
        return out.astype(x.dtype)

    def host_vjp(x: np.ndarray, cot: np.ndarray) -> np.ndarray:
        g = vjp(tape, np.asarray(x, dtype=np.float64), np.asarray(cot, dtype=np.float64))
        return g.astype(x.dtype)

    def check(x: Any) -> Any:
        x = jnp.asarray(x)
        if x.shape != (n_in,):
            raise ValueError(
                f"the fasttape function takes x of shape ({n_in},); got shape {x.shape} "
                "(use jax.vmap for a batch)"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        return x

    def values(x: Any) -> Any:
        spec = jax.ShapeDtypeStruct((n_out,), x.dtype)
        y = jax.pure_callback(host_values, spec, x, vmap_method="sequential")
        return y[0] if scalar else y

    @jax.custom_vjp
    def f(x: Any) -> Any:
        return values(x)

    def f_fwd(x: Any) -> tuple[Any, Any]:
        return values(x), x

    def f_bwd(x: Any, cot: Any) -> tuple[Any]:
        cot = jnp.reshape(cot, (n_out,)).astype(x.dtype)
        spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
        return (jax.pure_callback(host_vjp, spec, x, cot, vmap_method="sequential"),)

    f.defvjp(f_fwd, f_bwd)

    def call(x: Any) -> Any:
        return f(check(x))

    call.__doc__ = f"fasttape tape with {n_in} inputs and {n_out} outputs, as a JAX function."
    return call
