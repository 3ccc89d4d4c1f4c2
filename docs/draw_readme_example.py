"""Draw docs/readme-example.dot as docs/readme-example.png with matplotlib.

Graphviz (``dot -Tsvg docs/readme-example.dot -o docs/readme-example.svg``) is the intended
renderer, but it is not installable with pip on every machine; this script reads the DOT text
that ``tape.to_dot()`` writes (our own simple format: one node or edge per line) and draws it
in layers by depth, so the README has a picture either way.  Run from the repository root:
``python docs/draw_readme_example.py`` (needs matplotlib).
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
NODE = re.compile(r'^\s*(\w+) \[label="([^"]*)", shape=(\w+)(?:.*fillcolor="([^"]*)")?')
EDGE = re.compile(r'^\s*(\w+) -> (\w+)(?: \[label="([^"]*)"\])?;')


def main() -> None:
    nodes: dict[str, tuple[str, str, str]] = {}
    edges: list[tuple[str, str, str]] = []
    for line in (HERE / "readme-example.dot").read_text().splitlines():
        if m := EDGE.match(line):
            edges.append((m[1], m[2], m[3] or ""))
        elif (m := NODE.match(line)) and m[1] not in ("node", "edge"):
            nodes[m[1]] = (m[2], m[3], m[4] or "white")
    depth = {n: 0 for n in nodes}
    for _ in nodes:  # longest-path layering; the graph is tiny
        for a, b, _lab in edges:
            depth[b] = max(depth[b], depth[a] + 1)
    for a, _b, _lab in edges:  # pull each source down next to its first consumer
        if not any(b == a for _, b, _ in edges):
            depth[a] = min(depth[b] for x, b, _ in edges if x == a) - 1
    layers: dict[int, list[str]] = {}
    for n in nodes:
        layers.setdefault(depth[n], []).append(n)
    pos: dict[str, tuple[float, float]] = {}
    for d in sorted(layers, reverse=True):  # from the output up: order by the children's x
        names = layers[d]

        def key(n: str) -> float:
            xs = [pos[b][0] for a, b, _ in edges if a == n and b in pos]
            return sum(xs) / len(xs) if xs else 0.0

        names.sort(key=key)  # stable: ties keep the tape's order
        for j, n in enumerate(names):
            pos[n] = (j - (len(names) - 1) / 2, -d)
    fig, ax = plt.subplots(figsize=(5, 5))
    for a, b, lab in edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.annotate("", (x1, y1 + 0.18), (x0, y0 - 0.18),
                    arrowprops={"arrowstyle": "->", "color": "#555"})
        if lab:
            ax.text((x0 + x1) / 2 + 0.08, (y0 + y1) / 2, lab, fontsize=8, color="#555")
    for n, (label, shape, color) in nodes.items():
        style = "round" if shape == "box" else "circle" if shape == "ellipse" else "square"
        box = None if shape == "plaintext" else {"boxstyle": f"{style},pad=0.3", "fc": color,
                                                  "ec": "#333"}
        ax.text(*pos[n], label, ha="center", va="center", fontsize=10, bbox=box)
    ax.set_xlim(-2, 2)
    ax.set_ylim(-max(depth.values()) - 0.6, -min(depth.values()) + 0.6)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(HERE / "readme-example.png", dpi=110)


if __name__ == "__main__":
    main()
