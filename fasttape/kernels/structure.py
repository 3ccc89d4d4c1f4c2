"""Structural kernels: liveness marking for compile and tape validation for ``from_arrays``.

Both are single linear passes over the arrays (no recursion, no per-node Python), which is what
lets compile and validation run at tens of millions of nodes per second.
"""

from __future__ import annotations

import numpy as np

from fasttape.kernels.jit import kernel


@kernel
def mark_live(ops, args, arity, n_real_ops, live):  # pragma: no cover (jitted)
    """Mark every node that some node already marked in ``live`` depends on.

    ``ops``/``args`` are a Graph's columns (arguments concatenated, ``arity[op]`` each); nodes
    with ``ops[i] >= n_real_ops`` (inputs, constants) have a non-node argument and are leaves.
    Walks backwards once: a node's dependents always come after it.
    """
    k = args.shape[0]
    for i in range(ops.shape[0] - 1, -1, -1):
        op = ops[i]
        n = arity[op]
        k -= n
        if live[i] and op < n_real_ops:
            for j in range(n):
                live[args[k + j]] = True


@kernel
def mark_reached(args, starts, nd, n_pre, reach):  # pragma: no cover (jitted)
    """Mark every slot that a slot already marked in ``reach`` reaches, on a tape's arrays.

    Instruction ``i`` writes slot ``n_pre + i``, its arguments are
    ``args[starts[i]:starts[i + 1]]``; only the first ``nd[i]`` of them count (all of them
    for what an output's value depends on, the differentiable ones for where its adjoint
    goes).  Walks backwards once.
    """
    for i in range(nd.shape[0] - 1, -1, -1):
        if reach[n_pre + i]:
            for k in range(starts[i], starts[i] + nd[i]):
                reach[args[k]] = True


# Error codes returned by check_tape (index = the offending instruction).
OK = 0
BAD_OPCODE = 1
ARGS_LENGTH = 2
ARG_NEGATIVE = 3
ARG_NOT_EARLIER = 4
PARAM_NOT_CONST = 5
EXPONENT_NOT_INTEGRAL = 6


@kernel
def check_tape(ops, args, consts, n_inputs, arity, ndiff, param_const, powi_code):
    """Validate a tape in one pass; return ``(code, instruction, argument position)``.

    Checks op codes, that ``args`` has exactly the length the arities imply, that every argument
    refers to an earlier slot, that parameter arguments (exponents) are constant slots and that
    ``powi`` exponents are integral with ``|n| < 2**31``.  ``code == OK`` means valid.
    """
    n_ops = arity.shape[0]
    n_pre = n_inputs + consts.shape[0]
    k = 0
    n_args = args.shape[0]
    for i in range(ops.shape[0]):
        op = ops[i]
        if op >= n_ops:
            return BAD_OPCODE, i, 0
        n = arity[op]
        if k + n > n_args:
            return ARGS_LENGTH, i, 0
        slot = n_pre + i
        for j in range(n):
            a = args[k + j]
            if a < 0:
                return ARG_NEGATIVE, i, j
            if a >= slot:
                return ARG_NOT_EARLIER, i, j
            if j >= ndiff[op] and param_const[op]:
                if a < n_inputs or a >= n_pre:
                    return PARAM_NOT_CONST, i, j
                if op == powi_code:
                    c = consts[a - n_inputs]
                    if not (c == np.floor(c) and abs(c) < 2147483648.0):
                        return EXPONENT_NOT_INTEGRAL, i, j
        k += n
    if k != n_args:
        return ARGS_LENGTH, ops.shape[0], 0
    return OK, -1, -1
