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
from collections.abc import Callable
from typing import Any

__all__ = ["median_times", "peak_rss_growth", "rss_supported"]


def median_times(
    fns: dict[str, Callable[[], Any]],
    repeat: int,
    *,
    budget_s: float = math.inf,
    min_sample: float = 2e-3,
) -> dict[str, float]:
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
    inner: dict[str, int] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        inner[name] = max(1, math.ceil(min_sample / max(t, 1e-9)))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(1, repeat)):
        if r > 0 and time.perf_counter() - start > budget_s:
            break
        for name, fn in fns.items():
            k = inner[name]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            samples[name].append((time.perf_counter() - t0) / k)
    return {k: statistics.median(v) for k, v in samples.items()}


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
