"""Binomial checkpointing (Griewank's revolve): counting formulas and the schedule.

Reversing ``T`` applications of a step with room for ``s`` state snapshots (the initial state
included) needs, at the minimum, ``r*T - C(s+r, s+1)`` plain forward steps ("advances"),
where ``r`` is the smallest integer with ``C(s+r, s) >= T`` (Griewank 1992; Griewank and
Walther, ACM TOMS 26, 2000).  Each step is also evaluated once more with partials and
reversed; those ``T`` taped steps are not counted by the formula.

The schedule is the recursion: advance ``m`` steps from the snapshot of state ``l``, store
state ``l + m``, reverse the right part with one snapshot fewer, free it, reverse the left
part.  :func:`revolve_split` picks the ``m`` that attains the formula.  The Numba versions
(used by the scan driver) live in ``fasttape/kernels/checkpoint.py``; this module
wraps them with argument checks and adds a pure-Python schedule for reading and testing.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from math import comb

from fasttape.kernels import checkpoint as _k

__all__ = ["repetition_number", "revolve_cost", "revolve_split", "schedule", "optimal_cost_dp"]


def _check(n_steps: int, snapshots: int) -> tuple[int, int]:
    for name, v in (("n_steps", n_steps), ("snapshots", snapshots)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    n, s = int(n_steps), int(snapshots)
    if n < 1:
        raise ValueError(f"n_steps must be >= 1, got {n}")
    if s < 1:
        raise ValueError(f"snapshots must be >= 1 (the initial state is one), got {s}")
    if n >= 2**31 or s >= 2**31:
        raise ValueError("n_steps and snapshots must be < 2**31")
    return n, s


def repetition_number(n_steps: int, snapshots: int) -> int:
    """Smallest ``r >= 0`` with ``C(snapshots + r, snapshots) >= n_steps``.

    Every step is evaluated at most ``r`` times by plain forward steps (and once taped).
    """
    n, s = _check(n_steps, snapshots)
    return int(_k.revolve_reps(n, s)[0])


def revolve_cost(n_steps: int, snapshots: int) -> int:
    """Minimal number of advances to reverse ``n_steps`` steps: ``r*T - C(s+r, s+1)``.

    Examples
    --------
    >>> revolve_cost(1_000_000, 100)   # r = 4
    3817896
    >>> revolve_cost(10, 1)            # one snapshot: 9 + 8 + ... + 1
    45
    """
    n, s = _check(n_steps, snapshots)
    r = repetition_number(n, s)
    return r * n - comb(s + r, s + 1)


def revolve_split(n_steps: int, snapshots: int) -> int:
    """The optimal first advance ``m`` for ``n_steps >= 2`` and ``snapshots >= 2``."""
    n, s = _check(n_steps, snapshots)
    if n < 2 or s < 2:
        raise ValueError("revolve_split needs n_steps >= 2 and snapshots >= 2")
    return int(_k.revolve_split(n, s))


def schedule(n_steps: int, snapshots: int) -> Iterator[tuple[str, int, int]]:
    """The revolve schedule as actions, in order (pure Python, for reading and tests).

    Yields ``("advance", t0, t1)`` (plain steps ``t0 .. t1 - 1`` from the state on top of
    the snapshot stack), ``("push", t, 0)`` (store state ``t``), ``("pop", t, 0)`` (free it)
    and ``("reverse", t, 0)`` (evaluate step ``t`` with partials and reverse it).  Steps are
    reversed in the order ``T - 1, ..., 0``.  Same recursion as the Numba driver.
    """
    n, s = _check(n_steps, snapshots)
    yield ("push", 0, 0)
    stack: list[tuple[int, int, int]] = []
    pos, c = 0, s
    while True:
        if n == 1 or c == 1:
            for k in range(n - 1, -1, -1):
                if k:
                    yield ("advance", pos, pos + k)
                yield ("reverse", pos + k, 0)
            if not stack:
                break
            top = stack.pop()
            yield ("pop", top[0] + top[1], 0)
            pos, n, c = top
        else:
            m = int(_k.revolve_split(n, c))
            yield ("advance", pos, pos + m)
            yield ("push", pos + m, 0)
            stack.append((pos, m, c))
            pos, n, c = pos + m, n - m, c - 1
    yield ("pop", 0, 0)


def optimal_cost_dp(n_steps: int, snapshots: int) -> list[list[int]]:
    """Minimal advances for every ``n <= n_steps``, ``c <= snapshots`` by dynamic programming.

    ``table[c][n]`` is ``min over m`` of ``m + table[c][m] + table[c-1][n-m]`` (with one
    snapshot, ``n(n-1)/2``): an independent oracle for :func:`revolve_cost` (O(n^2 s) time,
    small sizes only).
    """
    n_max, s = _check(n_steps, snapshots)
    inf = float("inf")
    t = [[0] * (n_max + 1) for _ in range(s + 1)]
    for n in range(1, n_max + 1):
        t[1][n] = n * (n - 1) // 2
    for c in range(2, s + 1):
        for n in range(2, n_max + 1):
            best = inf
            for m in range(1, n):
                v = m + t[c][m] + t[c - 1][n - m]
                if v < best:
                    best = v
            t[c][n] = int(best)
    return t
