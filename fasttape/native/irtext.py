"""IR text shared by the straight-line pieces (:mod:`fasttape.native.emit`) and the loop
pieces (:mod:`fasttape.native.loops`): immediates, ``powi`` written out, and one adjoint
update (:func:`accumulate`, which says why the native sweeps need no zero rules)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from fasttape.native.translate import UNIT_PARTIALS, partial_name
from fasttape.ops import OPS, OpSpec

__all__ = ["POWI_OP", "POWI_UNROLL_MAX", "accumulate", "imm", "partial", "powi",
           "powi_exponent", "stored"]

#: Largest ``|n|`` of a ``powi`` whose multiplications the pieces write out (see powi).
POWI_UNROLL_MAX = 64

POWI_OP = next(op for op in OPS if op.name == "powi")


def imm(v: float) -> str:
    """A float64 immediate in LLVM's exact hexadecimal form."""
    return f"0x{struct.unpack('<Q', struct.pack('<d', v))[0]:016X}"


_ONE = imm(1.0)


def powi_exponent(spec: OpSpec, args: Sequence[int], n_lead: int,
                  consts: list[float]) -> int | None:
    """The constant integral exponent of an instruction of op ``spec`` with argument slots
    ``args``, when it is a ``powi`` whose multiplications are written out (its exponent a
    constant with ``|n| <= POWI_UNROLL_MAX``); None for any other op or exponent."""
    if spec is not POWI_OP:
        return None
    slot = int(args[1])
    if not n_lead <= slot < n_lead + len(consts):
        return None
    y = float(consts[slot - n_lead])
    return int(y) if abs(y) <= POWI_UNROLL_MAX else None


def powi(lines: list[str], x: str, n: int, tag: str) -> str:
    """Write ``x ** n`` as the multiplications of :func:`fasttape.kernels.scalar.powi`'s
    loop for this ``n``, in its order (so bitwise its result); returns the result's operand.

    A call keeps the loop (levels 0 and 1 never inline it:
    :func:`fasttape.native.machine.library`), and a call clobbers every vector register, so
    the values live across it are spilled; written out, Lennard-Jones' ``s ** 3`` is three
    multiplications (the first by 1.0, as the loop's).
    """
    m = -n if n < 0 else n
    acc, base, step = _ONE, x, 0
    while m > 0:
        if m & 1:
            step += 1
            lines.append(f"  %{tag}a{step} = fmul double {acc}, {base}")
            acc = f"%{tag}a{step}"
        m >>= 1
        if m > 0:  # the loop's last squaring is never read
            step += 1
            lines.append(f"  %{tag}b{step} = fmul double {base}, {base}")
            base = f"%{tag}b{step}"
    if n < 0:
        lines.append(f"  %{tag}r = fdiv double {_ONE}, {acc}")
        return f"%{tag}r"
    return acc


def partial(lines: list[str], spec: OpSpec, j: int, operands: str, exponent: int | None,
            x: str, tag: str) -> str:
    """Emit partial ``j`` of ``spec`` (not a unit partial); returns its operand.

    ``operands`` is the call's argument list (the arguments' values, then the result's);
    ``exponent`` a written-out ``powi``'s (:func:`powi_exponent`), whose partial
    ``n * x ** (n - 1)`` (exactly 0 for ``n = 0``) is written out too, ``x`` its base.
    """
    if exponent is not None:
        n = exponent
        r = powi(lines, x, n - 1, f"e{tag}") if n else "0.0"
        lines.append(f"  %d{tag} = fmul double {imm(float(n))}, {r}")
    else:
        lines.append(f'  %d{tag} = call double @"{partial_name(spec, j)}"({operands})')
    return f"%d{tag}"


def stored(lines: list[str], base: str, index: str, tag: str) -> str:
    """Load a stored partial (fasttape/native/emit.py's work array layout) from
    ``base[index]``; returns its operand."""
    lines.append(f"  %dp{tag} = getelementptr inbounds double, ptr {base}, i64 {index}")
    lines.append(f"  %d{tag} = load double, ptr %dp{tag}")
    return f"%d{tag}"


def accumulate(lines: list[str], expr: str, g: str, cur: str, tag: str, d: str | None) -> str:
    """Emit one adjoint update of the reverse sweep; returns the new adjoint.

    ``cur`` is the argument's adjoint so far (``"0.0"`` where nothing reached it yet), ``g``
    the instruction's adjoint.  A unit partial (``expr`` in
    :data:`fasttape.native.translate.UNIT_PARTIALS`) adds or subtracts ``g``; any other adds
    ``g * d`` (``d``: the partial's operand).

    No condition: the native sweeps drop the interpreter's zero rules
    (fasttape/kernels/sweep.py: a zero adjoint moves nothing, a zero partial adds nothing),
    and an adjoint's first update is the product itself (``g`` for a unit partial,
    ``0.0 - g`` for a negative one), not ``0.0 +`` it.  The interpreter's adjoints start at
    ``+0`` and are only ever added to, so none is ever ``-0``; the native ones differ from
    them only in the sign of a zero (where a zero product met a zero adjoint), until a
    product is NaN where the rules skip it (``0 * inf``, or a NaN with a zero).  A NaN
    adjoint makes every adjoint it reaches NaN (``NaN * 0`` is NaN), and an adjoint reaches
    no gradient entry but through the instructions it moves along.  So the gradient, with
    ``0.0`` added to each entry (``-0`` to ``+0``, nothing else changed), is bitwise the
    interpreter's unless an entry is NaN: the entry point's check
    (:func:`fasttape.native.emit.driver_module`), after which the caller evaluates that
    point again on the interpreter (:mod:`fasttape.native.tape`,
    :mod:`fasttape.native.entry`).  A NaN that the interpreter's gradient has too only costs
    that second evaluation.
    """
    new = f"%n{tag}"
    unit = UNIT_PARTIALS.get(expr)
    if unit is not None:
        if cur == "0.0":
            if unit > 0:
                return g
            # 0.0 - g, not fneg: -g but for a zero's sign (allowed above), and level 0
            # selects fneg through an integer register (four instructions).
            lines.append(f"  {new} = fsub double 0.0, {g}")
        else:
            op = "fadd" if unit > 0 else "fsub"
            lines.append(f"  {new} = {op} double {cur}, {g}")
        return new
    lines.append(f"  %m{tag} = fmul double {g}, {d}")
    if cur == "0.0":
        return f"%m{tag}"
    lines.append(f"  {new} = fadd double {cur}, %m{tag}")
    return new
