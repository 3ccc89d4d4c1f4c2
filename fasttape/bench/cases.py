"""Benchmark cases: a family at a size, built and compiled by fasttape, with its point.

A :class:`Case` carries what every system needs to evaluate the same function: fasttape's
tape, the point, and the function as Python code generic over a math namespace (``fn(x, m)``),
which the peers call with their own functions to build their own graphs.  The structured
families (and ``chain``) are traced from that Python code with :func:`fasttape.trace`, as a
user would; the random families are built as tape arrays (``built == "arrays"``), pruned to
the instructions that reach the output (:mod:`~fasttape.bench.prune`), and the peers replay
the tape's instructions with their functions (:func:`replay_fn`).

The tensor families (:data:`TENSOR_FAMILIES`, ``-vec``) are the same functions written with
arrays (:func:`~fasttape.bench.families.vectorized_fn`): fasttape traces that code on tensors
(``ft.trace(fn, shapes=...)``) into a :class:`~fasttape.TensorTape`, the array peers run it,
and the case also carries the scalar tape of the same function (its scalar twin, traced
element by element) for a row of its own.  Their size is the scalar twin's.
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
from fasttape.tensor.tensor import matmul as tensor_matmul

__all__ = [
    "FAMILIES", "SCALAR_FAMILIES", "TENSOR_FAMILIES", "TRACE_NS", "VECTORIZED", "Case",
    "build_case", "replay_fn", "size_param", "tensor_case",
]

#: Families whose fasttape tape is a scalar tape, in table order.
SCALAR_FAMILIES = (
    "random-local",
    "random-uniform",
    "chain",
    "rosenbrock",
    "lennard-jones",
    "mlp",
    "autograd-west",
)

#: Families whose fasttape tape is a tensor tape traced from array code.
TENSOR_FAMILIES = ("rosenbrock-vec", "lennard-jones-vec", "mlp-vec")

#: Families of ``fasttape bench``, in table order.
FAMILIES = SCALAR_FAMILIES + TENSOR_FAMILIES

#: Families for which array-language peers (JAX, PyTorch, autograd) run vectorized code.
VECTORIZED = ("rosenbrock", "lennard-jones", "mlp", *TENSOR_FAMILIES)

#: The array namespace fasttape's tensor trace runs the vectorized code with: NumPy, whose
#: functions dispatch to traced tensors, except two names.  ``matmul`` is the tensor
#: module's: NumPy's ``np.matmul`` ufunc does not trace when its first operand is a constant
#: array (the MLP's features times a traced weight matrix).
TRACE_NS = fam.ArrayNamespace(np, matmul=tensor_matmul, logsumexp=ft.logsumexp)

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
    tape : Tape or TensorTape
        fasttape's compiled tape (one output); a TensorTape for the tensor families.
    x : ndarray
        The evaluation point.
    fn : callable
        ``fn(x, m) -> scalar``: the function over a sequence of scalars ``x`` and a math
        namespace ``m`` (see :mod:`fasttape.bench.families`).
    built : {"traced", "arrays", "tensor"}
        How fasttape built the tape: traced from ``fn``, generated as arrays, or traced on
        tensors from the vectorized code.
    build_s, compile_s : float
        fasttape's build time (trace, or array generation and validation) and compile time
        (``ft.compile``, or pruning and revalidation for array-built tapes).
    data : dict
        Extra inputs of the vectorized peers (the MLP's features and targets).
    scalar_tape : Tape or None
        Tensor families: the scalar tape of the same function (``fn`` traced element by
        element), None where it was not built (too big).
    scalar_build_s : float
        Its trace and compile time.
    nodes : int or None
        Tensor families: the size in scalar instructions (the scalar tape's, or an estimate
        where it was not built), the unit of their ns/node figures.
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
    scalar_tape: ft.Tape | None = None
    scalar_build_s: float = 0.0
    nodes: int | None = None

    @property
    def n_nodes(self) -> int:
        """Instructions of fasttape's tape, or of the scalar twin of a tensor family: the
        unit of every ns/node figure."""
        return self.tape.n_instructions if self.nodes is None else self.nodes


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
    if family in TENSOR_FAMILIES:
        return tensor_case(family, size)
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


def tensor_case(family: str, size: int, *, widths: Sequence[int] | None = None,
                scalar: bool = True) -> Case:
    """A tensor family at its own size parameter (variables, atoms, or the MLP's batch).

    Parameters
    ----------
    family : str
        One of :data:`TENSOR_FAMILIES`.
    size : int
        Variables (``rosenbrock-vec``), atoms (``lennard-jones-vec``), samples (``mlp-vec``).
    widths : sequence of int, optional
        ``mlp-vec``'s layer widths (default :data:`~fasttape.bench.families.MLP_VEC_WIDTHS`;
        :data:`~fasttape.bench.families.MNIST_WIDTHS` for the MNIST-sized network, which has
        no scalar twin: more than one output).
    scalar : bool
        Also build the scalar twin's tape (:attr:`Case.scalar_tape`).
    """
    if family not in TENSOR_FAMILIES:
        raise ValueError(f"{family!r} is not a tensor family ({', '.join(TENSOR_FAMILIES)})")
    data: dict[str, Any] = {}
    if family == "mlp-vec":
        widths = tuple(widths or fam.MLP_VEC_WIDTHS)
        feats, targets = fam.mlp_vec_data(size, widths)
        x = fam.mlp_vec_point(widths)
        data = {"feats": feats, "targets": targets, "widths": widths}
        if widths[-1] == 1:

            def fn(v: Sequence[Any], m: Any) -> Any:
                return fam.mlp_vec_fn(v, m, feats, targets, widths)

            per_unit = fam.mlp_vec_nodes_per_sample(widths)
        else:  # class labels: no scalar twin (the scalar loss has one output)
            data["rows"] = np.arange(size)
            fn, scalar, per_unit = None, False, fam.mlp_vec_nodes_per_sample(widths)
    else:
        fn, _, x, _ = _structured(family.removesuffix("-vec"), size)
        per_unit = {"rosenbrock-vec": 6, "lennard-jones-vec": 10.5 * (size - 1) / 2}[family]
    case = Case(family, size, None, x, fn, "tensor", 0.0, 0.0, data)  # type: ignore[arg-type]
    f = fam.vectorized_fn(family, case, TRACE_NS)
    t0 = time.perf_counter()
    graph = ft.trace(f, shapes=[x.shape])
    t1 = time.perf_counter()
    case.tape = ft.compile(graph)
    case.build_s, case.compile_s = t1 - t0, time.perf_counter() - t1
    del graph
    if scalar and fn is not None:
        t0 = time.perf_counter()
        case.scalar_tape = ft.compile(ft.trace(lambda v: fn(v, ft), x.size))
        case.scalar_build_s = time.perf_counter() - t0
        case.nodes = case.scalar_tape.n_instructions
    else:
        case.nodes = max(1, round(per_unit * size))
    return case


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
