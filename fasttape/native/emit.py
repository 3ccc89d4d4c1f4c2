"""LLVM IR for one tape: its pieces (straight-line ones here), and the entry points.

The tape (docs/tape-format.md) is cut into *pieces* (:func:`cut`): its periodic runs become
loop pieces (:mod:`fasttape.native.loops`), every other stretch straight-line pieces of at
most ``piece_size`` consecutive instructions.  Each piece becomes two or three LLVM functions,
a straight-line piece's each compiled as a module of its own, loop pieces' functions many to
a module (their compile time is bounded, so the tape's is linear in its length):

- ``fwd`` evaluates the piece's instructions in order, each op's forward function inlined
  (:mod:`fasttape.native.translate`), arguments in SSA registers when the piece computed them
  (for as long as the level's :class:`Shape` allows), constants as immediates, inputs loaded
  from ``x``, values of earlier pieces loaded from the work array ``w``; every result is
  stored to ``w[slot]`` (the reverse pieces and the later pieces read it there).  An
  instruction that no output depends on is not computed.  ``sin`` and ``cos`` (the ops with
  :func:`fasttape.native.translate.stored_partials`) that the reverse sweep reaches compute
  their value and partial in one ``sincos`` call and store the partial too.  ``value``
  runs the same function (a loop piece that stores partials has a second one for ``value``,
  without them: :meth:`Layout.separate_value`).
- ``rev`` walks the piece's instructions last to first and moves each adjoint to its
  arguments, a unit partial adding or subtracting the adjoint, any other partial recomputed
  from the stored values (or loaded, when stored) and added as ``g * d``, without the zero
  rules of the interpreter's reverse sweep (fasttape/kernels/sweep.py: a zero adjoint moves
  nothing, a zero partial adds nothing, so never ``0 * inf``).  That gives the interpreter's
  gradient bits unless a gradient entry comes out NaN (:func:`fasttape.native.irtext.accumulate`
  says why): the check, after which the caller evaluates the point on the interpreter.

Adjoints live in registers inside a piece; one that another piece still updates or reads
goes through ``w[n_slots + slot]``.  Which adjoints those are is known from the tape alone,
so the work array never needs clearing: an adjoint is loaded only where an earlier-run piece
or the seed stored it (a loop piece zeroes the adjoints it reads that nothing stored).

The entry points ``value(x, w, out)`` and ``vg(x, w, grad, which) -> value`` call the pieces;
``valueb`` and ``vgb`` call those over the rows of a batch.  After ``vg``, ``w[check_at]``
is the check: NaN (a NaN gradient entry) means ``grad`` may not be the interpreter's, and the
point must be evaluated again on the interpreter; ``vg`` then returns NaN too (a caller
reads ``w`` only after a NaN value).
Everything is plain text: the per-instruction work is string formatting, linear in the tape.

Work array layout (float64): ``w[0 : n_slots]`` values, ``w[n_slots : 2 n_slots]`` adjoints,
``w[2 n_slots : 2 n_slots + n_outputs]`` the output values of the last ``vg`` call, then the
stored partials (``Layout.part_at``: from there, per instruction that stores some), then one
entry for the check (``Layout.check_at``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fasttape.kernels.structure import mark_reached
from fasttape.native import loops
from fasttape.native.irtext import accumulate, imm, partial, powi, powi_exponent, stored
from fasttape.native.translate import (
    UNIT_PARTIALS,
    forward_name,
    fused_name,
    fused_width,
    given_name,
    paired_call,
    stored_partials,
)
from fasttape.ops import OPS

__all__ = ["LOOPS_PER_MODULE", "SHAPES", "Layout", "Piece", "Shape", "cut", "driver_module",
           "n_modules", "piece_modules", "shape", "without_dead_code", "work_size"]

_ARITY = np.array([op.arity for op in OPS], dtype=np.int64)
_NDIFF = np.array([op.ndiff for op in OPS], dtype=np.int64)
_FUSED_WIDTH = np.array([fused_width(op) for op in OPS], dtype=np.int64)


@dataclass(frozen=True)
class Piece:
    """Instructions ``lo`` to ``hi - 1`` of a tape, compiled as one forward and one reverse
    function: straight-line code (``period`` 0), or a loop whose body is the first
    ``period`` of them (:mod:`fasttape.native.loops`)."""

    lo: int
    hi: int
    period: int = 0


def cut(ops: np.ndarray, args: np.ndarray, n_lead: int, n_pre: int, piece_size: int,
        find_loops: bool = True) -> tuple[Piece, ...]:
    """The pieces of a tape: its periodic runs as loops (:func:`fasttape.native.loops.find`,
    with ``find_loops``), every other stretch cut into straight-line pieces of at most
    ``piece_size`` instructions."""
    ops = np.asarray(ops, dtype=np.int64)
    args = np.asarray(args, dtype=np.int64)
    n = len(ops)
    found = loops.find(ops, args, n_lead, n_pre) if find_loops else []
    pieces: list[Piece] = []
    at = 0
    for lo, hi, period in [*found, (n, n, 0)]:
        pieces += [Piece(k, min(k + piece_size, lo)) for k in range(at, lo, piece_size)]
        if hi > lo:
            pieces.append(Piece(lo, hi, period))
        at = hi
    return tuple(pieces)


def _reached(args: np.ndarray, starts: np.ndarray, outputs: np.ndarray, n_pre: int,
             nd: np.ndarray) -> np.ndarray:
    """Per instruction: whether an output reaches it, through the first ``nd[i]`` arguments
    of each instruction ``i`` it reaches (``starts``: where each one's arguments begin)."""
    reach = np.zeros(n_pre + len(nd), dtype=np.bool_)
    reach[np.asarray(outputs, dtype=np.int64)] = True
    mark_reached(np.asarray(args, dtype=np.int64), np.asarray(starts, dtype=np.int64),
                 np.asarray(nd, dtype=np.int64), n_pre, reach)
    return reach[n_pre:]


def without_dead_code(arrays: dict[str, Any]) -> dict[str, Any]:
    """A tape's arrays (``Tape.to_arrays()``) without the instructions no output depends on,
    the other slots renumbered in order; the arrays themselves when there are none.

    Those instructions compute nothing any caller can see, and their slots would spread the
    work array: random_uniform at 10,000 instructions keeps 2,552 of them
    (``python benchmarks/bench_ab_native.py --choices dead`` times the difference).
    """
    ops = np.asarray(arrays["ops"], dtype=np.int64)
    args = np.asarray(arrays["args"], dtype=np.int64)
    n_pre = int(arrays["n_inputs"]) + int(arrays["n_params"]) + len(arrays["consts"])
    arity = _ARITY[ops]
    starts = np.concatenate(([0], np.cumsum(arity)))
    needed = _reached(args, starts, arrays["outputs"], n_pre, arity)
    if needed.all():
        return arrays
    keep = np.nonzero(needed)[0]
    slot = np.full(n_pre + len(ops), -1, dtype=np.int64)
    slot[:n_pre] = np.arange(n_pre)
    slot[n_pre + keep] = n_pre + np.arange(len(keep))
    return {**arrays, "ops": np.asarray(arrays["ops"])[keep],
            "args": slot[args[np.repeat(needed, arity)]].astype(np.asarray(arrays["args"]).dtype),
            "outputs": slot[np.asarray(arrays["outputs"], dtype=np.int64)]}


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
    pieces : tuple of Piece
        The tape cut into pieces (:func:`cut`).
    tag : str
        Makes the symbol names of this tape unique in the process.
    """

    ops: np.ndarray
    args: np.ndarray
    consts: np.ndarray
    outputs: np.ndarray
    n_inputs: int
    n_lead: int
    pieces: tuple[Piece, ...]
    tag: str

    def __post_init__(self) -> None:
        self.ops = np.asarray(self.ops, dtype=np.int64)
        self.args = np.asarray(self.args, dtype=np.int64)
        self.n_pre = self.n_lead + len(self.consts)
        self.n_instr = len(self.ops)
        self.n_slots = self.n_pre + self.n_instr
        arity = _ARITY[self.ops]
        self.starts = np.concatenate(([0], np.cumsum(arity)))
        self.n_pieces = len(self.pieces)
        # piece_of[i]: the piece that instruction i is in.
        self.piece_of = np.zeros(self.n_instr, dtype=np.int64)
        for k, piece in enumerate(self.pieces):
            self.piece_of[piece.lo: piece.hi] = k
        # last_piece[p]: the highest piece whose reverse sweep adds into slot p's adjoint
        # (-1 if none).  Reverse pieces run from the highest down, so piece k starts p's
        # adjoint from w when a higher piece touched it (or p is seeded as an output).
        # Only instructions an output's adjoint can reach count (the reverse pieces skip the
        # others): a skipped instruction stores nothing, so a lower piece must not load from it.
        self.last_piece = np.full(self.n_slots, -1, dtype=np.int64)
        nd = _NDIFF[self.ops]
        live = self.live = self._live(nd)
        # needed[i]: whether an output's value depends on instruction i (through any
        # argument); the forward pieces compute no other (dead code: no output can tell).
        self.needed = self._live(_ARITY[self.ops])
        # looped[i]: whether instruction i is in a loop piece (loops address w themselves)
        self.looped = np.zeros(self.n_instr, dtype=bool)
        for piece in self.pieces:
            if piece.period:
                self.looped[piece.lo: piece.hi] = True
        self.value_at = self._share_values()
        # computed[i]: whether the forward pieces compute instruction i (needed, and its value
        # not another instruction's: value_at)
        self.computed = self.needed & (self.value_at[self.n_pre:] == self.n_pre
                                       + np.arange(self.n_instr))
        self.pair_from = self._pair_sources()
        for j in range(int(nd.max(initial=0))):
            rows = np.nonzero((nd > j) & live)[0]
            parents = self.args[self.starts[rows] + j]
            np.maximum.at(self.last_piece, parents, self.piece_of[rows])
        self.output_slots = {int(s) for s in self.outputs}
        self.is_output = np.zeros(self.n_slots, dtype=bool)
        self.is_output[np.asarray(self.outputs, dtype=np.int64)] = True
        self.const_list = [float(c) for c in self.consts]
        self.const_bits = [imm(c) for c in self.const_list]
        self._place_partials()

    def _share_values(self) -> np.ndarray:
        """``value_at[s]``: the slot whose ``w`` entry holds slot ``s``'s value: ``s`` itself,
        or, for an instruction of a straight-line piece that repeats an earlier needed one
        (the same op on arguments of the same values), that one's slot.  The forward pieces
        compute each value once (a ``tanh`` computed twice costs a libm call), and read it
        there; bitwise the same, as an op is a function of its arguments.  The reverse
        pieces still move each instruction's adjoint along its own edges, as the
        interpreter does (merging the two would change the order of the adjoints' sums).
        A slot that a loop piece reads keeps its value (loops address ``w`` themselves)."""
        n_pre, looped = self.n_pre, self.looped
        value_at = list(range(self.n_slots))
        keep = looped.copy()  # instructions whose own slot holds their value
        read = self.args[np.repeat(looped, np.diff(self.starts))]
        keep[read[read >= n_pre] - n_pre] = True
        ops, args, starts = self.ops.tolist(), self.args.tolist(), self.starts.tolist()
        size = self.n_slots
        first: dict[int, int] = {}  # the op and its arguments' value slots, as one int
        for i in np.nonzero(self.needed)[0].tolist():
            key = ops[i]
            for a in args[starts[i]: starts[i + 1]]:
                key = key * size + value_at[a]
            s = first.setdefault(key, n_pre + i)
            if s != n_pre + i and not keep[i]:
                value_at[n_pre + i] = s
        return np.array(value_at, dtype=np.int64)

    def _pair_sources(self) -> np.ndarray:
        """``pair_from[i]``: the earlier instruction whose paired libm call (``sincos``) is
        the one instruction ``i`` would make, on an argument of the same value, and whose
        work-array entries keep both results (:func:`fasttape.native.translate.paired_call`);
        ``i`` reads them there (:func:`fasttape.native.translate.given_name`) instead of
        calling libm again: a ``cos(a)`` after a ``sin(a)``.  -1 where there is none.  Both
        in straight-line pieces (a loop's ``value`` function stores no partials)."""
        pair_from = np.full(self.n_instr, -1, dtype=np.int64)
        calls = [paired_call(op) for op in OPS]
        first: dict[tuple[str, int], int] = {}
        for i in np.nonzero(self.computed & ~self.looped)[0].tolist():
            pc = calls[int(self.ops[i])]
            if pc is None:
                continue
            arg = int(self.value_at[self.args[self.starts[i] + "xyz".index(pc.param)]])
            src = first.setdefault((pc.call, arg), i)
            if src != i:
                pair_from[i] = src
        return pair_from

    def _place_partials(self) -> None:
        """``part_at[i]``: where instruction ``i``'s stored partials start in ``w`` (-1: it
        has none); ``n_work`` the work array's length with them.  A straight-line piece
        stores them for the instructions its reverse sweep reaches, one after another, and
        for those whose value such an instruction shares (``value_at``, which then reads
        them there); a loop piece for every repetition of each such body instruction,
        repetition ``r`` at ``part_at[lo + q] + r * width`` (its loops address them so)."""
        width = _FUSED_WIDTH[self.ops]
        self.part_at = np.full(self.n_instr, -1, dtype=np.int64)
        own = self.n_pre + np.arange(self.n_instr)
        shared = np.nonzero(self.value_at[self.n_pre:] != own)[0]
        wanted = self.live.copy()
        wanted[self.value_at[self.n_pre + shared[self.live[shared]]] - self.n_pre] = True
        readers = np.nonzero(self.pair_from >= 0)[0]  # both keep their paired results
        wanted[readers] = True
        wanted[self.pair_from[readers]] = True
        wanted[shared] = False
        at = 2 * self.n_slots + len(self.outputs)
        for piece in self.pieces:
            if piece.period:
                reps = (piece.hi - piece.lo) // piece.period
                for q in range(piece.period):
                    wq = int(width[piece.lo + q])
                    if wq:
                        self.part_at[piece.lo + q: piece.hi: piece.period] = \
                            at + wq * np.arange(reps)
                        at += wq * reps
            else:
                rows = np.nonzero((width[piece.lo: piece.hi] > 0)
                                  & wanted[piece.lo: piece.hi])[0] + piece.lo
                starts = at + np.concatenate(([0], np.cumsum(width[rows])[:-1]))
                self.part_at[rows] = starts.astype(np.int64)
                at += int(width[rows].sum())
        self.part_at[shared] = self.part_at[self.value_at[self.n_pre + shared] - self.n_pre]
        self.check_at = at  # the check: NaN after vg where a gradient entry is NaN
        self.n_work = at + 1

    def _live(self, nd: np.ndarray) -> np.ndarray:
        """Per instruction: whether an output's adjoint can reach it (an output itself, or one
        of the first ``nd`` arguments, the differentiable ones, of a live instruction)."""
        return _reached(self.args, self.starts, self.outputs, self.n_pre, nd)

    def seeded(self, slot: int, piece: int) -> bool:
        """Whether piece ``piece`` starts ``slot``'s adjoint from ``w`` (else from 0)."""
        return slot in self.output_slots or self.last_piece[slot] > piece

    def fwd_name(self, k: int) -> str:
        return f"ft.fwd.{self.tag}.{k}"

    def stored_at(self, i: int, j: int) -> int | None:
        """Where in ``w`` instruction ``i``'s partial ``j`` is stored (:meth:`_place_partials`;
        in a loop piece, repetition 0's: repetition ``r``'s is ``r * width`` further), or None
        when it is not stored."""
        at = int(self.part_at[i])
        stored = stored_partials(OPS[int(self.ops[i])])
        return at + stored.index(j) if at >= 0 and j in stored else None

    def separate_value(self, k: int) -> bool:
        """Whether ``value`` calls a forward function of its own for piece ``k``, one that
        stores no partials (:meth:`val_name`): for a loop piece that stores some (a
        ``sincos`` takes longer than a ``sin`` alone: a chain of ``sin`` 109 against 84 us
        at 10,000 instructions).  A straight-line piece's ``value`` runs its ``fwd``
        function: a second forward module would add a quarter to the random graphs'
        compile time, for 7 to 9% of their ``value`` time at 100,000 instructions."""
        piece = self.pieces[k]
        return bool(piece.period) and bool((self.part_at[piece.lo: piece.hi] >= 0).any())

    def val_name(self, k: int) -> str:
        """The forward function of piece ``k`` that ``value`` calls (:meth:`separate_value`)."""
        return f"ft.val.{self.tag}.{k}" if self.separate_value(k) else self.fwd_name(k)

    def rev_name(self, k: int) -> str:
        return f"ft.rev.{self.tag}.{k}"


def work_size(lay: Layout) -> int:
    """Entries of the work array ``w``."""
    return lay.n_work


class _Refs:
    """Operand names inside one function: registers, immediates, or loads emitted on first use.

    A register is forgotten once ``window`` instructions have passed without using it (see
    :meth:`age`): the next use loads the value again from the work array (or ``x``), where it
    always is.  That bounds how many values are live at once, which keeps LLVM's register
    allocator's work per instruction bounded (the passes' grouping of like ops otherwise
    keeps thousands of values alive across a piece).  Levels 0 and 1 run no pass that would
    merge a reload with the first load; levels 2 and 3 (GVN) may, which only costs them
    compile time.  (Marking reloads ``volatile`` to prevent that made the instruction
    selector five times slower.)
    """

    def __init__(self, lay: Layout, lines: list[str], window: int) -> None:
        self.lay = lay
        self.lines = lines
        self.window = window
        self.names: dict[int, str] = {}
        self.last: dict[int, int] = {}  # slot -> clock of its last use
        self.clock = 0
        self.count = 0

    def value(self, s: int) -> str:
        """The value of slot ``s`` as an operand."""
        lay = self.lay
        if lay.n_lead <= s < lay.n_pre:
            return lay.const_bits[s - lay.n_lead]
        s = int(lay.value_at[s])
        name = self.names.get(s)
        if name is None:
            self.count += 1
            name = f"%l{s}.{self.count}"
            base, off = ("%x", s) if s < lay.n_lead else ("%w", s)
            self.lines.append(f"  %p{s}.{self.count} = getelementptr inbounds double, "
                              f"ptr {base}, i64 {off}")
            self.lines.append(f"  {name} = load double, ptr %p{s}.{self.count}")
            self.names[s] = name
        self.last[s] = self.clock
        return name

    def define(self, s: int, name: str) -> None:
        """Slot ``s`` is in register ``name`` (and stored to the work array)."""
        self.names[s] = name
        self.last[s] = self.clock

    def age(self) -> list[int]:
        """Advance the clock by one instruction; every ``window // 4`` instructions forget
        the registers unused for ``window`` instructions, and return their slots."""
        self.clock += 1
        if self.clock % max(1, self.window // 4):
            return []
        old = [s for s, t in self.last.items() if t < self.clock - self.window]
        for s in old:
            del self.last[s]
            del self.names[s]
        return old


@dataclass(frozen=True)
class Shape:
    """How a straight-line piece's code is laid out for the LLVM level it is compiled at.

    ``window``: instructions after which a value's register is dropped and the value
    reloaded from the work array at its next use (bounded live ranges, see ``_Refs``);
    ``adj_window`` the same for an adjoint (stored to ``w`` when dropped); ``block``:
    instructions per basic block (see ``_block``).
    """

    window: int
    adj_window: int
    block: int


#: The shape by level, 0 and (the second) 1 and above.  Level 0 selects instructions in
#: linear time but spills every register live across a block boundary or a call to the
#: stack, so there a value is reloaded from ``w`` (where it is anyway) after one
#: instruction, and blocks are long.  Against level 1's former shape (windows of 256, blocks
#: of 16) at level 0 (``python benchmarks/bench_ab_native.py --choices shape`` at commit
#: bf2a57a): ``value_and_grad`` 27.6
#: against 37.9 us on random_local at 10,000 instructions (15.6 against 16.8 on
#: random_uniform; 367 against 414 us on random_local at 100,000), for about 10% more
#: compile time.  Level 1 selects instructions one basic block at a time, in time
#: superlinear in its length on long chains of arithmetic, and allocates registers across
#: blocks; a value kept in a register past a call is spilled to the stack (every vector
#: register is the callee's), so there too a value is reloaded from ``w`` a few
#: instructions on.  At 10,000 instructions, all straight-line (commit 08e3e90, a ``/tmp``
#: script timing both in one process): windows of 4 against 256 instructions, random_local
#: 23.4 to 23.6 against 23.9 us, Rosenbrock 23.1 against 24.4 us, Lennard-Jones 15.7
#: against 16.1 us; blocks of 64 against 16 instructions compiled random_local in 0.67
#: against 0.79 s (the calls split the scheduler's regions anyway), Rosenbrock and
#: Lennard-Jones within the noise.
SHAPES = (Shape(window=1, adj_window=256, block=512), Shape(window=4, adj_window=256,
                                                              block=64))


def shape(level: int) -> Shape:
    """The :class:`Shape` of a piece compiled at LLVM level ``level``."""
    return SHAPES[min(level, 1)]


def _block(lines: list[str], n: int, block: int) -> None:
    """Start a new basic block before the ``n``-th instruction of a piece, every ``block``.

    LLVM's instruction selector and schedulers work on one basic block at a time (see
    :data:`SHAPES`); the unconditional branches cost nothing at run time (the blocks are laid
    out in order and the branches removed).
    """
    if n and n % block == 0:
        lines.append(f"  br label %b{n}")
        lines.append(f"b{n}:")


def _forward(lay: Layout, k: int, level: int) -> str:
    """The forward function of straight-line piece ``k`` for LLVM level ``level``."""
    lo, hi = lay.pieces[k].lo, lay.pieces[k].hi
    sh = shape(level)
    lines = [f'define void @"{lay.fwd_name(k)}"(ptr noalias nocapture readonly %x, '
             "ptr noalias nocapture %w) nounwind {", "entry:"]
    refs = _Refs(lay, lines, sh.window)
    ops, args, starts, n_pre = lay.ops, lay.args, lay.starts, lay.n_pre
    for i in range(lo, hi):
        refs.age()
        _block(lines, i - lo, sh.block)
        if not lay.computed[i]:
            continue  # no output depends on it, or its value is another's (value_at)
        spec = OPS[ops[i]]
        a = args[starts[i]: starts[i + 1]]
        s = n_pre + i
        n = powi_exponent(spec, a, lay.n_lead, lay.const_list)
        if n is not None:
            v = powi(lines, refs.value(int(a[0])), n, f"w{s}")
        else:
            operands = ", ".join(f"double {refs.value(int(v))}" for v in a)
            v = f"%v{s}"
        lines.append(f"  %q{s} = getelementptr inbounds double, ptr %w, i64 {s}")
        if n is None and lay.part_at[i] >= 0:  # stores the value too
            lines.append(f"  %t{s} = getelementptr inbounds double, ptr %w, "
                         f"i64 {lay.part_at[i]}")
            src = int(lay.pair_from[i])
            if src >= 0:  # the paired call's results, where src's fused function left them
                got = []
                for at in paired_call(OPS[ops[src]]).slots:
                    if at < 0:
                        got.append(refs.value(n_pre + src))
                    else:
                        got.append(stored(lines, "%w", str(lay.part_at[src] + at),
                                          f"g{s}.{at}"))
                lines.append(f'  {v} = call double @"{given_name(spec)}"({operands}, '
                             f"double {got[0]}, double {got[1]}, ptr %t{s}, ptr %q{s})")
            else:
                lines.append(f'  {v} = call double @"{fused_name(spec)}"({operands}, '
                             f"ptr %t{s}, ptr %q{s})")
        else:
            if n is None:
                lines.append(f'  {v} = call double @"{forward_name(spec)}"({operands})')
            lines.append(f"  store double {v}, ptr %q{s}")
        refs.define(s, v)
    lines += ["  ret void", "}"]
    return "\n".join(lines)


def _reverse(lay: Layout, k: int, level: int) -> str:
    """The reverse function of straight-line piece ``k`` for LLVM level ``level``."""
    lo, hi = lay.pieces[k].lo, lay.pieces[k].hi
    sh = shape(level)
    lines = [f'define void @"{lay.rev_name(k)}"(ptr noalias nocapture readonly %x, '
             "ptr noalias nocapture %w) nounwind {", "entry:"]
    refs = _Refs(lay, lines, sh.window)
    ops, args, starts, n_pre, n_slots = lay.ops, lay.args, lay.starts, lay.n_pre, lay.n_slots
    adj: dict[int, str] = {}  # slot -> register holding its adjoint so far
    touched: dict[int, int] = {}  # slot -> clock of its adjoint's last update
    spilled: set[int] = set()  # slots whose adjoint this piece stored to w and dropped
    count = 0

    def current(p: int) -> str:
        name = adj.get(p)
        if name is None:
            if p in spilled or lay.seeded(p, k):
                name = f"%a{p}.{refs.clock}"
                lines.append(f"  %pa{p}.{refs.clock} = getelementptr inbounds double, "
                             f"ptr %w, i64 {n_slots + p}")
                lines.append(f"  {name} = load double, ptr %pa{p}.{refs.clock}")
            else:
                name = "0.0"
            adj[p] = name
        touched[p] = refs.clock
        return name

    def store(p: int, name: str, tag: str) -> None:
        lines.append(f"  %s{tag}{p} = getelementptr inbounds double, ptr %w, i64 {n_slots + p}")
        lines.append(f"  store double {name}, ptr %s{tag}{p}")

    for i in range(hi - 1, lo - 1, -1):
        refs.age()
        _block(lines, hi - 1 - i, sh.block)
        if refs.clock % max(1, sh.adj_window // 4) == 0:
            # Adjoints not updated for a window's length go to w (bounded live ranges, as
            # for the values in _Refs): their next update or their instruction reloads them.
            for p in [p for p, t in touched.items() if t < refs.clock - sh.adj_window]:
                del touched[p]
                name = adj.pop(p)
                if name != "0.0":
                    store(p, name, f"p{refs.clock}.")
                    spilled.add(p)
        s = n_pre + i
        if s not in adj and s not in spilled and not lay.seeded(s, k):
            continue  # no adjoint ever reaches this instruction: it moves nothing
        g = current(s)
        del adj[s]
        touched.pop(s, None)
        spec = OPS[ops[i]]
        if not spec.ndiff:
            continue
        a = [int(v) for v in args[starts[i]: starts[i + 1]]]
        operands: str | None = None
        for j, expr in enumerate(spec.partials):
            p = a[j]
            if lay.n_inputs <= p < n_pre:
                continue  # a parameter's or constant's adjoint is never read
            cur = current(p)
            count += 1
            d = None
            at = lay.stored_at(i, j)
            if at is not None:
                d = stored(lines, "%w", str(at), str(count))
            elif expr not in UNIT_PARTIALS:
                n = powi_exponent(spec, a, lay.n_lead, lay.const_list)
                if n is None and operands is None:
                    operands = ", ".join(f"double {refs.value(v)}" for v in [*a, s])
                x0 = refs.value(a[0]) if n is not None else ""
                d = partial(lines, spec, j, operands or "", n, x0, str(count))
            new = accumulate(lines, expr, g, cur, str(count), d)
            adj[p] = new
    # Adjoints of slots made before this piece: the lower pieces (or the gradient) read them.
    # (A spilled one that was not updated again is in w already.)
    for p, name in sorted(adj.items()):
        store(p, name, "a")
    lines += ["  ret void", "}"]
    return "\n".join(lines)


#: Loop pieces whose functions share one module: a module's fixed cost (parsing the op
#: library, the passes' and the code generator's setup: about 10 ms) is then paid once for
#: many loop bodies, each a few dozen instructions.
LOOPS_PER_MODULE = 64


def _module_plan(lay: Layout) -> list[tuple[str, list[int]]]:
    """Each module as ``(kind, pieces)``: ``fwd`` or ``rev`` of one straight-line piece,
    ``loops`` for the functions of up to :data:`LOOPS_PER_MODULE` loop pieces."""
    straight = [k for k, p in enumerate(lay.pieces) if not p.period]
    looped = [k for k, p in enumerate(lay.pieces) if p.period]
    return ([("fwd", [k]) for k in straight]
            + [("rev", [k]) for k in straight]
            + [("loops", looped[m: m + LOOPS_PER_MODULE])
               for m in range(0, len(looped), LOOPS_PER_MODULE)])


def piece_modules(lay: Layout, header: str,
                  levels: tuple[int, ...]) -> Iterator[tuple[str, int]]:
    """``(IR text, level)`` of every piece module, made one at a time (the text of a whole
    large tape would not fit in memory twice): the straight-line pieces' forward modules,
    their reverse modules, then the loop pieces' functions in shared modules
    (:data:`LOOPS_PER_MODULE`), each module at the highest of its pieces' ``levels``.  The
    text calls the op library's functions, which
    :func:`fasttape.native.machine.compile_module` appends."""
    for kind, ks in _module_plan(lay):
        level = max(levels[k] for k in ks)
        if kind == "fwd":
            texts = [_forward(lay, ks[0], level)]
        elif kind == "rev":
            texts = [_reverse(lay, ks[0], level)]
        else:
            texts = [loops.MEMSET]
            for k in ks:
                texts += [loops.forward(lay, k), loops.reverse(lay, k)]
                if lay.separate_value(k):
                    texts.append(loops.forward(lay, k, stored=False))
        yield "\n".join([header, *texts, ""]), level


def n_modules(lay: Layout) -> int:
    """How many modules :func:`piece_modules` yields."""
    return len(_module_plan(lay))


def driver_module(lay: Layout, header: str) -> str:
    """The entry points ``ft.value.<tag>`` and ``ft.vg.<tag>`` (see the module docstring)."""
    n_slots = lay.n_slots
    decl = []
    for k in range(lay.n_pieces):
        decl.append(f'declare void @"{lay.fwd_name(k)}"(ptr, ptr) nounwind')
        decl.append(f'declare void @"{lay.rev_name(k)}"(ptr, ptr) nounwind')
        if lay.separate_value(k):
            decl.append(f'declare void @"{lay.val_name(k)}"(ptr, ptr) nounwind')
    fwd_calls = [f'  call void @"{lay.fwd_name(k)}"(ptr %x, ptr %w)'
                 for k in range(lay.n_pieces)]
    val_calls = [f'  call void @"{lay.val_name(k)}"(ptr %x, ptr %w)'
                 for k in range(lay.n_pieces)]

    # value(x, w, out)
    lines = [f'define void @"ft.value.{lay.tag}"(ptr %x, ptr %w, ptr %out) nounwind {{',
             "entry:", *val_calls]
    refs = _Refs(lay, lines, 1 << 62)
    for j, s in enumerate(lay.outputs):
        v = refs.value(int(s))
        lines.append(f"  %o{j} = getelementptr inbounds double, ptr %out, i64 {j}")
        lines.append(f"  store double {v}, ptr %o{j}")
    lines += ["  ret void", "}"]

    # vg(x, w, grad, which) -> value of output `which`
    lines += [f'define double @"ft.vg.{lay.tag}"(ptr %x, ptr %w, ptr %grad, i64 %which) '
              "nounwind {", "entry:", *fwd_calls]
    refs = _Refs(lay, lines, 1 << 62)
    base = 2 * n_slots
    for j, s in enumerate(lay.outputs):
        v = refs.value(int(s))
        lines.append(f"  %ov{j} = getelementptr inbounds double, ptr %w, i64 {base + j}")
        lines.append(f"  store double {v}, ptr %ov{j}")
    _seeds(lay, lines)
    lines += [f'  call void @"{lay.rev_name(k)}"(ptr %x, ptr %w)'
              for k in range(lay.n_pieces - 1, -1, -1)]
    bad = _gradient(lay, lines)
    lines.append(f"  %wi = add i64 %which, {base}")
    lines.append("  %pr = getelementptr inbounds double, ptr %w, i64 %wi")
    lines.append("  %r = load double, ptr %pr")
    # w[check_at] and the value are NaN where the check failed, so that a caller reads
    # w[check_at] only after a NaN value.
    lines.append(f"  %ckp = getelementptr inbounds double, ptr %w, i64 {lay.check_at}")
    lines.append(f"  %ck = select i1 {bad}, double 0x7FF8000000000000, double 0.0")
    lines.append("  store double %ck, ptr %ckp")
    lines.append(f"  %rc = select i1 {bad}, double 0x7FF8000000000000, double %r")
    lines += ["  ret double %rc", "}"]
    lines += _batch_loops(lay)
    return "\n".join([header, loops.MEMSET, *decl, *lines, ""])


def _gradient(lay: Layout, lines: list[str]) -> str:
    """Copy the inputs' adjoints to ``grad`` (``0.0`` added: ``-0`` to ``+0``, as
    :func:`fasttape.native.irtext.accumulate` allows) and return the ``i1`` operand saying
    whether one is NaN: the check.  A loop over each run of consecutive inputs that some
    piece's adjoint reaches, a ``memset`` to zero over each run of the others: written out
    one input at a time, a tape of 300,000 inputs had 1.5 million instructions of copying,
    slow to compile and to fetch at every call."""
    seeded = [lay.seeded(i, -1) for i in range(lay.n_inputs)]
    bad, block = "false", "entry"
    i = 0
    while i < lay.n_inputs:
        j = i
        while j < lay.n_inputs and seeded[j] == seeded[i]:
            j += 1
        r = f"{i}"
        lines.append(f"  %pg{r} = getelementptr inbounds double, ptr %grad, i64 {i}")
        if not seeded[i]:
            lines.append(f"  call void @llvm.memset.p0.i64(ptr %pg{r}, i8 0, i64 {8 * (j - i)}, "
                         "i1 false)")
            i = j
            continue
        lines += [
            f"  br label %gl{r}",
            f"gl{r}:",
            f"  %gi{r} = phi i64 [ 0, %{block} ], [ %gn{r}, %gl{r} ]",
            f"  %gb{r} = phi i1 [ {bad}, %{block} ], [ %gbn{r}, %gl{r} ]",
            f"  %ga{r} = add i64 %gi{r}, {lay.n_slots + i}",
            f"  %gp{r} = getelementptr inbounds double, ptr %w, i64 %ga{r}",
            f"  %gv{r} = load double, ptr %gp{r}",
            f"  %gz{r} = fadd double %gv{r}, 0.0",
            f"  %gq{r} = getelementptr inbounds double, ptr %pg{r}, i64 %gi{r}",
            f"  store double %gz{r}, ptr %gq{r}",
            f"  %gu{r} = fcmp uno double %gz{r}, 0.0",
            f"  %gbn{r} = or i1 %gb{r}, %gu{r}",
            f"  %gn{r} = add i64 %gi{r}, 1",
            f"  %gc{r} = icmp slt i64 %gn{r}, {j - i}",
            f"  br i1 %gc{r}, label %gl{r}, label %gd{r}",
            f"gd{r}:",
        ]
        bad, block = f"%gbn{r}", f"gd{r}"
        i = j
    return bad


def _seeds(lay: Layout, lines: list[str]) -> None:
    """Store the seeds: 1.0 for the slot of output ``%which``, 0.0 for every other output
    slot."""
    for s in sorted(lay.output_slots):
        js = [j for j, o in enumerate(lay.outputs) if int(o) == s]
        for j in js:
            lines.append(f"  %e{s}.{j} = icmp eq i64 %which, {j}")
        cond = f"%e{s}.{js[0]}"
        for n, j in enumerate(js[1:]):
            lines.append(f"  %eo{s}.{n} = or i1 {cond}, %e{s}.{j}")
            cond = f"%eo{s}.{n}"
        lines.append(f"  %sd{s} = select i1 {cond}, double 1.0, double 0.0")
        lines.append(f"  %ps{s} = getelementptr inbounds double, ptr %w, "
                     f"i64 {lay.n_slots + s}")
        lines.append(f"  store double %sd{s}, ptr %ps{s}")


def _batch_loops(lay: Layout) -> list[str]:
    """``valueb(x, w, out, n)`` and ``vgb(x, w, grad, which, vals, n) -> rows``: the
    single-point entry points over ``n`` consecutive rows of ``x`` (one call per chunk of a
    batch, so the caller's thread holds no lock while the rows run).  ``vgb`` stops at the
    first row whose check fails (:func:`driver_module`) and returns its
    index (``n`` when none does): the caller evaluates that row on the interpreter and calls
    again from the next."""
    tag, lead, n_in, m = lay.tag, lay.n_lead, lay.n_inputs, len(lay.outputs)

    def loop(ret: str, name: str, params: str, body: list[str]) -> list[str]:
        # ``body`` ends in a branch to %next, or to %done with the row's index.
        done = "  ret void" if ret == "void" else "  %rows = phi i64 [ 0, %entry ], " \
            "[ %i, %row ], [ %n, %next ]\n  ret i64 %rows"
        return [
            f'define {ret} @"{name}"({params}, i64 %n) nounwind {{',
            "entry:",
            "  %empty = icmp sle i64 %n, 0",
            "  br i1 %empty, label %done, label %row",
            "row:",
            "  %i = phi i64 [ 0, %entry ], [ %i1, %next ]",
            f"  %xo = mul i64 %i, {lead}",
            "  %xi = getelementptr inbounds double, ptr %x, i64 %xo",
            *body,
            "next:",
            "  %i1 = add i64 %i, 1",
            "  %more = icmp slt i64 %i1, %n",
            "  br i1 %more, label %row, label %done",
            "done:",
            done,
            "}",
        ]

    return [
        *loop("void", f"ft.valueb.{tag}", "ptr %x, ptr %w, ptr %out", [
            f"  %oo = mul i64 %i, {m}",
            "  %oi = getelementptr inbounds double, ptr %out, i64 %oo",
            f'  call void @"ft.value.{tag}"(ptr %xi, ptr %w, ptr %oi)',
            "  br label %next",
        ]),
        *loop("i64", f"ft.vgb.{tag}", "ptr %x, ptr %w, ptr %grad, i64 %which, ptr %vals", [
            f"  %go = mul i64 %i, {n_in}",
            "  %gi = getelementptr inbounds double, ptr %grad, i64 %go",
            f'  %v = call double @"ft.vg.{tag}"(ptr %xi, ptr %w, ptr %gi, i64 %which)',
            "  %vi = getelementptr inbounds double, ptr %vals, i64 %i",
            "  store double %v, ptr %vi",
            f"  %ckp = getelementptr inbounds double, ptr %w, i64 {lay.check_at}",
            "  %ck = load double, ptr %ckp",
            "  %ckbad = fcmp uno double %ck, 0.0",
            "  br i1 %ckbad, label %done, label %next",
        ]),
    ]
