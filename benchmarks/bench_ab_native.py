"""The native tier's choices, each against its absence, timed in turn in one process.

    python benchmarks/bench_ab_native.py [--choices fast,stored,shared,dead,shape]
                                         [--families random_local,chain] [--sizes 1e4]

Each choice compiles the same tape twice, with the choice and with it switched off for that
compile (through the modules' public names), then times ``value_and_grad`` of both in
alternating rounds (median of ``--repeat`` rounds of 41 calls each); both must give the
interpreter's bits.

``fast``
    the reverse sweeps without the interpreter's zero rules
    (``fasttape.native.irtext.accumulate``) against sweeps with the rules as selects, written
    here (the tier compiled both, before it let the interpreter take the points where the
    check fails).
``stored``
    ``sin``'s and ``cos``'s partials stored by one ``sincos`` in the forward sweep
    (``Layout.part_at``) against ``cos`` and ``sin`` called again in the reverse sweep.
``shared``
    an instruction that repeats an earlier one reading its value (``Layout.value_at``), and
    a ``sin`` or ``cos`` reading the results of an earlier ``sincos`` on the same argument
    (``Layout.pair_from``), against computing them again.
``dead``
    the tape's dead code dropped before it is laid out (``emit.without_dead_code``) against
    kept (and skipped) in place.
``shape``
    the level-0 :class:`fasttape.native.emit.Shape` against level 1's, at level 0.

docs/native.md quotes these; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, _ROOT)

from bench_native import tape_and_point  # noqa: E402

from fasttape.native import emit, irtext, loops, native  # noqa: E402
from fasttape.native.translate import UNIT_PARTIALS  # noqa: E402


@contextlib.contextmanager
def _without(choice: str) -> Iterator[None]:
    """Compiles inside this block leave ``choice`` out."""
    if choice == "fast":
        keep = irtext.accumulate
        # id(lines) -> (lines, the compares emitted): the list is kept so its id is not reused
        emitted: dict[int, tuple[list[str], set[str]]] = {}

        def rules(lines: list[str], expr: str, g: str, cur: str, tag: str,
                  d: str | None) -> str:
            # The interpreter's rules (fasttape/kernels/sweep.py) as selects: nothing moves
            # where g is zero, nothing is added where d is.
            if g == "0.0":
                return cur
            done = emitted.setdefault(id(lines), (lines, set()))[1]
            nonzero = f"%nz.{g[1:]}"
            if nonzero not in done:
                lines.append(f"  {nonzero} = fcmp une double {g}, 0.0")
                done.add(nonzero)
            new, unit = f"%n{tag}", UNIT_PARTIALS.get(expr)
            if unit is not None:
                op = "fadd" if unit > 0 else "fsub"
                if cur == "0.0":  # 0.0 + g or 0.0 - g: what the select would pick
                    lines.append(f"  {new} = {op} double 0.0, {g}")
                    return new
                lines.append(f"  %t{tag} = {op} double {cur}, {g}")
                lines.append(f"  {new} = select i1 {nonzero}, double %t{tag}, double {cur}")
                return new
            lines.append(f"  %m{tag} = fmul double {g}, {d}")
            lines.append(f"  %t{tag} = fadd double {cur}, %m{tag}")
            lines.append(f"  %z{tag} = fcmp une double {d}, 0.0")
            lines.append(f"  %u{tag} = select i1 %z{tag}, double %t{tag}, double {cur}")
            lines.append(f"  {new} = select i1 {nonzero}, double %u{tag}, double {cur}")
            return new

        emit.accumulate = loops.accumulate = rules
        try:
            yield
        finally:
            emit.accumulate = loops.accumulate = keep
    elif choice == "stored":
        keep_init = emit.Layout.__post_init__

        def no_stored(self: emit.Layout) -> None:
            keep_init(self)
            self.part_at[:] = -1

        emit.Layout.__post_init__ = no_stored  # type: ignore[method-assign]
        try:
            yield
        finally:
            emit.Layout.__post_init__ = keep_init  # type: ignore[method-assign]
    elif choice == "shared":
        keep_share, keep_pairs = emit.Layout._share_values, emit.Layout._pair_sources

        def computed_twice(self: emit.Layout) -> np.ndarray:
            return np.arange(self.n_slots, dtype=np.int64)

        def called_twice(self: emit.Layout) -> np.ndarray:
            return np.full(self.n_instr, -1, dtype=np.int64)

        emit.Layout._share_values = computed_twice  # type: ignore[method-assign]
        emit.Layout._pair_sources = called_twice  # type: ignore[method-assign]
        try:
            yield
        finally:
            emit.Layout._share_values = keep_share  # type: ignore[method-assign]
            emit.Layout._pair_sources = keep_pairs  # type: ignore[method-assign]
    elif choice == "dead":
        keep_dead = emit.without_dead_code
        emit.without_dead_code = lambda arrays: arrays
        try:
            yield
        finally:
            emit.without_dead_code = keep_dead
    elif choice == "shape":
        keep_shapes = emit.SHAPES
        emit.SHAPES = (keep_shapes[1], keep_shapes[1])
        try:
            yield
        finally:
            emit.SHAPES = keep_shapes
    else:
        raise ValueError(f"unknown choice {choice!r}: fast, stored, shared, dead or shape")


def _median_vg(nt: Any, x: np.ndarray) -> float:
    nt.value_and_grad(x)
    times = []
    for _ in range(41):
        t = time.perf_counter()
        nt.value_and_grad(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e6


def row(choice: str, family: str, n: int, repeat: int) -> str:
    """One Markdown row: compile seconds and ``value_and_grad`` us with and without."""
    tape, x = tape_and_point(family, n)
    opt = 0 if choice == "shape" else None
    t = time.perf_counter()
    on = native(tape, opt=opt, cache_entries=False, processes=1)
    c_on = time.perf_counter() - t
    with _without(choice):
        t = time.perf_counter()
        off = native(tape, opt=opt, cache_entries=False, processes=1)
        c_off = time.perf_counter() - t
    v0, g0 = tape.value_and_grad(x)
    same = all(np.array_equal(np.array([v0, *g0]).view(np.int64),
                              np.array([v, *g]).view(np.int64))
               for v, g in (nt.value_and_grad(x) for nt in (on, off)))
    times: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(repeat):
        for k in (("on", "off") if r % 2 == 0 else ("off", "on")):
            times[k].append(_median_vg(on if k == "on" else off, x))
    m_on, m_off = (float(np.median(times[k])) for k in ("on", "off"))
    return (f"| {choice} | {family} | {len(tape.ops)} | {c_on:.2f} / {c_off:.2f} | "
            f"{m_on:.1f} / {m_off:.1f} | {m_on / m_off:.2f} | {'yes' if same else 'NO'} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--choices", default="fast,stored,shared,dead,shape")
    ap.add_argument("--families", default="random_local,random_uniform,chain")
    ap.add_argument("--sizes", default="1e4")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    print("| choice | family | instructions | compile s, with / without | native vg us, "
          "with / without | ratio | bitwise |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for choice in args.choices.split(","):
        for family in args.families.split(","):
            for size in args.sizes.split(","):
                print(row(choice, family, int(float(size)), args.repeat), flush=True)


def bench_ab_native_smoke() -> None:
    """A tiny run of every choice (``python -m pytest benchmarks``)."""
    main(["--families", "random_local,chain", "--sizes", "300", "--repeat", "1"])


if __name__ == "__main__":
    main()
