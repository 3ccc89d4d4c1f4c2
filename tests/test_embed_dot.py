"""graph.to_dot() / tape.to_dot(): Graphviz DOT text, checked by parsing it back."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import fasttape as ft
from fasttape.ops import OPS
from tests.test_embed_numba import op_tape

_NODE = re.compile(r'^  (\w+) \[label="((?:[^"\\]|\\.)*)", shape=(\w+)(.*)\];$')
_EDGE = re.compile(r"^  (\w+) -> (\w+)(?: \[(.*)\])?;$")


def parse(dot: str):
    """Nodes {id: (label, shape, rest)} and edges [(src, dst, attrs)]; every line must match."""
    lines = dot.strip().splitlines()
    assert lines[0] == "digraph fasttape {" and lines[-1] == "}"
    nodes, edges = {}, []
    for line in lines[1:-1]:
        if line.startswith(("  rankdir", "  node [", "  edge [")):
            continue
        m = _NODE.match(line)
        if m:
            assert m.group(1) not in nodes, f"node defined twice: {line}"
            nodes[m.group(1)] = (m.group(2), m.group(3), m.group(4))
            continue
        m = _EDGE.match(line)
        assert m, f"unparsed line: {line!r}"
        edges.append((m.group(1), m.group(2), m.group(3) or ""))
    for src, dst, _ in edges:
        assert src in nodes and dst in nodes, (src, dst)
    return nodes, edges


def example():
    g = ft.Graph()
    x, y = g.inputs(2)
    ft.exp(y)  # dead: no output needs it
    g.output(ft.where(x > 0, ft.sqrt(x) * y, 2.0 * y) + x**3)
    return g


def test_graph_dot_structure():
    nodes, edges = parse(example().to_dot(input_names=["x", "y"], output_names=["f"]))
    labels = sorted(label for label, _, _ in nodes.values())
    assert labels == sorted(["x", "y", "exp", "0", "gt", "sqrt", "mul", "2", "mul", "where",
                             "3", "powi", "add", "f"])
    shapes = {label: shape for label, shape, _ in nodes.values()}
    assert shapes["x"] == "box" and shapes["2"] == "plaintext" and shapes["f"] == "doubleoctagon"
    dead = [label for label, _, rest in nodes.values() if "dashed" in rest]
    assert dead == ["exp"]
    roles = sorted(attrs.split('"')[1] for _, _, attrs in edges if attrs.startswith("label="))
    assert roles == ["a", "b", "cond", "x", "x", "y", "y"]  # gt, where, powi; mul/add unlabelled
    assert len(edges) == 1 + 2 + 1 + 2 + 2 + 3 + 2 + 2 + 1  # exp gt sqrt mul mul where powi add out


def test_tape_dot_drops_dead_code():
    tape = ft.compile(example())
    nodes, edges = parse(tape.to_dot())
    assert "exp" not in {label for label, _, _ in nodes.values()}
    assert len(nodes) == tape.n_slots + tape.n_outputs
    assert len(edges) == tape.n_edges + tape.n_outputs


@pytest.mark.parametrize("spec", OPS, ids=[op.name for op in OPS])
def test_every_op(spec):
    tape, _ = op_tape(spec)
    nodes, edges = parse(tape.to_dot())
    assert spec.name in {label for label, _, _ in nodes.values()}
    assert len(edges) == tape.n_edges + tape.n_outputs
    op_ids = [k for k, (label, _, _) in nodes.items() if label == spec.name]
    into = [e for e in edges if e[1] == op_ids[0]]
    assert len(into) == spec.arity


def test_quoting_limits_and_names():
    g = ft.Graph()
    (x,) = g.inputs(1)
    g.output(x + 1)
    nodes, _ = parse(g.to_dot(input_names=['a "quoted" \\ name'], output_names=["out"]))
    assert r'a \"quoted\" \\ name' in {label for label, _, _ in nodes.values()}
    with pytest.raises(ValueError, match="input_names has 2 entries, expected 1"):
        g.to_dot(input_names=["a", "b"])
    big = ft.trace(lambda v: ft.sum(v), n_inputs=400)
    with pytest.raises(ValueError, match="more than max_nodes=300"):
        big.to_dot()
    parse(big.to_dot(max_nodes=None))
    with pytest.raises(ValueError, match="max_nodes=10"):
        ft.compile(big).to_dot(max_nodes=10)


@pytest.mark.oracle  # CI installs Graphviz (apt-get, .ci/run): a skip there is a failure
def test_renders_with_graphviz_when_installed(tmp_path):
    dot = shutil.which("dot")
    if dot is None:
        pytest.skip("Graphviz `dot` is not installed")
    src = tmp_path / "g.dot"
    src.write_text(example().to_dot())
    subprocess.run([dot, "-Tsvg", str(src), "-o", str(tmp_path / "g.svg")], check=True)
    assert (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")


def test_checked_in_readme_picture_source_is_current():
    from pathlib import Path

    from fasttape.embed.dot_example import readme_example

    path = Path(__file__).resolve().parents[1] / "docs" / "readme-example.dot"
    assert path.read_text() == readme_example(), (
        "docs/readme-example.dot is stale: "
        "python -m fasttape.embed.dot_example > docs/readme-example.dot"
    )
