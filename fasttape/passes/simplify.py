"""Algebraic simplification that is exact in IEEE arithmetic.

One forward sweep; at each instruction the rules below are applied until none fires (each
rule removes an instruction or an edge, or replaces a general op by a cheaper one, so this
stops).  Every default rule gives bitwise the value of the original expression for every
input, inf, -0.0 and NaN included (only a NaN's sign bit and payload may differ, as they may
between ``x * -1`` and ``-x`` in hardware):

==========================  ======================  =============================================
pattern                     becomes                 why it is exact
==========================  ======================  =============================================
``x * 1``, ``1 * x``        ``x``                   IEEE multiplication by 1 is the identity
``x * -1``, ``-1 * x``      ``neg(x)``              multiplication by -1 only flips the sign
``x * x``                   ``square(x)``           ``square`` is ``x * x`` in the table
``x / 1``                   ``x``
``x / -1``                  ``neg(x)``
``x + -0.0``, ``-0.0 + x``  ``x``                   ``-0.0`` is the additive identity
                                                    (``x + 0.0`` is **not**: ``-0.0 + 0.0 = 0.0``)
``x - 0.0``                 ``x``                   ``x - (+0.0) = x + (-0.0)``
``x - neg(y)``              ``x + y``               subtraction is addition of the negation
``x + neg(y)``              ``x - y``
``neg(x) + y``              ``y - x``
``neg(neg(x))``             ``x``
``square(neg(x))``          ``square(x)``
``abs(neg(x))``             ``abs(x)``
``abs(abs(x))``             ``abs(x)``
``powi(x, 1)``              ``x``                   ``_powi`` computes ``1.0 * x``
``powi(x, 2)``              ``square(x)``           ``_powi`` computes ``1.0 * (x * x)``; same
                                                    partial ``2.0 * x``
``powi(x, 0)``              constant ``1.0``        ``_powi`` returns 1.0 for every x, NaN included
``pow(x, c)``, c constant   ``powc(x, c)``          same formula, same partial in x
``where(a, a, c)``          ``a``
``where(a, b, c)``, c const ``a`` or ``b``          chosen by ``c != 0`` (NaN selects ``a``)
``x * c``, ``c * x``        ``mulc(x, c)``          same product (``c * x`` only for a non-NaN
                                                    ``c``: IEEE leaves the NaN chosen from two
                                                    NaN operands open)
``x + c``, ``c + x``        ``addc(x, c)``          as ``mulc``
``x - c``, ``c - x``        ``subc(x, c)``,         same formula, ``c - x`` stored as ``(x, c)``
                            ``rsubc(x, c)``
``x / c``, ``c / x``        ``divc(x, c)``,         as ``subc`` / ``rsubc``
                            ``rdivc(x, c)``
==========================  ======================  =============================================

The last four rows apply only when no other rule does, and only to an instruction with
exactly one constant argument (two constants fold).  A constant needs no adjoint, so the
rewritten instruction has one differentiable edge instead of two: a gradient stores one
partial and updates one adjoint fewer, with bitwise the same gradient.

Not a rule: ``minimum(x, x) -> x`` has the same value but not the same gradient at NaN (the
tie convention gives each argument ``_dmin(NaN, NaN) = 0``), and the tests check gradients at
special values too.

Rules exact only for finite values run only with ``finite_math=True`` (an explicit opt-in,
off by default): ``x - x -> 0.0`` (NaN or inf minus itself is NaN), ``x * 0.0 -> 0.0`` and
``x * -0.0 -> 0.0`` (NaN or inf times 0 is NaN; also ``-3 * 0.0`` is ``-0.0``),
``x + 0.0 -> x`` and ``x - -0.0 -> x`` (they differ only in the sign of a zero result).  With
that flag a value that is inf or NaN, or the sign of a zero, may differ from the unoptimised
tape.

Gradients: each default rule keeps the partial derivatives along every path (e.g.
``powi(x, 2)`` and ``square`` both give ``2.0 * x``), so gradients are equal up to rounding
(removing an instruction can reorder the sum of adjoints that reach a node).
"""

from __future__ import annotations

import math

import numpy as np

from fasttape.kernels.jit import kernel
from fasttape.ops import CONST_CODE, N_OPS, OP_BY_NAME
from fasttape.passes.dce import GRAPH_ARITY
from fasttape.passes.ir import IR
from fasttape.passes.rep import resolve_args, surviving_instruction

__all__ = ["simplify", "RULE_OPS"]

#: Ops the rules refer to, in the order of the ``codes`` array passed to the kernel.
RULE_OPS = ("add", "mul", "sub", "div", "neg", "square", "powi", "pow", "powc", "abs",
            "where", "mulc", "addc", "subc", "rsubc", "divc", "rdivc")
#: Targets of rules that have no rules of their own.
_TARGETS = ("powc", "mulc", "addc", "subc", "rsubc", "divc", "rdivc")
_CODES = np.array([OP_BY_NAME[n].code for n in RULE_OPS], dtype=np.int64)
_HAS_RULE = np.zeros(256, dtype=np.bool_)
_HAS_RULE[_CODES[[RULE_OPS.index(n) for n in RULE_OPS if n not in _TARGETS]]] = True

# Result kinds of one rule application.
_NONE, _ALIAS, _REWRITE, _CONST = 0, 1, 2, 3


@kernel
def simplify_sweep(ops, a, rep, consts, arity, codes, has_rule, n_real_ops, const_code,
                   zero_idx, one_idx, finite):  # pragma: no cover (jitted)
    """Apply the rules to every surviving instruction.

    Returns ``(removed, rewritten, constants made)``; the last counts instructions that became
    a constant or were replaced by one (their users may now fold).

    ``zero_idx`` / ``one_idx`` are indices in ``consts`` of 0.0 and 1.0 (for the rules whose
    result is a constant).  Removed instructions are replaced (``rep``) or become constants.
    The rules are written inline (no helper call per node: that cost 10x in Numba).
    """
    ADD, MUL, SUB, DIV, NEG, SQUARE, POWI, POW, POWC, ABS, WHERE = (
        codes[0], codes[1], codes[2], codes[3], codes[4], codes[5], codes[6], codes[7],
        codes[8], codes[9], codes[10],
    )
    MULC, ADDC, SUBC, RSUBC, DIVC, RDIVC = (
        codes[11], codes[12], codes[13], codes[14], codes[15], codes[16],
    )
    removed = 0
    rewritten = 0
    consts_made = 0
    for i in range(ops.shape[0]):
        if not surviving_instruction(ops, rep, i, n_real_ops):
            continue
        op = ops[i]
        resolve_args(a, rep, i, arity[op])
        for _ in range(16):  # each rewrite shrinks the expression; 16 is never reached
            op = ops[i]
            if not has_rule[op]:
                break
            x = a[i, 0]
            y = a[i, 1]
            z = a[i, 2]
            xc = ops[x] == const_code
            xv = consts[a[x, 0]] if xc else 0.0
            yc = False
            yv = 0.0
            if y >= 0:  # -1 for unary ops
                yc = ops[y] == const_code
                if yc:
                    yv = consts[a[y, 0]]
            # One rule: kind, and the replacement node t (_ALIAS), constant (_CONST: 0 -> 0.0,
            # 1 -> 1.0) or new instruction nop(nx, ny) (_REWRITE).
            kind = _NONE
            t = -1
            nop = -1
            nx = -1
            ny = -1
            if op == MUL:
                if yc and yv == 1.0:
                    kind, t = _ALIAS, x
                elif xc and xv == 1.0:
                    kind, t = _ALIAS, y
                elif yc and yv == -1.0:
                    kind, nop, nx = _REWRITE, NEG, x
                elif xc and xv == -1.0:
                    kind, nop, nx = _REWRITE, NEG, y
                elif x == y:
                    kind, nop, nx = _REWRITE, SQUARE, x
                elif finite and ((yc and yv == 0.0) or (xc and xv == 0.0)):
                    kind, t = _CONST, 0
                elif yc and not xc:
                    kind, nop, nx, ny = _REWRITE, MULC, x, y
                elif xc and not yc and xv == xv:  # swapping two NaNs could change the payload
                    kind, nop, nx, ny = _REWRITE, MULC, y, x
            elif op == DIV:
                if yc and yv == 1.0:
                    kind, t = _ALIAS, x
                elif yc and yv == -1.0:
                    kind, nop, nx = _REWRITE, NEG, x
                elif yc and not xc:
                    kind, nop, nx, ny = _REWRITE, DIVC, x, y
                elif xc and not yc:
                    kind, nop, nx, ny = _REWRITE, RDIVC, y, x
            elif op == ADD:
                if yc and yv == 0.0 and (math.copysign(1.0, yv) < 0.0 or finite):
                    kind, t = _ALIAS, x
                elif xc and xv == 0.0 and (math.copysign(1.0, xv) < 0.0 or finite):
                    kind, t = _ALIAS, y
                elif ops[y] == NEG:
                    kind, nop, nx, ny = _REWRITE, SUB, x, a[y, 0]
                elif ops[x] == NEG:
                    kind, nop, nx, ny = _REWRITE, SUB, y, a[x, 0]
                elif yc and not xc:
                    kind, nop, nx, ny = _REWRITE, ADDC, x, y
                elif xc and not yc and xv == xv:
                    kind, nop, nx, ny = _REWRITE, ADDC, y, x
            elif op == SUB:
                if yc and yv == 0.0 and (math.copysign(1.0, yv) > 0.0 or finite):
                    kind, t = _ALIAS, x
                elif ops[y] == NEG:
                    kind, nop, nx, ny = _REWRITE, ADD, x, a[y, 0]
                elif finite and x == y:
                    kind, t = _CONST, 0
                elif yc and not xc:
                    kind, nop, nx, ny = _REWRITE, SUBC, x, y
                elif xc and not yc:
                    kind, nop, nx, ny = _REWRITE, RSUBC, y, x
            elif op == NEG:
                if ops[x] == NEG:
                    kind, t = _ALIAS, a[x, 0]
            elif op == SQUARE:
                if ops[x] == NEG:
                    kind, nop, nx = _REWRITE, SQUARE, a[x, 0]
            elif op == ABS:
                if ops[x] == NEG:
                    kind, nop, nx = _REWRITE, ABS, a[x, 0]
                elif ops[x] == ABS:
                    kind, t = _ALIAS, x
            elif op == POWI:  # the exponent y is always a constant
                if yv == 1.0:
                    kind, t = _ALIAS, x
                elif yv == 2.0:
                    kind, nop, nx = _REWRITE, SQUARE, x
                elif yv == 0.0:
                    kind, t = _CONST, 1
            elif op == POW:
                if yc:
                    kind, nop, nx, ny = _REWRITE, POWC, x, y
            elif op == WHERE:
                if x == y:
                    kind, t = _ALIAS, x
                elif ops[z] == const_code:
                    # The kernel's test ``x if z != 0.0 else y`` (NaN selects x).
                    kind, t = _ALIAS, (x if consts[a[z, 0]] != 0.0 else y)
            if kind == _NONE:
                break
            if kind == _ALIAS:
                rep[i] = t
                removed += 1
                if ops[t] == const_code:
                    consts_made += 1
                break
            if kind == _CONST:
                ops[i] = const_code
                a[i, 0] = zero_idx if t == 0 else one_idx
                a[i, 1] = -1
                a[i, 2] = -1
                removed += 1
                consts_made += 1
                break
            ops[i] = nop
            a[i, 0] = nx
            a[i, 1] = ny
            a[i, 2] = -1
            rewritten += 1
    return removed, rewritten, consts_made


def simplify(ir: IR, finite_math: bool = False) -> tuple[int, int, int]:
    """Run the rules on ``ir`` in place; return ``(removed, rewritten, constants made)``.

    A rule whose result is a constant (``powi(x, 0)``, and the ``finite_math`` rules) turns
    the instruction into a constant node, which constant folding can then propagate.
    """
    zero_idx = ir.add_const(0.0)
    one_idx = ir.add_const(1.0)
    removed, rewritten, consts_made = simplify_sweep(
        ir.ops, ir.a, ir.rep, ir.consts, GRAPH_ARITY, _CODES, _HAS_RULE, N_OPS, CONST_CODE,
        zero_idx, one_idx, bool(finite_math),
    )
    return int(removed), int(rewritten), int(consts_made)
