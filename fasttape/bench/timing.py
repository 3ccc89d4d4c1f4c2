"""Timing and memory helpers of ``fasttape bench``: medians of calibrated samples, peak RSS.

Timing rule: a callable is warmed up (called once) before it is timed; each sample runs it
``inner`` times, with ``inner`` chosen so that a sample lasts at least ``min_sample`` seconds
(tiny graphs would otherwise time the clock), and the figure is the **median** of the samples
(robust to the other processes on a shared machine).  Several callables are sampled
round-robin (A, B, A, B, ...) so that slow drifts of the machine bias none of them.
"""

from __future__ import annotations

import ctypes
import gc
import math
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

__all__ = [
    "best_times", "calibrate", "median_times", "peak_rss_growth", "round_robin", "rss_supported",
    "traced_peak",
]


def calibrate(fns: dict[Any, Callable[[], Any]], min_sample: float) -> dict[Any, int]:
    """Calls per sample so that a sample of each callable lasts at least ``min_sample`` s.

    Times one call of each (which also warms it up).
    """
    inner = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        inner[name] = max(1, math.ceil(min_sample / max(t, 1e-9)))
    return inner


def round_robin(
    fns: dict[Any, Callable[[], Any]],
    repeat: int,
    *,
    inner: dict[Any, int] | int = 1,
    budget_s: float = math.inf,
    collect: bool = False,
) -> dict[Any, list[float]]:
    """Seconds per call of each callable: one sample per round, the rounds round-robin.

    Parameters
    ----------
    fns : dict
        Name -> callable of no arguments, already warmed up.
    repeat : int
        Rounds (at least 1).
    inner : int or dict
        Calls per sample (the sample is their mean), one count for all or per name.
    budget_s : float
        Stop after the round that passes this many seconds (at least one round runs).
    collect : bool
        Run the garbage collector before every sample (outside the timing).

    Returns
    -------
    dict
        Name -> list of samples, in seconds per call.
    """
    start = time.perf_counter()
    counts = inner if isinstance(inner, dict) else dict.fromkeys(fns, inner)
    samples: dict[Any, list[float]] = {k: [] for k in fns}
    for r in range(max(1, repeat)):
        if r > 0 and time.perf_counter() - start > budget_s:
            break
        for name, fn in fns.items():
            k = counts[name]
            if collect:
                gc.collect()
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            samples[name].append((time.perf_counter() - t0) / k)
    return samples


def median_times(
    fns: dict[Any, Callable[[], Any]],
    repeat: int,
    *,
    budget_s: float = math.inf,
    min_sample: float = 2e-3,
) -> dict[Any, float]:
    """Median seconds per call of each callable, sampled round-robin.

    Parameters
    ----------
    fns : dict
        Name -> callable of no arguments (already warmed up: the first call is not timed
        here, but one calibration call is).
    repeat : int
        Samples per callable (at least 1).
    budget_s : float
        Stop sampling (keeping at least one sample each) once this many seconds have passed.
    min_sample : float
        Shortest sample, in seconds.

    Returns
    -------
    dict
        Name -> median seconds per call.
    """
    start = time.perf_counter()
    inner = calibrate(fns, min_sample)
    left = budget_s - (time.perf_counter() - start)
    samples = round_robin(fns, repeat, inner=inner, budget_s=left)
    return {k: statistics.median(v) for k, v in samples.items()}


def best_times(
    fns: dict[Any, Callable[[], Any]], repeat: int, *, inner: int = 1, collect: bool = False
) -> dict[Any, float]:
    """Best (minimum) seconds per call of each callable, after one untimed warm-up call each.

    The samples are taken round-robin (:func:`round_robin`), so that slow drifts of the
    machine bias none of the callables.
    """
    for fn in fns.values():
        fn()
    samples = round_robin(fns, repeat, inner=inner, collect=collect)
    return {k: min(v) for k, v in samples.items()}


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    # Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _trim() -> None:
    # Hand freed heap memory back to the OS, so that the growth we measure next is new memory
    # and not pages an earlier step freed but the allocator kept (glibc only; else no-op).
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_supported() -> bool:
    """Whether :func:`peak_rss_growth` can measure on this system (Linux /proc)."""
    return _status_kb("VmHWM") is not None and _reset_peak()


def peak_rss_growth(fn: Callable[[], Any]) -> tuple[Any, int | None]:
    """Run ``fn``; return its result and how far the peak resident memory rose above the start.

    Counts every allocation (Python, NumPy, C++ libraries), unlike ``tracemalloc``.  None
    where /proc is unavailable.  Concurrent threads' allocations count too.
    """
    _trim()
    before = _status_kb("VmRSS")
    ok = before is not None and _reset_peak()
    result = fn()
    peak = _status_kb("VmHWM") if ok else None
    if peak is None or before is None:
        return result, None
    return result, max(0, peak - before)


def traced_peak(fn: Callable[[], Any]) -> int:
    """Bytes allocated at peak by ``fn()`` above what was allocated before it.

    Measured with :mod:`tracemalloc`, which traces Python's and NumPy's allocations (not those
    of C++ libraries: :func:`peak_rss_growth` sees those).  Warm ``fn`` up first if its first
    call compiles or allocates caches that should not count.
    """
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
