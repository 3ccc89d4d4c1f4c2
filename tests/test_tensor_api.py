"""Tensor tapes beyond one gradient: batches, Jacobians, files."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import fasttape as ft


def _mlp(params, X, y):
    logits = np.tanh(X @ params["W"] + params["b"]) @ params["V"]
    return ft.mean(ft.logsumexp(logits, axis=1) - logits[np.arange(len(y)), y])


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(3, 5)), "b": rng.normal(size=5),
              "V": rng.normal(size=(5, 4))}
    X, y = rng.normal(size=(20, 3)), rng.integers(0, 4, 20)
    tape = ft.compile(ft.trace(_mlp, shapes=[{k: v.shape for k, v in params.items()}],
                               params=[X.shape, y.shape]))
    return tape, params, X, y


# ------------------------------------------------------------------------------- batches


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_rows_are_single_calls(threads: int) -> None:
    tape = ft.compile(ft.trace(lambda x: np.sum(np.sin(x) * x[::-1]), shapes=[(6,)]))
    X = np.random.default_rng(1).normal(size=(9, 6))
    v, G = tape.value_and_grad(X, threads=threads)
    assert v.shape == (9,) and G.shape == (9, 6)
    for b in range(9):
        vb, gb = tape.value_and_grad(X[b])
        assert v[b] == vb
        np.testing.assert_array_equal(G[b], gb)
    np.testing.assert_array_equal(tape.value(X, threads=threads), v)
    np.testing.assert_array_equal(tape.grad(X, threads=threads), G)


def test_batch_of_nested_arguments_with_shared_and_batched_parameters(mlp) -> None:
    tape, params, X, y = mlp
    B = 3
    batch = {k: np.stack([v * (1 + 0.1 * b) for b in range(B)]) for k, v in params.items()}
    v, g = tape.value_and_grad(batch, p=(X, y))  # parameters shared by every point
    assert v.shape == (B,) and set(g) == set(params)
    for b in range(B):
        vb, gb = tape.value_and_grad({k: a[b] for k, a in batch.items()}, p=(X, y))
        assert v[b] == vb
        for k in params:
            np.testing.assert_array_equal(g[k][b], gb[k])
    Xs = np.stack([X, 2 * X, 3 * X])
    ys = np.stack([y, y[::-1], (y + 1) % 4])
    v2, _ = tape.value_and_grad(batch, p=(Xs, ys))  # one parameter set per point
    assert v2[2] == tape.value({k: a[2] for k, a in batch.items()}, p=(3 * X, (y + 1) % 4))


def test_not_a_batch_names_the_wrong_leaf() -> None:
    tape = ft.compile(ft.trace(lambda x: np.sum(x), shapes=[(4,)]))
    with pytest.raises(ValueError, match=r"argument\[0\] has shape \(3, 5\), expected \(4,\)"):
        tape.value(np.ones((3, 5)))
    with pytest.raises(ValueError, match="threads=0 is out of range"):
        tape.value(np.ones((3, 4)), threads=0)


# ------------------------------------------------------------------------------- Jacobians


def test_jacobian_of_a_tensor_output() -> None:
    W = np.random.default_rng(2).normal(size=(3, 2))
    tape = ft.compile(ft.trace(lambda x, w: np.tanh(x @ w), shapes=[(3,), (3, 2)]))
    x = np.array([0.3, -0.2, 0.5])
    jx, jw = tape.jacobian(x, W)
    assert jx.shape == (2, 3) and jw.shape == (2, 3, 2)
    s = 1 - np.tanh(x @ W) ** 2
    np.testing.assert_allclose(jx, (W * s).T, rtol=1e-14)
    expected_w = np.zeros((2, 3, 2))
    for k in range(2):
        expected_w[k, :, k] = s[k] * x
    np.testing.assert_allclose(jw, expected_w, rtol=1e-14)


def test_jacobian_of_a_scalar_output_is_the_gradient(mlp) -> None:
    tape, params, X, y = mlp
    jac = tape.jacobian(params, p=(X, y))
    grad = tape.grad(params, p=(X, y))
    for k in params:
        np.testing.assert_array_equal(jac[k], grad[k])


# ------------------------------------------------------------------------------- files


def test_save_and_load_round_trip(mlp, tmp_path) -> None:
    tape, params, X, y = mlp
    tape.save(tmp_path / "mlp")  # .npz appended
    again = ft.load(tmp_path / "mlp.npz")
    assert isinstance(again, ft.TensorTape)
    assert repr(again) == repr(tape)
    v1, g1 = tape.value_and_grad(params, p=(X, y))
    v2, g2 = again.value_and_grad(params, p=(X, y))
    assert v1 == v2
    for k in params:
        np.testing.assert_array_equal(g1[k], g2[k])
    with pytest.raises(IndexError, match="used as an index"):  # the label check survives
        again.value(params, p=(X, y + 4))
    with pytest.raises(ValueError, match="grad_mode applies to scalar tapes"):
        ft.load(tmp_path / "mlp.npz", grad_mode="lean")


def _rewrite(src, dst, change) -> None:
    with np.load(src) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    np.savez(dst, **arrays)


@pytest.mark.parametrize(("change", "match"), [
    (lambda a: a.__setitem__("layout", np.array("{not json")), "bad layout"),
    (lambda a: a.__setitem__("layout", np.array(json.dumps({"inputs": []}))), "bad layout"),
    (lambda a: a.__setitem__("fields", a["fields"] + 10**6), "reaches slots|bad matmul"),
    (lambda a: a.__setitem__("kinds", a["kinds"] + 40), "unknown kind"),
    (lambda a: a.__setitem__("op_table", np.array("0" * 16)), "different op table"),
    (lambda a: a.__setitem__("format_version", np.int64(99)), "format version"),
    (lambda a: a.pop("init"), "missing"),
])
def test_hostile_tensor_files_are_refused(mlp, tmp_path, change, match) -> None:
    tape = mlp[0]
    tape.save(tmp_path / "ok.npz")
    _rewrite(tmp_path / "ok.npz", tmp_path / "bad.npz", change)
    with pytest.raises(ft.TapeFormatError, match=match):
        ft.load(tmp_path / "bad.npz")


def test_layout_with_mismatched_tree_is_refused(mlp, tmp_path) -> None:
    tape = mlp[0]
    tape.save(tmp_path / "ok.npz")

    def change(a):
        meta = json.loads(str(a["layout"]))
        meta["in_tree"] = {"kind": "tuple", "keys": [], "children": []}
        a["layout"] = np.array(json.dumps(meta))

    _rewrite(tmp_path / "ok.npz", tmp_path / "bad.npz", change)
    with pytest.raises(ft.TapeFormatError, match="structure does not match"):
        ft.load(tmp_path / "bad.npz")


def test_saved_file_has_no_pickles(mlp, tmp_path) -> None:
    mlp[0].save(tmp_path / "t.npz")
    with zipfile.ZipFile(tmp_path / "t.npz") as z:
        assert sorted(n[:-4] for n in z.namelist()) == sorted(
            ["format_version", "op_table", "kinds", "ops", "at", "fields", "init", "layout"])
    assert os.path.getsize(tmp_path / "t.npz") > 0


# ------------------------------------------------------------------------------- jvp

JVP_CASES = {
    "elementwise": (lambda x: np.sin(x) * x ** 2 + np.exp(-x) / (1.0 + x * x), [(7,)]),
    "fused-chain": (lambda x: np.sum(np.tanh(x) * np.exp(np.tanh(x)) - x ** 3), [(5000,)]),
    "views-and-take": (lambda x: x.T[::-1, 1:] * x[np.array([0, 2, 1])][:, 1:], [(3, 3)]),
    "reductions": (lambda x: np.stack([x.sum(0), x.prod(0), x.max(0), x.min(0), x.mean(0)]),
                   [(4, 3)]),
    "softmax": (lambda x: ft.softmax(x, axis=1) + ft.logsumexp(x, axis=1, keepdims=True),
                [(2, 5)]),
    "matmul": (lambda a, b: np.tanh(a @ b) @ b.T, [(3, 4), (4, 2)]),
    "blas-matmul": (lambda a, b: np.sum((a @ b) ** 2), [(40, 40), (40, 40)]),
    "where-inf": (lambda x: np.where(x > 0, np.sqrt(np.maximum(x, 0.0)), -x), [(6,)]),
    "concatenate": (lambda x, y: np.concatenate([x, 2.0 * y], axis=1), [(2, 3), (2, 1)]),
}


@pytest.mark.parametrize("name", sorted(JVP_CASES))
def test_jvp_is_the_jacobian_times_the_direction(name: str) -> None:
    fn, shapes = JVP_CASES[name]
    tape = ft.compile(ft.trace(fn, shapes=shapes))
    rng = np.random.default_rng(5)
    args = tuple(rng.uniform(0.1, 1.0, s) * rng.choice([-1.0, 1.0], s) for s in shapes)
    dirs = tuple(rng.normal(size=s) for s in shapes)
    value, tangent = tape.jvp(args, dirs)
    np.testing.assert_array_equal(value, tape.value(*args))
    jac = tape.jacobian(*args)
    jac = jac if isinstance(jac, tuple) else (jac,)
    out_nd = len(tape.output_shape)
    expected = sum(np.tensordot(j, d, axes=d.ndim) if d.ndim else j * d
                   for j, d in zip(jac, dirs, strict=True))
    np.testing.assert_allclose(tangent, expected, rtol=1e-12, atol=1e-12)
    assert np.shape(tangent) == tape.output_shape and out_nd == np.ndim(tangent)


def test_jvp_zero_direction_keeps_unselected_infinities_out() -> None:
    tape = ft.compile(ft.trace(lambda x: np.sum(np.where(x > 0, np.log(x), 0.0)),
                               shapes=[(3,)]))
    x = np.array([0.0, 1.0, 2.0])
    _, t = tape.jvp(x, np.array([0.0, 1.0, 1.0]))
    assert t == pytest.approx(1.5)


def test_jvp_checks_the_direction() -> None:
    tape = ft.compile(ft.trace(lambda x: np.sum(x), shapes=[(3,)]))
    with pytest.raises(ValueError, match=r"tangent\[0\] has shape \(2,\), expected \(3,\)"):
        tape.jvp(np.ones(3), np.ones(2))


@pytest.mark.oracle
def test_jvp_against_jax() -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    def f(xp, x, w):
        return xp.sum(xp.tanh(x @ w) * xp.exp(-(x ** 2).sum(axis=1, keepdims=True)))

    tape = ft.compile(ft.trace(lambda x, w: f(np, x, w), shapes=[(5, 3), (3, 4)]))
    rng = np.random.default_rng(6)
    x, w, dx, dw = (rng.normal(size=s) for s in [(5, 3), (3, 4), (5, 3), (3, 4)])
    _, got = tape.jvp((x, w), (dx, dw))
    _, want = jax.jvp(lambda a, b: f(jnp, a, b), (x, w), (dx, dw))
    assert got == pytest.approx(float(want), rel=1e-12)


# ------------------------------------------------------------------------------- hvp, hessian

HVP_CASES = {
    "elementwise": (lambda x: np.sum(np.sin(x) * x ** 2 + np.exp(-x) / (1.0 + x * x)),
                    [(7,)]),
    "fused-chain": (lambda x: np.sum(np.tanh(x) * np.exp(np.tanh(x)) - x ** 3), [(5000,)]),
    "views-take-reductions": (lambda x: np.sum(x.T[::-1] * x[np.array([0, 2, 1])].T)
                              + np.sum(x.max(0) * x.min(1)) + np.prod(x[0]), [(3, 3)]),
    "softmax": (lambda x: np.sum(ft.softmax(x, axis=1) ** 2) + np.sum(ft.logsumexp(x, axis=0)),
                [(2, 5)]),
    "matmul": (lambda a, b: np.sum(np.tanh(a @ b) @ b.T), [(3, 4), (4, 2)]),
    "blas-matmul": (lambda a, b: np.sum(np.sin(a @ b)), [(40, 40), (40, 40)]),
    "gather-by-labels": (lambda w, y: np.sum(np.exp(w)[np.arange(4), y] ** 2), [(4, 3)]),
}


@pytest.mark.parametrize("name", sorted(HVP_CASES))
def test_hvp_against_differences_of_the_gradient(name: str) -> None:
    fn, shapes = HVP_CASES[name]
    params = [(4,)] if name == "gather-by-labels" else None
    tape = ft.compile(ft.trace(fn, shapes=shapes, params=params))
    p = (np.array([2, 0, 1, 2]),) if params else None
    rng = np.random.default_rng(8)
    args = tuple(rng.uniform(0.2, 1.0, s) * rng.choice([-1.0, 1.0], s) for s in shapes)
    dirs = tuple(rng.normal(size=s) for s in shapes)
    got = tape.hvp(args, dirs, p=p)
    got = got if isinstance(got, tuple) else (got,)
    h = 1e-6

    def grad_at(sign: float) -> tuple:
        g = tape.grad(*(a + sign * h * d for a, d in zip(args, dirs, strict=True)), p=p)
        return g if isinstance(g, tuple) else (g,)

    for g, gp, gm in zip(got, grad_at(1.0), grad_at(-1.0), strict=True):
        np.testing.assert_allclose(g, (gp - gm) / (2 * h), rtol=1e-5, atol=1e-6)


def test_hessian_is_symmetric_and_matches_hvp() -> None:
    fn, shapes = HVP_CASES["matmul"]
    tape = ft.compile(ft.trace(fn, shapes=shapes))
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
    (haa, hab), (hba, hbb) = tape.hessian(a, b)
    assert haa.shape == (3, 4, 3, 4) and hab.shape == (3, 4, 4, 2)
    np.testing.assert_allclose(hab, np.transpose(hba, (2, 3, 0, 1)), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(haa.reshape(12, 12), haa.reshape(12, 12).T, atol=1e-14)
    da, db = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
    ha, hb = tape.hvp((a, b), (da, db))
    np.testing.assert_allclose(ha, np.tensordot(haa, da, 2) + np.tensordot(hab, db, 2),
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hb, np.tensordot(hba, da, 2) + np.tensordot(hbb, db, 2),
                               rtol=1e-12, atol=1e-13)


@pytest.mark.oracle
def test_hvp_and_hessian_against_jax() -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    def f(xp, x):
        return xp.sum(xp.tanh(x @ x.T) * xp.exp(-x[:, :1] ** 2)) + xp.prod(x[0]) \
            + xp.max(x) * xp.sum(x ** 3)

    tape = ft.compile(ft.trace(lambda x: f(np, x), shapes=[(3, 3)]))
    rng = np.random.default_rng(10)
    x, v = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    want = jax.jvp(jax.grad(lambda z: f(jnp, z)), (x,), (v,))[1]
    np.testing.assert_allclose(tape.hvp(x, v), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tape.hessian(x), jax.hessian(lambda z: f(jnp, z))(x),
                               rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------- one conversion


def test_every_array_a_tensor_tape_takes_refuses_complex_and_wrong_shapes() -> None:
    # Arguments, batches, tangents and cotangents all go through one conversion (as_leaf):
    # complex values are refused (a cast would drop the imaginary part), shapes named.
    tape = ft.compile(ft.trace(lambda x: np.sin(x) * 2.0, shapes=[(3,)]))
    x = np.ones(3)
    for call, name in [(lambda: tape.value(x + 1j), r"argument\[0\]"),
                       (lambda: tape.value(np.ones((2, 3)) + 1j), r"argument\[0\]"),
                       (lambda: tape.jvp(x, x + 1j), r"tangent\[0\]"),
                       (lambda: tape.vjp(x, x + 1j), "the cotangent")]:
        with pytest.raises(TypeError, match=f"{name} must be an array of real numbers"):
            call()
    with pytest.raises(ValueError, match=r"the cotangent has shape \(2,\), expected \(3,\)"):
        tape.vjp(x, np.ones(2))


def test_a_layout_that_does_not_fit_is_refused_by_the_constructor(mlp) -> None:
    from fasttape.tensor.tree import TreeDef

    tape = mlp[0]
    arrays = tape.to_arrays()
    bad_tree = {**tape.layout(), "in_tree": TreeDef("tuple")}
    with pytest.raises(ValueError, match="argument structure does not match the leaves"):
        ft.TensorTape.from_arrays(arrays, bad_tree)
    inputs = tape.layout()["inputs"]
    negative = {**tape.layout(), "inputs": [(inputs[0][0], (-1, 3)), *inputs[1:]]}
    with pytest.raises(ValueError, match="negative dimension"):
        ft.TensorTape.from_arrays(arrays, negative)
