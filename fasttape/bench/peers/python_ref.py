"""Peer "numpy-python": both sweeps over the tape's arrays in plain Python (small sizes).

What one writes first without any AD tool: a forward loop that stores every value and a
reverse loop that accumulates adjoints, one Python call per instruction.  It reads fasttape's
tape arrays and evaluates each instruction with the op table's own formulas run as Python
(:mod:`fasttape.bench.pyops`), so it shows what the same sweeps cost in the interpreter.
"""

from __future__ import annotations

import time

import numpy as np

from fasttape.bench.cases import Case
from fasttape.bench.peers.base import Built, Peer
from fasttape.bench.pyops import FORWARD, PARTIALS
from fasttape.ops import OPS

__all__ = ["PythonPeer"]


class PythonPeer(Peer, name="numpy-python", module="numpy", scalar_cap=120_000,
                 scalar_cap_quick=12_000):
    """Pure Python two-sweep interpreter of the tape arrays."""

    def build(self, case: Case) -> Built:
        t0 = time.perf_counter()
        tape = case.tape
        specs = [OPS[int(o)] for o in tape.ops]
        starts = np.concatenate([[0], np.cumsum([s.arity for s in specs])]).tolist()
        args = tape.args.tolist()
        prog = [(FORWARD[s.name], PARTIALS[s.name], args[b:b + s.arity])
                for s, b in zip(specs, starts[:-1], strict=True)]
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
                # the partials cover the first ndiff arguments (parameters get no adjoint)
                for j, p in zip(a, parts, strict=False):
                    adj[j] += g * p
            return vals[out], np.array(adj[:n_in])

        return Built(value, value_and_grad, time.perf_counter() - t0, 0.0, "scalar")
