"""The code generator's command: the generated op docs, and the generated dispatch shown.

``python -m fasttape.kernels.codegen`` writes the generated docs of a checkout
(``docs/ops.md`` and the two tables of ``docs/derivatives.md``) from the op table;
``--check`` exits 1 if any of them is stale (``tests/test_codegen.py`` and CI run it); ``--show``
prints the op dispatch module's source (:mod:`fasttape.kernels.forms`), which needs no step:
fasttape builds it from the table each time it is imported (:mod:`fasttape.kernels.dispatch`).
Run it after editing the table.  Nothing imports this module at import time, so ``python -m``
runs it as a fresh module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from fasttape import opsdoc
from fasttape.kernels.forms import generate

_ROOT = Path(__file__).resolve().parents[2]  # the checkout (docs/ is not installed)


def _replace_table(text: str, table: str) -> str:
    """``text`` with the Markdown table that starts with ``table``'s header line (and ends at
    the next blank line) replaced by ``table``."""
    lines = text.split("\n")
    start = lines.index(table.split("\n", 1)[0])
    end = lines.index("", start)
    return "\n".join([*lines[:start], *table.rstrip("\n").split("\n"), *lines[end:]])


def _derivatives_md(path: Path) -> Callable[[], str]:
    def text() -> str:
        out = _replace_table(path.read_text(encoding="utf-8"), opsdoc.derivatives_markdown())
        return _replace_table(out, opsdoc.second_derivatives_markdown())

    return text


def targets() -> list[tuple[Path, Callable[[], str]]]:
    """Every generated doc file and the function that gives its text."""
    out: list[tuple[Path, Callable[[], str]]] = []
    docs = _ROOT / "docs"
    if (docs / "ops.md").exists():  # a checkout, not an installed package
        out.append((docs / "ops.md", opsdoc.ops_markdown))
        out.append((docs / "derivatives.md", _derivatives_md(docs / "derivatives.md")))
    return out


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, verify) every generated doc; ``--show`` prints the dispatch
    module instead."""
    argv = sys.argv[1:] if argv is None else argv
    if "--show" in argv:
        sys.stdout.write(generate())
        return 0
    status = 0
    for path, gen in targets():
        text = gen()
        if "--check" in argv:
            fresh = path.exists() and path.read_text(encoding="utf-8") == text
            print(f"{path.name}: up to date" if fresh else f"{path} is stale: run codegen")
            status |= 0 if fresh else 1
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
