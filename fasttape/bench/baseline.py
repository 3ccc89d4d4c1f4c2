"""The simplest hand-written Numba loop over a tape's arrays: the benchmarks' baseline.

Deliberately hand-written: this is the one place outside the op table (and the tests'
independent oracle) where op formulas are spelled, on purpose, because its job is to show what
a person writing the sweeps by hand for these few ops would get, without the op table, the
generated code or any API.  One forward loop and one reverse loop for the ops the benchmark
families use (:data:`BASELINE_OPS`), over the same ``ops``/``args``/``consts`` arrays as the
engine; no validation.  The reverse loop recomputes each partial from the stored values (what
a person would write first).  The one piece it shares with the engine is ``powi``'s binary
exponentiation (:func:`fasttape.kernels.scalar.powi`), which written again would be the same
loop.  The engine's overhead is reported as a ratio to this."""

from __future__ import annotations

import math

import numpy as np

from fasttape.kernels.jit import kernel
from fasttape.kernels.scalar import powi
from fasttape.ops import OP_BY_NAME

__all__ = ["BASELINE_OPS", "supports", "value_kernel", "value_and_grad_kernel", "run_baseline"]

#: Op names the baseline kernels implement.
BASELINE_OPS = (
    "add", "sub", "mul", "div", "neg", "powi", "square", "sqrt", "exp", "sin", "cos",
    "tanh", "sigmoid", "atan", "softplus", "maximum", "mulc", "addc", "subc", "rsubc", "divc",
    "rdivc", "fmac", "sqdiff", "stop_gradient",
)

(ADD, SUB, MUL, DIV, NEG, POWI, SQUARE, SQRT, EXP, SIN, COS, TANH, SIGMOID, ATAN, SOFTPLUS, MAX,
 MULC, ADDC, SUBC, RSUBC, DIVC, RDIVC, FMAC, SQDIFF, STOP) = (
    OP_BY_NAME[k].code for k in BASELINE_OPS)
# The reverse loop tells the four arithmetic binary ops apart from the rest with one compare,
# and the six constant-argument ops with a range test.
if sorted((ADD, SUB, MUL, DIV)) != [0, 1, 2, 3] or [MULC, ADDC, SUBC, RSUBC, DIVC, RDIVC] != list(
    range(MULC, MULC + 6)
):  # pragma: no cover (op table reordered)
    raise ImportError("fasttape.bench.baseline assumes add, mul, sub, div are op codes 0-3 "
                      "and mulc .. rdivc consecutive")


def supports(ops: np.ndarray) -> bool:
    """Whether every op code in ``ops`` is one the baseline implements."""
    codes = {OP_BY_NAME[k].code for k in BASELINE_OPS}
    return set(np.unique(ops).tolist()) <= codes


@kernel
def _sigmoid(a):
    # Same two-branch formula as the op table, so both give bitwise the same numbers.
    if a >= 0.0:
        return 1.0 / (1.0 + math.exp(-a))
    e = math.exp(a)
    return e / (1.0 + e)


@kernel
def value_kernel(ops, args, consts, x, vals):
    """Forward sweep: fill ``vals`` (inputs, constants, instructions); return the last slot."""
    n_in = x.shape[0]
    vals[:n_in] = x
    n_pre = n_in + consts.shape[0]
    vals[n_in:n_pre] = consts
    k = 0
    for i in range(ops.shape[0]):
        o = ops[i]
        a = vals[args[k]]
        if o == ADD:
            f = a + vals[args[k + 1]]
            k += 2
        elif o == MUL:
            f = a * vals[args[k + 1]]
            k += 2
        elif o == SUB:
            f = a - vals[args[k + 1]]
            k += 2
        elif o == DIV:
            f = a / vals[args[k + 1]]
            k += 2
        elif o == POWI:
            f = powi(a, vals[args[k + 1]])
            k += 2
        elif o == MAX:
            b = vals[args[k + 1]]
            f = a if (a >= b or a != a) else b
            k += 2
        elif o == MULC:
            f = a * vals[args[k + 1]]
            k += 2
        elif o == ADDC:
            f = a + vals[args[k + 1]]
            k += 2
        elif o == SUBC:
            f = a - vals[args[k + 1]]
            k += 2
        elif o == RSUBC:
            f = vals[args[k + 1]] - a
            k += 2
        elif o == DIVC:
            f = a / vals[args[k + 1]]
            k += 2
        elif o == RDIVC:
            f = vals[args[k + 1]] / a
            k += 2
        elif o == FMAC:  # the fused pairs of the default pipeline (passes/fuse.py)
            f = a * vals[args[k + 2]] + vals[args[k + 1]]
            k += 3
        elif o == SQDIFF:
            b = a - vals[args[k + 1]]
            f = b * b
            k += 2
        else:
            if o == SIN:
                f = math.sin(a)
            elif o == COS:
                f = math.cos(a)
            elif o == TANH:
                f = math.tanh(a)
            elif o == SIGMOID:
                f = _sigmoid(a)
            elif o == ATAN:
                f = math.atan(a)
            elif o == SQUARE:
                f = a * a
            elif o == EXP:
                f = math.exp(a)
            elif o == NEG:
                f = -a
            elif o == SOFTPLUS:
                f = max(a, 0.0) + math.log1p(math.exp(-abs(a)))
            elif o == STOP:
                f = a
            else:
                f = math.sqrt(a)
            k += 1
        vals[n_pre + i] = f
    return vals[vals.shape[0] - 1]


@kernel
def value_and_grad_kernel(ops, args, consts, x, vals, adj, grad):
    """Both sweeps for the last slot as the output; the gradient goes to ``grad``."""
    n_in = x.shape[0]
    n_pre = n_in + consts.shape[0]
    value_kernel(ops, args, consts, x, vals)
    k = args.shape[0]
    adj[:] = 0.0
    adj[adj.shape[0] - 1] = 1.0
    for i in range(ops.shape[0] - 1, -1, -1):
        o = ops[i]
        g = adj[n_pre + i]
        if o >= MULC and o <= RDIVC:  # one variable argument, one constant
            k -= 2
            p = args[k]
            if o == MULC:
                adj[p] += g * vals[args[k + 1]]
            elif o == ADDC or o == SUBC:
                adj[p] += g
            elif o == RSUBC:
                adj[p] -= g
            elif o == DIVC:
                adj[p] += g / vals[args[k + 1]]
            else:
                adj[p] -= g * vals[n_pre + i] / vals[p]
        elif o <= 3 or o == POWI or o == MAX:  # binary ops
            k -= 2
            p, q = args[k], args[k + 1]
            if o == ADD:
                adj[p] += g
                adj[q] += g
            elif o == MUL:
                adj[p] += g * vals[q]
                adj[q] += g * vals[p]
            elif o == SUB:
                adj[p] += g
                adj[q] -= g
            elif o == DIV:
                b = vals[q]
                adj[p] += g / b
                adj[q] -= g * vals[n_pre + i] / b
            elif o == POWI:
                y = vals[q]
                if y != 0.0:
                    adj[p] += g * y * powi(vals[p], y - 1.0)
            else:
                a, b = vals[p], vals[q]
                if a > b:
                    adj[p] += g
                elif a < b:
                    adj[q] += g
                else:
                    adj[p] += 0.5 * g
                    adj[q] += 0.5 * g
        elif o == FMAC:
            k -= 3
            p = args[k]
            adj[p] += g * vals[args[k + 2]]
            adj[args[k + 1]] += g
        elif o == SQDIFF:
            k -= 2
            p, q = args[k], args[k + 1]
            d = 2.0 * (vals[p] - vals[q])
            adj[p] += g * d
            adj[q] -= g * d
        else:
            k -= 1
            p = args[k]
            a = vals[p]
            f = vals[n_pre + i]
            if o == SIN:
                d = math.cos(a)
            elif o == COS:
                d = -math.sin(a)
            elif o == TANH:
                d = 1.0 - f * f
            elif o == SIGMOID:
                d = f * (1.0 - f)
            elif o == ATAN:
                d = 1.0 / (1.0 + a * a)
            elif o == SQUARE:
                d = 2.0 * a
            elif o == EXP:
                d = f
            elif o == NEG:
                d = -1.0
            elif o == SOFTPLUS:
                d = _sigmoid(a)
            elif o == STOP:
                continue  # no adjoint flows through stop_gradient
            else:
                d = 0.5 / f
            adj[p] += g * d
    grad[:] = adj[:n_in]
    return vals[vals.shape[0] - 1]


def run_baseline(tape, x):
    """Value and gradient of a one-output tape (output = last slot) by the baseline kernels."""
    if not supports(tape.ops):
        raise ValueError("the baseline kernel does not implement every op of this tape")
    if int(tape.outputs[0]) != tape.n_slots - 1:
        raise ValueError("the baseline kernel needs the output to be the last slot")
    vals = np.empty(tape.n_slots)
    adj = np.empty(tape.n_slots)
    grad = np.empty(tape.n_inputs)
    x = np.ascontiguousarray(x, dtype=np.float64)
    v = value_and_grad_kernel(tape.ops, tape.args, tape.consts, x, vals, adj, grad)
    return float(v), grad
