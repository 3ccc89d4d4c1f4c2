"""Revolve: the counting formula, an independent DP oracle, and counted step evaluations."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pytest

import fasttape as ft
from fasttape.checkpoint.revolve import (
    optimal_cost_dp,
    repetition_number,
    revolve_cost,
    revolve_split,
    schedule,
)


def formula(n: int, s: int) -> int:
    """r*T - C(s+r, s+1), r the smallest integer with C(s+r, s) >= T (written out again)."""
    r = 0
    while comb(s + r, s) < n:
        r += 1
    return r * n - comb(s + r, s + 1)


def test_formula_matches_the_dynamic_programming_optimum():
    n_max, s_max = 45, 6
    table = optimal_cost_dp(n_max, s_max)
    for s in range(1, s_max + 1):
        for n in range(1, n_max + 1):
            assert table[s][n] == formula(n, s) == revolve_cost(n, s), (n, s)


@pytest.mark.parametrize(("n", "s", "expected"), [
    (1, 1, 0), (2, 1, 1), (10, 1, 45), (10, 9, 9), (10, 100, 9), (1_000_000, 100, 3_817_896),
])
def test_known_values(n, s, expected):
    assert revolve_cost(n, s) == formula(n, s) == expected


def test_repetition_number_is_the_smallest_r():
    for n, s in itertools.product([1, 2, 5, 100, 5151, 5152, 10**6], [1, 2, 100]):
        r = repetition_number(n, s)
        assert comb(s + r, s) >= n and (r == 0 or comb(s + r - 1, s) < n)


def test_split_attains_the_optimum():
    for n, s in itertools.product(range(2, 60), range(2, 6)):
        m = revolve_split(n, s)
        assert 1 <= m < n
        assert m + revolve_cost(m, s) + revolve_cost(n - m, s - 1) == revolve_cost(n, s)


@pytest.mark.parametrize(("n", "s"), [(1, 1), (7, 1), (20, 3), (100, 4), (1000, 10), (64, 64)])
def test_python_schedule_reverses_every_step_once_within_s_snapshots(n, s):
    advances, depth, peak, reversed_ = 0, 0, 0, []
    for kind, a, b in schedule(n, s):
        if kind == "advance":
            advances += b - a
        elif kind == "push":
            depth += 1
            peak = max(peak, depth)
        elif kind == "pop":
            depth -= 1
        else:
            reversed_.append(a)
    assert reversed_ == list(range(n - 1, -1, -1))
    assert depth == 0 and peak <= s
    assert advances == formula(n, s)


def _counting_scan(n, s):
    # A one-variable step: what matters here is how often the driver evaluates it.
    return ft.scan(lambda x, p: [ft.sin(x[0]) * p[0]], n, n_state=1, n_params=1,
                   final=lambda x, p: x[0], snapshots=s)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 50, 101, 257, 1000])
@pytest.mark.parametrize("s", [1, 2, 3, 4, 7, 20])
def test_driver_counts_equal_the_formula(n, s):
    sc = _counting_scan(n, s)
    sc.value_and_grad([0.3], [1.1])
    rep = sc.report
    assert rep.forward_evaluations == formula(n, min(s, n))
    assert rep.taped_evaluations == n
    assert rep.snapshots <= min(s, n)


def test_a_million_steps_with_100_snapshots():
    # The T and s, on a one-variable step: the driver's own counter, one Numba call.
    sc = _counting_scan(1_000_000, 100)
    v, gx, gp = sc.value_and_grad([0.3], [0.9])
    assert sc.report.forward_evaluations == formula(1_000_000, 100) == 3_817_896
    assert sc.report.taped_evaluations == 1_000_000 and sc.report.snapshots <= 100
    assert np.isfinite(v) and np.isfinite(gx).all() and np.isfinite(gp).all()


@pytest.mark.parametrize(("args", "err"), [
    ((0, 1), ValueError), ((5, 0), ValueError), ((5.0, 2), TypeError), ((True, 2), TypeError),
])
def test_bad_arguments(args, err):
    with pytest.raises(err):
        revolve_cost(*args)
    with pytest.raises(ValueError):
        revolve_split(1, 3)
