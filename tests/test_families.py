"""The benchmark graph families are deterministic, local and numerically tame."""

import numpy as np
import pytest

from fasttape.families import chain, random_local
from fasttape.ops import OPS


def test_random_local_is_deterministic_and_local():
    a, b = random_local(20_000, seed=5), random_local(20_000, seed=5)
    np.testing.assert_array_equal(a.ops, b.ops)
    np.testing.assert_array_equal(a.args, b.args)
    assert not np.array_equal(random_local(20_000, seed=6).ops, a.ops)
    # argument distance: most arguments lie inside the window of 100 slots
    arity = np.array([op.arity for op in OPS])[a.ops]
    owner = np.repeat(a.n_inputs + np.arange(a.n_nodes), arity)
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
