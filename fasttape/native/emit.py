"""Straight-line LLVM IR for one tape: forward and reverse pieces, and the two entry points.

The tape (docs/tape-format.md) is cut into *pieces* of at most ``piece_size`` consecutive
instructions.  Each piece becomes two LLVM functions, compiled as modules of their own (their
compile time is bounded, so the tape's is linear in its length):

- ``fwd`` evaluates the piece's instructions in order, each op's forward function inlined
  (:mod:`fasttape.native.translate`), arguments in SSA registers when the piece computed them,
  constants as immediates, inputs loaded from ``x``, values of earlier pieces loaded from the
  work array ``w``; every result is stored to ``w[slot]`` (the reverse pieces and the later
  pieces read it there).
- ``rev`` walks the piece's instructions last to first and moves each adjoint to its
  arguments exactly as the interpreter's reverse sweep does (fasttape/kernels/sweep.py): an
  adjoint that is zero moves nothing (``g == 0: continue``), a unit partial adds or subtracts the
  adjoint, any other partial is recomputed from the stored values and added as ``g * d`` unless
  it is zero (``accumulate``: never ``0 * inf``).  Adjoints live in registers inside the piece;
  one that another piece still updates or reads goes through ``w[n_slots + slot]``.  Which
  adjoints those are is known from the tape alone, so the work array never needs clearing: an
  adjoint is loaded only where an earlier-run piece or the seed stored it.

The entry points ``value(x, w, out)`` and ``vg(x, w, grad, which) -> value`` call the pieces.
Everything is plain text: the per-instruction work is string formatting, linear in the tape.

Work array layout (float64): ``w[0 : n_slots]`` values, ``w[n_slots : 2 n_slots]`` adjoints,
``w[2 n_slots : 2 n_slots + n_outputs]`` the output values of the last ``vg`` call.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fasttape.native.machine import library
from fasttape.native.translate import UNIT_PARTIALS, forward_name, op_library, partial_name
from fasttape.ops import OPS

__all__ = ["Layout", "driver_module", "n_modules", "piece_modules", "work_size"]

_ARITY = np.array([op.arity for op in OPS], dtype=np.int64)
_NDIFF = np.array([op.ndiff for op in OPS], dtype=np.int64)


def _imm(v: float) -> str:
    """A float64 immediate in LLVM's exact hexadecimal form."""
    return f"0x{struct.unpack('<Q', struct.pack('<d', v))[0]:016X}"


@dataclass
class Layout:
    """What the emitters need to know about a tape, computed once.

    Parameters
    ----------
    ops, args, consts, outputs : ndarray
        The tape's arrays (docs/tape-format.md).
    n_inputs : int
        Inputs, which get a gradient.
    n_lead : int
        Inputs and parameters: the length of the point ``x`` the entry points take.
    piece_size : int
        Instructions per piece.
    tag : str
        Makes the symbol names of this tape unique in the process.
    """

    ops: np.ndarray
    args: np.ndarray
    consts: np.ndarray
    outputs: np.ndarray
    n_inputs: int
    n_lead: int
    piece_size: int
    tag: str

    def __post_init__(self) -> None:
        self.ops = np.asarray(self.ops, dtype=np.int64)
        self.args = np.asarray(self.args, dtype=np.int64)
        self.n_pre = self.n_lead + len(self.consts)
        self.n_instr = len(self.ops)
        self.n_slots = self.n_pre + self.n_instr
        arity = _ARITY[self.ops]
        self.starts = np.concatenate(([0], np.cumsum(arity)))
        self.n_pieces = -(-self.n_instr // self.piece_size)
        # last_piece[p]: the highest piece whose reverse sweep adds into slot p's adjoint
        # (-1 if none).  Reverse pieces run from the highest down, so piece k starts p's
        # adjoint from w when a higher piece touched it (or p is seeded as an output).
        self.last_piece = np.full(self.n_slots, -1, dtype=np.int64)
        nd = _NDIFF[self.ops]
        for j in range(int(nd.max(initial=0))):
            rows = np.nonzero(nd > j)[0]
            parents = self.args[self.starts[rows] + j]
            np.maximum.at(self.last_piece, parents, rows // self.piece_size)
        self.output_slots = {int(s) for s in self.outputs}
        self.const_bits = [_imm(float(c)) for c in self.consts]

    def seeded(self, slot: int, piece: int) -> bool:
        """Whether piece ``piece`` starts ``slot``'s adjoint from ``w`` (else from 0)."""
        return slot in self.output_slots or self.last_piece[slot] > piece

    def fwd_name(self, k: int) -> str:
        return f"ft.fwd.{self.tag}.{k}"

    def rev_name(self, k: int) -> str:
        return f"ft.rev.{self.tag}.{k}"


def work_size(lay: Layout) -> int:
    """Entries of the work array ``w``."""
    return 2 * lay.n_slots + len(lay.outputs)


class _Refs:
    """Operand names inside one function: registers, immediates, or loads emitted on first use."""

    def __init__(self, lay: Layout, lines: list[str]) -> None:
        self.lay = lay
        self.lines = lines
        self.names: dict[int, str] = {}

    def value(self, s: int) -> str:
        """The value of slot ``s`` as an operand."""
        lay = self.lay
        if lay.n_lead <= s < lay.n_pre:
            return lay.const_bits[s - lay.n_lead]
        name = self.names.get(s)
        if name is None:
            name = f"%l{s}"
            base, off = ("%x", s) if s < lay.n_lead else ("%w", s)
            self.lines.append(f"  %p{s} = getelementptr inbounds double, ptr {base}, i64 {off}")
            self.lines.append(f"  {name} = load double, ptr %p{s}")
            self.names[s] = name
        return name


def _open_piece(lay: Layout, k: int, name: str) -> tuple[range, list[str], _Refs]:
    """Start the function ``name`` of piece ``k``: its instructions, its first lines (the
    signature both sweeps share: ``%x`` the point, ``%w`` the work array) and its loads."""
    lo, hi = k * lay.piece_size, min((k + 1) * lay.piece_size, lay.n_instr)
    lines = [f'define void @"{name}"(ptr noalias nocapture readonly %x, '
             "ptr noalias nocapture %w) nounwind {", "entry:"]
    return range(lo, hi), lines, _Refs(lay, lines)


def _store(lines: list[str], ptr: str, offset: int, value: str) -> None:
    """Store ``value`` at ``%w[offset]`` through the new pointer register ``ptr``."""
    lines.append(f"  {ptr} = getelementptr inbounds double, ptr %w, i64 {offset}")
    lines.append(f"  store double {value}, ptr {ptr}")


def _forward(lay: Layout, k: int) -> tuple[str, set[str]]:
    piece, lines, refs = _open_piece(lay, k, lay.fwd_name(k))
    used: set[str] = set()
    ops, args, starts, n_pre = lay.ops, lay.args, lay.starts, lay.n_pre
    for i in piece:
        spec = OPS[ops[i]]
        fn = forward_name(spec)
        used.add(fn)
        a = args[starts[i]: starts[i + 1]]
        operands = ", ".join(f"double {refs.value(int(s))}" for s in a)
        s = n_pre + i
        lines.append(f'  %v{s} = call double @"{fn}"({operands})')
        _store(lines, f"%q{s}", s, f"%v{s}")
        refs.names[s] = f"%v{s}"
    lines += ["  ret void", "}"]
    return "\n".join(lines), used


def _reverse(lay: Layout, k: int) -> tuple[str, set[str]]:
    piece, lines, refs = _open_piece(lay, k, lay.rev_name(k))
    used: set[str] = set()
    ops, args, starts, n_pre, n_slots = lay.ops, lay.args, lay.starts, lay.n_pre, lay.n_slots
    adj: dict[int, str] = {}  # slot -> register holding its adjoint so far
    count = 0

    def current(p: int) -> str:
        name = adj.get(p)
        if name is None:
            if lay.seeded(p, k):
                name = f"%a{p}"
                lines.append(f"  %pa{p} = getelementptr inbounds double, ptr %w, i64 "
                             f"{n_slots + p}")
                lines.append(f"  {name} = load double, ptr %pa{p}")
            else:
                name = "0.0"
            adj[p] = name
        return name

    for i in reversed(piece):
        s = n_pre + i
        if s not in adj and not lay.seeded(s, k):
            continue  # no adjoint ever reaches this instruction: it moves nothing
        g = current(s)
        del adj[s]
        spec = OPS[ops[i]]
        if not spec.ndiff:
            continue
        a = [int(v) for v in args[starts[i]: starts[i + 1]]]
        lines.append(f"  %g{s} = fcmp une double {g}, 0.0")
        operands: str | None = None
        for j, expr in enumerate(spec.partials):
            p = a[j]
            if lay.n_inputs <= p < n_pre:
                continue  # a parameter's or constant's adjoint is never read
            cur = current(p)
            count += 1
            new = f"%n{count}"
            unit = UNIT_PARTIALS.get(expr)
            if unit is not None:
                op = "fadd" if unit > 0 else "fsub"
                lines.append(f"  %t{count} = {op} double {cur}, {g}")
                lines.append(f"  {new} = select i1 %g{s}, double %t{count}, double {cur}")
            else:
                if operands is None:
                    operands = ", ".join(f"double {refs.value(v)}" for v in [*a, s])
                fn = partial_name(spec, j)
                used.add(fn)
                lines.append(f'  %d{count} = call double @"{fn}"({operands})')
                lines.append(f"  %m{count} = fmul double {g}, %d{count}")
                lines.append(f"  %t{count} = fadd double {cur}, %m{count}")
                lines.append(f"  %z{count} = fcmp une double %d{count}, 0.0")
                lines.append(f"  %c{count} = and i1 %g{s}, %z{count}")
                lines.append(f"  {new} = select i1 %c{count}, double %t{count}, double {cur}")
            adj[p] = new
    # Adjoints of slots made before this piece: the lower pieces (or the gradient) read them.
    for p, name in sorted(adj.items()):
        _store(lines, f"%sa{p}", n_slots + p, name)
    lines += ["  ret void", "}"]
    return "\n".join(lines), used


def _module(header: str, body: str, used: set[str]) -> tuple[str, bool]:
    return "\n".join([header, library(), body, ""]), bool(used & op_library()[1])


def piece_modules(lay: Layout, header: str) -> Iterator[tuple[str, str, bool]]:
    """``(name, IR text, has a loop)`` of every piece module, forward pieces first, made one
    at a time (the text of a whole large tape would not fit in memory twice).  "Has a loop":
    the piece calls an op whose function loops (``powi``), which only the full optimizer
    pipeline unrolls."""
    for k in range(lay.n_pieces):
        body, used = _forward(lay, k)
        yield lay.fwd_name(k), *_module(header, body, used)
    for k in range(lay.n_pieces):
        body, used = _reverse(lay, k)
        yield lay.rev_name(k), *_module(header, body, used)


def n_modules(lay: Layout) -> int:
    """How many modules :func:`piece_modules` yields."""
    return 2 * lay.n_pieces


def driver_module(lay: Layout, header: str) -> str:
    """The entry points ``ft.value.<tag>`` and ``ft.vg.<tag>`` (see the module docstring)."""
    n_slots = lay.n_slots
    decl = []
    for k in range(lay.n_pieces):
        decl.append(f'declare void @"{lay.fwd_name(k)}"(ptr, ptr) nounwind')
        decl.append(f'declare void @"{lay.rev_name(k)}"(ptr, ptr) nounwind')
    fwd_calls = [f'  call void @"{lay.fwd_name(k)}"(ptr %x, ptr %w)'
                 for k in range(lay.n_pieces)]

    # value(x, w, out)
    lines = [f'define void @"ft.value.{lay.tag}"(ptr %x, ptr %w, ptr %out) nounwind {{',
             "entry:", *fwd_calls]
    refs = _Refs(lay, lines)
    for j, s in enumerate(lay.outputs):
        v = refs.value(int(s))
        lines.append(f"  %o{j} = getelementptr inbounds double, ptr %out, i64 {j}")
        lines.append(f"  store double {v}, ptr %o{j}")
    lines += ["  ret void", "}"]

    # vg(x, w, grad, which) -> value of output `which`
    lines += [f'define double @"ft.vg.{lay.tag}"(ptr %x, ptr %w, ptr %grad, i64 %which) '
              "nounwind {", "entry:", *fwd_calls]
    refs = _Refs(lay, lines)
    base = 2 * n_slots
    for j, s in enumerate(lay.outputs):
        v = refs.value(int(s))
        lines.append(f"  %ov{j} = getelementptr inbounds double, ptr %w, i64 {base + j}")
        lines.append(f"  store double {v}, ptr %ov{j}")
    # Seeds: 1.0 for the slot of output `which`, 0.0 for every other output slot.
    for s in sorted(lay.output_slots):
        hits = [f"%e{s}.{j}" for j, o in enumerate(lay.outputs) if int(o) == s]
        for name, j in zip(hits, [j for j, o in enumerate(lay.outputs) if int(o) == s],
                           strict=True):
            lines.append(f"  {name} = icmp eq i64 %which, {j}")
        cond = hits[0]
        for n, h in enumerate(hits[1:]):
            lines.append(f"  %eo{s}.{n} = or i1 {cond}, {h}")
            cond = f"%eo{s}.{n}"
        lines.append(f"  %sd{s} = select i1 {cond}, double 1.0, double 0.0")
        lines.append(f"  %ps{s} = getelementptr inbounds double, ptr %w, i64 {n_slots + s}")
        lines.append(f"  store double %sd{s}, ptr %ps{s}")
    lines += [f'  call void @"{lay.rev_name(k)}"(ptr %x, ptr %w)'
              for k in range(lay.n_pieces - 1, -1, -1)]
    for i in range(lay.n_inputs):
        lines.append(f"  %pg{i} = getelementptr inbounds double, ptr %grad, i64 {i}")
        if lay.seeded(i, -1):
            lines.append(f"  %ag{i} = getelementptr inbounds double, ptr %w, i64 {n_slots + i}")
            lines.append(f"  %vg{i} = load double, ptr %ag{i}")
            lines.append(f"  store double %vg{i}, ptr %pg{i}")
        else:
            lines.append(f"  store double 0.0, ptr %pg{i}")
    lines.append(f"  %wi = add i64 %which, {base}")
    lines.append("  %pr = getelementptr inbounds double, ptr %w, i64 %wi")
    lines.append("  %r = load double, ptr %pr")
    lines += ["  ret double %r", "}"]
    return "\n".join([header, *decl, *lines, ""])
