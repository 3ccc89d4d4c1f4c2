"""The simplest hand-written Numba loop over a tape's arrays: the benchmarks' baseline.

No validation, no API, no generated code: one forward loop and one reverse loop written by hand
for the ops of :data:`fasttape.families.DEFAULT_MIX`, over the same ``ops``/``args`` arrays.
The engine's overhead is reported as a ratio to this.
"""

import math

import numba
import numpy as np

from fasttape.ops import OP_BY_NAME

ADD, MUL, SUB = (OP_BY_NAME[k].code for k in ("add", "mul", "sub"))
SIN, COS, TANH, SIGMOID, ATAN, SQUARE, EXP, SQRT = (
    OP_BY_NAME[k].code for k in ("sin", "cos", "tanh", "sigmoid", "atan", "square", "exp", "sqrt")
)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sigmoid(a):
    # Same two-branch formula as the op table, so both give bitwise the same numbers.
    if a >= 0.0:
        return 1.0 / (1.0 + math.exp(-a))
    e = math.exp(a)
    return e / (1.0 + e)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def baseline_value(ops, args, x, vals):
    n_in = x.shape[0]
    vals[:n_in] = x
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
            else:
                f = math.sqrt(a)
            k += 1
        vals[n_in + i] = f
    return vals[vals.shape[0] - 1]



@numba.njit(cache=True, nogil=True, error_model="numpy")
def baseline_value_and_grad(ops, args, x, vals, adj, grad):
    n_in = x.shape[0]
    baseline_value(ops, args, x, vals)
    k = args.shape[0]
    adj[:] = 0.0
    adj[adj.shape[0] - 1] = 1.0
    for i in range(ops.shape[0] - 1, -1, -1):
        o = ops[i]
        g = adj[n_in + i]
        if o == ADD or o == MUL or o == SUB:
            k -= 2
            p, q = args[k], args[k + 1]
            if o == ADD:
                adj[p] += g
                adj[q] += g
            elif o == MUL:
                adj[p] += g * vals[q]
                adj[q] += g * vals[p]
            else:
                adj[p] += g
                adj[q] -= g
        else:
            k -= 1
            p = args[k]
            a = vals[p]
            f = vals[n_in + i]
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
            else:
                d = 0.5 / f
            adj[p] += g * d
    grad[:] = adj[:n_in]
    return vals[vals.shape[0] - 1]

def run_baseline(tape, x):
    """Value and gradient of a :func:`fasttape.families.random_local` tape by the baseline."""
    vals = np.empty(tape.n_slots)
    adj = np.empty(tape.n_slots)
    grad = np.empty(tape.n_inputs)
    v = baseline_value_and_grad(tape.ops, tape.args, x, vals, adj, grad)
    return v, grad
