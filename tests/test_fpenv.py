"""``flush_subnormals=True``: FTZ/DAZ around a sweep, on the caller and on every worker."""

from __future__ import annotations

import numpy as np
import pytest

import fasttape as ft
from fasttape import batch
from fasttape.kernels import fpenv

pytestmark = pytest.mark.skipif(not fpenv.SUPPORTED, reason="FTZ/DAZ needs x86-64")

TINY = 2.2250738585072014e-308  # the smallest normal double


def _tape() -> ft.Tape:
    # x0 * x1 underflows into the subnormal range for the points below; times x2 it is
    # brought back up, so IEEE and flushed results differ in the value and in the gradient.
    return ft.compile(ft.trace(lambda x: x[0] * x[1] * x[2], 3))


POINT = np.array([1e-300, 1e-10, 1e10])


def _python_subnormal() -> float:
    # Computed by NumPy on this thread: 0.0 if FTZ/DAZ were left set.
    return float(np.multiply(np.float64(1e-300), np.float64(1e-10)))


@pytest.mark.parametrize("mode", ft.GRAD_MODES)
def test_single_point_ieee_and_flushed(mode):
    tape = _tape().with_grad_mode(mode)
    v, g = tape.value_and_grad(POINT)
    assert 0.0 < abs(g[2]) < TINY  # IEEE: the partial x0 * x1 is subnormal
    assert v != 0.0
    fv, fg = tape.value_and_grad(POINT, flush_subnormals=True)
    assert fv == 0.0 and fg[2] == 0.0
    assert tape.value(POINT, flush_subnormals=True) == 0.0
    assert tape.grad(POINT, flush_subnormals=True)[2] == 0.0
    # Normal magnitudes: flushing changes nothing.
    x = np.array([1.5, -2.0, 3.0])
    assert tape.value_and_grad(x, flush_subnormals=True)[0] == tape.value_and_grad(x)[0]
    assert np.array_equal(tape.grad(x, flush_subnormals=True), tape.grad(x))


def test_register_is_restored_on_the_calling_thread():
    tape = _tape()
    before = fpenv.mxcsr() & fpenv.FTZ_DAZ
    tape.value_and_grad(POINT, flush_subnormals=True)
    tape.value(POINT, flush_subnormals=True)
    assert fpenv.mxcsr() & fpenv.FTZ_DAZ == before
    assert _python_subnormal() != 0.0
    # And the next IEEE call is IEEE again.
    assert tape.value(POINT) != 0.0


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ft.GRAD_MODES)
def test_batch_flushes_on_every_worker_and_restores(threads, mode):
    tape = _tape().with_grad_mode(mode)
    rng = np.random.default_rng(0)
    X = POINT * rng.uniform(0.5, 2.0, size=(1025, 3))
    # Enough work for the parallel drivers (batch.PARALLEL_MIN_WORK): 200 weighted copies of
    # the product, the weights summing to about 1.6, so the gradient stays subnormal.
    big = ft.compile(ft.trace(
        lambda x: ft.sum([x[0] * x[1] * x[2] / float((k + 1) ** 2) for k in range(200)]), 3
    )).with_grad_mode(mode)
    assert len(X) * big.n_instructions > batch.PARALLEL_MIN_WORK
    for t in (tape, big):
        fv, fg = batch.value_and_grad(t, X, 0, threads=threads, flush_subnormals=True)
        want = [t.value_and_grad(x, flush_subnormals=True) for x in X]
        assert np.array_equal(fv, [a for a, _ in want])
        assert np.array_equal(fg, np.array([b for _, b in want]))
        assert np.all(fv == 0.0) and np.all(fg[:, 2] == 0.0)
        assert np.array_equal(t.value(X, threads=threads, flush_subnormals=True), fv)
        # The workers' registers were restored: an IEEE batch right after is IEEE.
        iv, ig = t.value_and_grad(X, threads=threads)
        assert np.all(iv != 0.0) and np.all(np.abs(ig[:, 2]) < TINY) and np.all(ig[:, 2] != 0)
    assert _python_subnormal() != 0.0


@pytest.mark.parametrize("bad", [1, 0, None, "yes", np.bool_(True)])
def test_flag_must_be_a_bool(bad):
    tape = _tape()
    with pytest.raises(TypeError, match="flush_subnormals must be True or False"):
        tape.value_and_grad(POINT, flush_subnormals=bad)
    with pytest.raises(TypeError, match="flush_subnormals"):
        tape.value(np.stack([POINT, POINT]), flush_subnormals=bad)


def test_refused_without_mxcsr(monkeypatch):
    monkeypatch.setattr(fpenv, "SUPPORTED", False)
    tape = _tape()
    with pytest.raises(ValueError, match="needs an x86-64 CPU"):
        tape.value(POINT, flush_subnormals=True)
    with pytest.raises(ValueError, match="needs an x86-64 CPU"):
        tape.value_and_grad(np.stack([POINT, POINT]), flush_subnormals=True)
    assert tape.value(POINT, flush_subnormals=False) != 0.0  # the default path is unaffected
