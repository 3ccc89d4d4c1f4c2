"""Peer "numpy-python": both sweeps over the tape's arrays in plain Python (small sizes).

What one writes first without any AD tool: a forward loop that stores every value and a
reverse loop that accumulates adjoints, one Python statement per instruction.  It reads
fasttape's tape arrays (so it checks the engine on the very same instructions) with partials
written out here independently of the op table.
"""

from __future__ import annotations

import math
import time

import numpy as np

from fasttape.bench.cases import Case
from fasttape.bench.peers.base import Built, Peer, float_namespace
from fasttape.ops import OPS

__all__ = ["PythonPeer"]


_F = float_namespace()
_FORWARD = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "powi": lambda a, b: a ** int(b), "neg": lambda a: -a,
    "square": lambda a: a * a, "maximum": lambda a, b: a if a >= b else b,
    "sin": math.sin, "cos": math.cos, "tanh": math.tanh, "atan": math.atan, "exp": math.exp,
    "sqrt": math.sqrt, "sigmoid": _F.sigmoid, "softplus": _F.softplus,
    # The constant-argument forms of the simplify pass (stored x, c).
    "mulc": lambda a, c: a * c, "addc": lambda a, c: a + c, "subc": lambda a, c: a - c,
    "rsubc": lambda a, c: c - a, "divc": lambda a, c: a / c, "rdivc": lambda a, c: c / a,
    # The fused pairs of the fuse pass (fmac stored x, y, c).
    "fmac": lambda a, b, c: a * c + b, "sqdiff": lambda a, b: (a - b) * (a - b),
    "stop_gradient": lambda a: a,
}


def _tie(a: float, b: float) -> float:
    return 1.0 if a > b else (0.5 if a == b else 0.0)


# name -> partials(args..., result): one entry per differentiable argument.
_PARTIALS = {
    "add": lambda a, b, f: (1.0, 1.0),
    "sub": lambda a, b, f: (1.0, -1.0),
    "mul": lambda a, b, f: (b, a),
    "div": lambda a, b, f: (1.0 / b, -f / b),
    "powi": lambda a, b, f: ((b * a ** (int(b) - 1) if b != 0.0 else 0.0),),
    "neg": lambda a, f: (-1.0,),
    "square": lambda a, f: (2.0 * a,),
    "maximum": lambda a, b, f: (_tie(a, b), _tie(b, a)),
    "sin": lambda a, f: (math.cos(a),),
    "cos": lambda a, f: (-math.sin(a),),
    "tanh": lambda a, f: (1.0 - f * f,),
    "atan": lambda a, f: (1.0 / (1.0 + a * a),),
    "exp": lambda a, f: (f,),
    "sqrt": lambda a, f: (0.5 / f,),
    "sigmoid": lambda a, f: (f * (1.0 - f),),
    "softplus": lambda a, f: (_F.sigmoid(a),),
    "mulc": lambda a, c, f: (c,),
    "addc": lambda a, c, f: (1.0,),
    "subc": lambda a, c, f: (1.0,),
    "rsubc": lambda a, c, f: (-1.0,),
    "divc": lambda a, c, f: (1.0 / c,),
    "rdivc": lambda a, c, f: (-f / a,),
    "fmac": lambda a, b, c, f: (c, 1.0),
    "sqdiff": lambda a, b, f: (2.0 * (a - b), -2.0 * (a - b)),
    "stop_gradient": lambda a, f: (),
}


class PythonPeer(Peer):
    """Pure Python/NumPy two-sweep interpreter of the tape arrays."""

    name = "numpy-python"
    module = "numpy"
    scalar_cap = 120_000
    scalar_cap_quick = 12_000

    def build(self, case: Case) -> Built:
        t0 = time.perf_counter()
        tape = case.tape
        names = [OPS[int(o)].name for o in tape.ops]
        missing = sorted(set(names) - set(_FORWARD))
        if missing:
            raise NotImplementedError(f"no Python sweep for ops {missing}")
        arities = [OPS[int(o)].arity for o in tape.ops]
        starts = np.concatenate([[0], np.cumsum(arities)]).tolist()
        args = tape.args.tolist()
        prog = [(_FORWARD[n], _PARTIALS[n], args[s:s + a]) for n, s, a in
                zip(names, starts[:-1], arities, strict=True)]
        consts = tape.consts.tolist()
        out = int(tape.outputs[0])
        n_in = tape.n_inputs

        def forward(x: np.ndarray) -> list[float]:
            vals = x.tolist() + consts
            for f, _, a in prog:
                vals.append(f(*[vals[j] for j in a]))
            return vals

        def value(x: np.ndarray) -> float:
            return forward(x)[out]

        def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
            vals = forward(x)
            adj = [0.0] * len(vals)
            adj[out] = 1.0
            n_pre = n_in + len(consts)
            for i in range(len(prog) - 1, -1, -1):
                g = adj[n_pre + i]
                if g == 0.0:
                    continue
                _, d, a = prog[i]
                parts = d(*[vals[j] for j in a], vals[n_pre + i])
                for j, p in zip(a, parts, strict=False):
                    adj[j] += g * p
            return vals[out], np.array(adj[:n_in])

        return Built(value, value_and_grad, time.perf_counter() - t0, 0.0, "scalar")
