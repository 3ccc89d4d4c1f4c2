"""The forms of the op dispatch: how each op table row becomes a branch of each dispatch
function, and :func:`generate`, the dispatch module's source.

What is generated is only what must be: one ``if op == code:`` chain per form of "evaluate
this op", each branch being the table row's own formula strings.  The sweeps that call these
functions are ordinary modules (``sweep.py``, ``tangent.py``, ``batch.py``, ...), into which
the dispatch functions are always inlined (``kernel(inline=True)``, fasttape/kernels/jit.py), so
each sweep still compiles to one loop with one switch, as if the formulas were written in it.

The source is built at import, not checked in: :mod:`fasttape.kernels.dispatch` says where it
goes.  ``python -m fasttape.kernels.codegen --show`` prints it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fasttape.kernels import scalar
from fasttape.ops import OPS, OpSpec

_ARGS = ("x", "y", "z")
_H = ("h00", "h01", "h11")

#: Partials that are the literal +-1: added without a product, and stored only where the
#: single-point sweeps read every partial alike (unit_partials).
UNIT = ("1.0", "-1.0")


def unit_partials(spec: OpSpec) -> bool:
    """Whether ``spec`` has a partial that is the literal 1.0 or -1.0 (add, sub, neg, fmac's
    second argument, ...).

    The stored-mode sweeps of batches and of large tapes with a slot-reuse plan never store
    such a partial, and their reverse sweeps add or subtract the adjoint itself instead of
    reading the partial and multiplying: bitwise the same (a product by +-1 is exact), one
    store, one load and one product fewer per edge, and no microcode assist when the adjoint
    is subnormal (x86 charges about 150 cycles for a product with a subnormal operand, none
    for a sum).  The other single-point sweeps store them too (``value_store_all_partials``),
    where the branch on the op costs more than the memory (fasttape/kernels/sweep.py).
    """
    return any(d in UNIT for d in spec.partials)


def _uses_f(exprs: Iterable[str]) -> bool:
    return any("f" in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", e) for e in exprs)


def _function(head: str, doc: str, specs: Iterable[OpSpec],
              branch: Callable[[OpSpec], list[str]], tail: list[str]) -> list[str]:
    """One inlined dispatch function: ``def head``, its docstring, an if/elif chain over
    ``specs`` (``branch`` gives each body, indented by 8) and the fall-through ``tail``.

    Ops whose bodies are the same (``mul`` and ``mulc`` evaluate alike: they differ only in
    which arguments get an adjoint) share one branch, ``if op == 1 or op == 4:``.
    """
    bodies: dict[tuple[str, ...], list[OpSpec]] = {}
    for spec in specs:
        bodies.setdefault(tuple(branch(spec)), []).append(spec)
    lines = ["@kernel(inline=True)", f"def {head}:", f'    """{doc}"""']
    for n, (body, same) in enumerate(bodies.items()):
        test = " or ".join(f"op == {spec.code}" for spec in same)
        names = ", ".join(spec.name for spec in same)
        lines.append(f"    {'if' if n == 0 else 'elif'} {test}:  # {names}")
        lines += [f"        {line}" for line in body]
    return lines + [f"    {line}" for line in tail] + ["", ""]


@dataclass(frozen=True)
class _Form:
    """One dispatch function of ``dispatch.py``: the arguments of :func:`_function`, with
    ``select`` choosing the ops that get a branch."""

    head: str
    doc: str
    select: Callable[[OpSpec], bool]
    branch: Callable[[OpSpec], list[str]]
    tail: list[str]


#: Every dispatch function, in the order of ``dispatch.py`` (the order of definition below).
_FORMS: list[_Form] = []

_NAN_K = ["return np.nan, k  # unreachable for a validated tape"]
_NAN_ROW = ["for p in range(nb):", "    vals[s, p] = np.nan", "return k"]


def _any_op(spec: OpSpec) -> bool:
    """Every op gets a branch."""
    return True


def _stores_partials(spec: OpSpec) -> bool:
    """Ops with a partial that the stored-mode forward sweeps keep get a branch (the others
    fall through to the value-only form: an LLVM switch whose default is a second switch on
    the same op is merged into one)."""
    return any(d not in UNIT for d in spec.partials)


def _differentiable(spec: OpSpec) -> bool:
    """Ops with at least one differentiable argument get a branch."""
    return spec.ndiff > 0


def _form(head: str, doc: str, select: Callable[[OpSpec], bool], tail: list[str]
          ) -> Callable[[Callable[[OpSpec], list[str]]], Callable[[OpSpec], list[str]]]:
    """Register the decorated branch emitter as the dispatch function ``def head`` (with the
    docstring ``doc``, a branch for each op that ``select`` accepts, then ``tail``)."""

    def register(branch: Callable[[OpSpec], list[str]]) -> Callable[[OpSpec], list[str]]:
        _FORMS.append(_Form(head, doc, select, branch, tail))
        return branch

    return register


def _assign(names: list[str], exprs: list[str]) -> list[str]:
    # ``a, b = e, f`` as one line (nothing where there is nothing to assign).
    return [f"{', '.join(names)} = {', '.join(exprs)}"] if names else []


def _at(base: str, j: int) -> str:
    # The index ``base + j`` as written in a branch (``k``, ``k + 1``, ...).
    return f"{base} + {j}" if j else base


def _load(spec: OpSpec, start: int, f: str = "") -> list[str]:
    # Each branch loads only the arguments its op has (from ``start``: the single-point sweeps
    # load x), and ``f = vals[s]`` (the expression ``f``) where the formulas use the result.
    names = [_ARGS[j] for j in range(start, spec.arity)]
    exprs = [f"vals[args[{_at('k', j)}]]" for j in range(start, spec.arity)]
    return _assign(names + ["f"] * bool(f), exprs + [f] * bool(f))


def _pad(values: list[str], n: int) -> str:
    return ", ".join(values + ["0.0"] * (n - len(values)))


def _stored_partials(spec: OpSpec, index: Callable[[int], str], units: bool = False
                     ) -> list[str]:
    # ``parts[...] = d`` for each partial that a stored-mode forward sweep keeps, ``index(j)``
    # being where partial ``j`` goes: the unit ones too with ``units``.
    stored = [(j, d) for j, d in enumerate(spec.partials) if units or d not in UNIT]
    return _assign([f"parts[{index(j)}]" for j, _ in stored], [d for _, d in stored])


def _returned_partials(spec: OpSpec) -> str:
    # The partials as returned: always two, 0.0 where the op has fewer differentiable arguments.
    return _pad(list(spec.partials), 2)


def _calls(exprs: Iterable[str]) -> bool:
    """Whether any of the formulas ``exprs`` calls a function (``math.cos``, ``dpowc``): a
    partial worth skipping where no one reads it."""
    return any(isinstance(node, ast.Call)
               for e in exprs for node in ast.walk(ast.parse(e, mode="eval")))


def _first_partials(spec: OpSpec) -> tuple[list[str], str]:
    """The lines that compute the first partials as ``p0, p1`` only where ``first`` is true
    (when a formula calls a function; else nothing), and what to return for them."""
    if not _calls(spec.partials):
        return [], _returned_partials(spec)
    return ["p0 = p1 = 0.0", "if first:", f"    p0, p1 = {_returned_partials(spec)}"], "p0, p1"


def _load_all(spec: OpSpec, exprs: Iterable[str]) -> list[str]:
    # The reverse forms load every argument, and the result ``f`` only if ``exprs`` use it.
    return _load(spec, 0, "vals[s]" if _uses_f(exprs) else "")


# --------------------------------------------------------------------- single point


@_form("value(op, x, vals, args, k)",
       "``(f, k_next)``: the result, and where the next instruction's arguments start.",
       _any_op, _NAN_K)
def _value(spec: OpSpec) -> list[str]:
    return [*_load(spec, 1), f"return {spec.forward}, k + {spec.arity}"]


@_form("value_store_partials(op, x, vals, args, k, parts)",
       "As :func:`value`; stores each partial at ``parts[k + j]``, except the unit ones.",
       _stores_partials, ["return value(op, x, vals, args, k)  # nothing to store"])
def _value_store_partials(spec: OpSpec) -> list[str]:
    return [*_load(spec, 1), f"f = {spec.forward}",
            *_stored_partials(spec, lambda j: _at("k", j)), f"return f, k + {spec.arity}"]


@_form("value_store_all_partials(op, x, vals, args, k, parts)",
       "As :func:`value_store_partials`, the unit partials (+-1) stored too.",
       _differentiable, ["return value(op, x, vals, args, k)  # nothing to store"])
def _value_store_all_partials(spec: OpSpec) -> list[str]:
    return [*_load(spec, 1), f"f = {spec.forward}",
            *_stored_partials(spec, lambda j: _at("k", j), units=True),
            f"return f, k + {spec.arity}"]


@_form("value_and_partials(op, x, vals, args, k, first)",
       "``(f, p0, p1)``: the result and its partials (0.0 where the op has none; also where "
       "``first`` is false and computing them calls a function).",
       _any_op, ["return np.nan, 0.0, 0.0"])
def _value_and_partials(spec: OpSpec) -> list[str]:
    lines, parts = _first_partials(spec)
    if not lines and not _uses_f(spec.partials):
        return [*_load(spec, 1), f"return {spec.forward}, {parts}"]
    return [*_load(spec, 1), f"f = {spec.forward}", *lines, f"return f, {parts}"]


@_form("partials(op, vals, args, k, s)",
       "``(p0, p1)`` recomputed from the values (``vals[s]`` is the result).",
       _differentiable, ["return 0.0, 0.0"])
def _partials(spec: OpSpec) -> list[str]:
    return [*_load_all(spec, spec.partials), f"return {_returned_partials(spec)}"]


@_form("partials_and_second(op, vals, args, k, s, g, first)",
       "``(p0, p1, h00, h01, h11)``; the second partials only where the adjoint ``g != 0``, "
       "the first ones (where computing them calls a function) only where ``first``.",
       _differentiable, ["return 0.0, 0.0, 0.0, 0.0, 0.0"])
def _partials_and_second(spec: OpSpec) -> list[str]:
    out = _load_all(spec, [*spec.partials, *spec.second])
    second = {_H[j + m]: e for j, m, e in spec.hessian_entries if e != "0.0"}
    if second:  # second partials only matter where the adjoint is not zero
        out += [f"{' = '.join(second)} = 0.0", "if g != 0.0:",
                *[f"    {line}" for line in _assign(list(second), list(second.values()))]]
    hs = ", ".join(h if h in second else "0.0" for h in _H)
    lines, parts = _first_partials(spec)
    return [*out, *lines, f"return {parts}, {hs}"]


@_form("unit_adjoint(op, args, parts, k, g, adj)",
       "For an op with a unit partial, add the adjoint ``g`` to its arguments; else False.",
       unit_partials, ["return False"])
def _unit_adjoint(spec: OpSpec) -> list[str]:
    out = []
    for j, d in enumerate(spec.partials):
        if d in UNIT:
            out.append(f"adj[args[{_at('k', j)}]] {'+' if d == '1.0' else '-'}= g")
        else:  # an op with both kinds of edge (fmac): this partial was stored
            out.append(f"accumulate(adj, args[{_at('k', j)}], g, parts[{_at('k', j)}])")
    return [*out, "return True"]


# --------------------------------------------------------------------- rows of a batch chunk
# The loop over the chunk's points sits inside each branch: a switch inside the point loop is
# not unswitched by LLVM (2x slower on arithmetic tapes, measured).  Argument rows are read once
# per chunk, outside the loop; ``a0`` (the first argument's row) is read by the caller.  The
# reverse forms' zero rules are one select per edge (``add_product``), which vectorizes.


def _rows_load(spec: OpSpec, upto: int | None = None) -> list[str]:
    js = range(1, spec.arity if upto is None else upto)
    return _assign([f"a{j}" for j in js], [f"args[k + {j}]" for j in js])


def _points(spec: OpSpec, f: bool = False) -> list[str]:
    # The arguments at point p (and the result, with ``f``), inside the point loop.
    names = [_ARGS[j] for j in range(spec.arity)] + ["f"] * f
    exprs = [f"vals[a{j}, p]" for j in range(spec.arity)] + ["vals[s, p]"] * f
    return [f"    {line}" for line in _assign(names, exprs)]


def _add_rows(j: int, d: str) -> str:
    return f"    adj[a{j}, p] = add_product(adj[a{j}, p], g, {d})"


_TAKE_ROW = ["    g = adj[s, p]", "    adj[s, p] = 0.0"]  # read-then-zero the adjoint


@_form("value_rows(op, a0, vals, args, k, s, nb)",
       "Row ``s`` of a chunk, the result at each of the ``nb`` points; returns ``k_next``.",
       _any_op, _NAN_ROW)
def _value_rows(spec: OpSpec) -> list[str]:
    return [*_rows_load(spec), "for p in range(nb):", *_points(spec),
            f"    vals[s, p] = {spec.forward}", f"return k + {spec.arity}"]


@_form("value_store_partials_rows(op, a0, vals, args, k, s, nb, parts)",
       "As :func:`value_rows`, storing the non-unit partials in rows ``k + j`` of ``parts``.",
       _stores_partials, ["return value_rows(op, a0, vals, args, k, s, nb)  # nothing to store"])
def _value_store_partials_rows(spec: OpSpec) -> list[str]:
    stores = _stored_partials(spec, lambda j: f"{_at('k', j)}, p")
    result = (["    f = " + spec.forward, "    vals[s, p] = f"] if _uses_f(spec.partials)
              else [f"    vals[s, p] = {spec.forward}"])
    return [*_rows_load(spec), "for p in range(nb):", *_points(spec), *result,
            *[f"    {line}" for line in stores], f"return k + {spec.arity}"]


@_form("unit_adjoint_rows(op, a0, args, parts, k, s, adj, nb)",
       "For an op with a unit partial: move row ``s`` of ``adj`` to its arguments; else False.",
       unit_partials, ["return False"])
def _unit_adjoint_rows(spec: OpSpec) -> list[str]:
    # Only the differentiable arguments' rows (fmac's constant gets no adjoint); a unit
    # partial is the literal, any other one was stored.
    out = [*_rows_load(spec, spec.ndiff), "for p in range(nb):", *_TAKE_ROW]
    out += [_add_rows(j, d if d in UNIT else f"parts[{_at('k', j)}, p]")
            for j, d in enumerate(spec.partials)]
    return [*out, "return True"]


@_form("adjoint_lean_rows(op, a0, vals, args, k, s, adj, nb)",
       "Move row ``s`` of ``adj`` to the arguments, partials recomputed from ``vals``.",
       _differentiable,
       ["for p in range(nb):  # no differentiable argument: only clear the row",
        "    adj[s, p] = 0.0"])
def _adjoint_lean_rows(spec: OpSpec) -> list[str]:
    out = [*_rows_load(spec), "for p in range(nb):", *_TAKE_ROW,
           *_points(spec, _uses_f(spec.partials))]
    out += [_add_rows(j, d) for j, d in enumerate(spec.partials)]
    return [*out, "return"]


# --------------------------------------------------------------------- tensor elementwise
# One tensor instruction applies an op to ``n`` elements.  Argument ``j`` starts at slot ``aj``
# and moves by ``sj`` per element (1: an array of the result's size, 0: one value broadcast);
# the result fills slots ``d .. d + n - 1``.  The element loop sits inside each branch, as in
# the row forms, so LLVM sees a plain loop per op (and vectorizes the arithmetic ones).


def _elements(spec: OpSpec, hoisted: bool, adjoint: bool = False) -> list[str]:
    # Loads of the arguments at element i; with ``hoisted``, y is the broadcast value read
    # before the loop.  With ``adjoint``, also the element's adjoint g (first) and, where the
    # partials use it, its value f.
    pairs = [("g", "adj[d + i]")] if adjoint else []
    pairs += [(_ARGS[j], f"vals[a{j} + i * s{j}]") for j in range(spec.arity)
              if not (hoisted and j == 1)]
    pairs += [("f", "vals[d + i]")] if adjoint and _uses_f(spec.partials) else []
    return [f"    {line}" for line in _assign([n for n, _ in pairs], [e for _, e in pairs])]


def _broadcast_y(spec: OpSpec, loop: Callable[[bool], list[str]]) -> list[str]:
    # The loop over the elements, twice for an op of two or three arguments: once with y
    # broadcast (s1 == 0: a constant or a scalar, which the frontend puts second), y read
    # once before it, then the general loop.  LLVM vectorizes a loop whose strides it can
    # prove to be 1 (it versions on ``s == 1``), not one that reads with a stride of 0.
    if spec.arity < 2:
        return [*loop(False), "return"]
    return ["if s1 == 0:", "    y = vals[a1]", *[f"    {line}" for line in loop(True)],
            "    return", *loop(False), "return"]


@_form("elementwise_value(op, vals, d, n, a0, s0, a1, s1, a2, s2)",
       "Elements ``d .. d + n - 1`` of ``vals``: the op applied to the argument ranges.",
       _any_op, ["for i in range(n):", "    vals[d + i] = np.nan"])
def _elementwise_value(spec: OpSpec) -> list[str]:
    return _broadcast_y(spec, lambda hoisted: [
        "for i in range(n):", *_elements(spec, hoisted), f"    vals[d + i] = {spec.forward}"])


@_form("elementwise_adjoint(op, vals, adj, d, n, a0, s0, a1, s1, a2, s2, b0, u0, b1, u1)",
       "Move the adjoints of elements ``d .. d + n - 1`` to ``adj[bj + i * uj]`` (argument j).",
       _differentiable, ["return"])
def _elementwise_adjoint(spec: OpSpec) -> list[str]:
    # An argument's adjoint goes to its own range (bj = aj) or, for an argument that needs
    # none (a constant), to a scratch range: never a stride-0 sum that serializes the loop.
    def loop(hoisted: bool) -> list[str]:
        return ["for i in range(n):", *_elements(spec, hoisted, adjoint=True),
                *[f"    adj[b{j} + i * u{j}] = add_product(adj[b{j} + i * u{j}], g, {d})"
                  for j, d in enumerate(spec.partials)]]

    return _broadcast_y(spec, loop)


@_form("elementwise_tangent(op, vals, tan, d, n, a0, s0, a1, s1, a2, s2)",
       "Tangents of elements ``d .. d + n - 1``: the partials times the arguments' tangents.",
       _any_op, ["for i in range(n):", "    tan[d + i] = np.nan"])
def _elementwise_tangent(spec: OpSpec) -> list[str]:
    # add_product skips a zero tangent (even times an infinite partial, as the scalar
    # tangent sweeps do), so a direction that leaves an argument alone keeps results finite.
    def loop(hoisted: bool) -> list[str]:
        out = ["for i in range(n):", *_elements(spec, hoisted)]
        if _uses_f(spec.partials):
            out.append("    f = vals[d + i]")
        r = "0.0"
        for j, d in enumerate(spec.partials):
            r = f"add_product({r}, tan[a{j} + i * s{j}], {d})"
        return [*out, f"    tan[d + i] = {r}"]

    return _broadcast_y(spec, loop)


@_form("elementwise_adjoint_tangent(op, vals, tan, adj, adt, d, n, a0, s0, a1, s1, a2, s2, "
       "b0, u0, b1, u1)",
       "As :func:`elementwise_adjoint`, also moving the adjoints' tangents ``adt``.",
       _differentiable, ["return"])
def _elementwise_adjoint_tangent(spec: OpSpec) -> list[str]:
    # Forward-over-reverse: for an edge to argument j with partial q_j and second partials
    # h_jl, adj += g q_j and adt += gd q_j + sum_l (g t_l) h_jl, every product with a zero
    # factor skipped (add_product), as the scalar sweeps (kernels/tangent.py reverse_hvp).
    second = {(j, m): e for j, m, e in spec.hessian_entries}
    nd = spec.ndiff

    def loop(hoisted: bool) -> list[str]:
        out = ["for i in range(n):", *_elements(spec, hoisted, adjoint=True),
               "    gd = adt[d + i]"]
        if _uses_f(spec.second) and not _uses_f(spec.partials):
            out.append("    f = vals[d + i]")
        out += [f"    t{m} = g * tan[a{m} + i * s{m}]" for m in range(nd)]
        for j, d in enumerate(spec.partials):
            dt = f"add_product(adt[b{j} + i * u{j}], gd, {d})"
            for m in range(nd):
                h = second[(min(j, m), max(j, m))]
                if h != "0.0":
                    dt = f"add_product({dt}, t{m}, {h})"
            out += [f"    adj[b{j} + i * u{j}] = add_product(adj[b{j} + i * u{j}], g, {d})",
                    f"    adt[b{j} + i * u{j}] = {dt}"]
        return out

    return _broadcast_y(spec, loop)


def generate() -> str:
    """Return the source of the dispatch module for the current table."""
    too_many = [o.name for o in OPS if o.ndiff > 2]
    if too_many:  # the sweeps unroll at most two differentiable edges per instruction
        raise ValueError(f"ops with more than 2 differentiable arguments: {too_many}")
    missing = [o.name for o in OPS if len(o.second) != o.ndiff * (o.ndiff + 1) // 2]
    if missing:
        raise ValueError(
            f"ops whose `second` does not list ndiff * (ndiff + 1) / 2 second partials: "
            f"{missing} (see docs/adding-an-op.md)"
        )
    functions: list[str] = []
    for form in _FORMS:
        functions += _function(form.head, form.doc, [o for o in OPS if form.select(o)],
                               form.branch, form.tail)
    body = "\n".join(functions)
    out = [
        "# GENERATED by fasttape.kernels.forms from fasttape/ops.py at import: do not edit.",
        "# ruff: noqa: E501  (branches hold the table's formulas as written)",
        '"""Per-op dispatch: the op table\'s formulas, one ``if op == code`` branch per op.',
        "",
        "Every function is inlined by Numba into the sweep that calls it, so a sweep compiles to",
        "one loop around one switch.  ``k`` is the instruction's first argument position in",
        "``args``; ``x`` (or, for the row forms, ``a0``) is the first argument, which the sweeps",
        "read before the dispatch so that the load overlaps the indirect branch.  The forward",
        "forms return the next instruction's ``k`` as a constant per branch: the next argument",
        "load then waits on the predicted branch only, not on a load of the op's arity.",
        '"""',
        "",
        "import math",
        "",
        "import numpy as np",
        "",
        "from fasttape.kernels.jit import kernel",
        "from fasttape.kernels.scalar import (",
        *[f"    {name}," for name in sorted(scalar.__all__)
          if re.search(rf"\b{name}\b", body)],  # the helpers some formula calls
        ")",
        "",
        "#: Arguments of each op code, and how many of them (the first ones) are differentiable.",
        f"ARITY = np.array([{', '.join(str(o.arity) for o in OPS)}], dtype=np.int64)",
        f"NDIFF = np.array([{', '.join(str(o.ndiff) for o in OPS)}], dtype=np.int64)",
        "",
        "",
    ]
    return "\n".join(out + functions).rstrip("\n") + "\n"
