"""The README's example graph as DOT text: ``docs/readme-example.dot`` is its output.

Regenerate with ``python -m fasttape.embed.dot_example > docs/readme-example.dot``.  It lives
apart from :mod:`fasttape.embed.dot` because it traces a graph: :mod:`fasttape.graph` imports
the DOT writer (``Graph.to_dot``), so the writer itself must not import the tracing modules.
"""

from __future__ import annotations

from fasttape.embed.dot import graph_to_dot
from fasttape.graph import Graph
from fasttape.trace import OP_FUNCTIONS

__all__ = ["readme_example"]


def readme_example() -> str:
    """DOT text of the README's example graph (``docs/readme-example.dot``)."""
    sin, exp = OP_FUNCTIONS["sin"], OP_FUNCTIONS["exp"]
    g = Graph()
    x = g.inputs(3)
    g.output(sin(x[0]) * x[1] + exp(x[2]) / 2)
    return graph_to_dot(g, input_names=["x0", "x1", "x2"], output_names=["y"])


if __name__ == "__main__":  # python -m fasttape.embed.dot_example > docs/readme-example.dot
    print(readme_example(), end="")
