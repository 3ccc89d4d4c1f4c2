"""IR text shared by the straight-line pieces (:mod:`fasttape.native.emit`) and the loop
pieces (:mod:`fasttape.native.loops`): immediates, ``powi`` written out, and one adjoint
update, the interpreter's rule for moving an adjoint along an edge."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from fasttape.native.translate import UNIT_PARTIALS, partial_name
from fasttape.ops import OPS, OpSpec

__all__ = ["POWI_OP", "POWI_UNROLL_MAX", "Check", "accumulate", "imm", "partial", "powi",
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


class Check:
    """The NaN check of a reverse sweep (:func:`accumulate`).

    The native reverse sweep drops the interpreter's zero rules (fasttape/kernels/sweep.py:
    a zero adjoint moves nothing, a zero partial adds nothing) and adds every ``g * d``; an
    adjoint's first update is the product itself (``g`` itself for a unit partial, ``-g``
    for a negative one), not ``0.0 +`` it.  The interpreter's adjoints start at ``+0`` and
    are only ever added to, so none is ever ``-0``.  The native sweep's adjoints differ
    from them only in the sign of a zero, where a zero product (``g`` or ``d`` zero) met a
    zero adjoint, unless a product is NaN where the rules skip it: ``0 * inf``, or a NaN
    with a zero.  The entry point adds ``0.0`` to each gradient entry, which turns ``-0``
    into ``+0`` and changes nothing else; and the sweep sums its products here, in
    ``LANES`` independent sums (off the adjoints' critical path), added into ``w``.  When
    the total is NaN, the caller evaluates that point again on the interpreter
    (:mod:`fasttape.native.tape`, :mod:`fasttape.native.entry`); an infinite product or an
    overflowing sum only costs that second evaluation.

    ``start``: the lanes' first operands (``0.0``, or a loop's ``phi`` names).
    """

    LANES = 4

    def __init__(self, tag: str, start: list[str] | None = None) -> None:
        self.tag = tag
        self.start = start or ["0.0"] * self.LANES
        self.lanes = list(self.start)
        self.count = 0

    def add(self, lines: list[str], product: str) -> None:
        """Add ``product`` to the next lane."""
        lane = self.count % self.LANES
        name = f"%ck{self.tag}.{self.count}"
        lines.append(f"  {name} = fadd double {self.lanes[lane]}, {product}")
        self.lanes[lane] = name
        self.count += 1

    def store(self, lines: list[str], index: int) -> None:
        """Add the lanes to ``w[index]`` (nothing where no product was added)."""
        if not self.count:
            return
        lines.append(f"  %ckp{self.tag} = getelementptr inbounds double, ptr %w, i64 {index}")
        total = f"%ckw{self.tag}"
        lines.append(f"  {total} = load double, ptr %ckp{self.tag}")
        for lane, name in enumerate(self.lanes):
            lines.append(f"  %cks{self.tag}.{lane} = fadd double {total}, {name}")
            total = f"%cks{self.tag}.{lane}"
        lines.append(f"  store double {total}, ptr %ckp{self.tag}")


def accumulate(lines: list[str], expr: str, g: str, cur: str, tag: str, d: str | None,
               check: Check) -> str:
    """Emit one adjoint update of the reverse sweep; returns the new adjoint.

    ``cur`` is the argument's adjoint so far (``"0.0"`` where nothing reached it yet), ``g``
    the instruction's adjoint.  A unit partial (``expr`` in
    :data:`fasttape.native.translate.UNIT_PARTIALS`) adds or subtracts ``g``; any other adds
    ``g * d`` (``d``: the partial's operand) and adds the product to ``check``.  No
    condition, and no ``0.0 +`` on a first update (:class:`Check` says why that is the
    interpreter's result whenever the check passes).
    """
    new = f"%n{tag}"
    unit = UNIT_PARTIALS.get(expr)
    if unit is not None:
        if cur == "0.0":
            if unit > 0:
                return g
            lines.append(f"  {new} = fneg double {g}")
        else:
            op = "fadd" if unit > 0 else "fsub"
            lines.append(f"  {new} = {op} double {cur}, {g}")
        return new
    lines.append(f"  %m{tag} = fmul double {g}, {d}")
    check.add(lines, f"%m{tag}")
    if cur == "0.0":
        return f"%m{tag}"
    lines.append(f"  {new} = fadd double {cur}, %m{tag}")
    return new
