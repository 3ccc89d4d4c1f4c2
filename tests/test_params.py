"""Parameters: non-differentiated inputs (``Graph.params``, ``ft.trace(..., n_params=k)``, ``p=``).

The oracle is the pure-Python reference (tests/reference.py) run with the parameters loaded
after the inputs, and the tape of the same function with the parameters baked in as constants.
"""

from __future__ import annotations

import io
import math
import pickle
import warnings

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fasttape as ft
from fasttape.ops import OP_BY_NAME
from fasttape.passes import PASS_NAMES
from tests import reference
from tests.test_ops import same
from tests.test_random_graphs import _REF, _TRACED, _run, programs


def same_bits(a, b) -> bool:
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(a.view(np.uint64), b.view(np.uint64))


def model(x, p):
    """A smooth function of 3 inputs and 4 parameters, touching every parameter."""
    return [
        p[0] * ft.sin(x[0] * p[1]) + ft.exp(p[2] * x[1]) * x[2] ** 2 + p[3],
        x[0] * x[1] * p[3] - ft.log1p(p[0] ** 2 + x[2] ** 2),
    ]


def baked(p, **options) -> ft.Tape:
    """The tape of ``model`` with ``p`` as constants."""
    pc = [float(v) for v in p]
    return ft.compile(ft.trace(lambda x: model(x, pc), 3), **options)


@pytest.fixture(scope="module")
def tape() -> ft.Tape:
    return ft.compile(ft.trace(model, 3, n_params=4))


RNG = np.random.default_rng(7)
XS = RNG.normal(size=(6, 3))
PS = RNG.normal(size=(6, 4))


# ---------------------------------------------------------------------- frontend and layout
def test_graph_params_and_trace():
    g = ft.Graph()
    x = g.inputs(2)
    p = g.params(1)
    x2 = g.input()
    g.output(x[0] * p[0] + x[1] - x2)
    assert (g.n_inputs, g.n_params) == (3, 1)
    assert "1 params" in repr(g)
    t = ft.compile(g)
    assert (t.n_inputs, t.n_params) == (3, 1)
    assert t.value([1.0, 2.0, 3.0], p=[5.0]) == 4.0
    np.testing.assert_array_equal(t.grad([1.0, 2.0, 3.0], p=[5.0]), [5.0, 1.0, -1.0])
    assert t.n_slots == 3 + 1 + t.n_consts + t.n_instructions
    assert "1 param," in repr(t)
    assert ft.trace(lambda x: x[0], 1).n_params == 0


def test_trace_passes_the_params_list():
    seen = []

    def fn(x, p):
        seen.append((len(x), len(p)))
        return x[0] * p[1]

    t = ft.compile(ft.trace(fn, 1, n_params=2))
    assert seen == [(1, 2)]
    assert t.value_and_grad([3.0], p=[0.0, 2.0]) == (6.0, pytest.approx([2.0]))


def test_param_index_error_names_n_params():
    with pytest.raises(IndexError, match=r"n_params=2"):
        ft.trace(lambda x, p: x[0] * p[2], 1, n_params=2)
    with pytest.raises(IndexError, match=r"n_inputs=1"):
        ft.trace(lambda x, p: x[1] * p[0], 1, n_params=2)


def test_params_bad_count():
    with pytest.raises(ValueError, match="params"):
        ft.Graph().params(-1)


def test_slot_layout_inputs_params_consts_instructions(tape):
    a = tape.to_arrays()
    assert a["n_inputs"] == 3 and a["n_params"] == 4
    n_lead = 3 + 4
    # Every argument that is a leaf below n_lead is an input or a parameter; constants follow.
    for name in ("ops", "args", "consts", "outputs"):
        assert a[name] is getattr(tape, name)
    assert tape.stats()["n_params"] == 4
    again = ft.Tape.from_arrays(**a)
    assert again.n_params == 4
    x, p = XS[0], PS[0]
    assert same_bits(again.value(x, p=p), tape.value(x, p=p))
    assert min(int(v) for v in tape.args) < n_lead  # instructions read inputs and params
    small = ft.compile(ft.trace(lambda x, p: p[0] * 2.5 + x[0], 1, n_params=1), optimize=False)
    assert small.listing().splitlines()[1:4] == [
        "  %2 = const 2.5", "  %3 = mul(%1, %2)", "  %4 = add(%3, %0)"]


# ---------------------------------------------------------------------- passes keep params
@pytest.mark.parametrize(
    "optimize", [True, False, [], *[[name] for name in PASS_NAMES]],
    ids=lambda o: str(o),
)
def test_passes_do_not_fold_params(optimize):
    g = ft.Graph()
    (x0,) = g.inputs(1)
    (p0,) = g.params(1)
    g.output(p0 * 2.0 + x0)
    t = ft.compile(g, optimize=optimize)
    assert t.value([1.0], p=[3.0]) == 7.0
    assert t.value([1.0], p=[4.0]) == 9.0
    # p0 is still read by an instruction (slot 1), not folded into a constant
    assert 1 in set(t.args.tolist()) or 1 in set(t.outputs.tolist())
    assert t.grad([1.0], p=[4.0]).tolist() == [1.0]


def test_cse_does_not_merge_distinct_params_and_simplify_keeps_them():
    def fn(x, p):
        return (x[0] * p[0] + x[0] * p[1]) + (p[0] - p[0]) * 0.0 + p[1] * 1.0 + (p[2] + 0.0)

    t = ft.compile(ft.trace(fn, 1, n_params=3))
    for p in ([1.0, 2.0, 3.0], [5.0, -1.0, 0.5]):
        assert t.value([2.0], p=p) == 2.0 * p[0] + 2.0 * p[1] + p[1] + p[2]
        assert t.grad([2.0], p=p).tolist() == [p[0] + p[1]]


def test_a_constant_only_op_cannot_take_a_param_slot():
    # powi's exponent must be a constant slot: a parameter slot (1) is refused.
    with pytest.raises(ValueError, match="not a constant slot"):
        ft.Tape.from_arrays([OP_BY_NAME["powi"].code], [0, 1], [2.0], [3], 1, n_params=1)
    ok = ft.Tape.from_arrays([OP_BY_NAME["powi"].code], [0, 2], [2.0], [3], 1, n_params=1)
    assert ok.value([3.0], p=[100.0]) == 9.0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_from_arrays_refuses_a_bad_n_params(bad):
    with pytest.raises(ValueError, match="n_params"):
        ft.Tape.from_arrays([0], [0, 1], [], [2], 1, n_params=bad)


def test_from_arrays_checks_slots_against_n_params():
    with pytest.raises(ValueError, match="not a slot"):
        ft.Tape.from_arrays([0], [0, 2], [], [2], 1, n_params=0)
    t = ft.Tape.from_arrays([0], [0, 1], [], [2], 1, n_params=1)
    assert t.value([1.0], p=[2.5]) == 3.5


# ---------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("k", range(6))
def test_matches_the_reference_and_the_baked_tape(tape, k):
    x, p = XS[k], PS[k]
    for out in range(2):
        rv, rg = reference.value_and_grad(tape, x, output=out, p=p)
        v, gr = tape.value_and_grad(x, p=p, output=out)
        assert same(v, rv)
        assert all(same(a, b) for a, b in zip(gr, rg, strict=True))
        # the same function with p baked in as constants: the same gradient with respect to x
        for optimize in (False, True):
            bv, bg = baked(p, optimize=optimize).value_and_grad(x, output=out)
            np.testing.assert_allclose(v, bv, rtol=1e-15, atol=0)
            np.testing.assert_allclose(gr, bg, rtol=1e-14, atol=1e-300)
    np.testing.assert_array_equal(tape.value(x, p=p), tape(x, p))


def test_bitwise_equal_to_the_baked_tape_without_passes():
    # Unoptimised, both tapes run the same ops in the same order: only where a value comes
    # from (a parameter slot or a constant slot) differs.
    t = ft.compile(ft.trace(model, 3, n_params=4), optimize=False)
    for x, p in zip(XS, PS, strict=True):
        b = baked(p, optimize=False)
        for out in range(2):
            v, gr = t.value_and_grad(x, p=p, output=out)
            bv, bg = b.value_and_grad(x, output=out)
            assert same_bits(v, bv) and same_bits(gr, bg)


def test_gradient_matches_finite_differences(tape):
    x, p = XS[1], PS[1]
    g = tape.grad(x, p=p, output=0)
    h = 1e-6
    for i in range(3):
        e = np.zeros(3)
        e[i] = h
        fd = (tape.value(x + e, p=p)[0] - tape.value(x - e, p=p)[0]) / (2 * h)
        assert abs(fd - g[i]) < 1e-6 * max(1.0, abs(g[i]))


def test_lean_mode_and_grad_out(tape):
    x, p = XS[2], PS[2]
    lean = tape.with_grad_mode("lean")
    assert lean.n_params == 4
    v, g = tape.value_and_grad(x, p=p, output=1)
    lv, lg = lean.value_and_grad(x, p=p, output=1)
    assert same_bits(v, lv) and same_bits(g, lg)
    out = np.empty(3)
    _, got = tape.value_and_grad(x, p=p, output=1, out=out)
    assert got is out and same_bits(out, g)


def test_params_as_inputs_gives_the_param_gradient_too(tape):
    full = tape.params_as_inputs()
    assert (full.n_inputs, full.n_params) == (7, 0)
    assert tape.params_as_inputs() is full  # cached
    x, p = XS[3], PS[3]
    v, g = full.value_and_grad(np.concatenate([x, p]), output=0)
    tv, tg = tape.value_and_grad(x, p=p, output=0)
    assert same_bits(v, tv) and same_bits(g[:3], tg)
    assert g.shape == (7,)


@settings(max_examples=150, deadline=None)
@given(programs(), st.data())
def test_random_programs_with_params(prog, data):
    n_leaves, steps, outputs, leaves = prog
    n_x = data.draw(st.integers(0, n_leaves))
    g = ft.Graph()
    xs = g.inputs(n_x)
    ps = g.params(n_leaves - n_x)
    traced = _run(steps, xs + ps, _TRACED)
    g.output([traced[i] for i in outputs])
    t = ft.compile(g)
    x, p = leaves[:n_x], leaves[n_x:]
    pp = p or None  # a tape without parameters refuses any p, even an empty one
    expected = [_run(steps, leaves, _REF)[i] for i in outputs]
    got = np.atleast_1d(t.value(x, p=pp))
    for a, b in zip(got, expected, strict=True):
        assert same(float(a), float(b)), (a, b, steps)
    for k in range(t.n_outputs):
        rv, rg = reference.value_and_grad(t, x, output=k, p=p)
        v, gr = t.value_and_grad(x, p=pp, output=k)
        assert same(v, rv)
        assert all(same(a, b) for a, b in zip(gr, rg, strict=True)), (list(gr), rg)


# ---------------------------------------------------------------------- batches
def test_batches_vary_x_p_or_both(tape):
    def loop(xs, ps):
        vals = np.array([tape.value(a, p=b) for a, b in zip(xs, ps, strict=True)])
        vg = [tape.value_and_grad(a, p=b, output=0) for a, b in zip(xs, ps, strict=True)]
        return vals, np.array([v for v, _ in vg]), np.array([g for _, g in vg])

    cases = {
        "both": (XS, PS, XS, PS),
        "x only": (XS, PS[0], XS, [PS[0]] * len(XS)),
        "p only": (XS[0], PS, [XS[0]] * len(PS), PS),
    }
    for name, (x, p, xs, ps) in cases.items():
        vals, v0, g0 = loop(xs, ps)
        assert same_bits(tape.value(x, p=p), vals), name
        v, gr = tape.value_and_grad(x, p=p, output=0)
        assert same_bits(v, v0) and same_bits(gr, g0), name
        assert gr.shape == (len(xs), 3)
        out = np.empty((len(xs), 3))
        assert tape.grad(x, p=p, output=0, out=out) is out and same_bits(out, g0)
        assert same_bits(tape.value(x, p=p, threads=1), vals)


def test_batch_rows_must_agree(tape):
    with pytest.raises(ValueError, match="rows"):
        tape.value(XS[:3], p=PS[:4])
    with pytest.raises(ValueError, match="out"):
        tape.value_and_grad(XS, p=PS, output=0, out=np.empty((len(XS), 7)))


# ---------------------------------------------------------------------- bad p
def test_missing_p_is_refused(tape):
    for call in (tape.value, tape.grad, tape.value_and_grad, tape.hessian, tape.jacobian):
        with pytest.raises(TypeError, match="4 parameters: pass p="):
            call(XS[0])


@pytest.mark.parametrize("p", [[1.0, 2.0], np.zeros(5), np.zeros((2, 3)), np.zeros((1, 1, 4))])
def test_wrong_p_shape_is_refused(tape, p):
    with pytest.raises(ValueError, match="p "):
        tape.value(XS[0], p=p)


@pytest.mark.parametrize("p", ["abcd", [None] * 4, [[1.0], [1.0, 2.0]]])
def test_non_numeric_p_is_refused(tape, p):
    with pytest.raises(TypeError, match="p must be"):
        tape.value(XS[0], p=p)


def test_p_given_to_a_tape_without_params_is_refused():
    t = ft.compile(ft.trace(lambda x: x[0] * x[1], 2))
    assert t.n_params == 0
    for call in (t.value, t.grad, t.jvp.__func__):
        with pytest.raises(TypeError, match="no parameters"):
            if call is t.jvp.__func__:
                t.jvp([1.0, 2.0], [1.0, 0.0], p=[1.0])
            else:
                call([1.0, 2.0], p=[1.0])
    # and without p it behaves as before
    assert t.value_and_grad([2.0, 3.0])[0] == 6.0


def test_interfaces_without_p_refuse_a_params_tape(tape):
    with pytest.raises(TypeError, match="parameters"):
        tape.as_input(XS[0])


# ---------------------------------------------------------------------- derivatives
def test_derivatives_take_p(tape):
    x, p = XS[4], PS[4]
    full = tape.params_as_inputs()
    xp = np.concatenate([x, p])
    v = np.array([0.3, -1.0, 2.0])
    vp = np.concatenate([v, np.zeros(4)])
    w = np.array([1.5, -0.5])
    assert same_bits(tape.jvp(x, v, p=p)[1], full.jvp(xp, vp)[1])
    assert same_bits(tape.vjp(x, w, p=p)[1], full.vjp(xp, w)[1][:3])
    jf = full.jacobian(xp, mode="reverse")[:, :3]
    assert same_bits(tape.jacobian(x, p=p, mode="reverse"), jf)
    np.testing.assert_allclose(tape.jacobian(x, p=p, mode="forward"), jf, rtol=1e-14)
    jff = full.jacobian(xp, mode="forward")[:, :3]
    assert same_bits(tape.jacobian(x, p=p, mode="forward"), jff)
    for out in range(2):
        assert same_bits(tape.hvp(x, v, p=p, output=out), full.hvp(xp, vp, output=out)[:3])
        h = tape.hessian(x, p=p, output=out)
        np.testing.assert_array_equal(h, h.T)
        np.testing.assert_allclose(h, full.hessian(xp, output=out)[:3, :3], rtol=1e-13, atol=1e-15)
        bh = baked(p, optimize=False).hessian(x, output=out)
        np.testing.assert_allclose(h, bh, rtol=1e-13, atol=1e-15)
        for chunk in (1, 2):
            np.testing.assert_array_equal(tape.hessian(x, p=p, output=out, chunk=chunk),
                                          full.hessian(xp, output=out, chunk=chunk)[:3, :3])


def test_derivative_batches_with_params(tape):
    jb = tape.jacobian(XS[:3], p=PS[0])
    assert jb.shape == (3, 2, 3)
    for i in range(3):
        assert same_bits(jb[i], tape.jacobian(XS[i], p=PS[0]))
    hb = tape.hessian(XS[0], p=PS[:3], output=1)
    for i in range(3):
        assert same_bits(hb[i], tape.hessian(XS[0], p=PS[i], output=1))
    hv = tape.hvp(XS[:2], [1.0, 0.0, 0.0], p=PS[:2], output=0)
    assert hv.shape == (2, 3)


def test_positional_p(tape):
    x, p = XS[0], PS[0]
    assert same_bits(tape.value(x, p), tape.value(x, p=p))
    assert same_bits(tape.value_and_grad(x, p, output=0)[1], tape.grad(x, p=p, output=0))
    assert same_bits(tape.hvp(x, [1.0, 0, 0], p, output=0), tape.hvp(x, [1.0, 0, 0], p=p, output=0))


# ---------------------------------------------------------------------- checkpointing
def test_checkpointed_tape_with_params():
    def chain(x, p):
        v = x[0]
        for i in range(200):
            v = ft.sin(v * p[i % 3] + x[1])
        return v

    t = ft.compile(ft.trace(chain, 2, n_params=3))
    with warnings.catch_warnings():  # a budget below the smallest plan: warned, still segmented
        warnings.simplefilter("ignore")
        c = ft.compile(ft.trace(chain, 2, n_params=3), memory_limit=2000)
    assert c.plan is not None  # segmented
    x, p = [0.3, 0.1], [0.9, 1.1, -0.7]
    v, g = c.value_and_grad(x, p=p)
    tv, tg = t.value_and_grad(x, p=p)
    assert same_bits(v, tv) and same_bits(g, tg) and g.shape == (2,)
    assert same_bits(c.value(x, p=p), tv)
    with pytest.raises(TypeError, match="pass p="):
        c.value_and_grad(x)
    with pytest.raises(ValueError, match="one point"):
        c.value_and_grad(x, p=[p, p])


# ---------------------------------------------------------------------- files
def test_save_load_and_pickle(tape, tmp_path):
    tape.save(tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as data:
        assert int(data["format_version"]) == ft.FORMAT_VERSION == 2
        assert int(data["n_params"]) == 4
    for t2 in (ft.load(tmp_path / "t.npz"), pickle.loads(pickle.dumps(tape))):
        assert t2.n_params == 4
        assert same_bits(t2.value(XS[0], p=PS[0]), tape.value(XS[0], p=PS[0]))


def _npz(arrays) -> io.BytesIO:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    return buf


def test_version_1_files_load_and_cannot_hold_params(tape, tmp_path):
    plain = ft.compile(ft.trace(lambda x: x[0] * x[1] + 1.0, 2))
    plain.save(tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as data:
        a = {k: data[k] for k in data.files}
    v1 = {k: v for k, v in a.items() if k != "n_params"}
    v1["format_version"] = np.int64(1)
    old = ft.load(_npz(v1))  # a file written before parameters existed
    assert old.n_params == 0 and old.value([2.0, 3.0]) == 7.0
    with pytest.raises(ft.TapeFormatError, match="version 1 tape cannot have parameters"):
        ft.load(_npz({**v1, "n_params": np.int64(1)}))
    v2 = {k: v for k, v in a.items() if k != "n_params"}
    with pytest.raises(ft.TapeFormatError, match="must hold n_params"):
        ft.load(_npz(v2))
    with pytest.raises(ft.TapeFormatError, match="n_params must be an integer"):
        ft.load(_npz({**a, "n_params": np.float64(1.0)}))


# ---------------------------------------------------------------------- embedding
def test_numba_kernel_with_params(tape):
    x, p = XS[5], PS[5]
    v, g = tape.value_and_grad(x, p=p, output=1)
    fn, arrays = tape.numba_kernel(output=1)
    grad = np.empty(3)
    assert same_bits(fn(*arrays, x, p, grad), v) and same_bits(grad, g)
    lean_fn, lean_arrays = tape.with_grad_mode("lean").numba_kernel(output=1)
    assert same_bits(lean_fn(*lean_arrays, x, p, grad), v) and same_bits(grad, g)
    fn, arrays = tape.numba_kernel("value", output=1)
    assert same_bits(fn(*arrays, x, p), v)
    fn, arrays = tape.numba_kernel("values")
    out = np.empty(2)
    fn(*arrays, x, p, out)
    assert same_bits(out, tape.value(x, p=p))
    fn, arrays = tape.numba_kernel("vjp")
    cot = np.array([0.0, 1.0])
    fn(*arrays, x, p, cot, grad)
    assert same_bits(grad, g)

    @numba.njit
    def inside(fn, arrays, x, p, grad):
        return fn(*arrays, x, p, grad)

    fn, arrays = tape.numba_kernel(output=1)
    assert same_bits(inside(fn, arrays, x, p, grad), v)
    with pytest.raises(ValueError, match="p has 3 entries, expected 4"):
        fn(*arrays, x, p[:3], grad)
    with pytest.raises(ValueError, match="grad has 7 entries"):
        fn(*arrays, x, p, np.empty(7))


def test_numba_wrappers_refuse_a_mismatched_meta(tape):
    plain = ft.compile(ft.trace(lambda x: x[0] * 2.0, 1))
    fn_plain, _ = plain.numba_kernel()
    _, arrays = tape.numba_kernel(output=0)
    with pytest.raises(ValueError, match="disagree on whether the tape has parameters"):
        fn_plain(*arrays[:8], XS[0], np.empty(3))


@pytest.mark.parametrize("reentrant", [False, True])
def test_cfunc_keeps_params_in_the_context(tape, reentrant):
    x = np.ascontiguousarray(XS[0])
    f, grad = np.empty(1), np.empty(3)
    cf = tape.cfunc(output=1, p=PS[0], reentrant=reentrant)
    assert same_bits(cf.params, PS[0])
    for p in (PS[0], PS[1]):
        cf.set_params(p)
        cf.value_and_grad_ctypes(x.ctypes.data, f.ctypes.data, grad.ctypes.data)
        v, g = tape.value_and_grad(x, p=p, output=1)
        assert same_bits(f[0], v) and same_bits(grad, g)
        assert same_bits(cf.value_ctypes(3, x.ctypes.data, cf.user_data), v)
    with pytest.raises(TypeError, match="pass p="):
        tape.cfunc(output=1)
    with pytest.raises(ValueError, match="p has shape"):
        cf.set_params([1.0])


def test_scipy_args_pass_the_params():
    so = pytest.importorskip("scipy.optimize")
    from fasttape.embed import scipy_opt

    m = 6

    def sq(x, p):
        return ft.sum((x[0] * p[2 * i] + x[1] * p[2 * i + 1] - p[2 * m + i]) ** 2
                      for i in range(m))

    t = ft.compile(ft.trace(sq, 2, n_params=3 * m))
    rng = np.random.default_rng(3)
    for w in ([1.5, -2.0], [0.25, 4.0]):  # two data sets, one tape
        X = rng.normal(size=(m, 2))
        p = np.concatenate([X.ravel(), X @ w])
        r = so.minimize(t.value_and_grad, np.zeros(2), jac=True, args=(p,), method="BFGS")
        np.testing.assert_allclose(r.x, w, atol=1e-5)
        r = scipy_opt.minimize(t, np.zeros(2), p=p, method="trust-ncg")
        np.testing.assert_allclose(r.x, w, atol=1e-6)


def test_explain_names_a_param():
    t = ft.compile(ft.trace(lambda x, p: ft.log(p[0]) * x[0] + p[1], 1, n_params=2))
    e = t.explain([1.0], p=[-1.0, 0.0])
    assert not e.finite and e.op == "log"
    assert "param 0" in str(e)
    assert t.explain([1.0], p=[1.0, 0.0]).finite
    with pytest.raises(TypeError, match="pass p="):
        t.explain([1.0])
    assert math.isnan(t.value([1.0], p=[-1.0, 0.0]))


def test_optimize_and_dot_know_params(tape):
    from fasttape.passes.pipeline import optimize

    raw = ft.compile(ft.trace(model, 3, n_params=4), optimize=False)
    opt = optimize(raw)
    assert opt.n_params == 4
    for x, p in zip(XS, PS, strict=True):
        assert same_bits(opt.value(x, p=p), raw.value(x, p=p))
    g = ft.trace(lambda x, p: p[0] * x[0] + 1.0, 1, n_params=1)
    assert 'label="p0"' in g.to_dot()
    assert 'label="p0"' in ft.compile(g).to_dot()


def test_a_tape_with_a_slot_reuse_plan():
    # Past reuse.MIN_SLOTS the default passes add a slot-reuse plan, computed with the
    # parameters as leading slots; value and the stored gradient run on it.
    n = 20_000

    def chain(x, p):
        return ft.sum(ft.sin(x[i] * p[i % 3] + p[3]) * x[i + 1] for i in range(n - 1))

    t = ft.compile(ft.trace(chain, n, n_params=4))
    assert t.reuse_plan is not None
    plain = ft.compile(ft.trace(chain, n, n_params=4), optimize=False)
    rng = np.random.default_rng(2)
    x, p = rng.normal(size=n), rng.normal(size=4)
    np.testing.assert_allclose(t.value(x, p=p), plain.value(x, p=p), rtol=1e-12)
    v, g = t.value_and_grad(x, p=p)
    pv, pg = plain.value_and_grad(x, p=p)
    np.testing.assert_allclose(v, pv, rtol=1e-12)
    np.testing.assert_allclose(g, pg, rtol=1e-12, atol=1e-12)
    vb, gb = t.value_and_grad(np.stack([x, -x]), p=p)
    assert same_bits(vb[0], v) and same_bits(gb[0], g)
    p2 = p + 0.5
    assert same_bits(vb[1], t.value(-x, p=p)) and not same_bits(t.value(x, p=p2), v)


def test_explain_with_recorded_sources_and_params():
    def fn(x, p):
        a = x[0] * p[0]
        return ft.sqrt(a - p[1])  # the NaN

    t = ft.compile(ft.trace(fn, 1, n_params=2, record_source=True))
    e = t.explain([1.0], p=[1.0, 5.0])
    assert not e.finite and e.op == "sqrt" and e.source is not None
    assert e.source[2] == "fn"
    assert "param 1" in str(t.explain([1.0], p=[1.0, math.nan]))


def test_lower_level_batch_functions_refuse_a_params_tape(tape):
    from fasttape import batch

    with pytest.raises(TypeError, match="parameters"):
        batch.value(tape, XS)
    with pytest.raises(TypeError, match="parameters"):
        batch.value_and_grad(tape, XS, 0)
    full = tape.params_as_inputs()
    assert same_bits(batch.value(full, tape.join_params(XS, PS)), tape.value(XS, p=PS))


# ---------------------------------------------------------------------- ft.scan with data
def _damped(s, p, d):
    # state (position, velocity); params: stiffness; data: a forcing term per call
    return [s[0] + 0.1 * s[1], s[1] - 0.1 * (p[0] * s[0] + d[0] * s[1]) + 0.01 * d[1]]


def test_scan_data_is_not_differentiated():
    sc = ft.scan(_damped, 50, n_state=2, n_params=1, n_data=2,
                 final=lambda s, p, d: s[0] ** 2 + d[1] * s[1], snapshots=4)
    # the same scan with the data as differentiated parameters: same value, same gradients
    both = ft.scan(lambda s, p: _damped(s, p[:1], p[1:]), 50, n_state=2, n_params=3,
                   final=lambda s, p: s[0] ** 2 + p[2] * s[1], snapshots=4)
    x0 = [1.0, 0.0]
    for d in ([0.2, 1.0], [0.5, -2.0]):  # two data sets, one trace
        v, gx, gp = sc.value_and_grad(x0, [3.0], data=d)
        bv, bgx, bgp = both.value_and_grad(x0, [3.0, *d])
        assert same_bits(v, bv) and same_bits(gx, bgx) and same_bits(gp, bgp[:1])
        assert gp.shape == (1,)
        assert same_bits(sc.value(x0, [3.0], data=d), v)
        assert same_bits(sc.final_state(x0, [3.0], data=d), both.final_state(x0, [3.0, *d]))
    assert "2 data" in repr(sc) and sc.stats()["n_data"] == 2
    with pytest.raises(TypeError, match="pass data="):
        sc.value(x0, [3.0])
    with pytest.raises(ValueError, match="data must have shape"):
        sc.value(x0, [3.0], data=[1.0])
    with pytest.raises(TypeError, match="no data"):
        both.value(x0, [3.0, 0.2, 1.0], data=[1.0])
