"""Periodic runs of a tape as LLVM loops: one body, compiled once, run for every repetition.

Structured tapes repeat themselves.  After the default passes, Rosenbrock's tape is runs of
``square, rsubc`` pairs and of ``add``s (a pairwise sum), Lennard-Jones' runs of ``sqdiff``
and of ``rdivc, powi, fmac`` triples, an MLP's runs of 16 or 32 ops: 99.6% to 99.9% of their
instructions.  A *periodic run* is ``reps`` repetitions of a body of ``period`` instructions
in which repetition ``r`` is the body with every argument slot moved by ``r`` times a fixed
step (``base + r * step``; ``step`` 0 for a constant, a shared value or a sum's running total).
Such a run becomes one forward and one reverse function holding a loop over ``r``: the code is
the body's, whatever ``reps`` is, so it compiles in milliseconds and runs from the CPU's
smallest caches, where straight-line code of the same instructions would stream megabytes of
machine code through them (:mod:`fasttape.native.emit`).

**Bitwise.** The loops run the instructions in the tape's order (forward) and in reverse
order (reverse), each with the interpreter's formula and adjoint rule
(:func:`fasttape.native.irtext.accumulate`), so they compute what the straight-line code
and the interpreter compute, bit for bit.  Values produced in the same repetition, or by the
previous repetition's instruction of a recurrence, stay in registers (a value never changes
once stored).  Each adjoint goes where its accesses allow (:class:`_Adjoints`): a register
when nothing else in the loop can name its slot, else the work array, every update a load,
the update and a store in the interpreter's order, so that two arguments naming one slot at
some repetitions (a shared value, a sum, arguments whose steps differ) see each other's
updates exactly as in the interpreter.

**Adjoints in memory.** The straight-line pieces keep adjoints in registers and store only
what another piece reads, so the work array never needs clearing.  A loop that reads an
adjoint from the work array first zeroes it, in place, if no higher piece has written it
(and it is not seeded as an output): a ``memset``, a strided loop, or a loop over a constant
table of the slots (:data:`MAX_ZERO_RUNS`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fasttape.native.irtext import accumulate, partial, powi, powi_exponent
from fasttape.native.translate import (
    UNIT_PARTIALS,
    forward_name,
    fused_name,
    fused_width,
)
from fasttape.ops import OPS

if TYPE_CHECKING:
    from fasttape.native.emit import Layout

__all__ = ["MAX_PERIOD", "MEMSET", "MIN_INSTRUCTIONS", "MIN_REPS", "find", "forward",
           "reverse"]

#: Longest body searched for.
MAX_PERIOD = 32
#: Fewest repetitions, and fewest instructions, of a run compiled as a loop (a shorter run
#: stays in straight-line code, where its values and adjoints stay in registers).
MIN_REPS = 4
MIN_INSTRUCTIONS = 32

#: The declaration a module holding loop functions needs (their zeroing prologues).
MEMSET = "declare void @llvm.memset.p0.i64(ptr nocapture writeonly, i8, i64, i1 immarg)"

_ARITY = np.array([op.arity for op in OPS], dtype=np.int64)
_NDIFF = np.array([op.ndiff for op in OPS], dtype=np.int64)


def _arg_matrix(ops: np.ndarray, args: np.ndarray) -> np.ndarray:
    """``A[i, j]``: argument ``j`` of instruction ``i``, -1 past its arity."""
    arity = _ARITY[ops]
    starts = np.concatenate(([0], np.cumsum(arity)))[:-1]
    width = int(arity.max(initial=0))
    a = np.full((len(ops), max(width, 1)), -1, dtype=np.int64)
    for j in range(width):
        rows = np.nonzero(arity > j)[0]
        a[rows, j] = args[starts[rows] + j]
    return a


def _run_lengths(ok: np.ndarray) -> np.ndarray:
    """``L[j]``: how many consecutive entries of ``ok`` from ``j`` on are true."""
    n = len(ok)
    idx = np.arange(n, dtype=np.int64)
    nxt = np.where(ok, n, idx)  # index of the first false entry at or after j
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]
    return nxt - idx


def find(ops: np.ndarray, args: np.ndarray, n_lead: int, n_pre: int,
         max_period: int = MAX_PERIOD) -> list[tuple[int, int, int]]:
    """The periodic runs of a tape compiled as loops: ``(lo, hi, period)``, in order.

    Linear in the tape for each period up to ``max_period`` (vectorized), then greedy from
    the front: at each instruction, the period whose run covers most instructions (the
    shortest among equals), if it has at least :data:`MIN_REPS` repetitions and
    :data:`MIN_INSTRUCTIONS` instructions.  An argument moving through constants (a
    different constant at each repetition) or across the border between the point ``x`` and
    the work array ends the run where it would.
    """
    ops = np.asarray(ops, dtype=np.int64)
    args = np.asarray(args, dtype=np.int64)
    n = len(ops)
    if n < MIN_INSTRUCTIONS:
        return []
    a = _arg_matrix(ops, args)
    const = (a >= n_lead) & (a < n_pre)
    best = np.zeros(n, dtype=np.int64)  # instructions covered by the best run from i
    best_period = np.zeros(n, dtype=np.int64)
    for period in range(1, max_period + 1):
        m = n - 2 * period
        if m <= 0:
            break
        d = a[period:] - a[:-period]
        ok = (ops[:m] == ops[period: period + m]) & (ops[:m] == ops[2 * period:])
        ok &= (d[:m] == d[period: period + m]).all(axis=1)
        ok &= ~(const[:m] & (d[:m] != 0)).any(axis=1)
        reps = (_run_lengths(ok) + 2 * period) // period
        cover = np.where(ok & (reps >= MIN_REPS), reps * period, 0)
        cover[cover < MIN_INSTRUCTIONS] = 0
        better = cover > best[:m]
        best[:m][better] = cover[better]
        best_period[:m][better] = period
    found = []
    candidates = np.nonzero(best)[0]
    at = 0
    while True:
        k = int(np.searchsorted(candidates, at))
        if k == len(candidates):
            return found
        lo = int(candidates[k])
        period = int(best_period[lo])
        reps = _within_regions(a, lo, period, int(best[lo]) // period, n_lead, n_pre)
        if reps >= MIN_REPS and reps * period >= MIN_INSTRUCTIONS:
            found.append((lo, lo + reps * period, period))
            at = lo + reps * period
        else:
            at = lo + 1


def _within_regions(a: np.ndarray, lo: int, period: int, reps: int, n_lead: int,
                    n_pre: int) -> int:
    """``reps`` cut where an argument would leave its region: the point ``x`` (below
    ``n_lead``) or the work array (from ``n_pre``; constants never move)."""
    base = a[lo: lo + period]
    step = a[lo + period: lo + 2 * period] - base
    for b, d in zip(base.ravel().tolist(), step.ravel().tolist(), strict=True):
        if d == 0 or b < 0:
            continue
        if b < n_lead:
            room = (n_lead - 1 - b) // d if d > 0 else b // -d
        else:
            room = (b - n_pre) // -d if d < 0 else reps
        reps = min(reps, room + 1)
    return reps


class _Body:
    """Operands of one repetition ``%r`` of a loop piece: offsets computed once per step."""

    def __init__(self, lay: Layout, k: int, lines: list[str]) -> None:
        piece = lay.pieces[k]
        self.lay, self.lines, self.lo, self.period = lay, lines, piece.lo, piece.period
        self.offsets: dict[tuple[int, int], str] = {}
        self.loads: dict[tuple[str, int, int], str] = {}
        self.carried: set[int] = set()  # body instructions whose previous value is a phi
        # operands[q]: (base, step) of each argument of body instruction q
        self.operands = []
        for q in range(self.period):
            i, later = piece.lo + q, piece.lo + self.period + q
            a0 = lay.args[lay.starts[i]: lay.starts[i + 1]].tolist()
            a1 = lay.args[lay.starts[later]: lay.starts[later + 1]].tolist()
            self.operands.append([(b, c - b) for b, c in zip(a0, a1, strict=True)])

    def index(self, base: int, step: int) -> str:
        """``base + r * step`` as an ``i64`` operand."""
        if step == 0:
            return str(base)
        name = self.offsets.get((base, step))
        if name is None:
            name = f"%o{len(self.offsets)}"
            self.lines.append(f"  {name}.m = mul i64 %r, {step}")
            self.lines.append(f"  {name} = add i64 {name}.m, {base}")
            self.offsets[(base, step)] = name
        return name

    def address(self, array: str, base: int, step: int) -> str:
        name = f"%p{len(self.loads)}.{len(self.offsets)}.{len(self.lines)}"
        self.lines.append(f"  {name} = getelementptr inbounds double, ptr {array}, "
                          f"i64 {self.index(base, step)}")
        return name

    def load(self, array: str, base: int, step: int) -> str:
        """A value of ``array`` at ``base + r * step``, loaded once per repetition."""
        name = self.loads.get((array, base, step))
        if name is None:
            p = self.address(array, base, step)
            name = f"%l{len(self.loads)}"
            self.lines.append(f"  {name} = load double, ptr {p}")
            self.loads[(array, base, step)] = name
        return name

    def value(self, base: int, step: int, own: dict[int, str] | None) -> str:
        """The value of an argument: an immediate, a register of this repetition (``own``:
        body instruction -> its value), the previous repetition's value of a body
        instruction (with ``own``: a ``phi``, see :meth:`carry_phis`), or a load from ``x``
        or ``w``."""
        lay = self.lay
        if lay.n_lead <= base < lay.n_pre:
            return lay.const_bits[base - lay.n_lead]
        q = base - lay.n_pre - self.lo
        if own is not None and step == self.period:
            if q in own:
                return own[q]
            if -self.period <= q < 0:  # the previous repetition's
                self.carried.add(q + self.period)
                return f"%vc{q + self.period}"
        return self.load("%x" if base < lay.n_lead else "%w", base, step)

    def carry_phis(self, own: dict[int, str], prologue: list[str]) -> list[str]:
        """The ``phi`` instructions of the previous repetition's values (:meth:`value`):
        at the first repetition, the slot before the loop, loaded in ``prologue``."""
        phis = []
        for q in sorted(self.carried):
            slot = self.lay.n_pre + self.lo + q - self.period
            array = "%x" if slot < self.lay.n_lead else "%w"
            prologue.append(f"  %vi{q}.p = getelementptr inbounds double, ptr {array}, "
                            f"i64 {slot}")
            prologue.append(f"  %vi{q} = load double, ptr %vi{q}.p")
            phis.append(f"  %vc{q} = phi double [ %vi{q}, %start ], [ {own[q]}, %body ]")
        return phis

    def result(self, q: int) -> tuple[int, int]:
        """``(base, step)`` of body instruction ``q``'s own slot."""
        return self.lay.n_pre + self.lo + q, self.period


def _loop(lay: Layout, name: str, first: int, last: int, prologue: list[str],
          body: list[str], phis: list[str] = (), epilogue: list[str] = ()) -> str:
    """A function looping ``%r`` from ``first`` to ``last`` (either direction); ``phis``
    (carried from one repetition to the next) start the body, ``epilogue`` runs after the
    loop."""
    step, cond = (1, "sle") if last >= first else (-1, "sge")
    return "\n".join([
        f'define void @"{name}"(ptr noalias nocapture readonly %x, '
        "ptr noalias nocapture %w) nounwind {",
        "entry:",
        *prologue,
        "  br label %start",
        "start:",
        "  br label %body",
        "body:",
        f"  %r = phi i64 [ {first}, %start ], [ %rn, %body ]",
        *phis,
        *body,
        f"  %rn = add i64 %r, {step}",
        f"  %more = icmp {cond} i64 %rn, {last}",
        "  br i1 %more, label %body, label %done",
        "done:",
        *epilogue,
        "  ret void",
        "}",
    ])


def forward(lay: Layout, k: int, stored: bool = True) -> str:
    """The forward function of loop piece ``k``: the body's values, stored to ``w``;
    ``stored``: with the stored partials (for ``vg``), else without (for ``value``, its
    ``Layout.val_name``)."""
    piece = lay.pieces[k]
    lines: list[str] = []
    body = _Body(lay, k, lines)
    own: dict[int, str] = {}
    for q in range(piece.period):
        spec = OPS[lay.ops[piece.lo + q]]
        operands = body.operands[q]
        n = powi_exponent(spec, [b for b, _ in operands], lay.n_lead, lay.const_list)
        if n is not None:
            v = powi(lines, body.value(*operands[0], own), n, f"w{q}.")
        else:
            vals = ", ".join(f"double {body.value(b, d, own)}" for b, d in operands)
            v = f"%v{q}"
        p = body.address("%w", *body.result(q))
        at = int(lay.part_at[piece.lo + q])
        if n is None and stored and at >= 0:
            # the stored partials of repetition r at at + r * width; stores the value too
            t = body.address("%w", at, fused_width(spec))
            lines.append(f'  {v} = call double @"{fused_name(spec)}"({vals}, ptr {t}, '
                         f"ptr {p})")
        else:
            if n is None:
                lines.append(f'  {v} = call double @"{forward_name(spec)}"({vals})')
            lines.append(f"  store double {v}, ptr {p}")
        own[q] = v
    reps = (piece.hi - piece.lo) // piece.period
    prologue: list[str] = []
    phis = body.carry_phis(own, prologue)
    name = lay.fwd_name(k) if stored else lay.val_name(k)
    return _loop(lay, name, 0, reps - 1, prologue, lines, phis)


#: Most runs of zeroed slots per sequence written as their own loops or ``memset``\ s;
#: a sequence broken into more is zeroed from a constant array of its slots.
MAX_ZERO_RUNS = 8


class _Adjoints:
    """Where loop piece ``k`` keeps each adjoint it touches, decided per *sequence*: the
    slots ``base + r * step`` of one argument (or one result) of the body over the
    repetitions ``r``.

    - ``reg``: a sequence no other sequence meets (no slot in common, ``step`` not 0) and
      that no higher piece or output seed wrote: its adjoint starts at 0.0 in a register at
      each repetition, is updated there, and (an argument's) stored once at the end of the
      repetition.
    - ``held``: the same, but every slot already written (by a higher piece or a seed): it
      is loaded at its first use in the repetition instead.
    - ``carry``: a recurrence, result ``q``'s sequence and the argument sequence that is
      result ``q`` of the previous repetition, which no other sequence meets and nothing wrote
      (but the last repetition's result): the argument's adjoint, accumulated from 0.0 in a
      register, is carried by a ``phi`` into the next repetition as result ``q``'s, and the
      last one (the slot before the loop) is stored after the loop.
    - ``mem``: every other (slots shared with another sequence or across repetitions, or
      written for some repetitions and not others): every update loads, updates and stores,
      in the interpreter's order; the prologue first zeroes its slots that nothing wrote.
    """

    def __init__(self, lay: Layout, k: int, body: _Body) -> None:
        piece = lay.pieces[k]
        self.reps = (piece.hi - piece.lo) // piece.period
        r = np.arange(self.reps, dtype=np.int64)
        self.results = {body.result(q) for q in range(piece.period)}
        keys = sorted(self.results)
        for q in range(piece.period):
            nd = OPS[lay.ops[piece.lo + q]].ndiff
            keys += [(b, d) for b, d in body.operands[q][:nd]
                     if not lay.n_inputs <= b < lay.n_pre]
        self.keys = list(dict.fromkeys(keys))
        slots = [b + r * d for b, d in self.keys]
        seeded = [lay.is_output[z] | (lay.last_piece[z] > k) for z in slots]
        # Sequences that share a slot with another one (partners), or with themselves
        # (step 0).  Three sharing one slot are each a partner of one of the others.
        partners: list[set[int]] = [set() for _ in self.keys]
        clash = np.array([d == 0 and self.reps > 1 for _, d in self.keys])
        if len(self.keys) > 1:
            flat = np.concatenate(slots)
            ids = np.repeat(np.arange(len(self.keys)), self.reps)
            order = np.argsort(flat, kind="stable")
            same = np.nonzero(flat[order][1:] == flat[order][:-1])[0]
            pairs = np.stack([ids[order][same], ids[order][same + 1]], axis=1)
            clash[pairs.ravel()] = True
            for a, b in np.unique(pairs, axis=0).tolist():
                if a != b:
                    partners[a].add(b)
                    partners[b].add(a)
        index = {key: n for n, key in enumerate(self.keys)}
        # Recurrences: result q's adjoint at repetition r - 1 is argument sequence A's at
        # repetition r, and no other sequence meets either (a chain, a running sum).
        self.carry: dict[int, tuple[tuple[int, int], bool]] = {}  # q -> (A, last seeded)
        for q in range(piece.period):
            res = body.result(q)
            arg = (res[0] - piece.period, piece.period)
            n_res, n_arg = index[res], index.get(arg)
            if n_arg is None or partners[n_res] != {n_arg} or partners[n_arg] != {n_res}:
                continue
            if seeded[n_res][:-1].any() or seeded[n_arg][0]:
                continue
            self.carry[q] = (arg, bool(seeded[n_res][-1]))
            clash[[n_res, n_arg]] = False
        carried = {body.result(q) for q in self.carry} | {a for a, _ in self.carry.values()}
        self.kind: dict[tuple[int, int], str] = {}
        self.zero: list[tuple[int, int, np.ndarray]] = []  # (base, step, unseeded mask)
        for key, c, sd in zip(self.keys, clash.tolist(), seeded, strict=True):
            if key in carried:
                self.kind[key] = "carry"
            elif not c and not sd.any():
                self.kind[key] = "reg"
            elif not c and sd.all():
                self.kind[key] = "held"
            else:
                self.kind[key] = "mem"
                if not sd.all():
                    self.zero.append((*key, ~sd))


def _zeroing(lay: Layout, k: int, adjs: _Adjoints) -> tuple[list[str], list[str]]:
    """The prologue that zeroes the ``mem`` sequences' slots that nothing wrote, and the
    constant arrays it reads (see :data:`MAX_ZERO_RUNS`)."""
    lines: list[str] = []
    globals_: list[str] = []

    def strided(m: str, first: int, stride: int, count: int) -> None:
        at = lay.n_slots + first
        if count == 1 or stride == 0:
            lines.append(f"  %y{m} = getelementptr inbounds double, ptr %w, i64 {at}")
            lines.append(f"  store double 0.0, ptr %y{m}")
        elif stride == 1:
            lines.append(f"  %y{m} = getelementptr inbounds double, ptr %w, i64 {at}")
            lines.append(f"  call void @llvm.memset.p0.i64(ptr %y{m}, i8 0, i64 {8 * count}, "
                         "i1 false)")
        else:
            lines.extend(_counted(m, count, [
                f"  %yo{m}.m = mul i64 %yi{m}, {stride}",
                f"  %yo{m} = add i64 %yo{m}.m, {at}",
                f"  %y{m} = getelementptr inbounds double, ptr %w, i64 %yo{m}",
                f"  store double 0.0, ptr %y{m}",
            ]))

    for n, (base, step, mask) in enumerate(adjs.zero):
        idx = np.nonzero(mask)[0]
        cut = np.nonzero(np.diff(idx) != 1)[0] + 1
        runs = np.split(idx, cut)
        if len(runs) <= MAX_ZERO_RUNS:
            for m, run in enumerate(runs):
                first = base + int(run[0]) * step
                if step < 0:  # the same slots, upwards
                    first, step_up = base + int(run[-1]) * step, -step
                else:
                    step_up = step
                strided(f"{n}.{m}", first, step_up, len(run))
            continue
        table = f'@"zero.{lay.tag}.{k}.{n}"'
        slots = (lay.n_slots + base + idx * step).tolist()
        globals_.append(f"{table} = private unnamed_addr constant [{len(slots)} x i64] "
                        f"[{', '.join(f'i64 {v}' for v in slots)}]")
        lines += _counted(f"{n}", len(slots), [
            f"  %yq{n} = getelementptr inbounds i64, ptr {table}, i64 %yi{n}",
            f"  %yo{n} = load i64, ptr %yq{n}",
            f"  %y{n} = getelementptr inbounds double, ptr %w, i64 %yo{n}",
            f"  store double 0.0, ptr %y{n}",
        ])
    return lines, globals_


def _counted(m: str, count: int, body: list[str]) -> list[str]:
    """A loop of ``body`` with ``%yi{m}`` from 0 to ``count - 1``, in blocks of its own."""
    return [
        f"  br label %yp{m}",
        f"yp{m}:",
        f"  br label %yl{m}",
        f"yl{m}:",
        f"  %yi{m} = phi i64 [ 0, %yp{m} ], [ %yn{m}, %yl{m} ]",
        *body,
        f"  %yn{m} = add i64 %yi{m}, 1",
        f"  %yc{m} = icmp slt i64 %yn{m}, {count}",
        f"  br i1 %yc{m}, label %yl{m}, label %yd{m}",
        f"yd{m}:",
    ]


def reverse(lay: Layout, k: int) -> str:
    """The reverse function of loop piece ``k``: repetitions last to first, each body's
    instructions last to first, each adjoint where :class:`_Adjoints` keeps it."""
    piece = lay.pieces[k]
    lines: list[str] = []
    body = _Body(lay, k, lines)
    adjs = _Adjoints(lay, k, body)
    held: dict[tuple[int, int], str] = {}  # sequence -> register, this repetition
    count = 0

    carry_res = {body.result(q): q for q in adjs.carry}
    for key, q in carry_res.items():
        held[key] = f"%ac{q}"  # the phi carrying the previous repetition's argument

    def current(key: tuple[int, int]) -> tuple[str, str | None]:
        """The adjoint so far and, for a ``mem`` sequence, its address."""
        kind = adjs.kind[key]
        if kind != "mem" and key in held:
            return held[key], None
        if kind in ("reg", "carry"):
            return "0.0", None
        pa = body.address("%w", lay.n_slots + key[0], key[1])
        name = f"%c{len(lines)}"
        lines.append(f"  {name} = load double, ptr {pa}")
        return name, (pa if kind == "mem" else None)

    for q in range(piece.period - 1, -1, -1):
        spec = OPS[lay.ops[piece.lo + q]]
        operands = body.operands[q]
        targets = [j for j in range(spec.ndiff)
                   if not lay.n_inputs <= operands[j][0] < lay.n_pre]
        res = body.result(q)
        if not targets:
            held.pop(res, None)
            continue
        g, _ = current(res)
        held.pop(res, None)
        vals = None
        n = powi_exponent(spec, [b for b, _ in operands], lay.n_lead, lay.const_list)
        for j in targets:
            key = operands[j]
            expr = spec.partials[j]
            count += 1
            dj = None
            at = lay.stored_at(piece.lo + q, j)
            if at is not None:
                dj = body.load("%w", at, fused_width(spec))
            elif expr not in UNIT_PARTIALS:
                if n is None and vals is None:
                    vals = ", ".join(f"double {body.value(vb, vd, None)}"
                                     for vb, vd in [*operands, res])
                x0 = body.value(*operands[0], None) if n is not None else ""
                dj = partial(lines, spec, j, vals or "", n, x0, f"{q}.{count}")
            cur, pa = current(key)
            new = accumulate(lines, expr, g, cur, f"{q}.{count}", dj)
            if pa is not None:
                lines.append(f"  store double {new}, ptr {pa}")
            else:
                held[key] = new
    # The arguments' adjoints kept in registers go to w once per repetition, but a
    # recurrence's, which the next repetition takes over.
    for key, name in held.items():
        if key not in adjs.results and adjs.kind[key] != "carry":
            pa = body.address("%w", lay.n_slots + key[0], key[1])
            lines.append(f"  store double {name}, ptr {pa}")
    prologue, tables = _zeroing(lay, k, adjs)
    phis, epilogue = [], []
    for q, (arg, seeded_last) in sorted(adjs.carry.items()):
        res = body.result(q)
        first = "0.0"
        if seeded_last:  # the last repetition's result: written by a higher piece or seeded
            at = lay.n_slots + res[0] + (adjs.reps - 1) * res[1]
            prologue.append(f"  %ai{q}.p = getelementptr inbounds double, ptr %w, i64 {at}")
            prologue.append(f"  %ai{q} = load double, ptr %ai{q}.p")
            first = f"%ai{q}"
        last = held.get(arg, "0.0")
        phis.append(f"  %ac{q} = phi double [ {first}, %start ], [ {last}, %body ]")
        epilogue.append(f"  %ae{q}.p = getelementptr inbounds double, ptr %w, i64 "
                        f"{lay.n_slots + arg[0]}")
        epilogue.append(f"  store double {last}, ptr %ae{q}.p")
    return "\n".join([*tables, _loop(lay, lay.rev_name(k), adjs.reps - 1, 0, prologue,
                                     lines, phis, epilogue)])
