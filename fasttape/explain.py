"""``tape.explain(x)``: where did the NaN come from?

For an evaluation whose value or gradient is not finite, :func:`explain` names the first
instruction that produced a NaN or an infinity: in the forward sweep the first one (in tape
order) that the explained output depends on, else, in the reverse sweep, the first one (in
reverse order) whose adjoint contribution to an argument is not finite.  The result says the
instruction's op, its argument slots and their values, its result and, when the graph was built
with ``record_source=True`` (``ft.trace(fn, n, record_source=True)`` or
``ft.Graph(record_source=True)``), the file and line of the user's code that created it
(docs/debugging.md).

How sources survive compile: the optimisation passes renumber, merge and fuse instructions and
keep no map back to the graph. So :func:`fasttape.compile` keeps a private copy of a graph that
records sources on the tape (``tape.source_graph``); :func:`explain` then compiles that copy
with ``optimize=False`` (dead code dropped, nothing else: instruction ``i`` is the ``i``-th
live op node of the graph) and reports on that unoptimised tape. Its values are bitwise those
of the optimised tape (docs/passes.md), so it fails at the same place. Tapes without sources
(``from_arrays``, ``load``, a graph without ``record_source``) are explained directly, with
instruction numbers of the tape itself.

Cost: one forward sweep with the kernels, then two O(n) Python loops (which instructions the
output depends on; the reverse sweep replayed instruction by instruction to find the first
non-finite adjoint): 0.4 s at 1e6 instructions for a NaN of the forward sweep, 1-1.5 s for
one of the reverse sweep (docs/debugging.md).  It is a debugging tool; nothing here runs during
ordinary evaluation.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fasttape import kernels
from fasttape.compile import compile_graph
from fasttape.ops import N_OPS, OPS

if TYPE_CHECKING:
    from fasttape.graph import Graph
    from fasttape.tape import TapeRecord as Tape

__all__ = ["Explanation", "explain"]

_ARITY = [op.arity for op in OPS]
_NDIFF = [op.ndiff for op in OPS]


def _literal(expr: str) -> float | None:
    try:
        return float(expr)
    except ValueError:
        return None


# Per op, per differentiable argument: the constant partial (add's 1.0, sub's -1.0), which the
# forward sweep does not store, or None where the partial is stored in ``parts``.
_CONST_PARTIAL = [tuple(_literal(p) for p in op.partials) for op in OPS]

@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` found; ``print()`` it for a readable report.

    Attributes
    ----------
    finite : bool
        True when the value (and, for a chosen output, the gradient) is finite: nothing to
        explain, the other fields past ``n_bad_grad`` are None.
    output : int or None
        The explained output; None when every output's value was checked (no gradient).
    value : float or ndarray
        The evaluated value of that output (of every output when ``output`` is None).
    n_bad_grad : int or None
        How many gradient entries are not finite (None when no gradient was computed).
    sweep : {"forward", "reverse"} or None
        Where the first non-finite number appeared.
    instruction : int or None
        Its index in the explained tape (the unoptimised tape when ``unoptimised``).
    op : str or None
        Its op name.
    args : tuple of int
        Its argument slots.
    arg_values : tuple of float
        Their values in the forward sweep.
    result : float or None
        The instruction's own value.
    adjoint : float or None
        Reverse sweep only: the adjoint of the instruction's result.
    partials : tuple of float
        Reverse sweep only: the partial derivative for each differentiable argument.
    source : (str, int, str) or None
        ``(filename, line, function)`` of the code that created the instruction, when the graph
        recorded sources.
    node : int or None
        The graph node of the instruction, when the graph recorded sources.
    unoptimised : bool
        True when the instruction numbers refer to the unoptimised tape (see the module docs).
    n_inputs, n_params, n_consts : int
        Of the explained tape, to name argument slots (input, parameter, constant or
        instruction).
    """

    finite: bool
    output: int | None
    value: Any
    n_bad_grad: int | None
    sweep: str | None = None
    instruction: int | None = None
    op: str | None = None
    args: tuple[int, ...] = ()
    arg_values: tuple[float, ...] = ()
    result: float | None = None
    adjoint: float | None = None
    partials: tuple[float, ...] = ()
    source: tuple[str, int, str] | None = None
    node: int | None = None
    unoptimised: bool = False
    n_inputs: int = 0
    n_consts: int = 0
    note: str = ""
    n_params: int = 0

    def __str__(self) -> str:
        lines = [self._headline()]
        if self.finite:
            return lines[0]
        if self.instruction is None:
            lines.append(f"  {self.note}")
            return "\n".join(lines)
        n_pre = self.n_inputs + self.n_params + self.n_consts
        which = "the unoptimised tape's " if self.unoptimised else ""
        sweep = (
            "first non-finite value in the forward sweep"
            if self.sweep == "forward"
            else "first non-finite adjoint in the reverse sweep"
        )
        call = ", ".join(f"%{a}" for a in self.args)
        lines.append(f"{sweep}: {which}instruction {self.instruction}, "
                     f"%{n_pre + self.instruction} = {self.op}({call})")
        for a, v in zip(self.args, self.arg_values, strict=True):
            lines.append(f"  %{a} = {v!r}  ({self._slot_kind(a)})")
        lines.append(f"  result: {self.result!r}")
        if self.sweep == "reverse":
            parts = ", ".join(repr(p) for p in self.partials)
            lines.append(f"  adjoint of the result: {self.adjoint!r}; partials: {parts}")
        if self.note:
            lines.append(f"  {self.note}")
        if self.source is not None:
            filename, line, function = self.source
            lines.append(f"  created at {_show_path(filename)}:{line} in {function}")
        elif self.instruction is not None:
            lines.append("  (trace with record_source=True to see the line that created it)")
        return "\n".join(lines)

    def _headline(self) -> str:
        if self.output is None:
            vals = np.atleast_1d(np.asarray(self.value, dtype=np.float64))
            if self.finite:
                return (f"all finite: the {vals.size} output values (pass output=k to check "
                        "a gradient too)")
            bad = int(np.count_nonzero(~np.isfinite(vals)))
            return f"{bad} of {vals.size} output values not finite: {_num(self.value)}"
        if self.finite:
            return f"all finite: output {self.output} = {_num(self.value)} and its gradient"
        return (f"output {self.output} = {_num(self.value)}; gradient: {self.n_bad_grad} of "
                f"{self.n_inputs} entries not finite")

    def _slot_kind(self, slot: int) -> str:
        return _slot_kind(slot, self.n_inputs, self.n_params, self.n_consts)


def _slot_kind(slot: int, n_in: int, n_p: int, n_c: int) -> str:
    """What slot ``slot`` holds: ``input i``, ``param j``, ``constant`` or an instruction."""
    if slot < n_in:
        return f"input {slot}"
    if slot < n_in + n_p:
        return f"param {slot - n_in}"
    if slot < n_in + n_p + n_c:
        return "constant"
    return f"result of instruction {slot - n_in - n_p - n_c}"


def explain(tape: Tape, x: Any, output: int | None = None, *, p: Any = None) -> Explanation:
    """Find the first instruction that made the value or gradient at ``x`` non-finite.

    Parameters
    ----------
    tape : Tape
    x : array_like of float, shape (n_inputs,)
        One point (not a batch).
    p : array_like of float, shape (n_params,)
        The parameters of a tape that has some (one set, not a batch).
    output : int, optional
        The output whose value and gradient are checked.  Default: the only output of a
        single-output tape; for a tape with several outputs, every output's value (no
        gradient).

    Returns
    -------
    Explanation
        ``finite=True`` when everything checked is finite; otherwise the instruction, its
        op, argument slots and values, result (and adjoint and partials when the first
        non-finite number came from the reverse sweep), and its source line when recorded.
    """
    from fasttape.tape import TapeRecord as Tape

    if not isinstance(tape, Tape):
        raise TypeError(f"explain() expects a fasttape.Tape, got {type(tape).__name__}")
    xin = _point(tape, x)
    pin = None
    if p is not None or tape.n_params:
        pin = tape.check_params(p)
        if pin.ndim != 1:
            raise ValueError(
                f"explain() takes one parameter set: p of shape ({tape.n_params},); got shape "
                f"{pin.shape} (explain one row of a batch at a time)"
            )
    which = _which(tape, output)
    if which is None:
        value = tape.value(xin, p=pin)
        n_bad_grad = None
        finite = bool(np.all(np.isfinite(value)))
    else:
        value, grad = tape.value_and_grad(xin, p=pin, output=which)
        n_bad_grad = int(np.count_nonzero(~np.isfinite(grad)))
        finite = math.isfinite(value) and n_bad_grad == 0
    head = {"output": which, "value": value, "n_bad_grad": n_bad_grad, "n_inputs": tape.n_inputs,
            "n_params": tape.n_params}
    if finite:
        return Explanation(finite=True, **head)

    graph = tape.source_graph
    nodes = None
    if graph is not None:
        ref = compile_graph(graph, optimize=False)
        nodes = _op_nodes(graph, ref)
        if nodes is None:  # the numbering is not the one expected: report without sources
            graph, ref = None, tape
    else:
        ref = tape
    arrays = ref.to_arrays()
    ops, args, consts, outputs = arrays["ops"], arrays["args"], arrays["consts"], arrays["outputs"]
    n_in, n_p, n_c = int(arrays["n_inputs"]), int(arrays["n_params"]), int(consts.shape[0])
    n_pre = n_in + n_p + n_c
    vals = np.empty(n_pre + ops.shape[0])
    parts = np.zeros(args.shape[0])
    # The kernels load inputs and parameters alike into the leading slots.
    lead = xin if pin is None else np.concatenate((xin, pin))
    kernels.forward_partials(ops, args, consts, lead, vals, parts)
    head.update(unoptimised=graph is not None, n_consts=n_c)

    def at(i: int, sweep: str, **extra: Any) -> Explanation:
        k = int(np.sum(np.asarray(_ARITY)[ops[:i]])) if i else 0
        slots = tuple(int(a) for a in args[k : k + _ARITY[ops[i]]])
        source = node = None
        if graph is not None and nodes is not None:
            node = int(nodes[i])
            source = graph.source(node)
        return Explanation(
            finite=False, **head, sweep=sweep, instruction=i, op=OPS[int(ops[i])].name,
            args=slots, arg_values=tuple(float(vals[a]) for a in slots),
            result=float(vals[n_pre + i]), source=source, node=node, **extra,
        )

    seeds = outputs.tolist() if which is None else [int(outputs[which])]
    needed = _needed(ops, args, n_pre, seeds)
    bad = np.flatnonzero(~np.isfinite(vals[n_pre:]) & needed[n_pre:])
    if bad.size:
        i = int(bad[0])
        bad_args = [a for a in range(n_pre) if needed[a] and not math.isfinite(vals[a])]
        note = ""
        if bad_args:
            names = ", ".join(f"%{a} ({_slot_kind(a, n_in, n_p, n_c)})" for a in bad_args[:4])
            note = f"non-finite before any instruction ran: {names}"
        return at(i, "forward", note=note)
    if which is not None:
        found = _reverse(ops, args, parts, n_pre, int(outputs[which]))
        if found is not None:
            i, adjoint, partials = found
            return at(i, "reverse", adjoint=adjoint, partials=partials)
    # Nothing in the instructions: the output slot itself is an input or constant, or the
    # unoptimised tape does not reproduce what the tape computed.
    bad_pre = [s for s in seeds if s < n_pre and not math.isfinite(vals[s])]
    if bad_pre:
        s = bad_pre[0]
        note = (f"the output is slot %{s} ({_slot_kind(s, n_in, n_p, n_c)}), "
                f"whose value is {float(vals[s])!r}")
    else:
        note = ("no instruction of the explained tape produces a non-finite number at this x "
                "(the optimised tape differs from its unoptimised form here)")
    return Explanation(finite=False, **head, note=note)


def _point(tape: Tape, x: Any) -> np.ndarray:
    try:
        arr = np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"explain() takes x as a 1-D array of {tape.n_inputs} real numbers; got "
            f"{type(x).__name__}"
        ) from exc
    if arr.shape != (tape.n_inputs,):
        raise ValueError(
            f"explain() takes one point: x of shape ({tape.n_inputs},); got shape {arr.shape}"
            + (" (explain one row of a batch at a time)" if arr.ndim == 2 else "")
        )
    return arr


def _which(tape: Tape, output: Any) -> int | None:
    m = tape.n_outputs
    if output is None:
        return 0 if m == 1 else None
    if isinstance(output, bool) or not isinstance(output, (int, np.integer)):
        raise TypeError(f"output must be an int, got {type(output).__name__}")
    if not -m <= output < m:
        raise ValueError(f"output={output} is out of range for a tape with {m} outputs")
    return int(output) % m


def _op_nodes(graph: Graph, ref: Tape) -> np.ndarray | None:
    """Graph node of each instruction of ``ref`` (``graph`` compiled with optimize=False).

    That compile keeps the live op nodes in creation order (fasttape.compile); checked here
    against the op codes, so a changed numbering drops the sources rather than misplacing them.
    """
    from fasttape.passes.dce import live_nodes

    a = graph.to_arrays()
    live = live_nodes(a["ops"], a["args"], a["outputs"])
    nodes = np.flatnonzero(live & (a["ops"] < N_OPS))
    if nodes.shape != ref.ops.shape or not np.array_equal(a["ops"][nodes], ref.ops):
        return None
    return nodes


def _needed(ops: np.ndarray, args: np.ndarray, n_pre: int, seeds: list[int]) -> np.ndarray:
    """Which slots the ``seeds`` depend on (one reverse pass over the instructions)."""
    need = bytearray(n_pre + ops.shape[0])
    for s in seeds:
        need[s] = 1
    a = args.tolist()
    k = len(a)
    arity = _ARITY
    for i, op in zip(range(ops.shape[0] - 1, -1, -1), reversed(ops.tolist()), strict=True):
        k -= arity[op]
        if need[n_pre + i]:
            for j in range(k, k + arity[op]):
                need[a[j]] = 1
    return np.frombuffer(bytes(need), dtype=np.bool_)


def _reverse(
    ops: np.ndarray, args: np.ndarray, parts: np.ndarray, n_pre: int, seed: int
) -> tuple[int, float, tuple[float, ...]] | None:
    """The reverse sweep of the kernels, replayed: the first instruction (in reverse order)
    whose contribution to an argument's adjoint, or that argument's sum, is not finite.

    Same rules as the kernels (docs/derivatives.md): a zero adjoint contributes nothing, an
    exactly-zero partial is skipped, a +-1 partial adds or subtracts the adjoint itself.
    """
    adj = [0.0] * (n_pre + ops.shape[0])
    adj[seed] = 1.0
    a = args.tolist()
    p = parts.tolist()
    k = len(a)
    isfinite = math.isfinite
    for i, op in zip(range(ops.shape[0] - 1, -1, -1), reversed(ops.tolist()), strict=True):
        k -= _ARITY[op]
        s = n_pre + i
        g = adj[s]
        if g == 0.0:
            continue
        consts = _CONST_PARTIAL[op]
        for j in range(_NDIFF[op]):
            d = consts[j]
            if d is None:
                d = p[k + j]
            if d == 1.0:
                c = g
            elif d == -1.0:
                c = -g
            elif d != 0.0:
                c = g * d
            else:
                continue
            t = a[k + j]
            total = adj[t] + c
            if not (isfinite(c) and isfinite(total)):
                partials = tuple(
                    float(consts[m] if consts[m] is not None else p[k + m])
                    for m in range(_NDIFF[op])
                )
                return i, g, partials
            adj[t] = total
    return None


def _show_path(filename: str) -> str:
    """``filename`` relative to the working directory when it lies under it (shorter, and the
    same on every machine), else as recorded."""
    if os.path.isabs(filename):
        try:
            rel = os.path.relpath(filename)
        except ValueError:  # another drive (Windows)
            return filename
        if not rel.startswith(os.pardir):
            return rel
    return filename


def _num(v: Any) -> str:
    return repr(float(v)) if np.ndim(v) == 0 else np.array2string(np.asarray(v))
