"""The generated docs are up to date with the op table."""

from __future__ import annotations

from pathlib import Path

from fasttape.opsdoc import ops_markdown

OPS_MD = Path(__file__).resolve().parents[1] / "docs" / "ops.md"


def test_ops_md_matches_op_table() -> None:
    assert OPS_MD.read_text(encoding="utf-8") == ops_markdown(), (
        "docs/ops.md is out of date with fasttape/ops.py; regenerate it from the repository "
        'root with: python -c "from fasttape.opsdoc import ops_markdown; '
        "open('docs/ops.md','w').write(ops_markdown())\""
    )
