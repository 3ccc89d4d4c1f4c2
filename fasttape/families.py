"""Graph families for benchmarks and tests, built directly as tape arrays.

Each generator is vectorised NumPy (no Python loop per node), so graphs of 10 million nodes are
built in a second or two.  They return a validated :class:`~fasttape.tape.Tape`.
"""

from __future__ import annotations

import numpy as np

from fasttape.ops import OP_BY_NAME
from fasttape.tape import Tape

__all__ = ["random_local", "chain", "DEFAULT_MIX"]

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


def random_local(
    n_nodes: int,
    *,
    window: int = 100,
    n_inputs: int = 100,
    mix: dict[str, float] | None = None,
    seed: int = 0,
    grad_mode: str = "stored",
) -> Tape:
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
    if n_nodes < 1 or window < 1 or n_inputs < 2:
        raise ValueError("n_nodes and window must be >= 1 and n_inputs >= 2")
    mix = DEFAULT_MIX if mix is None else mix
    rng = np.random.default_rng(seed)
    names = list(mix)
    p = np.array([mix[k] for k in names], dtype=float)
    codes = np.array([OP_BY_NAME[k].code for k in names], dtype=np.uint8)
    arity = np.array([OP_BY_NAME[k].arity for k in names])
    choice = rng.choice(len(names), size=n_nodes, p=p / p.sum())
    ops = codes[choice]
    ar = arity[choice]
    n_pre = n_inputs
    own = n_pre + np.arange(n_nodes)
    owner = np.repeat(own, ar)
    lo = np.maximum(owner - window, 0)
    args = lo + (rng.random(owner.shape[0]) * (owner - lo)).astype(np.int64)
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
    return Tape.from_arrays(ops, args, np.zeros(0), [n_pre + n_nodes - 1], n_inputs,
                            grad_mode=grad_mode)


def chain(n_nodes: int, op: str = "sin", *, grad_mode: str = "stored") -> Tape:
    """The seed's deep case: ``x1 = f(w), x2 = f(x1), ...`` with one input ``w``."""
    spec = OP_BY_NAME[op]
    if spec.arity != 1:
        raise ValueError(f"chain() needs a unary op, got {op!r} (arity {spec.arity})")
    ops = np.full(n_nodes, spec.code, dtype=np.uint8)
    args = np.arange(n_nodes, dtype=np.int64)
    return Tape.from_arrays(ops, args, np.zeros(0), [n_nodes], 1, grad_mode=grad_mode)
