"""Graphviz DOT text for a Graph or a Tape (no dependency; render with ``dot -Tsvg``).

Inputs are boxes, constants plain text, instructions ellipses labelled with the op name, and
each output a double octagon.  Edges go from an argument to its user; the arguments of
non-commutative ops are labelled with their role (``x``, ``y`` as in the op table; ``a``, ``b``,
``cond`` for ``where``).  For a Graph, nodes that no output needs (which ``compile`` drops) are
drawn grey and dashed.  Meant for small graphs: beyond ``max_nodes`` it refuses rather than
produce a file no one can read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fasttape.ops import CONST_CODE, INPUT_CODE, OPS, PARAM_CODE

__all__ = ["graph_to_dot", "tape_to_dot", "MAX_NODES"]

#: Default size limit of :func:`graph_to_dot` and :func:`tape_to_dot`.
MAX_NODES = 300

_ROLES = ("x", "y", "z")
_WHERE_ROLES = ("a", "b", "cond")


#: Labels of the inputs or of the outputs, one per input or output (None: the defaults).
Names = Sequence[str] | None


def graph_to_dot(graph: Any, *, input_names: Names = None, output_names: Names = None,
                 max_nodes: int | None = MAX_NODES) -> str:
    """DOT text for a :class:`~fasttape.Graph` (see the module docstring).

    Parameters
    ----------
    graph : Graph
    input_names, output_names : sequence of str, optional
        Labels of the inputs (default ``x0, x1, ...``) and outputs (default ``out0, ...``).
    max_nodes : int or None
        Refuse graphs with more nodes (``None``: no limit).
    """
    from fasttape.passes.dce import GRAPH_ARITY, live_nodes

    a = graph.to_arrays()
    ops, args, consts, outputs = a["ops"], a["args"], a["consts"], a["outputs"]
    n = len(ops)
    _check_size(n, max_nodes, "graph")
    live = live_nodes(ops, args, outputs) if len(outputs) else np.zeros(n, dtype=bool)
    arity = GRAPH_ARITY[ops]
    start = np.cumsum(arity) - arity
    in_names = _names(input_names, int(a["n_inputs"]), "x", "input_names")
    nodes, edges = [], []
    for i in range(n):
        code, k = int(ops[i]), int(start[i])
        if code == INPUT_CODE:
            label, shape = in_names[int(args[k])], "input"
        elif code == PARAM_CODE:  # parameters: p0, p1, ... (not differentiated)
            label, shape = f"p{int(args[k])}", "input"
        elif code == CONST_CODE:
            label, shape = _num(float(consts[int(args[k])])), "const"
        else:
            spec = OPS[code]
            label, shape = spec.name, "op"
            edges.extend(_arg_edges(spec, [int(v) for v in args[k : k + spec.arity]], i))
        nodes.append((i, label, shape, bool(live[i])))
    return _render(nodes, edges, [int(o) for o in outputs], output_names)


def tape_to_dot(tape: Any, *, input_names: Names = None, output_names: Names = None,
                max_nodes: int | None = MAX_NODES) -> str:
    """DOT text for a :class:`~fasttape.Tape`: one node per slot (see the module docstring)."""
    n_in, n_p, n_c = tape.n_inputs, tape.n_params, tape.n_consts
    _check_size(tape.n_slots, max_nodes, "tape")
    in_names = _names(input_names, n_in, "x", "input_names")
    nodes = [(i, in_names[i], "input", True) for i in range(n_in)]
    nodes += [(n_in + j, f"p{j}", "input", True) for j in range(n_p)]
    n_in += n_p  # constants and instructions follow the parameters
    nodes += [(n_in + j, _num(float(tape.consts[j])), "const", True) for j in range(n_c)]
    edges: list[tuple[int, int, str]] = []
    k = 0
    for i in range(tape.n_instructions):
        spec = OPS[int(tape.ops[i])]
        slot = n_in + n_c + i
        nodes.append((slot, spec.name, "op", True))
        edges.extend(_arg_edges(spec, [int(v) for v in tape.args[k : k + spec.arity]], slot))
        k += spec.arity
    return _render(nodes, edges, [int(o) for o in tape.outputs], output_names)


# ---------------------------------------------------------------------------- helpers
def _check_size(n: int, max_nodes: int | None, what: str) -> None:
    if max_nodes is not None and n > max_nodes:
        raise ValueError(
            f"this {what} has {n:,} nodes, more than max_nodes={max_nodes}: a drawing that "
            "large is unreadable. Pass max_nodes=None to export it anyway."
        )


def _names(names: Names, n: int, prefix: str, what: str) -> list[str]:
    if names is None:
        return [f"{prefix}{i}" for i in range(n)]
    names = [str(s) for s in names]
    if len(names) != n:
        raise ValueError(f"{what} has {len(names)} entries, expected {n}")
    return names


def _num(v: float) -> str:
    return f"{v:.6g}"


def _arg_edges(spec: Any, arg_nodes: list[int], user: int) -> list[tuple[int, int, str]]:
    if spec.arity == 1 or spec.commutative:
        roles = ("",) * spec.arity
    elif spec.name == "where":
        roles = _WHERE_ROLES
    else:
        roles = _ROLES[: spec.arity]
    return [(a, user, r) for a, r in zip(arg_nodes, roles, strict=True)]


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


_SHAPE = {"input": "box", "const": "plaintext", "op": "ellipse"}
_FILL = {
    "input": 'style="rounded,filled", fillcolor="#dbeafe"',
    "const": "",
    "op": 'style=filled, fillcolor="#f3f4f6"',
}
_DEAD = 'color="#9ca3af", fontcolor="#9ca3af", style=dashed'


def _render(
    nodes: list[tuple[int, str, str, bool]],
    edges: list[tuple[int, int, str]],
    outputs: list[int],
    output_names: Names,
) -> str:
    out_names = _names(output_names, len(outputs), "out", "output_names")
    dead = {i for i, _, _, alive in nodes if not alive}
    lines = [
        "digraph fasttape {",
        "  rankdir=TB;",
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9, arrowsize=0.6];',
    ]
    for i, label, kind, alive in nodes:
        style = _FILL[kind] if alive else _DEAD
        parts = (f"label={_quote(label)}", f"shape={_SHAPE[kind]}", style)
        attrs = ", ".join(a for a in parts if a)
        lines.append(f"  n{i} [{attrs}];")
    for src, dst, role in edges:
        attrs = [f"label={_quote(role)}"] if role else []
        if dst in dead:
            attrs.append(_DEAD)
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"  n{src} -> n{dst}{suffix};")
    for j, (o, name) in enumerate(zip(outputs, out_names, strict=True)):
        lines.append(
            f'  out{j} [label={_quote(name)}, shape=doubleoctagon, style=filled, '
            f'fillcolor="#dcfce7"];'
        )
        lines.append(f"  n{o} -> out{j};")
    lines.append("}")
    return "\n".join(lines) + "\n"
