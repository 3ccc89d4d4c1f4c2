"""The benchmark graph families are deterministic, local and numerically tame."""

import numpy as np
import pytest

from fasttape.bench.families import chain, random_local
from fasttape.ops import OPS


def test_random_local_is_deterministic_and_local():
    a, b = random_local(20_000, seed=5), random_local(20_000, seed=5)
    np.testing.assert_array_equal(a.ops, b.ops)
    np.testing.assert_array_equal(a.args, b.args)
    assert not np.array_equal(random_local(20_000, seed=6).ops, a.ops)
    # argument distance: most arguments lie inside the window of 100 slots
    arity = np.array([op.arity for op in OPS])[a.ops]
    owner = np.repeat(a.n_inputs + np.arange(a.n_instructions), arity)
    dist = owner - a.args
    assert dist.min() >= 1
    assert np.mean(dist <= 100) > 0.9


def test_random_local_values_and_gradient_stay_finite():
    tape = random_local(200_000)
    v, g = tape.value_and_grad(np.linspace(0.1, 0.9, tape.n_inputs))
    assert np.isfinite(v) and np.all(np.isfinite(g))
    assert np.count_nonzero(g) > 10, "the gradient must reach the inputs"


def test_families_reject_bad_arguments():
    with pytest.raises(ValueError, match="n_inputs"):
        random_local(10, n_inputs=1)
    with pytest.raises(ValueError, match="unary"):
        chain(10, "add")


# ---------------------------------------------------------------------------- random_uniform
def test_random_uniform_is_deterministic_and_cache_hostile():
    from fasttape.bench.families import random_uniform

    a, b = random_uniform(20_000, seed=5), random_uniform(20_000, seed=5)
    np.testing.assert_array_equal(a.ops, b.ops)
    np.testing.assert_array_equal(a.args, b.args)
    assert a.n_instructions == 20_000 and a.n_inputs == 100
    assert not np.array_equal(random_uniform(20_000, seed=6).args, a.args)
    arity = np.array([op.arity for op in OPS])[a.ops]
    owner = np.repeat(a.n_inputs + np.arange(a.n_instructions), arity)
    dist = owner - a.args
    assert dist.min() >= 1
    # the second argument of binary ops is uniform over all earlier slots: typical distances
    # are a good fraction of the tape, far outside random_local's window of 100
    second = np.flatnonzero(np.repeat(arity == 2, arity))[1::2]
    assert np.median(dist[second]) > 2_000
    local = random_local(20_000, seed=5)
    l_owner = np.repeat(local.n_inputs + np.arange(local.n_instructions),
                        np.array([op.arity for op in OPS])[local.ops])
    assert np.mean(dist) > 10 * np.mean(l_owner - local.args)


def test_random_uniform_values_and_gradient_stay_finite():
    from fasttape.bench.families import random_uniform

    for n in (1_000, 300_000):
        tape = random_uniform(n)
        v, g = tape.value_and_grad(np.linspace(0.1, 0.9, tape.n_inputs))
        assert np.isfinite(v) and np.all(np.isfinite(g))
        assert np.count_nonzero(g) > 3, "the gradient must reach the inputs"


def test_random_uniform_gradient_matches_reference():
    from fasttape.bench.families import random_uniform
    from tests import reference

    tape = random_uniform(3_000, seed=2)
    x = np.linspace(0.1, 0.9, tape.n_inputs)
    v, g = tape.value_and_grad(x)
    rv, rg = reference.value_and_grad(tape, x)
    assert v == pytest.approx(rv, rel=1e-12)
    np.testing.assert_allclose(g, rg, rtol=1e-10, atol=1e-300)


def test_random_uniform_rejects_bad_arguments():
    from fasttape.bench.families import random_uniform

    with pytest.raises(ValueError, match="n_inputs"):
        random_uniform(10, n_inputs=1)
    with pytest.raises(ValueError, match="n_nodes"):
        random_uniform(0)


# ---------------------------------------------------------------------------- structured families
def _structured():
    from fasttape.bench import families as F

    feats, targets = F.mlp_data(7)
    return {
        "rosenbrock": (lambda: F.rosenbrock(40), F.rosenbrock_point(40),
                       lambda x: F.rosenbrock_fn(list(x), F.FLOATS)),
        "lennard-jones": (lambda: F.lennard_jones(9), F.lennard_jones_point(9),
                          lambda x: F.lennard_jones_fn(list(x), F.FLOATS)),
        "mlp": (lambda: F.mlp(7), F.mlp_point(),
                lambda x: F.mlp_fn(list(x), F.FLOATS, feats, targets)),
        "autograd-west": (lambda: F.autograd_west(60), np.linspace(0.1, 0.9, 100),
                          lambda x: F.autograd_west_fn(list(x), F.FLOATS, 60)),
    }


@pytest.mark.parametrize("family", ["rosenbrock", "lennard-jones", "mlp", "autograd-west"])
def test_structured_family_matches_floats_reference_and_finite_differences(family):
    from tests import reference

    build, x, on_floats = _structured()[family]
    tape = build()
    again = build()
    np.testing.assert_array_equal(tape.ops, again.ops)  # deterministic
    np.testing.assert_array_equal(tape.args, again.args)
    v, g = tape.value_and_grad(x)
    assert np.isfinite(v) and np.all(np.isfinite(g))
    assert v == pytest.approx(on_floats(x), rel=1e-12)
    rv, rg = reference.value_and_grad(tape, x)
    assert v == pytest.approx(rv, rel=1e-12)
    np.testing.assert_allclose(g, rg, rtol=1e-10, atol=1e-14 * max(1.0, np.abs(rg).max()))
    # central differences on a few coordinates (the oracle shares the tape; this does not)
    h = 1e-6
    for i in np.linspace(0, len(x) - 1, 4).astype(int):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        fd = (on_floats(xp) - on_floats(xm)) / (2 * h)
        assert g[i] == pytest.approx(fd, rel=1e-4, abs=1e-6 * max(1.0, abs(v)))


def test_autograd_west_follows_the_published_recipe():
    """An independent NumPy transcription of the issue's description, at the published point."""
    from fasttape.bench.families import autograd_west, autograd_west_point

    n_ops = 41
    nodes = list(autograd_west_point())
    for op in range(n_ops):
        k = op % 4
        if k == 0:
            nodes.append(float(np.logaddexp(0.0, nodes[-10])))
        elif k == 1:
            nodes.append(nodes[-30] + nodes[-25] + nodes[-20] + nodes[-15])
        elif k == 2:
            nodes.append(nodes[-20] * nodes[-10])
        else:
            z = np.array(nodes[-4:])
            e = np.exp(z - z.max())
            nodes.extend((e / e.sum()).tolist())
    tape = autograd_west(n_ops)
    assert tape.n_inputs == 100
    assert tape.value(autograd_west_point()) == pytest.approx(nodes[-1], rel=1e-12)


def test_structured_size_hits_the_requested_instruction_count():
    from fasttape.bench import families as F

    builders = {"rosenbrock": F.rosenbrock, "lennard-jones": F.lennard_jones, "mlp": F.mlp,
                "autograd-west": F.autograd_west}
    for family, build in builders.items():
        for n in (1_000, 20_000):
            got = build(F.structured_size(family, n)).n_instructions
            assert 0.85 * n <= got <= 1.15 * n, (family, n, got)
    with pytest.raises(ValueError, match="n_nodes"):
        F.structured_size("mlp", -5)


def test_structured_families_reject_bad_sizes():
    from fasttape.bench import families as F

    for build in (F.rosenbrock, F.lennard_jones, F.mlp, F.autograd_west):
        with pytest.raises(ValueError, match="needs"):
            build(1 if build is not F.mlp else 0)
