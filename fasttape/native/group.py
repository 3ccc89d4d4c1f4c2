"""A tensor tape's fused elementwise groups as LLVM loops (``TensorTape.native()``).

The interpreter runs a fused group (:mod:`fasttape.kernels.tensor`, ``ELEMENTWISE``) tile by
tile, one member at a time: each member is a vectorized loop over the tile, its
intermediates in scratch memory, and its reverse sweep recomputes them and moves their
adjoints through memory.  Here a group becomes two loops of its own, ``fwd(vals)`` and
``rev(vals, adj)``, whose body is every member in turn for one element, with each op's
formula inlined from the op library (:mod:`fasttape.native.translate`), offsets and constants
as immediates and intermediates, their values and their adjoints, in registers.  LLVM's loop
vectorizer then runs the whole chain four elements at a time (AVX2).

**Reverse.** For element ``e``: the values again (an intermediate recomputed, a member with
slots of its own loaded), then members last to first, each moving its adjoint ``g`` to its
arguments exactly as the interpreter's ``add_product`` does (nothing where ``g`` or the partial
is zero, so never ``0 * inf``).  A contribution is applied as an addition of
``select(g != 0 and d != 0, g * d, -0.0)``, which is bitwise ``add_product`` (``t + -0.0`` is
``t`` for every ``t``).  An argument's adjoint goes

- to a register (an intermediate's adjoint, starting at ``0.0`` as the scratch tile does);
- to ``adj`` in place, when every other access of the group to that part of ``adj`` is at the
  same offset (the loop then carries no dependence and vectorizes);
- or, *deferred*, to a block of scratch on the stack that a second loop adds to ``adj`` after
  each block of :data:`BLOCK` elements: an argument read through a shifted view of an array
  that another member also reads (``x[1:]`` and ``x[:-1]``), whose in-place update would make
  element ``e + 1`` depend on element ``e``, and a broadcast argument (stride 0: a sum).

Values are bitwise the interpreter's (the same formula per element).  Gradients are too,
except where one slot gets contributions from several elements of a group (shifted views of
one array, a broadcast argument): those are summed in another order than the interpreter's
tile-by-tile one, so they agree to rounding.

A group this module cannot express (:func:`members` returns ``None``: a member reading an
earlier member's result through a shifted view, an unexpected stride) stays on the
interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fasttape.kernels.tensor import LANES, MEMBER_FIELDS
from fasttape.native.translate import UNIT_PARTIALS, forward_name, partial_name
from fasttape.ops import OPS, OpSpec

__all__ = ["BLOCK", "Member", "group_module", "members"]

#: Elements per block of the reverse loop: the deferred adjoints of a block wait in stack
#: scratch (8 bytes per element and deferred argument) before a second loop adds them.
BLOCK = 256


@dataclass(frozen=True)
class Member:
    """One member of a group, its operands resolved.

    ``args[j]`` is ``("reg", k)`` (the value of member ``k`` of this group), ``("mem", off)``
    (``vals[off + e]``) or ``("bcast", off)`` (``vals[off]`` at every element).
    ``targets[j]`` (``j < ndiff``) is ``None`` (the adjoint is never read: a constant's),
    ``("reg", k)`` (member ``k``'s adjoint register) or ``("mem", off, stride)``.
    ``out`` is the member's own offset, or ``-1`` for an intermediate.
    """

    spec: OpSpec
    out: int
    args: tuple[tuple[str, int], ...]
    targets: tuple[tuple[str, ...] | tuple[str, int, int] | None, ...]


def members(fields: np.ndarray, p: int) -> list[Member] | None:
    """The members of the group at ``fields[p]``, or ``None`` if a loop cannot express it."""
    f = [int(v) for v in fields[p:p + 3]]
    n, count = f[0], f[2]
    rec = fields[p + 3:p + 3 + count * MEMBER_FIELDS].reshape(count, MEMBER_FIELDS).tolist()
    scratch: dict[int, int] = {}  # scratch offset of an intermediate -> member
    full: dict[int, int] = {}  # offset of a member with slots of its own -> member
    out: list[Member] = []
    for k, r in enumerate(rec):
        spec = OPS[r[0]]
        d, td, inter = r[1], r[2], r[18]
        if (inter and td != 0) or (not inter and td != 1):
            return None
        args: list[tuple[str, int]] = []
        for j in range(spec.arity):
            a, s, ta = r[3 + 3 * j: 6 + 3 * j]
            if ta == 0 and s == 1:
                if a not in scratch:
                    return None
                args.append(("reg", scratch[a]))
            elif ta == s == 1:
                args.append(("reg", full[a]) if a in full else ("mem", a))
            elif ta == s == 0:
                args.append(("bcast", a))
            else:
                return None
        targets: list[tuple[str, ...] | tuple[str, int, int] | None] = []
        for j in range(spec.ndiff):
            b, u, tb = r[12 + 3 * j: 15 + 3 * j]
            if tb == 0 and u == 1:
                targets.append(("reg", scratch[b]) if b in scratch else None)
            elif tb == u and u in (0, 1):
                targets.append(("mem", b, u))
            else:
                return None
        if inter:
            scratch[d] = k
        else:
            full[d] = k
        out.append(Member(spec, -1 if inter else d, tuple(args), tuple(targets)))
    return out if _aligned(out, n) else None


def _overlap(lo1: int, n1: int, lo2: int, n2: int) -> bool:
    return lo1 < lo2 + n2 and lo2 < lo1 + n1


def _aligned(ms: list[Member], n: int) -> bool:
    # Every access to a member's own range is at its offset (element e reads and moves
    # element e): a shifted one would read an element another iteration writes.
    outs = [m.out for m in ms if m.out >= 0]
    for m in ms:
        sites = [(a[1], n if a[0] == "mem" else 1) for a in m.args if a[0] != "reg"]
        sites += [(t[1], n if t[2] else 1) for t in m.targets if t is not None and t[0] == "mem"]
        for lo, size in sites:
            for d in outs:
                if _overlap(lo, size, d, n) and (lo != d or size != n):
                    return False
    return True


def _deferred(ms: list[Member], n: int) -> set[tuple[int, int]]:
    """(member, argument) pairs whose adjoints go through stack scratch (module docstring)."""
    sites = [(m.out, n) for m in ms if m.out >= 0]  # the adjoints read as g: in place
    out = set()
    for k in range(len(ms) - 1, -1, -1):
        for j, t in enumerate(ms[k].targets):
            if t is None or t[0] != "mem":
                continue
            b, u = int(t[1]), int(t[2])
            if u == 0 or any(_overlap(b, n, lo, size) and lo != b for lo, size in sites):
                out.add((k, j))
            else:
                sites.append((b, n))
    return out


class _Body:
    """IR lines of one loop body: values and adjoints of one element ``%e``."""

    def __init__(self, lines: list[str], tag: str) -> None:
        self.lines, self.tag, self.count = lines, tag, 0

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"%{stem}{self.tag}.{self.count}"

    def addr(self, base: str, off: int, stride: int) -> str:
        ptr = self.fresh("p")
        if stride:
            idx = self.fresh("i")
            self.lines.append(f"  {idx} = add nuw nsw i64 %e, {off}")
            self.lines.append(f"  {ptr} = getelementptr inbounds double, ptr {base}, i64 {idx}")
        else:
            self.lines.append(f"  {ptr} = getelementptr inbounds double, ptr {base}, i64 {off}")
        return ptr

    def load(self, base: str, off: int, stride: int) -> str:
        ptr = self.addr(base, off, stride)
        v = self.fresh("l")
        self.lines.append(f"  {v} = load double, ptr {ptr}")
        return v

    def values(self, ms: list[Member], reverse: bool) -> list[str]:
        # The value of every member at element e (the forward loop stores the full ones; the
        # reverse loop loads them instead of recomputing).
        vals: list[str] = []
        for k, m in enumerate(ms):
            if reverse and m.out >= 0:
                vals.append(self.load("%v", m.out, 1))
                continue
            ops = ", ".join(f"double {self.operand(a, vals)}" for a in m.args)
            v = f"%v{self.tag}.m{k}"
            self.lines.append(f'  {v} = call double @"{forward_name(m.spec)}"({ops})')
            if not reverse and m.out >= 0:
                ptr = self.addr("%v", m.out, 1)
                self.lines.append(f"  store double {v}, ptr {ptr}")
            vals.append(v)
        return vals

    def operand(self, a: tuple[str, int], vals: list[str]) -> str:
        kind, x = a
        if kind == "reg":
            return vals[x]
        if kind == "bcast":
            return f"%c{x}"
        return self.load("%v", x, 1)


def _forward(ms: list[Member], n: int, name: str) -> list[str]:
    lines = [f'define void @"{name}.fwd"(ptr noalias nocapture %v) nounwind {{', "entry:"]
    lines += _broadcasts(ms)
    lines += ["  br label %loop", "loop:",
              "  %e = phi i64 [ 0, %entry ], [ %e.next, %loop ]"]
    body = _Body(lines, "f")
    body.values(ms, reverse=False)
    lines += ["  %e.next = add nuw nsw i64 %e, 1",
              f"  %more = icmp ult i64 %e.next, {n}",
              "  br i1 %more, label %loop, label %exit", "exit:", "  ret void", "}"]
    return lines


def _forward_sum(ms: list[Member], n: int, name: str, total: int) -> list[str]:
    """The forward loop of a group whose last result only a sum over all of it reads: that
    result goes to a block of stack scratch, never to ``vals``, and the sum is the
    interpreter's (``reduce_forward``: :data:`LANES` interleaved partial sums, element ``e``
    in lane ``e % LANES``, combined pairwise, then the last ``n % LANES`` elements in
    order), written to ``vals[total]``."""
    lanes = range(LANES)
    lines = [f'define void @"{name}.fwd"(ptr noalias nocapture %v) nounwind {{', "entry:",
             f"  %buf = alloca [{BLOCK} x double], align 32"]
    lines += _broadcasts(ms)
    lines += ["  br label %block", "block:",
              "  %t = phi i64 [ 0, %entry ], [ %t.next, %summed ]",
              *[f"  %a{j} = phi double [ 0.0, %entry ], [ %a{j}.n, %summed ]" for j in lanes],
              *_block_head(n)]
    body = _Body(lines, "f")
    last = body.values(ms, reverse=False)[-1]
    lines += [f"  %pb = getelementptr inbounds [{BLOCK} x double], ptr %buf, i64 0, i64 %i",
              f"  store double {last}, ptr %pb",
              "  %i.next = add nuw nsw i64 %i, 1",
              "  %more = icmp ult i64 %i.next, %m",
              "  br i1 %more, label %loop, label %lanes.pre", "lanes.pre:",
              f"  %m8 = and i64 %m, {-LANES}",
              "  %any = icmp ugt i64 %m8, 0",
              "  br i1 %any, label %lanes, label %summed", "lanes:",
              "  %q = phi i64 [ 0, %lanes.pre ], [ %q.next, %lanes ]"]
    lines += [f"  %l{j} = phi double [ %a{j}, %lanes.pre ], [ %l{j}.n, %lanes ]"
              for j in lanes]
    for j in lanes:
        lines += [f"  %qj{j} = add nuw nsw i64 %q, {j}",
                  f"  %pl{j} = getelementptr inbounds [{BLOCK} x double], ptr %buf, i64 0, "
                  f"i64 %qj{j}",
                  f"  %x{j} = load double, ptr %pl{j}",
                  f"  %l{j}.n = fadd double %l{j}, %x{j}"]
    lines += [f"  %q.next = add nuw nsw i64 %q, {LANES}",
              "  %qm = icmp ult i64 %q.next, %m8",
              "  br i1 %qm, label %lanes, label %summed", "summed:",
              *[f"  %a{j}.n = phi double [ %a{j}, %lanes.pre ], [ %l{j}.n, %lanes ]"
                for j in lanes],
              f"  %t.next = add nuw nsw i64 %t, {BLOCK}",
              f"  %again = icmp ult i64 %t.next, {n}",
              "  br i1 %again, label %block, label %finish", "finish:",
              "  %s01 = fadd double %a0.n, %a1.n", "  %s23 = fadd double %a2.n, %a3.n",
              "  %s45 = fadd double %a4.n, %a5.n", "  %s67 = fadd double %a6.n, %a7.n",
              "  %s03 = fadd double %s01, %s23", "  %s47 = fadd double %s45, %s67",
              "  %s.0 = fadd double %s03, %s47"]
    # The last n % LANES elements, in order: the tail of the last block, still in buf.
    m_last = n - (n - 1) // BLOCK * BLOCK
    for t in range(n % LANES):
        lines += [f"  %pt{t} = getelementptr inbounds [{BLOCK} x double], ptr %buf, i64 0, "
                  f"i64 {m_last - n % LANES + t}",
                  f"  %y{t} = load double, ptr %pt{t}",
                  f"  %s.{t + 1} = fadd double %s.{t}, %y{t}"]
    lines += [f"  %pout = getelementptr inbounds double, ptr %v, i64 {total}",
              f"  store double %s.{n % LANES}, ptr %pout", "  ret void", "}"]
    return lines


def _broadcasts(ms: list[Member]) -> list[str]:
    # Broadcast arguments read once, before the loop (no member writes a single slot).
    offs = sorted({a[1] for m in ms for a in m.args if a[0] == "bcast"})
    out = []
    for off in offs:
        out.append(f"  %pc{off} = getelementptr inbounds double, ptr %v, i64 {off}")
        out.append(f"  %c{off} = load double, ptr %pc{off}")
    return out


def _reverse(ms: list[Member], n: int, name: str, total: int | None) -> list[str]:
    # With ``total``: the last member's adjoint is the sum's (adj[total]), broadcast back as
    # reduce_reverse does (0.0 + g: the zeroed adjoint plus the one contribution).
    deferred = sorted(_deferred(ms, n), key=lambda kj: (-kj[0], kj[1]))
    lines = [f'define void @"{name}.rev"(ptr noalias nocapture readonly %v, '
             "ptr noalias nocapture %g) nounwind {", "entry:"]
    for k, j in deferred:
        lines.append(f"  %tmp{k}.{j} = alloca [{BLOCK} x double], align 32")
    lines += _broadcasts(ms)
    if total is not None:
        lines += [f"  %ptot = getelementptr inbounds double, ptr %g, i64 {total}",
                  "  %gtot = load double, ptr %ptot", "  %gsum = fadd double 0.0, %gtot"]
    lines += ["  br label %block", "block:",
              "  %t = phi i64 [ 0, %entry ], [ %t.next, %flush ]",
              *_block_head(n)]
    body = _Body(lines, "r")
    vals = body.values(ms, reverse=True)
    acc: dict[int, str] = {k: "0.0" for k, m in enumerate(ms) if m.out < 0}
    if total is not None:
        acc[len(ms) - 1] = "%gsum"
    for k in range(len(ms) - 1, -1, -1):
        m = ms[k]
        g = acc.pop(k) if m.out < 0 else body.load("%g", m.out, 1)
        gz = body.fresh("gz")
        lines.append(f"  {gz} = fcmp une double {g}, 0.0")
        operands = None
        for j, t in enumerate(m.targets):
            if t is None:
                continue
            unit = UNIT_PARTIALS.get(m.spec.partials[j])
            c = body.fresh("c")
            if unit is not None:
                if unit > 0:
                    lines.append(f"  {c} = select i1 {gz}, double {g}, double -0.0")
                else:
                    neg = body.fresh("n")
                    lines.append(f"  {neg} = fneg double {g}")
                    lines.append(f"  {c} = select i1 {gz}, double {neg}, double -0.0")
            else:
                if operands is None:
                    operands = ", ".join(f"double {body.operand(a, vals)}"
                                         for a in m.args) + f", double {vals[k]}"
                d, prod, dz, both = (body.fresh(s) for s in ("d", "q", "dz", "b"))
                lines.append(f'  {d} = call double @"{partial_name(m.spec, j)}"({operands})')
                lines.append(f"  {prod} = fmul double {g}, {d}")
                lines.append(f"  {dz} = fcmp une double {d}, 0.0")
                lines.append(f"  {both} = and i1 {gz}, {dz}")
                lines.append(f"  {c} = select i1 {both}, double {prod}, double -0.0")
            if t[0] == "reg":
                s = body.fresh("s")
                lines.append(f"  {s} = fadd double {acc[int(t[1])]}, {c}")
                acc[int(t[1])] = s
            elif (k, j) in deferred:
                ptr = body.fresh("p")
                lines.append(f"  {ptr} = getelementptr inbounds [{BLOCK} x double], "
                             f"ptr %tmp{k}.{j}, i64 0, i64 %i")
                lines.append(f"  store double {c}, ptr {ptr}")
            else:
                ptr = body.addr("%g", int(t[1]), 1)
                old, s = body.fresh("o"), body.fresh("s")
                lines += [f"  {old} = load double, ptr {ptr}",
                          f"  {s} = fadd double {old}, {c}",
                          f"  store double {s}, ptr {ptr}"]
    lines += ["  %i.next = add nuw nsw i64 %i, 1",
              "  %more = icmp ult i64 %i.next, %m"]
    nxt = [f"flush{k}.{j}" for k, j in deferred] + ["flush"]
    lines.append(f"  br i1 %more, label %loop, label %{nxt[0]}")
    for (k, j), label, after in zip(deferred, nxt, nxt[1:], strict=False):
        _, b, u = ms[k].targets[j]  # type: ignore[misc]
        pre = f"{k}.{j}"
        lines += [f"{label}:",
                  f"  %q{pre} = phi i64 [ 0, %{_pred(label, nxt)} ], [ %q{pre}.next, %{label} ]",
                  f"  %pt{pre} = getelementptr inbounds [{BLOCK} x double], ptr %tmp{pre}, "
                  f"i64 0, i64 %q{pre}",
                  f"  %x{pre} = load double, ptr %pt{pre}"]
        if u:
            lines += [f"  %e{pre} = add nuw nsw i64 %t, %q{pre}",
                      f"  %k{pre} = add nuw nsw i64 %e{pre}, {b}"]
        lines += [f"  %pg{pre} = getelementptr inbounds double, ptr %g, "
                  f"i64 {f'%k{pre}' if u else b}",
                  f"  %o{pre} = load double, ptr %pg{pre}",
                  f"  %s{pre} = fadd double %o{pre}, %x{pre}",
                  f"  store double %s{pre}, ptr %pg{pre}",
                  f"  %q{pre}.next = add nuw nsw i64 %q{pre}, 1",
                  f"  %qm{pre} = icmp ult i64 %q{pre}.next, %m",
                  f"  br i1 %qm{pre}, label %{label}, label %{after}"]
    lines += ["flush:",
              f"  %t.next = add nuw nsw i64 %t, {BLOCK}",
              f"  %again = icmp ult i64 %t.next, {n}",
              "  br i1 %again, label %block, label %exit", "exit:", "  ret void", "}"]
    return lines


def _block_head(n: int) -> list[str]:
    # The element loop of a block: %m elements (BLOCK, fewer in the last block) from %t.
    return [f"  %rem = sub nuw nsw i64 {n}, %t",
            f"  %short = icmp ult i64 %rem, {BLOCK}",
            f"  %m = select i1 %short, i64 %rem, i64 {BLOCK}",
            "  br label %loop", "loop:",
            "  %i = phi i64 [ 0, %block ], [ %i.next, %loop ]",
            "  %e = add nuw nsw i64 %t, %i"]


def _pred(label: str, labels: list[str]) -> str:
    # The block that enters ``label``'s loop: the element loop, or the previous flush loop.
    i = labels.index(label)
    return "loop" if i == 0 else labels[i - 1]


def group_module(fields: np.ndarray, p: int, name: str, header: str,
                 total: int | None = None) -> str | None:
    """IR text of ``@"<name>.fwd"`` and ``@"<name>.rev"`` for the group at ``fields[p]``
    (``None``: not expressible, see :func:`members`).  It calls the op library's functions,
    which :func:`fasttape.native.machine.compile_module` appends.

    ``total``: the group is followed by a ``SUM`` of its last member's result over all its
    elements into slot ``total``, and nothing else reads that result: the two instructions
    become one loop that never stores the result (:func:`_forward_sum`).
    """
    ms = members(fields, p)
    n = int(fields[p])
    if ms is None or n < 1 or (total is not None and (ms[-1].out < 0 or n < LANES)):
        return None
    if total is None:
        fwd = _forward(ms, n, name)
    else:
        last = ms[-1]
        ms = [*ms[:-1], Member(last.spec, -1, last.args, last.targets)]
        fwd = _forward_sum(ms, n, name, total)
    return "\n".join([header, *fwd, *_reverse(ms, n, name, total), ""])
