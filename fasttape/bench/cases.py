"""Benchmark cases: a family at a size, built and compiled by fasttape, with its point.

A :class:`Case` carries what every system needs to evaluate the same function: fasttape's
tape, the point, and the function as Python code generic over a math namespace (``fn(x, m)``),
which the peers call with their own functions to build their own graphs.  The structured
families (and ``chain``) are traced from that Python code with :func:`fasttape.trace`, as a
user would; the random families are built as tape arrays (``built == "arrays"``), pruned to
the instructions that reach the output (:mod:`~fasttape.bench.prune`), and the peers replay
the tape's instructions with their functions (:func:`replay_fn`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import fasttape as ft
from fasttape.bench import families as fam
from fasttape.bench.prune import prune
from fasttape.ops import OPS

__all__ = ["FAMILIES", "VECTORIZED", "Case", "build_case", "replay_fn", "size_param"]

#: Families of ``fasttape bench``, in table order.
FAMILIES = (
    "random-local",
    "random-uniform",
    "chain",
    "rosenbrock",
    "lennard-jones",
    "mlp",
    "autograd-west",
)

#: Families for which array-language peers (JAX, PyTorch, autograd) run vectorized code.
VECTORIZED = ("rosenbrock", "lennard-jones", "mlp")

Fn = Callable[[Sequence[Any], Any], Any]


@dataclass
class Case:
    """One family at one size.

    Attributes
    ----------
    family : str
    size : int
        The family's own size parameter (instructions for the random families and chain,
        variables, atoms, samples or ops for the others).
    tape : Tape
        fasttape's compiled tape (one output).
    x : ndarray
        The evaluation point.
    fn : callable
        ``fn(x, m) -> scalar``: the function over a sequence of scalars ``x`` and a math
        namespace ``m`` (see :mod:`fasttape.bench.families`).
    built : {"traced", "arrays"}
        How fasttape built the tape: traced from ``fn`` or generated as arrays.
    build_s, compile_s : float
        fasttape's build time (trace, or array generation and validation) and compile time
        (``ft.compile``, or pruning and revalidation for array-built tapes).
    data : dict
        Extra inputs of the vectorized peers (the MLP's features and targets).
    """

    family: str
    size: int
    tape: ft.Tape
    x: np.ndarray
    fn: Fn
    built: str
    build_s: float
    compile_s: float
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def n_nodes(self) -> int:
        """Instructions of fasttape's tape: the unit of every ns/node figure."""
        return self.tape.n_instructions


#: About this fraction of a random family's instructions reach its output (and survive
#: pruning) with the default window and mix; the generators are asked for ``n / fraction``.
LIVE_FRACTION = {"random-local": 0.5, "random-uniform": 0.28}


def size_param(family: str, n_nodes: int) -> int:
    """The family's size parameter for about ``n_nodes`` (live) instructions."""
    if family in LIVE_FRACTION:
        return max(1, round(n_nodes / LIVE_FRACTION[family]))
    if family == "chain":
        return max(1, int(n_nodes))
    return fam.structured_size(family, n_nodes)


def _chain_fn(n: int) -> Fn:
    def fn(x: Sequence[Any], m: Any) -> Any:
        y = x[0]
        for _ in range(n):
            y = m.sin(y)
        return y

    return fn


def _structured(family: str, size: int) -> tuple[Fn, int, np.ndarray, dict[str, Any]]:
    """(fn, n_inputs, point, data) of a traced family."""
    if family == "chain":
        return _chain_fn(size), 1, np.array([0.5]), {}
    if family == "rosenbrock":
        return fam.rosenbrock_fn, size, fam.rosenbrock_point(size), {}
    if family == "lennard-jones":
        return fam.lennard_jones_fn, 3 * size, fam.lennard_jones_point(size), {}
    if family == "mlp":
        feats, targets = fam.mlp_data(size)
        d, h = fam.MLP_SHAPE

        def fn(x: Sequence[Any], m: Any) -> Any:
            return fam.mlp_fn(x, m, feats, targets)

        return fn, h * d + 2 * h + 1, fam.mlp_point(), {"feats": feats, "targets": targets}
    if family == "autograd-west":

        def west(x: Sequence[Any], m: Any) -> Any:
            return fam.autograd_west_fn(x, m, size)

        return west, fam.WEST_INPUTS, fam.autograd_west_point(), {}
    raise ValueError(f"unknown family {family!r}")


def build_case(family: str, n_nodes: int) -> Case:
    """Build ``family`` at about ``n_nodes`` instructions with fasttape, timing each step."""
    size = size_param(family, n_nodes)
    if family in ("random-local", "random-uniform"):
        gen = fam.random_local if family == "random-local" else fam.random_uniform
        t0 = time.perf_counter()
        tape = gen(size)
        t1 = time.perf_counter()
        tape = prune(tape)  # the "compile" step of an array-built tape (see bench/prune.py)
        t2 = time.perf_counter()
        x = np.linspace(0.1, 0.9, tape.n_inputs)
        return Case(family, size, tape, x, replay_fn(tape), "arrays", t1 - t0, t2 - t1)
    fn, n_in, x, data = _structured(family, size)
    t0 = time.perf_counter()
    graph = ft.trace(lambda v: fn(v, ft), n_in)
    t1 = time.perf_counter()
    tape = ft.compile(graph)
    t2 = time.perf_counter()
    del graph
    return Case(family, size, tape, x, fn, "traced", t1 - t0, t2 - t1, data)


def replay_fn(tape: ft.Tape) -> Fn:
    """The tape as Python code: ``fn(x, m)`` replays its instructions with ``m``'s functions.

    This is how the peers see an array-built graph: straight-line code, one call
    ``m.<op name>(args...)`` per instruction (arguments in the tape's stored order), so a peer
    maps ops by name (:class:`~fasttape.bench.peers.base.OpNamespace`) and an op it has no
    function for is reported, not guessed.  Only the last output is returned.
    """
    names = [OPS[int(o)].name for o in tape.ops]
    arities = [OPS[int(o)].arity for o in tape.ops]
    args = tape.args.tolist()
    consts = tape.consts.tolist()
    n_in = tape.n_inputs
    out = int(tape.outputs[-1])

    def fn(x: Sequence[Any], m: Any) -> Any:
        table = {name: getattr(m, name) for name in dict.fromkeys(names)}  # each op looked up once
        vals = list(x[:n_in]) + consts
        k = 0
        for name, ar in zip(names, arities, strict=True):
            vals.append(table[name](*[vals[j] for j in args[k:k + ar]]))
            k += ar
        return vals[out]

    return fn
