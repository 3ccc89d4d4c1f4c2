"""Automatic tiering: a tape that runs on the interpreter until it is hot, then on machine code.

:class:`TieredTape` (``tape.native(tier_after=N)``) counts its calls; the ``N``-th starts
compiling the tape (:func:`fasttape.native.tape.native`) on a background thread, and calls go
on running the interpreter meanwhile.  When the native tape is ready, the background thread
times both on the last point a call evaluated (native code is slower than the interpreter on
some tapes: deep chains of libm calls, structured tapes above some 1e5 instructions) and, if
the native tape is faster, it replaces the interpreter in one attribute assignment.  Every
call runs entirely on one or the other, and both give the same bits: the switch changes the
speed of the calls, never their results.  docs/native.md says when it pays.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from fasttape.native.tape import NativeTape, check_options, interpreted, native
from fasttape.tape import TapeRecord

__all__ = ["TieredTape", "tiered"]


class TieredTape:
    """A tape that switches itself to native code after ``tier_after`` calls.

    Attributes
    ----------
    tape : TapeRecord
        The interpreted tape (also what runs until the native tape is ready).
    native : NativeTape or None
        The compiled tape once ready, else None.
    error : Exception or None
        Why compiling failed, if it did (the calls then stay on the interpreter).
    calls : int
        Calls so far (``value``, ``value_and_grad`` and ``grad``; a batch counts once).
    timings : tuple of float or None
        ``(interpreter, native)`` seconds of one ``value_and_grad`` at the last point seen,
        measured before switching; None before, or when no single point was seen or
        ``check=False``.
    switched : bool
        Whether calls now run the native tape.
    """

    def __init__(self, tape: TapeRecord, tier_after: int, options: dict[str, Any],
                 check: bool = True) -> None:
        self.tape = tape
        self.timings: tuple[float, float] | None = None
        self.switched = False
        self._check = check
        self._last: tuple[Any, Any] | None = None  # (x, p) of the last single-point call
        self.native: NativeTape | None = None
        self.error: Exception | None = None
        self.calls = 0
        self._after = tier_after
        self._options = options
        self._impl: Any = tape  # what calls run: the tape, then the native tape
        self._started = threading.Lock()  # held once the compile has started
        self._ready = threading.Event()
        if tier_after == 0:
            self._start()

    def __repr__(self) -> str:
        state = "native" if self.switched else \
            "interpreted (native code was slower)" if self.native is not None else \
            "compile failed" if self.error is not None else \
            "compiling" if self._started.locked() else \
            f"interpreted ({self.calls} of {self._after} calls)"
        return f"<fasttape.TieredTape: {len(self.tape.ops)} instructions, {state}>"

    @property
    def compiling(self) -> bool:
        """Whether the compile has started (it may have finished)."""
        return self._started.locked()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the compile has finished (or failed; see :attr:`error`), at most
        ``timeout`` seconds; return whether it has.  Calls never need this: it is for tests
        and for a program that wants the native speed from a known point on."""
        return self._ready.wait(timeout)

    def _start(self) -> None:
        if not self._started.acquire(blocking=False):
            return  # another call started it
        threading.Thread(target=self._compile, name="fasttape-tier", daemon=True).start()

    def _compile(self) -> None:
        try:
            nt = native(self.tape, **self._options)
        except Exception as e:  # kept for the caller (.error); the calls stay interpreted
            self.error = e
        else:
            self.native = nt
            try:
                faster = self._faster(nt)
            except Exception as e:  # timing failed: stay on the interpreter, say why
                self.error, faster = e, False
            if faster:
                self.switched = True
                self._impl = nt  # the switch: one assignment, atomic for the calls that follow
        finally:
            self._ready.set()

    def _faster(self, nt: NativeTape) -> bool:
        """Whether ``nt`` runs ``value_and_grad`` faster than the interpreter at the last
        point seen (best of alternating rounds; True when there is nothing to time)."""
        last = self._last
        if not self._check or last is None:
            return True
        # A copy: the caller may be changing its array meanwhile (an optimizer's step).
        x = np.array(last[0], dtype=np.float64)
        p = last[1]
        best = [float("inf"), float("inf")]
        for _ in range(7):
            for k, f in enumerate((self.tape.value_and_grad, nt.value_and_grad)):
                t = time.perf_counter()
                f(x, p, output=0)
                best[k] = min(best[k], time.perf_counter() - t)
        self.timings = (best[0], best[1])
        return best[1] < best[0]

    def _count(self) -> Any:
        impl = self._impl
        self.calls += 1  # under concurrent calls the count may lag: only speed depends on it
        if impl is self.tape and self.calls >= self._after and not self._started.locked():
            self._start()
        return impl

    def _seen(self, impl: Any, x: Any, p: Any) -> None:
        """Keep the point of a successful interpreted single-point call, for :meth:`_faster`."""
        if impl is self.tape and self.native is None and np.ndim(x) == 1:
            self._last = (x, p)

    # ------------------------------------------------------------------ calls
    n_inputs = interpreted("n_inputs", "Number of inputs (the gradient's length).")
    n_outputs = interpreted("n_outputs", "Number of outputs.")

    def value(self, x: Any, p: Any = None, *, out: np.ndarray | None = None,
              threads: int | None = None) -> Any:
        """The outputs at ``x`` (one point or a batch), as :meth:`fasttape.Tape.value`."""
        impl = self._count()
        res = impl.value(x, p, out=out, threads=threads)
        self._seen(impl, x, p)
        return res

    def value_and_grad(self, x: Any, p: Any = None, *, output: int | None = None,
                       out: np.ndarray | None = None,
                       threads: int | None = None) -> tuple[Any, np.ndarray]:
        """Value of one output and its gradient, as :meth:`fasttape.Tape.value_and_grad`."""
        impl = self._count()
        res = impl.value_and_grad(x, p, output=output, out=out, threads=threads)
        self._seen(impl, x, p)
        return res

    def grad(self, x: Any, p: Any = None, *, output: int | None = None,
             out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
        """The gradient of one output at ``x``, as :meth:`fasttape.Tape.grad`."""
        impl = self._count()
        res = impl.grad(x, p, output=output, out=out, threads=threads)
        self._seen(impl, x, p)
        return res

    __call__ = value


def tiered(tape: TapeRecord, tier_after: int, *, check: bool = True,
           **options: Any) -> TieredTape:
    """``tape`` on the interpreter until its ``tier_after``-th call, which starts compiling it
    to machine code in the background (``options`` as for :func:`fasttape.native.tape.native`).

    Parameters
    ----------
    tape : TapeRecord
        A validated scalar tape.
    tier_after : int
        Calls before compiling (``0``: start at once).
    check : bool
        Switch only if the native tape is faster at the last point a call evaluated (timed
        in the background thread); False: switch as soon as it is compiled.
    **options
        ``piece_size``, ``opt``, ``loops``, ``cache_entries`` (``progress`` is refused: the
        compile is in the background).

    Returns
    -------
    TieredTape
    """
    if isinstance(tier_after, bool) or not isinstance(tier_after, (int, np.integer)) \
            or tier_after < 0:
        raise ValueError(f"tier_after must be an int >= 0 (calls before compiling), "
                         f"got {tier_after!r}")
    unknown = set(options) - {"piece_size", "opt", "loops", "cache_entries"}
    if unknown:
        raise TypeError(f"tiered() got unexpected options {sorted(unknown)}: it takes "
                        "piece_size, opt, loops and cache_entries")
    # Check the options now (a bad one would otherwise fail only in the background thread).
    check_options(**{k: v for k, v in options.items() if k != "cache_entries"})
    return TieredTape(tape, int(tier_after), options, check=bool(check))
