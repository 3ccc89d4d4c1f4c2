"""Sparse Jacobians and Hessians: patterns, coloring, compressed evaluation (fasttape.sparse)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fasttape as ft
from fasttape import sparse
from fasttape.ops import OP_BY_NAME
from tests.test_random_graphs import random_tapes

sp = pytest.importorskip("scipy.sparse")


def dense(pattern) -> np.ndarray:
    return pattern.toarray().astype(bool)


# ---------------------------------------------------------------------- independent checker
def check_distance2(pattern, colors: np.ndarray) -> None:
    """Columns of one color share no row: computed from P^T P, not from the kernel's loops."""
    p = sp.csr_matrix(pattern, dtype=np.int64)
    p.data[:] = 1
    overlap = (p.T @ p).tocoo()
    clash = (overlap.row != overlap.col) & (colors[overlap.row] == colors[overlap.col])
    assert not clash.any(), (
        f"columns {overlap.row[clash][0]} and {overlap.col[clash][0]} share a row and a color")
    empty = np.diff(sp.csc_matrix(pattern).indptr) == 0
    assert (colors[~empty] >= 0).all() and (colors[empty] == -1).all()


def check_star(pattern, colors: np.ndarray, brute: bool = False) -> None:
    """Star coloring: adjacent columns differ, and every entry ``(i, j)`` has ``j``'s color
    alone in row ``i`` or ``i``'s color alone in row ``j`` (direct symmetric recovery).  With
    ``brute``, also no path on 4 vertices with 2 colors (small patterns only)."""
    a = sp.csr_matrix(pattern).toarray() != 0
    n = a.shape[0]
    off = a & ~np.eye(n, dtype=bool)
    i, j = np.nonzero(off)
    assert (colors[i] != colors[j]).all(), "adjacent columns share a color"
    for r, c in zip(*np.nonzero(a), strict=True):
        alone_r = np.count_nonzero(a[r] & (colors == colors[c])) == 1
        alone_c = np.count_nonzero(a[c] & (colors == colors[r])) == 1
        assert alone_r or alone_c, f"entry ({r}, {c}) is determined by neither row"
    if brute:
        for v0, v1 in zip(i, j, strict=True):
            for v2 in np.nonzero(off[v1])[0]:
                for v3 in np.nonzero(off[v2])[0]:
                    if len({v0, v1, v2, v3}) == 4:
                        assert len({colors[v0], colors[v1], colors[v2], colors[v3]}) >= 3, (
                            f"two-colored path {v0}-{v1}-{v2}-{v3}")


def test_checker_catches_a_bad_coloring():
    pat = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1]]))
    check_distance2(pat, np.array([0, 1, 0]))
    with pytest.raises(AssertionError, match="share a row"):
        check_distance2(pat, np.array([0, 0, 1]))
    path = sp.csr_matrix(np.eye(4) + np.eye(4, k=1) + np.eye(4, k=-1))
    check_star(path, np.array([0, 1, 2, 0]), brute=True)
    with pytest.raises(AssertionError, match=r"neither row|two-colored"):
        check_star(path, np.array([0, 1, 0, 1]), brute=True)


# ---------------------------------------------------------------------- constructed cases
def banded(x):
    n = len(x)
    return ft.sum((x[i + 1] - x[i] ** 2) ** 2 for i in range(n - 1)) + ft.sum(
        ft.sin(x[i] * x[i + 2]) for i in range(n - 2))


def arrowhead(x):
    return ft.sum(x[0] * ft.exp(x[i]) for i in range(1, len(x)))


def test_banded_patterns_are_exact():
    n = 12
    tape = ft.compile(ft.trace(banded, n))
    h = dense(tape.hessian_sparsity())
    i, j = np.indices((n, n))
    assert (h == (abs(i - j) <= 2)).all()
    jac = dense(tape.jacobian_sparsity())
    assert jac.shape == (1, n) and jac.all()


def test_arrowhead_pattern_and_colors():
    n = 10
    tape = ft.compile(ft.trace(arrowhead, n))
    h = dense(tape.hessian_sparsity())
    want = np.zeros((n, n), bool)
    want[0, :] = want[:, 0] = True
    want[np.arange(1, n), np.arange(1, n)] = True
    want[0, 0] = False  # x0 * exp(xi) is linear in x0
    assert (h == want).all()
    plan = tape.sparse_hessian_plan(coloring="distance2")
    check_distance2(plan.pattern, plan.colors)
    # Distance-2 coloring of an arrowhead needs n colors (every column shares row 0); a star
    # coloring needs 2.
    assert plan.n_colors == n
    star = tape.sparse_hessian_plan()
    check_star(star.pattern, star.colors)
    assert star.n_colors == 2


@pytest.mark.parametrize(
    ("fn", "want"),
    [
        (lambda x: x[0] * x[1], [[0, 1, 0], [1, 0, 0], [0, 0, 0]]),
        (lambda x: x[0] + x[1] - 2.0 * x[2], [[0, 0, 0], [0, 0, 0], [0, 0, 0]]),
        (lambda x: ft.sin(x[0] + x[1]), [[1, 1, 0], [1, 1, 0], [0, 0, 0]]),
        (lambda x: x[0] * x[0] + x[2], [[1, 0, 0], [0, 0, 0], [0, 0, 0]]),
        (lambda x: x[0] / x[1], [[0, 1, 0], [1, 1, 0], [0, 0, 0]]),
        (lambda x: ft.exp(x[0]) * x[1] + x[2], [[1, 1, 0], [1, 0, 0], [0, 0, 0]]),
        # where: conservative on both branches, linear in them; the condition adds nothing.
        (lambda x: ft.where(x[2] > 0.0, x[0], x[1]), [[0, 0, 0], [0, 0, 0], [0, 0, 0]]),
        (lambda x: ft.where(x[2] > 0.0, x[0] * x[1], ft.exp(x[1])),
         [[0, 1, 0], [1, 1, 0], [0, 0, 0]]),
        (lambda x: ft.abs(x[0]) + ft.maximum(x[1], x[2]), [[0, 0, 0], [0, 0, 0], [0, 0, 0]]),
        (lambda x: ft.floor(x[0] * x[1]) * x[2], [[0, 0, 0], [0, 0, 0], [0, 0, 0]]),
    ],
    ids=["product", "sum", "sin-of-sum", "square", "div", "exp-times", "where", "where-nl",
         "kinks", "floor"],
)
def test_exact_hessian_patterns(fn, want):
    tape = ft.compile(ft.trace(fn, 3))
    assert (dense(tape.hessian_sparsity()) == np.array(want, bool)).all(), tape.listing()


def test_jacobian_pattern_exact_and_conservative_where():
    def f(x):
        return [x[0] * x[1], ft.where(x[3] < x[2], x[0], x[2]), ft.sign(x[1]) + x[3], 2.0]

    tape = ft.compile(ft.trace(f, 4))
    want = [[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert (dense(tape.jacobian_sparsity()) == np.array(want, bool)).all()


def test_hessian_of_one_output_ignores_the_others():
    tape = ft.compile(ft.trace(lambda x: [x[0] * x[1], ft.exp(x[2]) + x[1]], 3))
    assert (dense(tape.hessian_sparsity(0)) == np.array(
        [[0, 1, 0], [1, 0, 0], [0, 0, 0]], bool)).all()
    assert (dense(tape.hessian_sparsity(1)) == np.diag([False, False, True])).all()
    both = dense(tape.hessian_sparsity(w=[1.0, 2.0]))
    assert (both == np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], bool)).all()
    assert (dense(tape.hessian_sparsity(w=[0.0, 3.0])) == dense(tape.hessian_sparsity(1))).all()


def test_parameters_get_no_columns():
    tape = ft.compile(ft.trace(lambda x, p: [p[0] * x[0] * x[1], ft.sin(p[1] * x[1])], 2,
                               n_params=2))
    assert tape.jacobian_sparsity().shape == (2, 2)
    assert (dense(tape.jacobian_sparsity()) == np.array([[1, 1], [0, 1]], bool)).all()
    assert (dense(tape.hessian_sparsity(w=[1, 1])) == np.array([[0, 1], [1, 1]], bool)).all()
    x, p = np.array([0.3, -0.7]), np.array([1.5, 2.0])
    np.testing.assert_array_equal(tape.sparse_jacobian(x, p).toarray(),
                                  tape.jacobian(x, p=p, mode="forward"))
    np.testing.assert_allclose(tape.sparse_hessian(x, p, output=1).toarray(),
                               tape.hessian(x, p=p, output=1), rtol=1e-14, atol=0)


# ---------------------------------------------------------------------- values
@pytest.mark.parametrize("fn", [banded, arrowhead], ids=["banded", "arrowhead"])
def test_compressed_values_match_dense(fn):
    n = 40
    tape = ft.compile(ft.trace(fn, n))
    x = np.random.default_rng(1).uniform(-1.0, 1.0, n)
    # The sweeps (preaccumulate=False) give bitwise the dense Hessian's and Jacobian's
    # entries; the preaccumulated plans (the default) agree to rounding.
    plan = tape.sparse_hessian_plan(coloring="distance2", preaccumulate=False)
    check_distance2(plan.pattern, plan.colors)
    h = plan(x)
    assert isinstance(h, sp.csr_matrix)
    np.testing.assert_array_equal(h.toarray(), tape.hessian(x))
    star = tape.sparse_hessian_plan(preaccumulate=False)
    check_star(star.pattern, star.colors, brute=True)
    for hs in (star(x).toarray(), tape.sparse_hessian_plan()(x).toarray()):
        np.testing.assert_array_equal(hs, hs.T)
        np.testing.assert_allclose(hs, tape.hessian(x), rtol=1e-14, atol=1e-15)
    jac = tape.sparse_jacobian_plan(preaccumulate=False)
    check_distance2(jac.pattern, jac.colors)
    np.testing.assert_array_equal(jac(x).toarray(), tape.jacobian(x, mode="forward"))
    np.testing.assert_allclose(tape.sparse_jacobian_plan()(x).toarray(),
                               tape.jacobian(x, mode="forward"), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("fn", [
    lambda x: ft.sum(ft.sin(v) * ft.exp(v) + v * v / (1.0 + v * v) for v in x),
    lambda x: ft.sum(ft.where(v > 0.0, v ** 3, ft.log(1.0 + v * v)) - ft.sqrt(v * v + 2.0)
                     for v in x),
], ids=["smooth", "where"])
def test_one_color_sweeps_match_the_general_ones_bitwise(fn):
    """A diagonal Hessian has one color, evaluated by the single-direction sweep pair
    (no direction loops): bitwise the HVP of the general sweeps along the same seed."""
    n = 30
    tape = ft.compile(ft.trace(fn, n))
    plan = tape.sparse_hessian_plan(preaccumulate=False)
    assert plan.n_colors == 1
    x = np.random.default_rng(4).uniform(-2.0, 2.0, n)
    x[3] = 0.0  # where's kink and zero tangents' rules
    got = plan.compressed(x)[:, 0]
    want = tape.hvp(x, np.ones(n))
    assert got.tobytes() == want.tobytes()
    np.testing.assert_array_equal(plan(x).diagonal(), want)
    np.testing.assert_allclose(tape.sparse_hessian_plan()(x).diagonal(), want, rtol=1e-14)


def test_banded_colors_bounded():
    tape = ft.compile(ft.trace(banded, 200))
    plan = tape.sparse_hessian_plan(coloring="distance2")
    assert plan.n_colors == 5  # half-bandwidth 2: columns within 4 of each other clash
    assert "5 colors (distance2)" in repr(plan)
    star = tape.sparse_hessian_plan()
    check_star(star.pattern, star.colors)
    assert star.n_colors <= 5


def test_many_outputs_jacobian_over_32_colors():
    n = 70  # a dense row forces 70 colors: three sweeps of up to 32
    tape = ft.compile(ft.trace(lambda x: [ft.sum(ft.sin(v) for v in x), *x[1:]], n))
    plan = tape.sparse_jacobian_plan()
    assert plan.n_colors == n
    x = np.linspace(-1, 1, n)
    np.testing.assert_array_equal(plan(x).toarray(), tape.jacobian(x, mode="forward"))


def test_values_only_and_out():
    tape = ft.compile(ft.trace(banded, 9))
    plan = tape.sparse_hessian_plan()
    x = np.linspace(0.1, 0.9, 9)
    full = plan(x)
    data = plan(x, values_only=True)
    np.testing.assert_array_equal(data, full.data)
    out = np.empty(plan.nnz)
    got = plan(x, out=out, values_only=True)
    assert got is out
    np.testing.assert_array_equal(out, full.data)
    mat = plan(x, out=out)
    assert mat.data is out or np.shares_memory(mat.data, out)
    np.testing.assert_array_equal(mat.indptr, plan.pattern.indptr)


def test_lagrangian_values():
    def f(x):
        return [x[0] * x[1] ** 2, ft.exp(x[1] * x[2]), x[0] + x[2]]

    tape = ft.compile(ft.trace(f, 3))
    x = np.array([0.4, -0.3, 0.8])
    w = np.array([2.0, -0.5, 3.0])
    want = sum(wj * tape.hessian(x, output=j) for j, wj in enumerate(w))
    plan = tape.sparse_hessian_plan(w=np.ones(3))
    np.testing.assert_allclose(plan(x, w=w).toarray(), want, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(tape.sparse_hessian(x, w=w).toarray(), want, rtol=1e-14,
                               atol=1e-15)


# ---------------------------------------------------------------------- random programs
@settings(max_examples=150, deadline=None)
@given(random_tapes(), st.randoms(use_true_random=False))
def test_random_patterns_cover_dense_derivatives(case, rnd):
    tape, x = case
    x = np.array([rnd.uniform(0.2, 0.9) for _ in x])  # inside every op's smooth domain
    jac = tape.jacobian(x, mode="forward")
    pat = dense(tape.jacobian_sparsity())
    assert not (np.isnan(jac) | (jac != 0))[~pat].any(), tape.listing()
    plan = tape.sparse_jacobian_plan()
    check_distance2(plan.pattern, plan.colors)
    got = plan(x).toarray()
    ok = np.isfinite(jac)
    np.testing.assert_allclose(got[ok], jac[ok], rtol=1e-13, atol=0)
    for k in range(tape.n_outputs):
        hess = tape.hessian(x, output=k)
        hp = dense(tape.hessian_sparsity(k))
        assert not (np.isnan(hess) | (hess != 0))[~hp].any(), (k, tape.listing())
        ok = np.isfinite(hess)
        for coloring in sparse.HESSIAN_COLORINGS:
            hplan = tape.sparse_hessian_plan(k, coloring=coloring)
            if coloring == "star":
                check_star(hplan.pattern, hplan.colors, brute=True)
            else:
                check_distance2(hplan.pattern, hplan.colors)
            hgot = hplan(x).toarray()
            np.testing.assert_allclose(hgot[ok], hess[ok], rtol=1e-12, atol=1e-300)


_TAIL_OPS = ("add", "sub", "minimum", "maximum", "mulc", "fmac")


@st.composite
def tapes_with_linear_tails(draw):
    """A random tape (:func:`random_tapes`) whose outputs are then combined by a few linear
    instructions (``add``, ``sub``, ``mulc``, ``fmac``, ``minimum``, ``maximum``): the
    instructions a pruned Hessian sweep visits for their adjoints alone."""
    tape, x = draw(random_tapes())
    a = tape.to_arrays()
    ops, args = list(a["ops"]), list(a["args"])
    n_pre = tape.n_inputs + tape.n_consts
    n_slots = n_pre + len(ops)
    outs = []
    for _ in range(draw(st.integers(1, 6))):
        op = OP_BY_NAME[draw(st.sampled_from(_TAIL_OPS))]
        pick = st.integers(0, n_slots - 1)
        const = st.integers(tape.n_inputs, n_pre - 1)  # a constant slot (exponents first)
        if op.name == "mulc":
            new = [draw(pick), draw(const)]
        elif op.name == "fmac":
            new = [draw(pick), draw(pick), draw(const)]
        else:
            new = [draw(pick), draw(pick)]
        ops.append(op.code)
        args.extend(new)
        outs.append(n_slots)
        n_slots += 1
    outputs = [*draw(st.lists(st.sampled_from(list(a["outputs"])), max_size=2)), *outs]
    return ft.Tape.from_arrays(np.array(ops, np.uint8), np.array(args, np.int32),
                               a["consts"], outputs, tape.n_inputs), x


@settings(max_examples=200, deadline=None)
@given(st.one_of(random_tapes(), tapes_with_linear_tails()), st.randoms(use_true_random=False))
def test_pruned_hessian_sweeps_are_bitwise_the_full_ones(case, rnd):
    """Activity pruning (kernels/activity.py) skips only exact zeros and unused values: at
    any point (NaN, inf and signed zeros included) and any weights (zeros included), on
    both sweep kinds (one color, several), the entries are bitwise the full sweeps'."""
    tape, x = case
    m = tape.n_outputs
    w = np.array([rnd.choice([0.0, -0.0, 1.0, rnd.uniform(-2.0, 2.0)]) for _ in range(m)])
    w[rnd.randrange(m)] = rnd.uniform(0.5, 2.0)  # at least one output weighted
    for coloring in sparse.HESSIAN_COLORINGS:
        full = tape.sparse_hessian_plan(w=w, coloring=coloring, prune=False)
        pruned = tape.sparse_hessian_plan(w=w, coloring=coloring, preaccumulate=False)
        points = (x, [rnd.uniform(-3.0, 3.0) for _ in x])
        # All full sweeps first: the shared work arrays then hold another point's values, so
        # a value the pruned sweeps need but skipped would show.
        wants = [full(point, values_only=True) for point in points]
        for point, want in zip(points, wants, strict=True):
            got = pruned(point, values_only=True)
            assert got.tobytes() == want.tobytes(), (coloring, w, point, tape.listing())
            # Other weights with the same zeros: the flags hold for them too.
            w2 = np.where(w != 0.0, w * 1.5 - 0.25, 0.0)
            assert (pruned(point, w=w2, values_only=True).tobytes()
                    == full(point, w=w2, values_only=True).tobytes())


@settings(max_examples=200, deadline=None)
@given(st.one_of(random_tapes(), tapes_with_linear_tails()), st.randoms(use_true_random=False))
def test_pruned_jacobian_is_bitwise_the_full_sweep(case, rnd):
    """The fixed rows (computed once) and the pruned sweep give bitwise the full sweep's
    entries at any point: the full sweep runs first, so a value the pruned sweep skipped
    but needed would be read stale and show."""
    tape, x = case
    full = tape.sparse_jacobian_plan(prune=False)
    pruned = tape.sparse_jacobian_plan(preaccumulate=False)
    points = (x, [rnd.uniform(-3.0, 3.0) for _ in x], [0.0] * len(x))
    wants = [full(point, values_only=True) for point in points]
    for point, want in zip(points, wants, strict=True):
        if 0 < pruned.n_colors <= sparse.MAX_COLORS_PER_SWEEP:
            # Poison the tangents left by the full sweep (the plans' shared work array):
            # a row the pruned sweep neither computes nor restores would show.
            tape.work_array("sparse", "jtan", (tape.n_slots, pruned.n_colors)).fill(np.nan)
        got = pruned(point, values_only=True)
        assert got.tobytes() == want.tobytes(), (point, tape.listing())


def _assert_close_where_finite(got, want, context):
    """Entries agree to rounding (the preaccumulated sums are formed in another order)
    wherever the full sweeps' entry is finite; the scale is the largest such entry."""
    ok = np.isfinite(want) & np.isfinite(got) & (np.abs(want) < 1e100)
    scale = max(1.0, float(np.max(np.abs(want[ok]), initial=0.0)))
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-11 * scale,
                               err_msg=str(context))


@settings(max_examples=150, deadline=None)
@given(st.one_of(random_tapes(), tapes_with_linear_tails()), st.randoms(use_true_random=False))
def test_preaccumulated_plans_agree_with_the_full_sweeps(case, rnd):
    """Preaccumulated plans (the default: the linear region's matrix, the entries programs of
    kernels/entries.py) give the full sweeps' entries to rounding, at points after the full
    sweeps ran (a value they skipped but needed would be read stale), with other weights."""
    tape, x = case
    m = tape.n_outputs
    w = np.array([rnd.choice([0.0, 1.0, rnd.uniform(-2.0, 2.0)]) for _ in range(m)])
    w[rnd.randrange(m)] = rnd.uniform(0.5, 2.0)
    points = (np.asarray(x, float), np.array([rnd.uniform(-3.0, 3.0) for _ in x]))
    if not np.isfinite(points[0]).all():
        points = points[1:]
    jfull, jpre = tape.sparse_jacobian_plan(prune=False), tape.sparse_jacobian_plan()
    hfull = tape.sparse_hessian_plan(w=w, prune=False)
    hpre = tape.sparse_hessian_plan(w=w)
    w2 = np.where(w != 0.0, w * 1.5 - 0.25, 0.0)
    for point in points:
        want = [jfull(point, values_only=True), hfull(point, values_only=True),
                hfull(point, w=w2, values_only=True)]
        got = [jpre(point, values_only=True), hpre(point, values_only=True),
               hpre(point, w=w2, values_only=True)]
        # Where a partial on the way is infinite (log at an exact 0, say) the two orders of
        # the sums can meet inf - inf differently; at a point where every derivative of
        # the full sweeps is finite, every entry must agree.
        generic = all(np.isfinite(v).all() for v in want)
        for g, v in zip(got, want, strict=True):
            if generic:
                assert np.isfinite(g).all(), (point, tape.listing())
            _assert_close_where_finite(g, v, (point, tape.listing()))
        h = hpre(point).toarray()
        assert h.tobytes() == np.ascontiguousarray(h.T).tobytes()  # exactly symmetric


def collocation(n_intervals):
    """The pendulum collocation problem of benchmarks/bench_ipopt.py (its own function, over
    fasttape's namespace): objective, constraints and the number of variables.  The
    collocation equations are the linear region, sin and the squares the core."""
    import runpy
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ipopt.py"
    objective, constraints = runpy.run_path(str(path))["problem"](ft, n_intervals)
    return objective, constraints, 3 * (n_intervals + 1)


def test_preaccumulated_collocation_plans():
    """On a collocation problem the linear region is preaccumulated in both plans, whose
    entries match the dense Jacobian and Lagrangian Hessian; the sweeps are bitwise the
    full ones; a bad preaccumulate is refused."""
    objective, constraints, n = collocation(30)
    c = ft.compile(ft.trace(constraints, n))
    f = ft.compile(ft.trace(objective, n))
    rng = np.random.default_rng(7)
    x, lam = rng.uniform(-2.0, 2.0, n), rng.uniform(-3.0, 3.0, c.n_outputs)
    jac = c.sparse_jacobian_plan()
    assert jac.preaccumulated and not c.sparse_jacobian_plan(preaccumulate=False).preaccumulated
    np.testing.assert_allclose(jac(x).toarray(), c.jacobian(x), rtol=1e-13, atol=1e-14)
    hes = c.sparse_hessian_plan(w=np.ones(c.n_outputs))
    assert hes.preaccumulated
    dense = sum(lam[j] * c.hessian(x, output=j) for j in range(c.n_outputs))
    np.testing.assert_allclose(hes(x, w=lam).toarray(), dense, rtol=1e-12, atol=1e-13)
    hf = f.sparse_hessian_plan()
    assert hf.preaccumulated
    np.testing.assert_allclose(hf(x).toarray(), f.hessian(x), rtol=1e-13, atol=1e-14)
    # The sweeps without the matrix are bitwise the full ones.
    assert (c.sparse_hessian_plan(w=np.ones(c.n_outputs), preaccumulate=False)(
        x, w=lam, values_only=True).tobytes() == c.sparse_hessian_plan(
        w=np.ones(c.n_outputs), prune=False)(x, w=lam, values_only=True).tobytes())
    with pytest.raises(TypeError, match="preaccumulate must be True or False"):
        c.sparse_jacobian_plan(preaccumulate="yes")
    with pytest.raises(TypeError, match="preaccumulate must be True or False"):
        sparse.SparseHessian(f, preaccumulate=None)


def test_preaccumulated_outputs_inside_the_core():
    """An output computed by a nonlinear instruction (in the core, next to a linear region)
    is seeded through the region's matrix as the identity (``a``: the region does not read
    it); one the region reads gets both its own weight and the region's (``b``)."""

    def fn(x):
        a = ft.sin(x[0]) * x[1]
        b = ft.exp(x[1] * x[2])
        return [a, b, 2.0 * b - x[0], 3.0 * (b + b) - x[2]]

    tape = ft.compile(ft.trace(fn, 3))
    x = np.array([0.3, -0.7, 1.1])
    w = np.array([1.5, -0.5, 2.0, 0.25])
    plan = tape.sparse_hessian_plan(w=np.ones(4))
    assert plan.preaccumulated
    dense = sum(w[j] * tape.hessian(x, output=j) for j in range(4))
    np.testing.assert_allclose(plan(x, w=w).toarray(), dense, rtol=1e-13, atol=1e-14)
    jac = tape.sparse_jacobian_plan()
    assert jac.preaccumulated
    np.testing.assert_allclose(jac(x).toarray(), tape.jacobian(x), rtol=1e-13, atol=1e-14)


def test_preaccumulation_declined_when_costly(monkeypatch):
    """Past the matrix limits a plan keeps the sweeps for the region: the Jacobian is then
    bitwise the pruned sweep, and the Hessian's entries program runs with the plain seeds
    (its reverse pass carries the region's adjoints), still agreeing with the dense one."""
    _, constraints, n = collocation(12)
    c = ft.compile(ft.trace(constraints, n))
    x, lam = np.linspace(-1.0, 1.0, n), np.linspace(0.5, -0.5, c.n_outputs)
    monkeypatch.setattr(sparse, "PREACCUMULATE_MAX_COLORS", 0)
    jac = c.sparse_jacobian_plan()
    assert not jac.preaccumulated
    assert (jac(x, values_only=True).tobytes()
            == c.sparse_jacobian_plan(preaccumulate=False)(x, values_only=True).tobytes())
    hes = c.sparse_hessian_plan(w=np.ones(c.n_outputs))
    assert hes.preaccumulated  # the entries program, not the region's matrix
    dense = sum(lam[j] * c.hessian(x, output=j) for j in range(c.n_outputs))
    np.testing.assert_allclose(hes(x, w=lam).toarray(), dense, rtol=1e-12, atol=1e-13)
    monkeypatch.setattr(sparse, "PREACCUMULATE_MAX_COLORS", 128)
    monkeypatch.setattr(sparse, "PREACCUMULATE_MAX_FILL", 0.0)
    assert not c.sparse_jacobian_plan().preaccumulated


def test_preaccumulated_plans_with_parameters():
    """Parameters are inputs of the sweeps without columns: the programs give the swept
    entries at every p."""
    n = 12

    def fn(x, p):
        return [*(x[i + 1] - p[0] * x[i] + 0.25 * ft.sin(x[i] * p[1]) for i in range(n - 1)),
                ft.exp(x[0]) * p[0] + x[n - 1]]

    tape = ft.compile(ft.trace(fn, n, n_params=2))
    rng = np.random.default_rng(3)
    for _ in range(3):
        x, p = rng.uniform(-1.0, 1.0, n), rng.uniform(0.5, 2.0, 2)
        w = rng.uniform(-1.0, 1.0, n)
        for q in (True, False):
            jac = tape.sparse_jacobian_plan(preaccumulate=q)
            np.testing.assert_allclose(jac(x, p=p).toarray(), tape.jacobian(x, p=p),
                                       rtol=1e-13, atol=1e-14)
            hes = tape.sparse_hessian_plan(w=np.ones(n), preaccumulate=q)
            dense = sum(w[j] * tape.hessian(x, p=p, output=j) for j in range(n))
            np.testing.assert_allclose(hes(x, w=w, p=p).toarray(), dense, rtol=1e-12,
                                       atol=1e-13)


def test_pruned_jacobian_fixed_rows():
    """Linear rows are fixed (computed once); rows through a nonlinear op are not, and
    their values follow the point."""
    n = 20

    def fn(x):
        return [*(x[i + 1] - 0.5 * x[i] for i in range(n - 1)), ft.sin(x[0]) * x[1]]

    tape = ft.compile(ft.trace(fn, n))
    flags = sparse.jacobian_activity(tape)
    from fasttape.kernels.activity import FIXED

    fixed = flags[tape.outputs] & FIXED != 0
    assert fixed[:-1].all() and not fixed[-1]
    plan = tape.sparse_jacobian_plan()
    for seed in range(3):
        x = np.random.default_rng(seed).normal(size=n)
        np.testing.assert_array_equal(plan(x).toarray(), tape.jacobian(x, mode="forward"))


def test_pruned_plans_with_parameters_and_bad_prune():
    """Parameters are inputs of the evaluated tape (params_as_inputs): the flags, computed
    on the tape itself, line up with its slots; a non-bool prune is refused."""
    n = 6

    def fn(x, p):
        return [x[i + 1] * p[i] - ft.sin(x[i]) + 2.0 * x[i] for i in range(n - 1)]

    tape = ft.compile(ft.trace(fn, n, n_params=n))
    rng = np.random.default_rng(5)
    x, p = rng.normal(size=n), rng.normal(size=n)
    w = rng.normal(size=n - 1)
    jac = [tape.sparse_jacobian_plan(prune=q, preaccumulate=False)(x, p=p, values_only=True)
           for q in (True, False)]
    assert jac[0].tobytes() == jac[1].tobytes()
    hes = [tape.sparse_hessian_plan(w=np.ones(n - 1), prune=q, preaccumulate=False)(
        x, p=p, w=w, values_only=True)
           for q in (True, False)]
    assert hes[0].tobytes() == hes[1].tobytes()
    np.testing.assert_allclose(tape.sparse_jacobian_plan()(x, p=p).toarray(),
                               tape.jacobian(x, p=p), rtol=1e-15)
    with pytest.raises(TypeError, match="prune must be True or False"):
        tape.sparse_jacobian_plan(prune="yes")
    with pytest.raises(TypeError, match="prune must be True or False"):
        sparse.SparseHessian(tape, w=np.ones(n - 1), prune=1)


def test_pruning_skips_the_linear_part():
    """On a mostly linear tape the flags leave most instructions out of every sweep."""
    n = 50

    def fn(x):
        lin = [x[i + 1] - 2.0 * x[i] + 0.5 * x[i - 1] for i in range(1, n - 1)]
        return ft.sum(v * 0.25 for v in lin) + ft.sin(x[0]) * x[1]

    tape = ft.compile(ft.trace(fn, n))
    flags = sparse.hessian_activity(tape, np.ones(1))
    from fasttape.kernels.activity import ADJ, TAN, VAL

    ins = flags[tape.n_inputs + tape.n_consts :]
    n_rev = np.count_nonzero(ins & (ADJ | TAN))
    n_val = np.count_nonzero(ins & VAL)
    assert n_rev <= 4 and n_val <= 2, (n_rev, n_val, tape.listing())
    x = np.random.default_rng(2).normal(size=n)
    want = tape.hessian(x)
    got = tape.sparse_hessian_plan()(x).toarray()
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------- bad input
def test_bad_inputs_give_clear_errors():
    tape = ft.compile(ft.trace(lambda x: [x[0] * x[1], x[1] + x[2]], 3))
    with pytest.raises(ValueError, match=r"one weight per output, shape \(2,\)"):
        tape.hessian_sparsity(w=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="out of range"):
        tape.hessian_sparsity(5)
    with pytest.raises(ValueError, match="pass output=k"):
        tape.sparse_hessian(np.ones(3))
    with pytest.raises(ValueError, match="coloring must be one of"):
        tape.sparse_hessian_plan(0, coloring="acyclic")
    with pytest.raises(ValueError, match="not both"):
        tape.sparse_hessian_plan(0, w=[1.0, 1.0])
    plan = tape.sparse_hessian_plan(w=[1.0, 0.0])
    with pytest.raises(ValueError, match="leaves output 1 out"):
        plan(np.ones(3), w=[1.0, 1.0])
    with pytest.raises(ValueError, match="x"):
        plan(np.ones(4))
    with pytest.raises(ValueError, match="out"):
        plan(np.ones(3), out=np.empty(plan.nnz + 1))
    jplan = tape.sparse_jacobian_plan()
    with pytest.raises(ValueError, match="out"):
        jplan(np.ones(3), out=np.empty(jplan.nnz, dtype=np.float32))


def test_missing_scipy_is_a_clear_error(monkeypatch):
    tape = ft.compile(ft.trace(lambda x: x[0] * x[1], 2))
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(ImportError, match="install SciPy"):
        tape.jacobian_sparsity()


def test_color_columns_is_deterministic_and_valid():
    rng = np.random.default_rng(0)
    pat = sp.random(30, 50, density=0.1, random_state=rng, format="csr")
    colors, k = sparse.color_columns(pat)
    check_distance2(pat, colors)
    assert k == colors.max() + 1
    again, _ = sparse.color_columns(pat)
    np.testing.assert_array_equal(colors, again)


def test_no_colors_linear_and_constant_tapes():
    lin = ft.compile(ft.trace(lambda x: 2.0 * x[0] + x[1], 2))
    plan = lin.sparse_hessian_plan()
    assert plan.n_colors == 0 and plan.nnz == 0
    assert plan(np.ones(2)).shape == (2, 2)
    const = ft.compile(ft.trace(lambda x: [ft.floor(x[0]), 3.0], 2))
    jplan = const.sparse_jacobian_plan()
    assert jplan.n_colors == 0
    np.testing.assert_array_equal(jplan(np.ones(2)).toarray(), np.zeros((2, 2)))


def test_bench_sparse_smoke(capsys):
    import runpy
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sparse.py"
    bench = runpy.run_path(str(path))
    assert bench["main"](["--n", "40", "--repeat", "1",
                          "--families", "banded,random,arrowhead"]) == 0
    out = capsys.readouterr().out
    for name in ("banded", "random", "arrowhead"):
        assert f"Hessian {name}, n = 40" in out
    assert "nonzeros, 2 colors;" in out  # the arrowhead: a star coloring needs 2
    assert "3 colors" in out  # the banded Jacobian
    with pytest.raises(SystemExit):
        bench["main"](["--families", "banded,nope"])
    assert "unknown family 'nope'" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.floats(0.0, 0.3), st.integers(0, 2**31 - 1))
def test_star_coloring_of_random_symmetric_patterns(n, density, seed):
    rng = np.random.default_rng(seed)
    a = sp.random(n, n, density=density, random_state=rng, format="csr")
    sym = ((a + a.T) != 0).astype(np.int8)
    colors, k = sparse.star_color(sym)
    check_star(sym, colors, brute=True)
    used = colors[colors >= 0]
    assert k == (used.max() + 1 if len(used) else 0)
    d2, _ = sparse.color_columns(sym)
    check_distance2(sym, d2)


def plain_greedy_distance2(pattern) -> np.ndarray:
    """The textbook greedy (largest column first, every row walked), in Python."""
    csc = sp.csc_matrix(pattern)
    csr = sp.csr_matrix(pattern)
    order = np.argsort(-np.diff(csc.indptr), kind="stable")
    colors = np.full(csr.shape[1], -1)
    for j in order:
        rows = csc.indices[csc.indptr[j]:csc.indptr[j + 1]]
        if len(rows) == 0:
            continue
        used = {colors[k] for r in rows for k in csr.indices[csr.indptr[r]:csr.indptr[r + 1]]}
        colors[j] = next(c for c in range(len(colors) + 1) if c not in used)
    return colors


def plain_greedy_star(pattern) -> np.ndarray:
    """Gebremedhin-Manne-Pothen Algorithm 4.1 walked path by path, in Python."""
    csr = sp.csr_matrix(pattern)
    nb = [set(csr.indices[csr.indptr[i]:csr.indptr[i + 1]]) - {i} for i in range(csr.shape[0])]
    order = np.argsort(-np.diff(csr.indptr), kind="stable")
    colors = np.full(csr.shape[0], -1)
    for v in order:
        if csr.indptr[v] == csr.indptr[v + 1]:
            continue
        used = set()
        for w in nb[v]:
            if colors[w] >= 0:
                used.add(colors[w])
            for x in nb[w] - {v}:
                if colors[x] < 0:
                    continue
                if colors[w] < 0 or any(colors[y] == colors[w] for y in nb[x] - {w}):
                    used.add(colors[x])
        colors[v] = next(c for c in range(len(colors) + 1) if c not in used)
    return colors


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 160), st.floats(0.0, 0.1), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_colorings_equal_the_plain_greedy_with_dense_rows(n, density, n_dense, seed):
    """The kernels avoid walking dense rows (bitsets, per-vertex color counts) but give
    exactly the colors of the textbook greedy: patterns with up to 3 dense rows of length
    up to 160 (beyond sparsity.DENSE_ROW = 64, so the bitset path runs, over several
    64-color words)."""
    rng = np.random.default_rng(seed)
    a = sp.random(n, n, density=density, random_state=rng, format="lil")
    for r in rng.integers(0, n, n_dense):
        a[r, rng.random(n) < 0.9] = 1.0
    a = a.tocsr()
    sym = ((a + a.T) != 0).astype(np.int8)
    star, _ = sparse.star_color(sym)
    np.testing.assert_array_equal(star, plain_greedy_star(sym))
    check_star(sym, star)
    for pat in (a, sym):
        d2, k = sparse.color_columns(pat)
        np.testing.assert_array_equal(d2, plain_greedy_distance2(pat))
        check_distance2(pat, d2)
        assert k == d2.max() + 1


def test_colorings_ignore_repeated_entries():
    """A CSR pattern that stores an entry twice colors as the one without repeats (the star
    kernel counts neighbors per color: a repeat would count twice), and the caller's
    arrays are left as they were."""
    rng = np.random.default_rng(3)
    n = 8
    a = rng.random((n, n)) < 0.3
    a = a | a.T
    r, c = np.nonzero(a)
    k = rng.integers(0, len(r), len(r) // 2)
    r2, c2 = np.concatenate([r, r[k]]), np.concatenate([c, c[k]])
    o = np.lexsort((c2, r2))
    r2, c2 = r2[o], c2[o]
    raw = sp.csr_matrix((np.ones(len(r2)), c2, np.searchsorted(r2, np.arange(n + 1))),
                        shape=(n, n))
    before = raw.indices.copy()
    for color in (sparse.star_color, sparse.color_columns):
        got, k_got = color(raw)
        want, k_want = color(a.astype(np.int8))
        np.testing.assert_array_equal(got, want)
        assert k_got == k_want
    np.testing.assert_array_equal(raw.indices, before)
    assert raw.nnz == len(r2)


def test_colorings_of_a_large_arrowhead_are_not_quadratic():
    """An arrowhead of n = 200,000: walking the hub's row per column (the former kernels)
    took minutes; the kernels now take well under a second.  No timing is asserted: a
    quadratic kernel makes this test run for minutes."""
    n = 200_000
    hub = np.zeros(n - 1, np.int64)
    leaves = np.arange(1, n)
    rows = np.concatenate([hub, leaves, leaves])
    cols = np.concatenate([leaves, hub, leaves])
    pat = sp.csr_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    colors, k = sparse.star_color(pat)
    assert k == 2 and colors[0] == 0 and (colors[1:] == 1).all()
    colors, k = sparse.color_columns(pat)
    # Distance 2: every leaf shares row 0 with every other leaf, so all n - 1 differ.
    assert k == n and len(np.unique(colors[1:])) == n - 1 and colors[0] not in colors[1:]


def test_op_table_fits_the_sparsity_kernels():
    """The kernels read two differentiable arguments and three second partials per op; a new
    op beyond that must extend them (sparse._op_tables refuses it)."""
    from fasttape.ops import OPS

    assert max(op.ndiff for op in OPS) <= 2
    assert all(len(op.second) == op.ndiff * (op.ndiff + 1) // 2 for op in OPS)
