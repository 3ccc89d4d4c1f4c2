"""Software prefetch (fasttape/kernels/memhint.py) and the sweeps that use it.

A prefetch changes no result, so what can go wrong is: the intrinsic not compiling (or
compiling to nothing), the sweeps reading an argument index out of bounds to find the address
(``args[k +- distance]``), or a prefetch distance that skips the code path on the tapes that
take it.  These tests cover each.
"""

from __future__ import annotations

import platform

import numba
import numpy as np
import pytest

import fasttape as ft
from fasttape import batch
from fasttape.bench import families
from fasttape.kernels import sweep
from fasttape.kernels.memhint import prefetch, prefetch_write
from tests.reference import value_and_grad as ref_value_and_grad


@numba.njit(cache=False)
def _sum_with_prefetches(a1, a2):
    # Prefetches of in-range, negative and far out-of-range addresses: none may fault or
    # change what the loop computes.
    s = 0.0
    for i in range(a1.shape[0]):
        prefetch(a1, i + 3)
        prefetch(a1, i - 1000)
        prefetch_write(a2, i, 1 << 40)
        s += a1[i]
    for i in range(a2.shape[0]):
        prefetch(a2, i, 0)
        prefetch_write(a1, -i)
        s += a2[i, 0]
    return s


def test_prefetch_never_changes_results_nor_faults():
    a1 = np.arange(100.0)
    a2 = np.arange(12.0).reshape(6, 2)
    assert _sum_with_prefetches(a1, a2) == a1.sum() + a2[:, 0].sum()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 asm")
def test_prefetch_emits_prefetch_instructions():
    _sum_with_prefetches(np.zeros(3), np.zeros((2, 2)))
    asm = "\n".join(_sum_with_prefetches.inspect_asm().values())
    assert "prefetcht0" in asm
    assert "prefetchw" in asm or "prefetcht0" in asm  # prefetchw needs a CPU flag


def test_prefetch_wants_one_integer_index_per_dimension():
    @numba.njit(cache=False)
    def bad(a):
        prefetch(a, 0)

    with pytest.raises(numba.core.errors.TypingError):
        bad(np.zeros((2, 2)))

    @numba.njit(cache=False)
    def bad_index(a):
        prefetch(a, 0.5)

    with pytest.raises(numba.core.errors.TypingError):
        bad_index(np.zeros(2))


@pytest.mark.parametrize("grad_mode", ["stored", "lean"])
def test_reverse_sweeps_that_prefetch_match_the_reference(grad_mode):
    # Enough slots for the single-point reverse sweeps to prefetch (PREFETCH_MIN_SLOTS), with
    # parents anywhere earlier, and no reuse plan (arrays, not compiled): the plain kernels.
    n = sweep.PREFETCH_MIN_SLOTS + 500
    tape = families.random_uniform(n, grad_mode=grad_mode)
    assert tape.n_slots >= sweep.PREFETCH_MIN_SLOTS and tape._plan is None
    x = np.linspace(0.1, 0.9, tape.n_inputs)
    v, g = tape.value_and_grad(x)
    rv, rg = ref_value_and_grad(tape, x)
    assert v == rv
    np.testing.assert_array_equal(g, np.asarray(rg))


def test_batch_sweeps_that_prefetch_equal_single_calls():
    # The batch prefetches rows of the stored partials on every tape longer than its distance;
    # a tape with a few thousand edges takes that path in both sweeps, at chunk sizes that are
    # and are not multiples of a cache line's eight values.  Too small for a batch plan, so
    # the rows are the tape's own slots.
    graph = ft.trace(lambda x: families.autograd_west_fn(x, ft, 400), families.WEST_INPUTS)
    tape = ft.compile(graph)
    rng = np.random.default_rng(1)
    X = families.autograd_west_point() + rng.uniform(-0.5, 0.5, size=(13, families.WEST_INPUTS))
    single = [tape.value_and_grad(x) for x in X]
    for chunk in (3, 8, 13):
        bv, bg = batch.value_and_grad(tape, X, 0, chunk=chunk, threads=1)
        np.testing.assert_array_equal(bv, [v for v, _ in single])
        np.testing.assert_array_equal(bg, np.array([g for _, g in single]))
