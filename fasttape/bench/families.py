"""Graph families for benchmarks and tests.

Two kinds:

- random graphs built directly as tape arrays (:func:`random_local`, :func:`random_uniform`,
  :func:`chain`).  Each generator is vectorised NumPy (no Python loop per node), so graphs of
  10 million nodes are built in a second or two.  They return a validated
  :class:`fasttape.Tape`.
- structured functions written as a user would write them in Python
  (:func:`rosenbrock_fn`, :func:`lennard_jones_fn`, :func:`mlp_fn`, :func:`autograd_west_fn`),
  generic over the math namespace ``m`` they get (``fasttape`` to trace, :data:`FLOATS` to
  evaluate on Python floats, or a peer's module), with a size helper and a point each, and a
  builder that traces and compiles them (:func:`rosenbrock`, :func:`lennard_jones`,
  :func:`mlp`, :func:`autograd_west`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fasttape.api import Tape
from fasttape.bench.pyops import FLOATS as _PY_FLOATS
from fasttape.ops import OP_BY_NAME
from fasttape.signature import same_arguments
from fasttape.trace import sum as _ft_sum

__all__ = [
    "random_local",
    "random_uniform",
    "chain",
    "DEFAULT_MIX",
    "FLOATS",
    "pairwise_sum",
    "rosenbrock_fn",
    "rosenbrock_point",
    "rosenbrock",
    "lennard_jones_fn",
    "lennard_jones_point",
    "lennard_jones",
    "MLP_SHAPE",
    "mlp_data",
    "mlp_fn",
    "mlp_point",
    "mlp",
    "autograd_west_fn",
    "autograd_west_point",
    "autograd_west",
    "WEST_INPUTS",
    "structured_size",
    "ArrayNamespace",
    "MLP_VEC_WIDTHS",
    "MNIST_WIDTHS",
    "mlp_vec_data",
    "mlp_vec_fn",
    "mlp_vec_point",
    "mlp_vec_nodes_per_sample",
    "vectorized_fn",
]

#: Op mix of :func:`random_local` (name -> weight).  Tuned so that values stay O(1) and
#: adjoints neither vanish nor explode along the depth (about n/50 levels): with the defaults
#: and seed 0 the largest input gradient stays between 1e-6 and 1e10 for 1e3 to 1e7 nodes (a
#: random walk in log scale, so it is not monotone in n).  A
#: benchmark whose adjoints underflow to zero would time the reverse sweep skipping work, one
#: whose adjoints overflow would time inf/NaN arithmetic.  About half of the instructions reach
#: the output, as in any random graph.
DEFAULT_MIX: dict[str, float] = {
    "add": 0.26,
    "sub": 0.18,
    "mul": 0.10,
    "sin": 0.10,
    "cos": 0.05,
    "tanh": 0.10,
    "sigmoid": 0.02,
    "atan": 0.05,
    "square": 0.05,
    "exp": 0.05,
    "sqrt": 0.04,
}


_BOUNDED = {"sin", "cos", "tanh", "sigmoid", "atan"}


def _codes(names: set[str]) -> list[int]:
    return [OP_BY_NAME[k].code for k in names]


def _random_graph(
    draw_args: Callable[[np.random.Generator, np.ndarray, int], np.ndarray],
    n_nodes: int,
    *,
    window: int = 100,
    n_inputs: int = 100,
    mix: dict[str, float] | None = None,
    seed: int = 0,
    grad_mode: str = "stored",
) -> Tape:
    """The random graph of :func:`random_local` or :func:`random_uniform` (whose signature,
    shown by help(), is this one's after ``draw_args``).

    The two differ only in ``draw_args(rng, owner, window)``, which returns the argument
    slots given each argument's instruction slot ``owner``; the op sequence, the fixes that
    keep values finite and the single output are shared.
    """
    if n_nodes < 1 or window < 1 or n_inputs < 2:
        raise ValueError("n_nodes and window must be >= 1 and n_inputs >= 2")
    rng = np.random.default_rng(seed)
    ops, ar = _draw_ops(rng, n_nodes, mix)
    owner = np.repeat(n_inputs + np.arange(n_nodes), ar)
    args = draw_args(rng, owner, window)
    _keep_finite(ops, ar, args, n_inputs)
    return Tape.from_arrays(ops, args, np.zeros(0), [n_inputs + n_nodes - 1], n_inputs,
                            grad_mode=grad_mode)


@same_arguments(_random_graph, skip=1)
def random_local(*args: Any, **kwargs: Any) -> Tape:
    """A random graph whose arguments lie among the previous ``window`` slots.

    The op sequence is drawn from ``mix``; arguments are drawn uniformly from the window, then
    a few are moved to an earlier slot to keep values finite (see the comments in the code).

    Parameters
    ----------
    n_nodes : int
        Number of instructions.
    window : int
        Arguments are drawn uniformly from the ``window`` slots before the instruction.
    n_inputs : int
        Number of inputs (the first slots).
    mix : dict, optional
        Op name -> probability; defaults to :data:`DEFAULT_MIX`.
    seed : int
        Seed for NumPy's generator: the same arguments give the same tape.
    grad_mode : {"stored", "lean"}
        Passed to :meth:`Tape.from_arrays`.

    Returns
    -------
    Tape
        One output, the last instruction.  Evaluate it at points in [0.1, 0.9].
    """
    return _random_graph(_local_args, *args, **kwargs)


@same_arguments(_random_graph, skip=1)
def random_uniform(*args: Any, **kwargs: Any) -> Tape:
    """A random graph whose binary ops read a slot anywhere earlier (cache-hostile).

    Same conventions as :func:`random_local` (op sequence drawn from ``mix``, the same fixes
    that keep values finite, one output: the last instruction), but the second argument of
    every binary op is drawn uniformly among *all* earlier slots, so both sweeps read (and the
    reverse sweep writes) memory at random addresses: the worst case for caches once the tape
    outgrows them.  The first argument stays within ``window`` slots, so that over a quarter
    of the graph reaches the output (see the comment in the code).  Evaluate it at points in
    [0.1, 0.9].

    Parameters
    ----------
    n_nodes, n_inputs, mix, seed, grad_mode
        As in :func:`random_local`.
    window : int
        First arguments are drawn uniformly from the ``window`` slots before the instruction.

    Returns
    -------
    Tape
        One output, the last instruction.
    """
    return _random_graph(_uniform_args, *args, **kwargs)


def _local_args(rng: np.random.Generator, owner: np.ndarray, window: int) -> np.ndarray:
    """Every argument uniform among the ``window`` slots before its instruction."""
    lo = np.maximum(owner - window, 0)
    return lo + (rng.random(owner.shape[0]) * (owner - lo)).astype(np.int64)


def _uniform_args(rng: np.random.Generator, owner: np.ndarray, window: int) -> np.ndarray:
    """First arguments as in :func:`_local_args`, the others uniform among all earlier slots."""
    args = (rng.random(owner.shape[0]) * owner).astype(np.int64)
    # With every argument uniform the output would depend on well under 1% of the graph (a
    # slot i is read about 1.5 ln(n / i) times: late slots mostly never), and a reverse sweep
    # that skips zero adjoints would time nothing.  So each instruction's *first* argument is
    # drawn from the previous ``window`` slots, which keeps over a quarter of the graph reachable
    # from the output (half in random_local); the other argument of binary ops stays uniform.
    first = np.ones(owner.shape[0], dtype=bool)
    first[1:] = owner[1:] != owner[:-1]
    lo = np.maximum(owner[first] - window, 0)
    args[first] = lo + (rng.random(int(first.sum())) * (owner[first] - lo)).astype(np.int64)
    return args


def _draw_ops(
    rng: np.random.Generator, n_nodes: int, mix: dict[str, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Op codes (uint8) of ``n_nodes`` instructions drawn from ``mix``, and their arities."""
    mix = DEFAULT_MIX if mix is None else mix
    names = list(mix)
    p = np.array([mix[k] for k in names], dtype=float)
    codes = np.array([OP_BY_NAME[k].code for k in names], dtype=np.uint8)
    arity = np.array([OP_BY_NAME[k].arity for k in names])
    choice = rng.choice(len(names), size=n_nodes, p=p / p.sum())
    return codes[choice], arity[choice]


def _keep_finite(ops: np.ndarray, ar: np.ndarray, args: np.ndarray, n_pre: int) -> None:
    """Move arguments in place so that values and gradients stay finite (see below)."""
    n_nodes = ops.shape[0]
    # Keep values and gradients finite over millions of nodes: mul, exp and square only read
    # bounded slots (inputs in [0.1, 0.9], outputs of sin/cos/tanh/sigmoid/atan), sqrt only
    # non-negative ones (inputs, sigmoid outputs).  An offending argument moves to the nearest
    # earlier allowed slot, which keeps the graph local (usually still inside the window).
    index = np.arange(n_pre + n_nodes)

    def nearest_allowed(allowed: set[str]) -> np.ndarray:
        ok_slot = np.ones(n_pre + n_nodes, dtype=bool)
        ok_slot[n_pre:] = np.isin(ops, _codes(allowed))
        return np.maximum.accumulate(np.where(ok_slot, index, -1))  # slot -> allowed slot <= it

    bounded = nearest_allowed(_BOUNDED)
    positive = nearest_allowed({"sigmoid"})
    needs_bounded = np.repeat(np.isin(ops, _codes({"exp", "square", "mul"})), ar)
    args[needs_bounded] = bounded[args[needs_bounded]]
    needs_positive = np.repeat(np.isin(ops, _codes({"sqrt"})), ar)
    args[needs_positive] = positive[args[needs_positive]]
    # sub(a, a) = 0 would cut the gradient flow: give binary ops two distinct slots.
    first = np.flatnonzero(np.repeat(ar == 2, ar))[::2]
    a = args[first]
    same = a == args[first + 1]
    args[first[same] + 1] = np.where(a[same] > 0, bounded[np.maximum(a[same] - 1, 0)], 1)


def chain(n_nodes: int, op: str = "sin", *, grad_mode: str = "stored") -> Tape:
    """The seed's deep case: ``x1 = f(w), x2 = f(x1), ...`` with one input ``w``."""
    spec = OP_BY_NAME[op]
    if spec.arity != 1:
        raise ValueError(f"chain() needs a unary op, got {op!r} (arity {spec.arity})")
    ops = np.full(n_nodes, spec.code, dtype=np.uint8)
    args = np.arange(n_nodes, dtype=np.int64)
    return Tape.from_arrays(ops, args, np.zeros(0), [n_nodes], 1, grad_mode=grad_mode)


# ---------------------------------------------------------------------------- structured families
# Each ``*_fn(x, m)`` reads its inputs from the sequence ``x`` and the few math functions it
# needs from ``m`` (``sum``, ``tanh``, ``exp``, ``softplus``, ``maximum``, ``stop_gradient``).
# Operators do the rest, so the same code traces with ``m = fasttape``, evaluates on floats with
# ``m = FLOATS`` and builds a peer's expression graph with the peer's functions.


def pairwise_sum(values: Any) -> Any:
    """Sum as a balanced tree of additions, the same tree as :func:`fasttape.sum`.

    Peers use it so that every system adds the terms in the same order (same rounding); it
    works on any objects with ``+`` (floats, JAX or PyTorch scalars), as ``fasttape.sum`` does.
    """
    return _ft_sum(values)


#: The namespace that evaluates the structured families on Python floats: the op table's own
#: formulas (:mod:`fasttape.bench.pyops`).
FLOATS = _PY_FLOATS


def rosenbrock_fn(x: Sequence[Any], m: Any) -> Any:
    """Extended Rosenbrock: ``sum(100 (x[i+1] - x[i]**2)**2 + (1 - x[i])**2)``."""
    return m.sum(100.0 * (x[i + 1] - x[i] ** 2) ** 2 + (1.0 - x[i]) ** 2
                 for i in range(len(x) - 1))


def rosenbrock_point(n_vars: int) -> np.ndarray:
    """The classic starting point (-1.2, 1, -1.2, 1, ...)."""
    x = np.ones(n_vars)
    x[::2] = -1.2
    return x


def lennard_jones_fn(x: Sequence[Any], m: Any) -> Any:
    """Total Lennard-Jones energy ``sum 4 (r**-12 - r**-6)`` of ``len(x) // 3`` atoms.

    ``x`` holds the coordinates ``x0, y0, z0, x1, ...``; the gradient is minus the forces.
    """
    n = len(x) // 3
    terms = []
    for i in range(n):
        xi, yi, zi = x[3 * i], x[3 * i + 1], x[3 * i + 2]
        for j in range(i + 1, n):
            r2 = (xi - x[3 * j]) ** 2 + (yi - x[3 * j + 1]) ** 2 + (zi - x[3 * j + 2]) ** 2
            s6 = (1.0 / r2) ** 3
            terms.append(4.0 * (s6 * s6 - s6))
    return m.sum(terms)


def lennard_jones_point(n_atoms: int, seed: int = 0) -> np.ndarray:
    """Atoms on a cubic lattice of spacing 1.2, each moved by up to 0.1 (seeded)."""
    side = max(1, math.ceil(n_atoms ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    pos = 1.2 * grid[:n_atoms] + rng.uniform(-0.1, 0.1, size=(n_atoms, 3))
    return pos.ravel()


#: (inputs per sample, hidden units) of :func:`mlp_fn`: one tanh hidden layer, one output.
MLP_SHAPE = (4, 16)


def mlp_data(n_samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded training data: features in [-1, 1], targets ``sin(sum of features)``."""
    rng = np.random.default_rng(seed)
    feats = rng.uniform(-1.0, 1.0, size=(n_samples, MLP_SHAPE[0]))
    return feats, np.sin(feats.sum(axis=1))


def mlp_fn(x: Sequence[Any], m: Any, feats: np.ndarray, targets: np.ndarray) -> Any:
    """Squared-error loss of a ``4-16-1`` tanh perceptron over the samples, in scalar ops.

    ``x`` holds the weights: ``W1`` (16 x 4, row-major), ``b1`` (16), ``w2`` (16), ``b2`` (1),
    97 in all.  The loss is the plain sum of ``(prediction - target)**2``.
    """
    d, h = MLP_SHAPE
    w1 = [x[j * d:(j + 1) * d] for j in range(h)]
    b1 = x[h * d:h * d + h]
    w2 = x[h * d + h:h * d + 2 * h]
    b2 = x[h * d + 2 * h]
    rows = feats.tolist()
    terms = []
    for row, y in zip(rows, targets.tolist(), strict=True):
        hidden = [m.tanh(m.sum(w1[j][k] * row[k] for k in range(d)) + b1[j]) for j in range(h)]
        pred = m.sum(w2[j] * hidden[j] for j in range(h)) + b2
        terms.append((pred - y) ** 2)
    return m.sum(terms)


def mlp_point(seed: int = 0) -> np.ndarray:
    """Seeded initial weights, scaled like a Glorot initialisation."""
    d, h = MLP_SHAPE
    rng = np.random.default_rng(seed)
    return np.concatenate([
        rng.normal(0.0, 1.0 / math.sqrt(d), h * d),
        np.zeros(h),
        rng.normal(0.0, 1.0 / math.sqrt(h), h),
        [0.0],
    ])


#: Inputs of the "Fastest Autograd in the West" graph; the benchmark point is 0, 1, ..., 99.
WEST_INPUTS = 100


def autograd_west_fn(x: Sequence[Any], m: Any, n_ops: int) -> Any:
    """The graph of A. Rogozhnikov's "Fastest Autograd in the West" (2023) comparison.

    Starting from the inputs, for ``op = 0 .. n_ops - 1`` by ``op % 4``: 0 appends
    ``softplus(nodes[-10])``, 1 appends ``nodes[-30] + nodes[-25] + nodes[-20] + nodes[-15]``,
    2 appends ``nodes[-20] * nodes[-10]``, 3 appends the 4 outputs of ``softmax(nodes[-4:])``.
    The output is the last node.  The softmax subtracts the maximum first, as PyTorch's and
    JAX's do (products of the early nodes reach about 1e4, whose ``exp`` would overflow), and
    like them does not differentiate through that shift (JAX: ``lax.stop_gradient`` of the
    maximum; PyTorch's softmax backward never sees it): the shift cancels mathematically, and
    differentiating it only adds a cancelling sum whose rounding residue is a subnormal
    adjoint that never dies (docs/benchmarks.md).  ``m.stop_gradient`` is the identity for
    systems without one (CasADi SX, HIPS autograd, ddx): the same gradient in exact arithmetic.
    """
    nodes = list(x)
    for op in range(n_ops):
        kind = op % 4
        if kind == 0:
            nodes.append(m.softplus(nodes[-10]))
        elif kind == 1:
            nodes.append(nodes[-30] + nodes[-25] + nodes[-20] + nodes[-15])
        elif kind == 2:
            nodes.append(nodes[-20] * nodes[-10])
        else:
            z = nodes[-4:]
            top = m.stop_gradient(m.maximum(m.maximum(z[0], z[1]), m.maximum(z[2], z[3])))
            e = [m.exp(v - top) for v in z]
            total = e[0] + e[1] + e[2] + e[3]
            nodes.extend(v / total for v in e)
    return nodes[-1]


def autograd_west_point() -> np.ndarray:
    """The published benchmark point: 0, 1, ..., 99."""
    return np.arange(WEST_INPUTS, dtype=float)


#: Instructions per unit of each family's size parameter (measured on the tapes the default
#: passes make, fused pairs counted once), used
#: by :func:`structured_size` to hit a requested instruction count.
_NODES_PER_UNIT = {"rosenbrock": 6, "lennard-jones": 10.5, "mlp": 147, "autograd-west": 5.75}


def mlp_vec_nodes_per_sample(widths: Sequence[int] = (16, 32, 32, 1)) -> int:
    """About the scalar tape's instructions per sample of :func:`mlp_vec_fn` (a multiply
    and an add per weight, a bias add and a tanh per unit, three for the loss term)."""
    return sum(2 * a * b + b for a, b in itertools.pairwise(widths)) + 3


def structured_size(family: str, n_nodes: int) -> int:
    """The size parameter giving about ``n_nodes`` instructions for a structured family.

    Variables for ``rosenbrock``, atoms for ``lennard-jones``, samples for ``mlp`` and
    ``mlp-vec``, ops for ``autograd-west``.  A ``-vec`` family takes the size of its scalar
    twin (the same function written element by element).
    """
    if n_nodes < 1:
        raise ValueError(f"n_nodes must be >= 1, got {n_nodes}")
    if family == "mlp-vec":
        return max(1, round(n_nodes / mlp_vec_nodes_per_sample(MLP_VEC_WIDTHS)))
    family = family.removesuffix("-vec")
    units = n_nodes / _NODES_PER_UNIT[family]
    if family == "rosenbrock":
        return max(2, round(units) + 1)
    if family == "lennard-jones":  # pairs = n (n - 1) / 2
        return max(2, round((1 + math.sqrt(1 + 8 * units)) / 2))
    if family == "mlp":
        return max(1, round(units))
    return max(4, round(units))


def _traced(fn: Any, n_inputs: int, grad_mode: str) -> Tape:
    import fasttape as ft  # the package imports this module: import at call time

    return ft.compile(ft.trace(fn, n_inputs), grad_mode=grad_mode)


def rosenbrock(n_vars: int, *, grad_mode: str = "stored") -> Tape:
    """Trace and compile :func:`rosenbrock_fn` over ``n_vars`` variables (>= 2)."""
    if n_vars < 2:
        raise ValueError(f"rosenbrock needs n_vars >= 2, got {n_vars}")
    import fasttape as ft

    return _traced(lambda x: rosenbrock_fn(x, ft), n_vars, grad_mode)


def lennard_jones(n_atoms: int, *, grad_mode: str = "stored") -> Tape:
    """Trace and compile :func:`lennard_jones_fn` for ``n_atoms`` atoms (>= 2)."""
    if n_atoms < 2:
        raise ValueError(f"lennard_jones needs n_atoms >= 2, got {n_atoms}")
    import fasttape as ft

    return _traced(lambda x: lennard_jones_fn(x, ft), 3 * n_atoms, grad_mode)


def mlp(n_samples: int, *, seed: int = 0, grad_mode: str = "stored") -> Tape:
    """Trace and compile :func:`mlp_fn` over ``n_samples`` samples of :func:`mlp_data`."""
    if n_samples < 1:
        raise ValueError(f"mlp needs n_samples >= 1, got {n_samples}")
    import fasttape as ft

    feats, targets = mlp_data(n_samples, seed)
    d, h = MLP_SHAPE
    return _traced(lambda x: mlp_fn(x, ft, feats, targets), h * d + 2 * h + 1, grad_mode)


def autograd_west(n_ops: int = 10_000, *, grad_mode: str = "stored") -> Tape:
    """Trace and compile :func:`autograd_west_fn` with ``n_ops`` ops (>= 4)."""
    if n_ops < 4:
        raise ValueError(f"autograd_west needs n_ops >= 4, got {n_ops}")
    import fasttape as ft

    return _traced(lambda x: autograd_west_fn(x, ft, n_ops), WEST_INPUTS, grad_mode)


# ------------------------------------------------------------------ vectorized (array) code
# The tensor families ("rosenbrock-vec", "lennard-jones-vec", "mlp-vec") and the array peers
# run the functions below, written once with NumPy names over an array namespace ``xp``
# (``numpy`` for fasttape's tensor trace, ``jax.numpy``, a torch shim, ``autograd.numpy``).

#: Layer widths of ``mlp-vec``: 16 inputs, two tanh layers of 32, one output.
MLP_VEC_WIDTHS = (16, 32, 32, 1)
#: The MNIST-sized network (784 inputs, 256 tanh units, 10 classes, cross-entropy loss).
MNIST_WIDTHS = (784, 256, 10)


class ArrayNamespace:
    """An array module with a few names replaced: ``xp.name`` is ``overrides[name]`` if
    given, else ``getattr(module, name)``.

    Used where a library spells a NumPy function differently (``torch.t`` for
    ``transpose``, ``jax.nn.logsumexp``).
    """

    def __init__(self, module: Any, **overrides: Any) -> None:
        self._module = module
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._module, name)


def mlp_vec_data(batch: int, widths: Sequence[int] = MLP_VEC_WIDTHS, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded data of :func:`mlp_vec_fn`: features in [-1, 1] of shape ``(batch,
    widths[0])``; targets ``sin(sum of features)`` for one output, else class labels (int)."""
    rng = np.random.default_rng(seed)
    feats = rng.uniform(-1.0, 1.0, size=(batch, widths[0]))
    if widths[-1] == 1:
        return feats, np.sin(feats.sum(axis=1))
    return feats, rng.integers(0, widths[-1], size=batch)


def mlp_vec_point(widths: Sequence[int] = MLP_VEC_WIDTHS, seed: int = 0) -> np.ndarray:
    """Seeded weights of :func:`mlp_vec_fn`, flat: per layer ``W`` (in x out, row-major,
    Glorot-scaled) then ``b`` (zeros)."""
    rng = np.random.default_rng(seed)
    parts = []
    for a, b in itertools.pairwise(widths):
        parts += [rng.normal(0.0, 1.0 / math.sqrt(a), a * b), np.zeros(b)]
    return np.concatenate(parts)


def _layers(x: Any, widths: Sequence[int]) -> list[tuple[Any, Any]]:
    # (W, b) slices of the flat parameters, W still flat (in * out, row-major).
    out, o = [], 0
    for a, b in itertools.pairwise(widths):
        out.append((x[o:o + a * b], x[o + a * b:o + a * b + b]))
        o += a * b + b
    return out


def mlp_vec_fn(x: Sequence[Any], m: Any, feats: np.ndarray, targets: np.ndarray,
               widths: Sequence[int] = MLP_VEC_WIDTHS) -> Any:
    """Squared-error loss of a tanh perceptron with layer ``widths`` (one output), in
    scalar ops: the scalar twin of ``mlp-vec``'s array code (:func:`vectorized_fn`).

    ``x`` holds the weights as :func:`mlp_vec_point` lays them out; the loss is the plain
    sum of ``(prediction - target)**2`` over the samples.
    """
    if widths[-1] != 1:
        raise ValueError(f"the scalar MLP has one output, got widths {tuple(widths)}")
    layers = _layers(list(x), widths)
    terms = []
    for row, y in zip(feats.tolist(), targets.tolist(), strict=True):
        h: list[Any] = row
        for k, (w, b) in enumerate(layers):
            n_in, n_out = widths[k], widths[k + 1]
            z = [m.sum(h[i] * w[i * n_out + j] for i in range(n_in)) + b[j]
                 for j in range(n_out)]
            h = z if k == len(layers) - 1 else [m.tanh(v) for v in z]
        terms.append((h[0] - y) ** 2)
    return m.sum(terms)


def vectorized_fn(family: str, case: Any, xp: Any) -> Callable[[Any], Any]:
    """The array code of ``family`` (one of the scalar families with a vectorized form, or
    a ``-vec`` family), for the array namespace ``xp``, as a function of the flat point.

    ``case`` gives the size and data (:class:`~fasttape.bench.cases.Case`: ``size``, and
    ``data`` with the MLPs' features, targets, widths and, for several classes, ``rows``:
    ``arange(batch)``).  ``xp`` needs ``sum``, ``tanh``,
    ``matmul``, ``transpose``, ``reshape``, and ``mean`` and ``logsumexp`` (axis as second
    argument) for a multi-class MLP.  The terms and their order match the scalar code up to
    rounding.
    """
    if family in ("rosenbrock", "rosenbrock-vec"):
        return lambda x: xp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    if family in ("lennard-jones", "lennard-jones-vec"):
        n = case.size
        # Pairs i < j gathered with constant index arrays: half the work of the n x n
        # broadcast, and no r = 0 diagonal to mask (whose masked-out inf would put NaN into
        # a where's gradient).
        iu, ju = np.triu_indices(n, k=1)

        def lj(x: Any) -> Any:
            p = xp.reshape(x, (n, 3))
            d = p[iu] - p[ju]
            r2 = xp.sum(d ** 2, 1)
            s6 = (1.0 / r2) ** 3
            return xp.sum(4.0 * (s6 * s6 - s6))

        return lj
    if family == "mlp":
        d, h = MLP_SHAPE
        feats, targets = case.data["feats"], case.data["targets"]

        def loss(x: Any) -> Any:
            w1 = xp.reshape(x[: h * d], (h, d))
            b1 = x[h * d : h * d + h]
            w2 = x[h * d + h : h * d + 2 * h]
            b2 = x[h * d + 2 * h]
            hidden = xp.tanh(xp.matmul(feats, xp.transpose(w1)) + b1)
            pred = xp.matmul(hidden, w2) + b2
            return xp.sum((pred - targets) ** 2)

        return loss
    if family == "mlp-vec":
        widths = tuple(case.data["widths"])
        feats, targets = case.data["feats"], case.data["targets"]
        n_batch = feats.shape[0]
        rows = case.data.get("rows")  # arange(batch): with the labels, each sample's logit

        def deep_loss(x: Any) -> Any:
            h = feats
            layers = _layers(x, widths)
            for k, (w, b) in enumerate(layers):
                z = xp.matmul(h, xp.reshape(w, (widths[k], widths[k + 1]))) + b
                h = z if k == len(layers) - 1 else xp.tanh(z)
            if widths[-1] == 1:
                return xp.sum((xp.reshape(h, (n_batch,)) - targets) ** 2)
            return xp.mean(xp.logsumexp(h, 1) - h[rows, targets])

        return deep_loss
    raise ValueError(f"no vectorized code for {family!r}")
