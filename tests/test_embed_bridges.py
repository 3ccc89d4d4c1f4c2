"""JAX and PyTorch bridges: gradients vs each framework's own autodiff of the same function."""

from __future__ import annotations

import numpy as np
import pytest

import fasttape as ft

# gradients against JAX and PyTorch: under CI a skip (package missing) fails (conftest.py)
pytestmark = pytest.mark.oracle


def model(x, m):
    """Three outputs written once for fasttape, jax.numpy and torch (``m`` is the module)."""
    return [
        m.sin(x[0]) * x[1] + m.exp(x[2]) / 2,
        m.tanh(x[0] * x[2]) - x[1] ** 3 + m.sqrt(x[3] * x[3] + 1.0),
        m.log1p(x[3] ** 2) * m.cos(x[1] - x[2]),
    ]


def model_tape():
    return ft.compile(ft.trace(lambda x: model(x, ft), n_inputs=4))


X0 = np.array([0.3, -1.2, 0.7, 0.4])
W = np.array([0.7, -2.0, 1.3])


# ---------------------------------------------------------------------------- JAX
@pytest.fixture
def jax_x64():
    jax = pytest.importorskip("jax")
    with jax.enable_x64(True):
        yield jax


def test_jax_values_and_vjp_match_jax_autodiff(jax_x64):
    jax = jax_x64
    jnp = jax.numpy
    from fasttape.embed.jax_bridge import to_jax

    f = to_jax(model_tape())

    def native(x):
        return jnp.stack(model(x, jnp))

    x = jnp.asarray(X0)
    np.testing.assert_allclose(f(x), native(x), rtol=1e-14)
    w = jnp.asarray(W)
    g_ft = jax.grad(lambda x: jnp.dot(w, f(x)))(x)
    g_jax = jax.grad(lambda x: jnp.dot(w, native(x)))(x)
    np.testing.assert_allclose(g_ft, g_jax, rtol=1e-13)
    # Under jit, and through jax.jacrev (one VJP per output row).
    np.testing.assert_allclose(jax.jit(jax.grad(lambda x: jnp.dot(w, f(x))))(x), g_jax,
                               rtol=1e-13)
    np.testing.assert_allclose(jax.jacrev(f)(x), jax.jacrev(native)(x), rtol=1e-13)


def test_jax_vmap_and_scalar_output(jax_x64):
    jax = jax_x64
    jnp = jax.numpy
    from fasttape.embed.jax_bridge import to_jax

    tape = ft.compile(ft.trace(lambda x: model(x, ft)[1], n_inputs=4))
    f = to_jax(tape)
    xs = jnp.asarray(np.stack([X0, X0 * 0.5, -X0]))
    assert f(xs[0]).shape == ()
    got = jax.vmap(jax.value_and_grad(f))(xs)
    want = jax.vmap(jax.value_and_grad(lambda x: model(x, jnp)[1]))(xs)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-14)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-13)


def test_jax_float32_and_errors():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from fasttape.embed.jax_bridge import to_jax

    f = to_jax(model_tape())
    x32 = jnp.asarray(X0, dtype=jnp.float32)
    y = f(x32)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, model_tape().value(X0), rtol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        f(jnp.ones(3))
    with pytest.raises(TypeError, match="floating dtype"):
        f(jnp.ones(4, dtype=jnp.int32))
    with pytest.raises(TypeError, match=r"expects a fasttape\.Tape"):
        to_jax(ft.Graph())


# ---------------------------------------------------------------------------- PyTorch
def test_torch_backward_matches_torch_autodiff():
    torch = pytest.importorskip("torch")
    from fasttape.embed.torch_bridge import to_torch

    f = to_torch(model_tape())
    xb = torch.tensor(np.stack([X0, 0.5 * X0 + 0.1]), dtype=torch.float64, requires_grad=True)
    w = torch.tensor(W)
    (f(xb) @ w).sum().backward()
    xn = xb.detach().clone().requires_grad_(True)
    native = torch.stack(model(xn.T, torch)).T
    (native @ w).sum().backward()
    np.testing.assert_allclose(f(xb).detach(), native.detach(), rtol=1e-14)
    np.testing.assert_allclose(xb.grad, xn.grad, rtol=1e-13)


def test_torch_gradcheck_inside_a_model():
    torch = pytest.importorskip("torch")
    from fasttape.embed.torch_bridge import to_torch

    f = to_torch(ft.compile(ft.trace(lambda x: model(x, ft)[0], n_inputs=4)))
    lin = torch.nn.Linear(3, 4).double()
    z = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def net(z):
        return f(torch.tanh(lin(z))).sum()

    assert torch.autograd.gradcheck(lambda z: f(torch.tanh(lin(z))), (z.requires_grad_(True),))
    net(z).backward()  # parameters of the torch layer before the tape get gradients
    assert lin.weight.grad is not None and torch.all(torch.isfinite(lin.weight.grad))


def test_torch_dtypes_and_errors():
    torch = pytest.importorskip("torch")
    from fasttape.embed.torch_bridge import to_torch

    f = to_torch(model_tape())
    x32 = torch.tensor(X0, dtype=torch.float32, requires_grad=True)
    y = f(x32)
    assert y.dtype == torch.float32 and y.shape == (3,)
    y.sum().backward()
    assert x32.grad.dtype == torch.float32
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        f(torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        f(torch.ones(4, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        f(X0)
