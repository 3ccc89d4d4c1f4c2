"""docs/store-vs-recompute.md: every Python block runs and prints the output shown after it."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "store-vs-recompute.md"
_BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def doc_examples() -> list[tuple[str, str | None]]:
    """(code, expected output or None) for each ```python block of the page."""
    blocks = [(m.group(1), m.group(2)) for m in _BLOCK.finditer(DOC.read_text("utf-8"))]
    out = []
    for i, (lang, text) in enumerate(blocks):
        if lang == "python":
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            out.append((text, nxt[1] if nxt is not None and nxt[0] == "" else None))
    return out


EXAMPLES = doc_examples()


def test_the_page_has_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("k", range(len(EXAMPLES)))
def test_example_runs_and_prints_what_the_page_shows(k):
    code, expected = EXAMPLES[k]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, f"{DOC.name}[{k}]", "exec"), {"__name__": "__doc_example__"})
    if expected is not None:
        assert buf.getvalue() == expected
